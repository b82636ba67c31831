"""When: the kind of every round, its local work, its learning rates, its sub-networks. Pure, no I/O.

Every decision of *when* lives here; the driver asks :class:`Schedule` for
each round's :class:`RoundPlan` and acts on it. How a round's work is
combined (the arithmetic) lives in :mod:`nnlib.rounds.reduce` and
:mod:`nnlib.core`; where it runs is the engine's business.

The learning rate of a round is ``train.lr`` times the round's factor under
``train.lr_schedule`` (constant, step or cosine across rounds, after an
optional linear warm-up over ``train.lr_warmup_rounds``); see
:func:`round_lr_factor`.

Two kinds of round:

- **local** (periodic model averaging): each mapper takes ``local_epochs``
  passes over its shard (or ``local_steps`` mini-batch steps) at ``lr``,
  then the weights are combined once;
- **synchronous** (``combine: gradient``, or the first ``train.sync_rounds``
  rounds, post-local SGD): every step averages the mappers' mini-batch
  gradients. Every mapper takes part in every step, so the *largest* shard
  sets the steps per epoch; on uneven shards a mapper whose shard is used up
  for the epoch takes part with an empty batch and weight 0 until the epoch
  ends, as torch's ``Join`` does for DDP (:func:`sync_batch_sizes`), and
  each step's mean is weighted by the samples in it, so every row is used
  once per epoch. ``lr_scaling: linear`` multiplies the rate by the number
  of mappers with a batch in the step (the global batch is that many
  mappers' batches), reached after ``warmup_epochs`` of linear warm-up.

And what a local round trains:

- the whole network on the whole shard (most rounds);
- ``combine: ist``: every round, a sub-network per mapper, on a split drawn
  afresh from ``(seed, round)``;
- ``combine: split``: rounds ``0 .. R-2`` the whole network on the first
  ``split.warmup_fraction`` of every shard, then round ``R-1`` the
  sub-networks of a split chosen from the warmed-up network, on the rest.

``train.optimizer_state: reset`` restarts the optimizer state (momentum) at
the start of every round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nnlib.core.train import LocalSchedule

SubNetworks = Literal["ist", "split", None]


def sync_steps_per_epoch(largest_shard: int, batch_size: int) -> int:
    """Synchronous steps in one epoch: the largest shard's batches (the others sit out their last steps)."""
    return -(-largest_shard // batch_size)


def sync_batch_sizes(shard_sizes, batch_size: int, steps, per_epoch: int) -> np.ndarray:
    """Each mapper's batch size in each synchronous step, ``(len(steps), mappers)`` int64.

    Step ``t`` is step ``t % per_epoch`` of an epoch; in it a shard of ``n``
    samples gives a batch of ``min(batch_size, n - j * batch_size)`` samples
    (its epoch's ``j``-th batch), or 0 once its epoch's rows are used.
    """
    j = np.asarray(steps, np.int64) % per_epoch
    n = np.asarray(shard_sizes, np.int64)
    return np.clip(n[None, :] - j[:, None] * batch_size, 0, batch_size)


def round_lr_factor(
    round_index: int,
    rounds: int,
    kind: str = "constant",
    warmup_rounds: int = 0,
    step_rounds: int = 1,
    gamma: float = 0.5,
    min_factor: float = 0.0,
) -> float:
    """What round ``round_index`` multiplies ``train.lr`` by (``train.lr_schedule``).

    During the first ``warmup_rounds`` rounds the factor climbs linearly,
    ``(r + 1) / (warmup_rounds + 1)``; from then on, with ``t`` rounds since
    the warm-up and ``T`` rounds after it:

    - ``constant``: 1;
    - ``step``: ``gamma ** (t // step_rounds)``;
    - ``cosine``: ``min_factor + (1 - min_factor) * (1 + cos(pi * t / T)) / 2``, from 1 in the
      first round towards ``min_factor`` (``lr_min / lr``).
    """
    if round_index < warmup_rounds:
        return (round_index + 1) / (warmup_rounds + 1)
    t, total = round_index - warmup_rounds, max(rounds - warmup_rounds, 1)
    if kind == "step":
        return gamma ** (t // step_rounds)
    if kind == "cosine":
        return float(min_factor + (1 - min_factor) * (1 + np.cos(np.pi * t / total)) / 2)
    return 1.0


def sync_learning_rates(
    round_index: int, steps: int, base_lr: float, mappers, scaling: str, warmup_steps: int
) -> np.ndarray:
    """Learning rate of each synchronous step of a round, ``(steps,)`` float64.

    ``scaling='linear'`` multiplies the rate by the number of mappers taking
    part in the step (``mappers``: one number, or one per step). During
    the first ``warmup_steps`` steps of the run the rate climbs linearly from
    ``base_lr`` to that target.
    """
    target = base_lr * np.asarray(mappers, np.float64) if scaling == "linear" else base_lr
    t = round_index * steps + np.arange(steps)
    if warmup_steps <= 0:
        return np.full(steps, target)
    return np.where(t < warmup_steps, base_lr + (target - base_lr) * t / warmup_steps, target)


@dataclass(frozen=True)
class RoundPlan:
    """What one round does."""

    index: int
    synchronous: bool
    local: LocalSchedule  # batch size and the local work of a local round
    lr: float  # a local round's learning rate
    sync_lrs: np.ndarray | None  # a synchronous round's rate for each of its steps, (steps,)
    sub_networks: SubNetworks = None  # None: the whole network; "ist" or "split": a sub-network per mapper
    part: tuple[float, float] = (0.0, 1.0)  # the share of each shard trained on, as fractions [lo, hi)
    restart_optimizer: bool = False  # the optimizer state starts afresh this round
    shard_sizes: tuple[int, ...] = ()  # a synchronous round: every shard's training samples, in mapper order
    steps_per_epoch: int = 0  # a synchronous round: the largest shard's batches per epoch

    def sync_batch_sizes(self, step: int) -> np.ndarray:
        """Each mapper's batch size in synchronous step ``step`` of the round, ``(mappers,)`` int64 (0: it
        sits out the step, its epoch's rows used)."""
        return sync_batch_sizes(self.shard_sizes, self.local.batch_size, [step], self.steps_per_epoch)[0]


@dataclass(frozen=True)
class Schedule:
    """The run's rounds, from the ``train`` section, ``combine``, the mappers and the smallest shard.

    ``train`` is a :class:`nnlib.config.TrainConfig` (or anything with its
    fields); ``split_warmup_fraction`` is ``split.warmup_fraction``, read only
    under ``combine: split``.
    """

    train: Any
    combine: str
    mappers: int
    shard_sizes: tuple[int, ...]  # training samples in each shard, in mapper order
    split_warmup_fraction: float = 0.5
    shuffle: str = "exact"  # data.shuffle: how each epoch orders a shard's rows

    @classmethod
    def from_config(cls, config, shard_sizes) -> Schedule:
        """The schedule of a :class:`nnlib.config.Config` whose shards hold ``shard_sizes`` samples."""
        return cls(
            config.train,
            config.combine,
            config.mappers,
            tuple(int(n) for n in shard_sizes),
            config.split.warmup_fraction,
            config.data.shuffle,
        )

    def is_synchronous(self, round_index: int) -> bool:
        """Always with ``combine: gradient``; else the first ``train.sync_rounds`` rounds."""
        return self.combine == "gradient" or round_index < self.train.sync_rounds

    def lr_factor(self, round_index: int) -> float:
        """The round's share of ``lr`` under ``lr_schedule`` (1 for a constant rate)."""
        t = self.train
        return round_lr_factor(
            round_index, t.rounds, t.lr_schedule, t.lr_warmup_rounds, t.lr_step_rounds, t.lr_gamma, t.lr_min / t.lr
        )

    def sub_networks(self, round_index: int) -> tuple[SubNetworks, tuple[float, float]]:
        """``(sub-network kind, share of each shard)`` of a local round."""
        if self.combine == "ist":
            return "ist", (0.0, 1.0)
        if self.combine == "split":
            f = self.split_warmup_fraction
            return ("split", (f, 1.0)) if round_index == self.train.rounds - 1 else (None, (0.0, f))
        return None, (0.0, 1.0)

    def plan(self, round_index: int) -> RoundPlan:
        t = self.train
        local = LocalSchedule(t.batch_size, t.local_epochs, t.local_steps, self.shuffle)
        factor = self.lr_factor(round_index)
        restart = t.optimizer_state == "reset"
        if not self.is_synchronous(round_index):
            kind, part = self.sub_networks(round_index)
            return RoundPlan(round_index, False, local, t.lr * factor, None, kind, part, restart)
        per_epoch = sync_steps_per_epoch(max(self.shard_sizes), t.batch_size)
        steps = t.local_steps or t.local_epochs * per_epoch
        taking_part = (sync_batch_sizes(self.shard_sizes, t.batch_size, np.arange(steps), per_epoch) > 0).sum(axis=1)
        lrs = sync_learning_rates(round_index, steps, t.lr, taking_part, t.lr_scaling, t.warmup_epochs * per_epoch)
        return RoundPlan(
            round_index,
            True,
            local,
            t.lr * factor,
            lrs * factor,
            restart_optimizer=restart,
            shard_sizes=self.shard_sizes,
            steps_per_epoch=per_epoch,
        )
