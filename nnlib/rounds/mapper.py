"""What a mapper runs: :func:`train_shard` in a local round, :func:`sync_shards` in a synchronous one.

:func:`train_shard` is what every engine runs on every shard in a local
round: it takes the shard and the round's :class:`RoundPayload` (the weights
sent by the driver) and returns a :class:`MapperResult`. :func:`sync_shards`
runs a synchronous round over the shards one process holds, averaging
gradients through a :class:`Collective`. Randomness is seeded by
``(seed, round, shard)`` alone, so a task that is retried, on any host,
returns bit-identical weights. The held-out scoring a mapper may do
(:func:`score_held_out`) lives here too.
"""

from __future__ import annotations

import math
import os
import resource
import socket
import time
from typing import Protocol

import numpy as np

from nnlib.core.backends import get_backend
from nnlib.core.optim import leading_state
from nnlib.core.train import Blocks, batch_rows, epoch_batches, local_sgd, row_bytes, run_steps
from nnlib.data.dataset import Shard
from nnlib.data.rows import TEST, VAL
from nnlib.rounds.payload import Combined, MapperResult, MapperStats, RoundPayload
from nnlib.rounds.reduce import buffer_coefficients, check_mean_gradient, sync_coefficients
from nnlib.util.threads import one_blas_thread


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
    lo, hi = (round(f * shard.n_samples) for f in plan.part)
    with one_blas_thread():
        update = local_sgd(
            backend,
            params,
            opt_state,
            payload.optimizer,
            shard.x[lo:hi],
            shard.y[lo:hi],
            plan.local,
            plan.lr,
            shard_rng(payload.seed, plan.index, shard.index),
            payload.proximal_mu,
            sample_weight=None if shard.w is None else shard.w[lo:hi],
        )
    sent = update.params.nbytes + (0 if update.opt_state is None else update.opt_state.nbytes)
    stats = MapperStats(
        shard.index,
        update.n_samples,
        update.steps,
        update.train_loss,
        socket.gethostname(),
        os.getpid(),
        time.perf_counter() - start,
        0.0,
        peak_rss_mb(),
        sent,
        math.nan if shard.w is None else update.total_weight,
    )
    return MapperResult(stats, update.params, update.opt_state)


EVAL_ROWS = 65536  # rows scored at a time: a forward pass's activations stay small however large the set


def score_sums(scorer, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, int, int]:
    """``(loss sum, correct count, rows)`` of ``params`` on ``(x, y)``, ``EVAL_ROWS`` rows at a time."""
    loss_sum, correct = 0.0, 0
    for lo in range(0, len(y), EVAL_ROWS):
        n = len(y[lo : lo + EVAL_ROWS])
        loss, accuracy = scorer.evaluate(params, x[lo : lo + EVAL_ROWS], y[lo : lo + EVAL_ROWS])
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


