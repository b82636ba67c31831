"""Local training on one shard: the batch schedule and the SGD loop.

Pure functions of arrays: no engine, no I/O. Randomness comes only from the
``rng`` passed in, so a caller that seeds it from ``(seed, round, shard)``
gets the same result every time the same shard is trained in the same round,
which is what makes a retried task reproduce its result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LocalSchedule:
    """How much local work one mapper does per round.

    Exactly one of ``local_epochs`` and ``local_steps`` is used: with
    ``local_steps`` set, that many mini-batch steps are taken, walking through
    fresh shuffles of the shard as often as needed.
    """

    batch_size: int
    local_epochs: int = 1
    local_steps: int | None = None


def batch_indices(n_samples: int, schedule: LocalSchedule, rng: np.random.Generator) -> list[np.ndarray]:
    """Index arrays of the mini-batches of one round, in order.

    Each epoch is one permutation of ``range(n_samples)`` cut into batches of
    ``batch_size``; the last batch of an epoch may be smaller.
    """
    bs = schedule.batch_size
    batches: list[np.ndarray] = []
    epochs = schedule.local_epochs if schedule.local_steps is None else None
    while True:
        order = rng.permutation(n_samples)
        for start in range(0, n_samples, bs):
            if schedule.local_steps is not None and len(batches) == schedule.local_steps:
                return batches
            batches.append(order[start:start + bs])
        if epochs is not None:
            epochs -= 1
            if epochs == 0:
                return batches


@dataclass
class LocalUpdate:
    """What local training returns: new weights, optimizer state, how much was seen."""

    params: np.ndarray          # (n_params,) float32
    velocity: np.ndarray | None  # (n_params,) float32 momentum buffer, None without momentum
    n_samples: int              # size of the shard
    train_loss: float           # mean data loss over the round's batches
    steps: int                  # mini-batch steps taken


def local_sgd(backend, params, velocity, x, y, schedule: LocalSchedule, lr: float, momentum: float,
              rng: np.random.Generator) -> LocalUpdate:
    """Train ``params`` on the shard ``(x, y)`` for one round of ``schedule``."""
    batches = batch_indices(len(y), schedule, rng)
    params, velocity, loss_sum = backend.sgd_steps(params, velocity, x, y, batches, lr, momentum)
    seen = sum(len(b) for b in batches)
    return LocalUpdate(params, velocity, len(y), loss_sum / max(seen, 1), len(batches))


def sgd_update(params: np.ndarray, velocity: np.ndarray | None, grad: np.ndarray, lr: float, momentum: float):
    """One SGD step with PyTorch's momentum rule, in place: ``v = momentum*v + g; w -= lr*v``."""
    if velocity is not None:
        velocity *= params.dtype.type(momentum)
        velocity += grad
        grad = velocity
    params -= params.dtype.type(lr) * grad
    return params, velocity


def sync_steps_per_epoch(smallest_shard: int, batch_size: int) -> int:
    """Synchronous steps in one epoch: every rank must take the same number, so the smallest shard decides."""
    return -(-smallest_shard // batch_size)


def sync_learning_rates(round_index: int, steps: int, base_lr: float, mappers: int, scaling: str,
                        warmup_steps: int) -> np.ndarray:
    """Learning rate of each synchronous step of a round, ``(steps,)`` float64.

    ``scaling='linear'`` multiplies the rate by the number of mappers (the
    global batch is ``mappers`` times a mapper's batch: the large-batch linear
    scaling rule). During the first ``warmup_steps`` steps of the run the
    rate climbs linearly from ``base_lr`` to that target.
    """
    target = base_lr * mappers if scaling == "linear" else base_lr
    t = round_index * steps + np.arange(steps)
    if warmup_steps <= 0:
        return np.full(steps, target)
    return np.where(t < warmup_steps, base_lr + (target - base_lr) * t / warmup_steps, target)
