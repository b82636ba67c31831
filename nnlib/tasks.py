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
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from nnlib.core.backends import get_backend
from nnlib.core.combine import COMBINE_RULES, combine_average
from nnlib.core.mlp import ModelSpec
from nnlib.core.train import LocalSchedule, batch_indices, local_sgd, sgd_update
from nnlib.data.dataset import Shard
from nnlib.errors import DivergenceError
from nnlib.threads import one_blas_thread


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
    # set for a synchronous round: the learning rate of each of its gradient-averaging steps
    sync_lrs: np.ndarray | None = None


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
    train_seconds: float      # computing (forward, backward, update)
    comm_seconds: float = 0.0  # waiting in collectives (synchronous rounds, MPI)


def shard_rng(seed: int, round_index: int, shard_index: int) -> np.random.Generator:
    """The only source of randomness in a mapper's round."""
    return np.random.default_rng([seed, round_index, shard_index])


def train_shard(shard: Shard, payload: RoundPayload) -> MapperResult:
    """Train the payload's weights on ``shard`` for one round of local work."""
    start = time.perf_counter()
    backend = get_backend(payload.backend, payload.model)
    with one_blas_thread():
        update = local_sgd(backend, payload.params, payload.velocity, shard.x, shard.y, payload.schedule,
                           payload.lr, payload.momentum, shard_rng(payload.seed, payload.round_index, shard.index))
    return MapperResult(shard.index, update.params, update.velocity, update.n_samples, update.train_loss,
                        update.steps, socket.gethostname(), os.getpid(), time.perf_counter() - start)


@dataclass
class Combined:
    """A round's reduced state, and the mappers whose non-finite results were dropped."""

    params: np.ndarray
    velocity: np.ndarray | None
    skipped: list[int] = field(default_factory=list)


def diverged(round_index: int, mapper: int) -> DivergenceError:
    return DivergenceError(f"round {round_index}: mapper {mapper} returned weights containing NaN or inf "
                           "(training diverged; try a smaller train.lr, or train.skip_bad_mappers: true)")


def check_bad_mappers(bad: list[int], n_mappers: int, round_index: int, skip_bad: bool) -> None:
    """Refuse a round whose mappers ``bad`` returned NaN/inf, unless ``skip_bad`` and some mapper is left."""
    if bad and not skip_bad:
        raise diverged(round_index, bad[0])
    if bad and len(bad) == n_mappers:
        raise DivergenceError(f"round {round_index}: every mapper returned weights containing NaN or inf "
                              "(training diverged; try a smaller train.lr)")


def finite_split(results: list[MapperResult], round_index: int, skip_bad: bool):
    """``(good results, skipped mapper indices)``; refuses NaN/inf unless ``skip_bad``."""
    bad = [res.mapper for res in results if not np.isfinite(res.params).all()]
    check_bad_mappers(bad, len(results), round_index, skip_bad)
    return [res for res in results if res.mapper not in bad], bad


@dataclass(frozen=True)
class RoundReducer:
    """The reduce step of a round, plain data (a rule name) so any engine can ship it."""

    rule: str
    skip_bad: bool = False

    def __call__(self, results: list[MapperResult], payload: RoundPayload) -> Combined:
        """Combine the mappers' results into the next weights.

        Results are combined in mapper order whatever order they arrived in, so
        every engine adds the same numbers in the same order. Momentum buffers
        are averaged. A result holding NaN or inf stops the run, or with
        ``skip_bad`` is left out of this round's combine.
        """
        results = sorted(results, key=lambda res: res.mapper)
        good, skipped = finite_split(results, payload.round_index, self.skip_bad)
        params = COMBINE_RULES[self.rule]([(res.params, res.n_samples) for res in good], payload.params)
        velocity = None
        if payload.velocity is not None:
            velocity = combine_average([(res.velocity, res.n_samples) for res in good])
        return Combined(params, velocity, skipped)


class Collective(Protocol):
    """How a synchronous round averages across mappers: in one process, or over MPI."""

    def mean(self, local: list[np.ndarray]) -> np.ndarray:
        """Mean over *all* mappers of the vectors; ``local`` holds this process's mappers' vectors."""

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        """The mappers, across all processes, whose flag is set."""


def sync_gradient_round(shards: list[Shard], payload: RoundPayload, collective: Collective):
    """One round of synchronous data-parallel SGD over ``shards`` (this process's mappers).

    Every step each mapper computes the gradient of its own mini-batch, the
    collective averages the gradients over all mappers, and every mapper
    takes the same step, so all hold the same weights throughout. Returns
    ``(Combined, results)``; the results carry timing, not weights.
    """
    backend = get_backend(payload.backend, payload.model)
    lrs = payload.sync_lrs
    schedule = LocalSchedule(payload.schedule.batch_size, local_steps=len(lrs))
    batches = [batch_indices(s.n_samples, schedule, shard_rng(payload.seed, payload.round_index, s.index))
               for s in shards]
    params = payload.params.copy()
    velocity = None if payload.velocity is None else payload.velocity.copy()
    compute = [0.0] * len(shards)
    loss_sums = [0.0] * len(shards)
    comm = 0.0
    with np.errstate(all="ignore"), one_blas_thread():
        for step, lr in enumerate(lrs):
            grads = []
            for i, shard in enumerate(shards):
                start = time.perf_counter()
                idx = batches[i][step]
                loss, grad = backend.loss_and_grad(params, shard.x[idx], shard.y[idx])
                grads.append(grad)
                loss_sums[i] += loss * len(idx)
                compute[i] += time.perf_counter() - start
            start = time.perf_counter()
            mean = collective.mean(grads)
            if not np.isfinite(mean).all():
                bad = collective.mappers_flagged({s.index: not np.isfinite(g).all() for s, g in zip(shards, grads)})
                raise DivergenceError(f"round {payload.round_index}, step {step}: mapper(s) {bad or 'unknown'} "
                                      "computed gradients containing NaN or inf (training diverged; "
                                      "try a smaller train.lr; synchronous rounds cannot skip a mapper)")
            comm += time.perf_counter() - start
            start = time.perf_counter()
            params, velocity = sgd_update(params, velocity, mean, lr, payload.momentum)
            update = (time.perf_counter() - start) / len(shards)
            for i in range(len(shards)):
                compute[i] += update
    seen = [sum(len(b) for b in bs) for bs in batches]
    results = [MapperResult(s.index, None, None, s.n_samples, loss_sums[i] / seen[i], len(lrs),
                            socket.gethostname(), os.getpid(), compute[i], comm / len(shards))
               for i, s in enumerate(shards)]
    return Combined(params, velocity), results