class Collective(Protocol):
    """How a synchronous round averages across mappers: in one process, or over MPI."""

    def mean(self, local: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
        """Weighted mean over *all* mappers of the vectors, mapper ``m``'s weighted by ``coefficients[m]``
        (:func:`nnlib.rounds.reduce.sync_coefficients`); ``local`` holds this process's mappers' vectors."""

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        """The mappers, across all processes, whose flag is set."""


def sync_batch_sizes_of(n_samples: int, batch_size: int, steps: int, per_epoch: int) -> list[int]:
    """The sizes of :func:`sync_batches`' index arrays (0 where the mapper sits out), without drawing them."""
    epoch = [max(0, min(batch_size, n_samples - j * batch_size)) for j in range(per_epoch)]
    return (epoch * -(-steps // max(per_epoch, 1)))[:steps] if per_epoch else []


def sync_batch_iter(
    n_samples: int,
    batch_size: int,
    steps: int,
    per_epoch: int,
    rng: np.random.Generator,
    shuffle: str = "exact",
    blocks: Blocks | None = None,
):
    """:func:`sync_batches`' index arrays one at a time, each epoch drawn as the steps reach it
    (:func:`nnlib.core.train.epoch_batches`: ``exact`` or ``block``)."""
    empty = np.empty(0, np.int64)
    taken = 0
    while taken < steps and per_epoch > 0:
        epoch = epoch_batches(n_samples, batch_size, rng, shuffle, blocks)
        for _ in range(min(per_epoch, steps - taken)):
            yield next(epoch, empty)
            taken += 1


def sync_batches(
    n_samples: int, batch_size: int, steps: int, per_epoch: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """One mapper's index arrays for the ``steps`` steps of a synchronous round, empty where it sits out.

    Every ``per_epoch`` steps (the largest shard's batches) start an epoch: a
    fresh permutation of the shard cut into batches of ``batch_size``; a
    smaller shard's epoch ends early and its mapper takes empty batches
    (weight 0) until the next. With equal shards this is
    :func:`nnlib.core.train.batch_indices` with ``local_steps=steps``.
    """
    return list(sync_batch_iter(n_samples, batch_size, steps, per_epoch, rng))


def _sample_weights(shards: list[Shard]) -> list[np.ndarray] | None:
    """The shards' sample weights ``(n_samples,)`` each, in shard order; None for a run without them."""
    ws = [s.w for s in shards]
    if not ws or ws[0] is None:
        return None
    weights = [w for w in ws if w is not None]
    if len(weights) != len(ws):
        raise ValueError("either every shard of a run has sample weights or none has")
    return weights


def sync_shards(
    shards: list[Shard], payload: RoundPayload, collective: Collective
) -> tuple[Combined, list[MapperStats]]:
    """One synchronous round over ``shards`` (this process's mappers).

    Every step each mapper computes the gradient of its own mini-batch, the
    collective averages the gradients over all mappers (weighted by their
    batch sizes: a mapper whose shard is used up for the epoch sends zeros
    with weight 0), and the optimizer takes the same step everywhere, so all
    hold the same weights throughout.

    A module's floating buffers (BatchNorm's running statistics, after its
    parameters in the flat vector) are not stepped: each mapper's training
    forwards update its own copy, as in a local round, and at the round's
    end the collective averages the copies weighted by shard size, as the
    averaging combine does (``plan.shard_sizes``; one more mean call).

    With sample weights (``Shard.w``, data.weight_column) a mapper's batch loss
    is ``sum w_i l_i / (b * w_bar)`` with ``w_bar`` the mean weight of every
    mapper's training rows (``payload.mean_weight``, from the driver; else
    the mean over the shards given here), so the mean over
    the mappers weighted by batch sizes is the gradient of the union batch
    (:func:`nnlib.core.train.batch_weight_sums`); all weights 1 give the
    unweighted bits.
    """
    backend = get_backend(payload.backend, payload.model)
    plan = payload.plan
    lrs = plan.sync_lrs
    assert lrs is not None  # a synchronous round's plan has its step sizes
    sizes = [sync_batch_sizes_of(s.n_samples, plan.local.batch_size, len(lrs), plan.steps_per_epoch) for s in shards]
    ws = _sample_weights(shards)
    rows = [
        batch_rows(
            s.x,
            s.y,
            None if ws is None else ws[i],
            sync_batch_iter(
                s.n_samples,
                plan.local.batch_size,
                len(lrs),
                plan.steps_per_epoch,
                shard_rng(payload.seed, payload.round_index, s.index),
                plan.local.shuffle,
                Blocks.of(row_bytes(s.x, s.y, None if ws is None else ws[i])),
            ),
        )
        for i, s in enumerate(shards)
    ]
    params = payload.params.copy()
    opt_state = None if payload.opt_state is None else payload.opt_state.copy()
    n = payload.model.layers.n_weights  # the gradient's entries; a module's buffers follow
    own = [params.copy() for _ in shards] if n < params.size else None  # each mapper's running statistics
    compute = [0.0] * len(shards)
    loss_sums = [0.0] * len(shards)
    comm = 0.0
    weighted = ws is not None
    weights_seen = [0.0] * len(shards)  # each mapper's weights seen, summed batch by batch in step order
    if ws is not None:
        mean_weight = payload.mean_weight  # every mapper's rows, also where this process holds one shard
        if mean_weight is None:
            mean_weight = sum(float(np.sum(w, dtype=np.float64)) for w in ws) / max(sum(s.n_samples for s in shards), 1)
        weight_sums = [[size * mean_weight for size in sizes[i]] for i in range(len(shards))]

    def mean_gradient(_trained, step):
        nonlocal comm
        grads = []
        for i in range(len(shards)):
            start = time.perf_counter()
            xb, yb, wb = next(rows[i])
            weights = {} if wb is None else {"sample_weight": wb, "weight_sum": weight_sums[i][step]}
            if wb is not None:
                weights_seen[i] += float(np.sum(wb, dtype=np.float64))
            if len(yb) and own is None:
                loss, grad = backend.loss_and_grad(params, xb, yb, **weights)
            elif len(yb) and own is not None:
                own[i][:n] = params[:n]  # the shared weights, with this mapper's own statistics
                loss, grad = backend.loss_and_grad(own[i], xb, yb, update_buffers=True, **weights)
            else:  # its shard is used up for this epoch: it takes part with weight 0
                loss, grad = 0.0, np.zeros_like(params)
            loss_sums[i] += loss * (weight_sums[i][step] if weighted else len(yb))
            grads.append(grad[:n])
            compute[i] += time.perf_counter() - start
        start = time.perf_counter()
        mean = collective.mean(grads, sync_coefficients(plan.sync_batch_sizes(step)))
        check_mean_gradient(
            mean,
            payload.round_index,
            step,
            lambda: collective.mappers_flagged(
                {s.index: not np.isfinite(g).all() for s, g in zip(shards, grads, strict=True)}
            ),
        )
        comm += time.perf_counter() - start
        return mean

    loop_start = time.perf_counter()
    with np.errstate(all="ignore"), one_blas_thread():
        run_steps(params[:n], leading_state(opt_state, params.size, n), payload.optimizer, lrs, mean_gradient)
    if own is not None:
        start = time.perf_counter()
        params[n:] = collective.mean([o[n:] for o in own], buffer_coefficients(plan))
        comm += time.perf_counter() - start
    # the updates' time, shared out: the loop's time less gradients and collectives
    update = (time.perf_counter() - loop_start - sum(compute) - comm) / len(shards)
    host, pid = socket.gethostname(), os.getpid()
    stats = [
        MapperStats(
            s.index,
            s.n_samples,
            sum(size > 0 for size in sizes[i]),
            (loss_sums[i] / weights_seen[i] if weighted and weights_seen[i] > 0 else 0.0)
            if weighted
            else loss_sums[i] / max(sum(sizes[i]), 1),
            host,
            pid,
            compute[i] + update,
            comm / len(shards),
            peak_rss_mb(),
        )
        for i, s in enumerate(shards)
    ]
    return Combined(params, opt_state), stats
