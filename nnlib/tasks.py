"""The work a mapper does in one round, as one picklable function.

:func:`train_shard` is what every engine runs on every shard: it takes the
shard and the round's payload (the weights broadcast by the driver) and
returns a :class:`MapperResult`. Its randomness is seeded by
``(seed, round, shard)`` alone, so a task that is retried, on any host,
returns bit-identical weights.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from nnlib.core.backends import get_backend
from nnlib.core.combine import COMBINE_RULES, combine_average
from nnlib.core.mlp import ModelSpec
from nnlib.core.train import LocalSchedule, local_sgd
from nnlib.data.dataset import Shard
from nnlib.errors import DivergenceError


@dataclass(frozen=True)
class RoundPayload:
    """What the driver sends to every mapper at the start of a round."""

    round_index: int
    seed: int
    params: np.ndarray           # (n_params,) float32
    velocity: np.ndarray | None  # (n_params,) float32 momentum buffer, or None
    model: ModelSpec
    backend: str
    schedule: LocalSchedule
    lr: float
    momentum: float


@dataclass
class MapperResult:
    """What one mapper sends back: weights plus the facts about how it ran."""

    mapper: int
    params: np.ndarray
    velocity: np.ndarray | None
    n_samples: int
    train_loss: float
    steps: int
    host: str
    pid: int
    train_seconds: float


def shard_rng(seed: int, round_index: int, shard_index: int) -> np.random.Generator:
    """The only source of randomness in a mapper's round."""
    return np.random.default_rng([seed, round_index, shard_index])


def train_shard(shard: Shard, payload: RoundPayload) -> MapperResult:
    """Train the payload's weights on ``shard`` for one round of local work."""
    start = time.perf_counter()
    backend = get_backend(payload.backend, payload.model)
    update = local_sgd(backend, payload.params, payload.velocity, shard.x, shard.y, payload.schedule,
                       payload.lr, payload.momentum, shard_rng(payload.seed, payload.round_index, shard.index))
    return MapperResult(shard.index, update.params, update.velocity, update.n_samples, update.train_loss,
                        update.steps, socket.gethostname(), os.getpid(), time.perf_counter() - start)


def check_finite(results: list[MapperResult], round_index: int) -> None:
    """Refuse a round in which any mapper's weights hold NaN or inf, naming the mapper."""
    for res in results:
        if not np.isfinite(res.params).all():
            raise DivergenceError(f"round {round_index}: mapper {res.mapper} returned weights containing "
                                  "NaN or inf (training diverged; try a smaller train.lr)")


@dataclass(frozen=True)
class RoundReducer:
    """The reduce step of a round, named by its combine rule so any engine can ship it."""

    rule: str

    def __call__(self, results: list[MapperResult], payload: RoundPayload):
        """Return ``(params, velocity)`` combined from the mappers' results.

        Results are combined in mapper order whatever order they arrived in, so
        every engine adds the same numbers in the same order. Momentum buffers
        are averaged.
        """
        results = sorted(results, key=lambda res: res.mapper)
        check_finite(results, payload.round_index)
        params = COMBINE_RULES[self.rule]([(res.params, res.n_samples) for res in results], payload.params)
        velocity = None
        if payload.velocity is not None:
            velocity = combine_average([(res.velocity, res.n_samples) for res in results])
        return params, velocity
