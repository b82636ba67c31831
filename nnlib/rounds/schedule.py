"""When: the kind of every round, its local work and its learning rates. Pure, no I/O.

The learning rate of a round is ``train.lr`` times the round's factor under
``train.lr_schedule`` (constant, step or cosine across rounds, after an
optional linear warm-up over ``train.lr_warmup_rounds``); see
:func:`round_lr_factor`.

The driver asks :class:`Schedule` for each round's :class:`RoundPlan`; how a
round's work is combined (the arithmetic) lives in :mod:`nnlib.core`, and
where it runs is the engine's business.

Two kinds of round:

- **local** (periodic model averaging): each mapper takes ``local_epochs``
  passes over its shard (or ``local_steps`` mini-batch steps) at ``lr``,
  then the weights are combined once;
- **synchronous** (``combine: gradient``, or the first ``train.sync_rounds``
  rounds, post-local SGD): every step averages the mappers' mini-batch
  gradients. Every mapper must take the same number of steps, so the
  smallest shard sets the steps per epoch; ``lr_scaling: linear`` multiplies
  the rate by the number of mappers (the global batch is ``mappers`` times a
  mapper's batch), reached after ``warmup_epochs`` of linear warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnlib.core.train import LocalSchedule


def is_sync_round(round_index: int, combine: str, sync_rounds: int) -> bool:
    """Is round ``round_index`` synchronous? Always with combine=gradient; else the first ``sync_rounds``."""
    return combine == "gradient" or round_index < sync_rounds


def has_sync_rounds(combine: str, sync_rounds: int) -> bool:
    """Does a run with these settings have any synchronous round?"""
    return is_sync_round(0, combine, sync_rounds)


def sync_steps_per_epoch(smallest_shard: int, batch_size: int) -> int:
    """Synchronous steps in one epoch: every mapper takes the same number, so the smallest shard decides."""
    return -(-smallest_shard // batch_size)


def round_lr_factor(round_index: int, rounds: int, kind: str = "constant", warmup_rounds: int = 0,
                    step_rounds: int = 1, gamma: float = 0.5, min_factor: float = 0.0) -> float:
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


def sync_learning_rates(round_index: int, steps: int, base_lr: float, mappers: int, scaling: str,
                        warmup_steps: int) -> np.ndarray:
    """Learning rate of each synchronous step of a round, ``(steps,)`` float64.

    ``scaling='linear'`` multiplies the rate by the number of mappers. During
    the first ``warmup_steps`` steps of the run the rate climbs linearly from
    ``base_lr`` to that target.
    """
    target = base_lr * mappers if scaling == "linear" else base_lr
    t = round_index * steps + np.arange(steps)
    if warmup_steps <= 0:
        return np.full(steps, target)
    return np.where(t < warmup_steps, base_lr + (target - base_lr) * t / warmup_steps, target)


@dataclass(frozen=True)
class RoundPlan:
    """What one round does."""

    index: int
    synchronous: bool
    local: LocalSchedule          # batch size and the local work of a local round
    lr: float                     # a local round's learning rate
    sync_lrs: np.ndarray | None   # a synchronous round's rate for each of its steps, (steps,)


@dataclass(frozen=True)
class Schedule:
    """The run's rounds, from the ``train`` settings, ``combine`` and the shard sizes."""

    rounds: int
    combine: str
    mappers: int
    smallest_shard: int
    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None
    lr: float = 0.1
    lr_scaling: str = "none"
    warmup_epochs: int = 0
    sync_rounds: int = 0
    lr_schedule: str = "constant"
    lr_warmup_rounds: int = 0
    lr_step_rounds: int = 1
    lr_gamma: float = 0.5
    lr_min: float = 0.0

    @classmethod
    def from_config(cls, config, smallest_shard: int) -> "Schedule":
        """The schedule of a :class:`nnlib.config.Config` whose smallest shard has ``smallest_shard`` samples."""
        t = config.train
        return cls(t.rounds, config.combine, config.mappers, smallest_shard, t.batch_size, t.local_epochs,
                   t.local_steps, t.lr, t.lr_scaling, t.warmup_epochs, t.sync_rounds, t.lr_schedule,
                   t.lr_warmup_rounds, t.lr_step_rounds, t.lr_gamma, t.lr_min)

    def lr_factor(self, round_index: int) -> float:
        """The round's share of ``lr`` under ``lr_schedule`` (1 for a constant rate)."""
        return round_lr_factor(round_index, self.rounds, self.lr_schedule, self.lr_warmup_rounds,
                               self.lr_step_rounds, self.lr_gamma, self.lr_min / self.lr)

    def plan(self, round_index: int) -> RoundPlan:
        local = LocalSchedule(self.batch_size, self.local_epochs, self.local_steps)
        factor = self.lr_factor(round_index)
        lr = self.lr * factor
        if not is_sync_round(round_index, self.combine, self.sync_rounds):
            return RoundPlan(round_index, False, local, lr, None)
        per_epoch = sync_steps_per_epoch(self.smallest_shard, self.batch_size)
        steps = self.local_steps or self.local_epochs * per_epoch
        lrs = sync_learning_rates(round_index, steps, self.lr, self.mappers, self.lr_scaling,
                                  self.warmup_epochs * per_epoch)
        return RoundPlan(round_index, True, local, lr, lrs * factor)
