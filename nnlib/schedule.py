"""When: the kind of every round, its local work and its learning rates. Pure, no I/O.

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

    @classmethod
    def from_config(cls, config, smallest_shard: int) -> "Schedule":
        """The schedule of a :class:`nnlib.config.Config` whose smallest shard has ``smallest_shard`` samples."""
        t = config.train
        return cls(t.rounds, config.combine, config.mappers, smallest_shard, t.batch_size, t.local_epochs,
                   t.local_steps, t.lr, t.lr_scaling, t.warmup_epochs, t.sync_rounds)

    def plan(self, round_index: int) -> RoundPlan:
        local = LocalSchedule(self.batch_size, self.local_epochs, self.local_steps)
        if not is_sync_round(round_index, self.combine, self.sync_rounds):
            return RoundPlan(round_index, False, local, self.lr, None)
        per_epoch = sync_steps_per_epoch(self.smallest_shard, self.batch_size)
        steps = self.local_steps or self.local_epochs * per_epoch
        lrs = sync_learning_rates(round_index, steps, self.lr, self.mappers, self.lr_scaling,
                                  self.warmup_epochs * per_epoch)
        return RoundPlan(round_index, True, local, self.lr, lrs)
