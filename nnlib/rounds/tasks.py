"""The work of one round: what a mapper runs, what comes back, how it is reduced.

:func:`train_shard` is what every engine runs on every shard in a local
round: it takes the shard and the round's :class:`RoundPayload` (the weights
sent by the driver) and returns a :class:`MapperResult`. :func:`sync_shards`
runs a synchronous round over the shards one process holds, averaging
gradients through a :class:`Collective`. Randomness is seeded by
``(seed, round, shard)`` alone, so a task that is retried, on any host,
returns bit-identical weights.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from nnlib.core.backends import get_backend
from nnlib.core.cnn import ConvSpec
from nnlib.core.combine import combine
from nnlib.core.mlp import ModelSpec
from nnlib.core.optim import SGD, Adam, state_rows
from nnlib.core.params import LayerSpec, init_params
from nnlib.core.split import Split, mapper_choice, recombine, round_split, sub_indices
from nnlib.core.train import LocalSchedule, batch_indices, local_sgd, run_steps
from nnlib.data.dataset import Dataset, Shard
from nnlib.data.rows import TEST, VAL
from nnlib.errors import ConfigError, DivergenceError
from nnlib.rounds.schedule import RoundPlan, Schedule
from nnlib.util.threads import one_blas_thread


@dataclass(frozen=True)
class SubnetPlan:
    """A round in which each mapper trains a sub-network (``combine: ist``, the last round of ``split``).

    ``labels`` fixes the split (each hidden unit's group, per layer); without
    it the split is drawn from ``(seed, round)`` alone (IST), so the driver
    and every mapper, on any engine, compute the same one without sending
    it. Mapper ``m`` trains :func:`nnlib.core.split.mapper_choice`. With
    ``scale`` a sub-network's hidden-to-output product is multiplied by the
    number of groups while it trains (its logits come from 1/G of the
    units), not at evaluation.
    """

    groups: int
    scale: bool = True
    labels: tuple[tuple[int, ...], ...] | None = None
    alternating: bool = False
    sum_shared: bool = False   # what several sub-networks hold is summed, not averaged

    def split(self, layers: LayerSpec, seed: int, round_index: int) -> Split:
        if self.labels is not None:
            return Split.from_labels(self.labels, self.groups)
        return round_split(layers.sizes[1:-1], self.groups, seed, round_index)

    def choice(self, mapper: int, layers: LayerSpec) -> tuple[int, ...]:
        return mapper_choice(mapper, self.groups, layers.n_layers - 1, self.alternating)


@dataclass(frozen=True)
class RoundPayload:
    """What the driver sends to every mapper at the start of a round."""

    plan: RoundPlan
    seed: int
    params: np.ndarray              # (n_params,) float32
    opt_state: np.ndarray | None    # the optimizer's state (momentum buffer), or None
    model: ModelSpec
    backend: str
    optimizer: SGD | Adam
    subnets: SubnetPlan | None = None   # sub-networks this round (ist, split); None: the whole network
    part: tuple[float, float] = (0.0, 1.0)  # the share of each shard trained on (split: warm-up, rest)
    sliced_for: int | None = None       # params and opt_state already hold this mapper's sub-network
    proximal_mu: float = 0.0            # FedProx: the pull towards the round's weights (train.proximal_mu)

    @property
    def round_index(self) -> int:
        return self.plan.index

    def split(self) -> Split:
        """This round's split of the hidden units (``combine: ist`` only)."""
        return self.subnets.split(self.model.layers, self.seed, self.plan.index)

    def for_mapper(self, mapper: int) -> tuple[np.ndarray, np.ndarray | None, ModelSpec]:
        """``(params, optimizer state, model)`` that ``mapper`` trains: its sub-network, or the whole network.

        The optimizer state (momentum) is sliced with the same indices as the
        weights and copied back with them.
        """
        if self.subnets is None:
            return self.params, self.opt_state, self.model
        split, choice = self.split(), self.subnets.choice(mapper, self.model.layers)
        model = replace(self.model, layers=split.sub_layers(self.model.layers, choice),
                        output_scale=float(self.subnets.groups) if self.subnets.scale else 1.0)
        if self.sliced_for is not None:
            if self.sliced_for != mapper:
                raise ValueError(f"a payload sliced for mapper {self.sliced_for} reached mapper {mapper}")
            return self.params, self.opt_state, model
        idx = sub_indices(self.model.layers, split, choice)
        state = state_rows(self.opt_state, self.params.size)
        return self.params[idx], None if state is None else state[:, idx].ravel(), model

    def sliced(self, mapper: int) -> "RoundPayload":
        """The payload with only ``mapper``'s sub-network in it (what an engine that sends each mapper
        its own message ships); the whole payload when the round trains the whole network."""
        if self.subnets is None:
            return self
        params, opt_state, _ = self.for_mapper(mapper)
        return replace(self, params=params, opt_state=opt_state, sliced_for=mapper)


@dataclass(frozen=True)
class MapperStats:
    """How one mapper ran one round: the facts every engine reports, without weights."""

    mapper: int
    n_samples: int
    steps: int
    train_loss: float         # mean data loss over the round's mini-batches
    host: str
    pid: int
    train_seconds: float      # computing (forward, backward, update)
    comm_seconds: float = 0.0  # waiting in collectives (synchronous rounds, MPI)
    peak_rss_mb: float = 0.0  # the mapper process's peak resident memory so far
    result_bytes: int = 0        # bytes of the weights and optimizer state sent back (local rounds)


@dataclass(frozen=True)
class MapperResult:
    """What one mapper sends back after a local round: its weights, optimizer state and stats."""

    stats: MapperStats
    params: np.ndarray              # (n_params,) float32
    opt_state: np.ndarray | None


@dataclass
class Combined:
    """A round's reduced state, and the mappers whose non-finite results were dropped."""

    params: np.ndarray
    opt_state: np.ndarray | None
    skipped: list[int] = field(default_factory=list)


def model_spec(config, data: Dataset) -> ModelSpec:
    """The model a config trains on ``data``: input and output sizes from the data, the rest from ``model``."""
    m = config.model
    if m.type == "cnn":
        if data.image_shape is None:
            raise ConfigError(f"model.type=cnn needs the image shape of data.source {config.data.source}: "
                              f"set data.image_shape to [H, W] or [C, H, W] ({data.n_features} values in all)")
        layers = ConvSpec(data.image_shape, tuple(m.channels), m.kernel, data.n_classes)
        if min(layers.map_shapes()[-1][1:]) < 1:
            raise ConfigError(f"model.channels: {len(m.channels)} 2x2 max-pools shrink the "
                              f"{data.image_shape[1]}x{data.image_shape[2]} image to nothing; use fewer")
    else:
        layers = LayerSpec((data.n_features, *m.hidden, data.n_classes))
    l2 = m.l2 / data.n_train if m.l2_per_sample else m.l2
    return ModelSpec(layers, m.activation, m.loss, l2)


def make_optimizer(config) -> SGD | Adam:
    """The update rule of a config's ``train`` settings."""
    t = config.train
    if t.optimizer in ("adam", "adamw"):
        return Adam(t.beta1, t.beta2, t.eps, t.weight_decay, decoupled=t.optimizer == "adamw")
    return SGD(t.momentum, nesterov=t.optimizer == "nesterov", weight_decay=t.weight_decay)


def first_payload(config, data: Dataset, schedule: Schedule | None = None) -> RoundPayload:
    """Round 0's payload: the seeded initial weights and a fresh optimizer state."""
    spec = model_spec(config, data)
    params = init_params(spec.layers, config.seed)
    optimizer = make_optimizer(config)
    if schedule is None:
        sizes = data.shard_sizes(config.mappers, config.data.partition, config.seed, config.data.skew_alpha)
        schedule = Schedule.from_config(config, min(sizes))
    subnets = SubnetPlan(config.mappers, config.split.scale == "groups") if config.combine == "ist" else None
    return RoundPayload(schedule.plan(0), config.seed, params, optimizer.init_state(params), spec,
                        config.model.backend, optimizer, subnets, proximal_mu=config.train.proximal_mu)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shard_rng(seed: int, round_index: int, shard_index: int) -> np.random.Generator:
    """The only source of randomness in a mapper's round."""
    return np.random.default_rng([seed, round_index, shard_index])


def train_shard(shard: Shard, payload: RoundPayload) -> MapperResult:
    """Train the payload's weights (or, with ``combine: ist``, the shard's sub-network) for one local round."""
    start = time.perf_counter()
    params, opt_state, model = payload.for_mapper(shard.index)
    backend = get_backend(payload.backend, model)
    plan = payload.plan
    lo, hi = (round(f * shard.n_samples) for f in payload.part)
    with one_blas_thread():
        update = local_sgd(backend, params, opt_state, payload.optimizer, shard.x[lo:hi], shard.y[lo:hi],
                           plan.local, plan.lr, shard_rng(payload.seed, plan.index, shard.index), payload.proximal_mu)
    sent = update.params.nbytes + (0 if update.opt_state is None else update.opt_state.nbytes)
    stats = MapperStats(shard.index, update.n_samples, update.steps, update.train_loss, socket.gethostname(),
                        os.getpid(), time.perf_counter() - start, 0.0, peak_rss_mb(), sent)
    return MapperResult(stats, update.params, update.opt_state)


EVAL_ROWS = 65536  # rows scored at a time: a forward pass's activations stay small however large the set


def score_sums(scorer, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, int, int]:
    """``(loss sum, correct count, rows)`` of ``params`` on ``(x, y)``, ``EVAL_ROWS`` rows at a time."""
    loss_sum, correct = 0.0, 0
    for lo in range(0, len(y), EVAL_ROWS):
        n = len(y[lo:lo + EVAL_ROWS])
        loss, accuracy = scorer.evaluate(params, x[lo:lo + EVAL_ROWS], y[lo:lo + EVAL_ROWS])
        loss_sum, correct = loss_sum + float(loss) * n, correct + int(round(accuracy * n))
    return loss_sum, correct, len(y)


def evaluate_rows(scorer, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of ``params`` on ``(x, y)``, scored in pieces when the set is large."""
    if len(y) <= EVAL_ROWS:
        return scorer.evaluate(params, x, y)
    loss_sum, correct, n = score_sums(scorer, params, x, y)
    return loss_sum / n, correct / n


def score_held_out(shard: Shard, backend: str, model, params: np.ndarray) -> dict[int, tuple[float, int, int]]:
    """``role -> (loss sum, correct count, rows)`` of ``params`` on each held-out part the shard keeps."""
    scorer = get_backend(backend, model)
    with one_blas_thread():
        return {role: score_sums(scorer, params, x, y) for role, (x, y) in shard.held_out.items()}


def total_scores(parts: list[dict[int, tuple[float, int, int]]]) -> dict[str, float]:
    """The mappers' held-out parts summed: mean loss and accuracy over every row of each set."""
    scores = {}
    for role, name in ((TEST, "test"), (VAL, "val")):
        sums = [part[role] for part in parts if role in part]
        if sums:
            n = sum(s[2] for s in sums)
            scores[f"{name}_loss"] = sum(s[0] for s in sums) / n
            scores[f"{name}_accuracy"] = sum(s[1] for s in sums) / n
    return scores


def diverged(round_index: int, mapper: int) -> DivergenceError:
    return DivergenceError(f"round {round_index}: mapper {mapper} returned weights containing NaN or inf "
                           "(training diverged; try a smaller train.lr, or train.skip_bad_mappers: true)")


def check_bad_mappers(bad: list[int], n_mappers: int, round_index: int, skip_bad: bool) -> None:
    """Refuse a round whose mappers ``bad`` returned NaN/inf, unless ``skip_bad`` and some mapper is left.

    The one NaN/inf judgement of local rounds: the driver-side reduce and the
    MPI engine (which flags its ranks with one Allreduce) both call it.
    """
    if bad and not skip_bad:
        raise diverged(round_index, bad[0])
    if bad and len(bad) == n_mappers:
        raise DivergenceError(f"round {round_index}: every mapper returned weights containing NaN or inf "
                              "(training diverged; try a smaller train.lr)")


@dataclass(frozen=True)
class RoundReducer:
    """The reduce step of a local round, plain data (a rule name) so any engine can ship it."""

    rule: str
    skip_bad: bool = False

    def __call__(self, results: list[MapperResult], payload: RoundPayload) -> Combined:
        """Combine the mappers' results into the next weights.

        Results are combined in mapper order whatever order they arrived in, so
        every engine adds the same numbers in the same order. Optimizer states
        are averaged. A result holding NaN or inf stops the run, or with
        ``skip_bad`` is left out of this round's combine.
        """
        results = sorted(results, key=lambda res: res.stats.mapper)
        bad = [res.stats.mapper for res in results if not np.isfinite(res.params).all()]
        check_bad_mappers(bad, len(results), payload.round_index, self.skip_bad)
        good = [res for res in results if res.stats.mapper not in bad]
        if payload.subnets is not None:
            return self._recombine(good, payload, bad)
        counts = [res.stats.n_samples for res in good]
        params = combine(whole_network_rule(self.rule), [res.params for res in good], counts, payload.params)
        opt_state = None
        if payload.opt_state is not None:
            opt_state = combine("average", [res.opt_state for res in good], counts)
        return Combined(params, opt_state, bad)

    @staticmethod
    def _recombine(good: list[MapperResult], payload: RoundPayload, bad: list[int]) -> Combined:
        """Sub-networks: each copied back, what several hold (the output bias) averaged, the rest kept."""
        layers, split = payload.model.layers, payload.split()
        choices = [payload.subnets.choice(r.stats.mapper, layers) for r in good]
        shared = "sum" if payload.subnets.sum_shared else "average"
        params = recombine(payload.params, [(c, r.params) for c, r in zip(choices, good)], layers, split, shared)
        opt_state = None
        if payload.opt_state is not None:  # each buffer (row) of the state, like the weights
            start = state_rows(payload.opt_state, payload.params.size)
            opt_state = recombine(start, [(c, r.opt_state.reshape(len(start), -1)) for c, r in zip(choices, good)],
                                  layers, split).ravel()
        return Combined(params, opt_state, bad)


def whole_network_rule(rule: str) -> str:
    """The combine rule of a round that trains the whole network: ``split``'s warm-up rounds average."""
    return "average" if rule in ("split", "ist") else rule


class Collective(Protocol):
    """How a synchronous round averages across mappers: in one process, or over MPI."""

    def mean(self, local: list[np.ndarray]) -> np.ndarray:
        """Mean over *all* mappers of the vectors; ``local`` holds this process's mappers' vectors."""

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        """The mappers, across all processes, whose flag is set."""


def sync_shards(shards: list[Shard], payload: RoundPayload,
                collective: Collective) -> tuple[Combined, list[MapperStats]]:
    """One synchronous round over ``shards`` (this process's mappers).

    Every step each mapper computes the gradient of its own mini-batch, the
    collective averages the gradients over all mappers, and the optimizer
    takes the same step everywhere, so all hold the same weights throughout.
    """
    backend = get_backend(payload.backend, payload.model)
    lrs = payload.plan.sync_lrs
    schedule = LocalSchedule(payload.plan.local.batch_size, local_steps=len(lrs))
    batches = [batch_indices(s.n_samples, schedule, shard_rng(payload.seed, payload.round_index, s.index))
               for s in shards]
    params = payload.params.copy()
    opt_state = None if payload.opt_state is None else payload.opt_state.copy()
    compute = [0.0] * len(shards)
    loss_sums = [0.0] * len(shards)
    comm = 0.0

    def mean_gradient(w, step):
        nonlocal comm
        grads = []
        for i, shard in enumerate(shards):
            start = time.perf_counter()
            idx = batches[i][step]
            loss, grad = backend.loss_and_grad(w, shard.x[idx], shard.y[idx])
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
        return mean

    loop_start = time.perf_counter()
    with np.errstate(all="ignore"), one_blas_thread():
        run_steps(params, opt_state, payload.optimizer, lrs, mean_gradient)
    # the updates' time, shared out: the loop's time less gradients and collectives
    update = (time.perf_counter() - loop_start - sum(compute) - comm) / len(shards)
    host, pid = socket.gethostname(), os.getpid()
    stats = [MapperStats(s.index, s.n_samples, len(lrs), loss_sums[i] / sum(len(b) for b in batches[i]), host,
                         pid, compute[i] + update, comm / len(shards), peak_rss_mb())
             for i, s in enumerate(shards)]
    return Combined(params, opt_state), stats
