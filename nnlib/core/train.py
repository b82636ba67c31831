"""Local training: the mini-batch order and the one training loop.

Pure functions of arrays: no engine, no I/O. Randomness comes only from the
``rng`` passed in, so a caller that seeds it from ``(seed, round, shard)``
gets the same result every time the same shard is trained in the same round,
which is what makes a retried task reproduce its result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
            batches.append(order[start : start + bs])
        if epochs is not None:
            epochs -= 1
            if epochs == 0:
                return batches


def run_steps(
    params: np.ndarray,
    state: np.ndarray | None,
    optimizer,
    lrs: Iterable[float],
    gradient: Callable[[np.ndarray, int], np.ndarray],
) -> None:
    """The training loop: for each step, ``optimizer.step(params, gradient(params, step), state, lr)``.

    ``params`` (n_params,) and ``state`` are updated in place. ``gradient``
    says where the step's gradient comes from: one mapper's mini-batch (a
    local round) or the mean over every mapper's mini-batch (a synchronous
    round).
    """
    for step, lr in enumerate(lrs):
        optimizer.step(params, gradient(params, step), state, lr)


@dataclass
class LocalUpdate:
    """What local training returns: new weights, optimizer state, how much was seen."""

    params: np.ndarray  # (n_params,) float32
    opt_state: np.ndarray | None  # the optimizer's state, e.g. the momentum buffer
    n_samples: int  # size of the shard
    train_loss: float  # mean data loss over the round's batches, weighted by the sample weights
    steps: int  # mini-batch steps taken
    total_weight: float = 0.0  # the shard's sum of sample weights (n_samples without weights): combine: weighted


def batch_weight_sums(
    sample_weight: np.ndarray, batches: list[np.ndarray], mean_weight: float | None = None
) -> list[float]:
    """The loss denominator of each mini-batch: its size times the mean weight (float64).

    So a step's loss is the batch mean of ``w_i * l_i`` with the weights
    rescaled to mean 1; :mod:`nnlib.core.losses` says why a batch is not
    normalised by its own weight sum. ``mean_weight`` defaults to the shard's
    (``sample_weight`` ``(n,)``); a synchronous round passes the mean over
    every mapper's rows, so that its mean gradient, weighted by batch sizes as
    today, is the gradient of the union batch. All weights 1 give the batch
    sizes exactly; a mean weight of 0 gives 0 (zero losses and gradients).
    """
    if mean_weight is None:
        mean_weight = float(np.sum(sample_weight, dtype=np.float64)) / max(len(sample_weight), 1)
    return [len(idx) * mean_weight for idx in batches]


def local_sgd(
    backend,
    params,
    opt_state,
    optimizer,
    x,
    y,
    schedule: LocalSchedule,
    lr: float,
    rng: np.random.Generator,
    proximal_mu: float = 0.0,
    sample_weight: np.ndarray | None = None,
) -> LocalUpdate:
    """Train a copy of ``params`` on the shard ``(x, y)`` for one round of ``schedule``.

    ``x`` ``(n, n_features)``; ``y`` ``(n,)`` int64 classes, or float targets
    ``(n,)`` / ``(n, n_targets)`` under regression; ``sample_weight``
    ``(n,)`` float ``>= 0`` or ``None``. With weights, step ``s`` minimises
    ``sum_{i in batch} w_i l_i / (len(batch) * mean(w))``
    (:func:`batch_weight_sums`), and ``train_loss`` is the weighted mean of
    the losses seen, ``sum_s loss_s * S_s / sum_s sum_{i in batch s} w_i``
    (0 when every weight seen is 0). ``None`` runs the unweighted code; all
    weights 1 give the same bits.

    ``proximal_mu > 0`` is FedProx: the objective gains ``(mu/2) * ||w - w0||^2``
    around the round's starting weights ``w0``, so the gradient gains
    ``mu * (w - w0)`` and the local weights stay near the shared ones.

    A backend with a ``train_steps`` method (the torch backend,
    :meth:`nnlib.core.torch_mlp.TorchModel.train_steps`) runs the round's
    steps itself, on the same batches and update rule; otherwise each step is
    ``backend.loss_and_grad`` then ``optimizer.step`` (:func:`run_steps`).
    """
    batches = batch_indices(len(y), schedule, rng)
    start = params
    mu = params.dtype.type(proximal_mu)
    params = params.copy()
    opt_state = None if opt_state is None else opt_state.copy()
    seen: float  # rows, or their total sample weight
    if sample_weight is None:
        seen, sums, total_weight = sum(len(b) for b in batches), None, float(len(y))
    else:
        sums = batch_weight_sums(sample_weight, batches)
        seen = sum(float(np.sum(sample_weight[b], dtype=np.float64)) for b in batches)
        total_weight = float(np.sum(sample_weight, dtype=np.float64))

    def mean_loss(loss_sum: float) -> float:
        if sample_weight is None:
            return loss_sum / max(seen, 1)
        return loss_sum / seen if seen > 0 else 0.0

    fast = getattr(backend, "train_steps", None)
    if fast is not None:  # the backend's own loop (torch: one flat tensor for the whole round)
        if sample_weight is None:
            loss_sum = fast(params, opt_state, optimizer, x, y, batches, lr, start=start, proximal_mu=proximal_mu)
        else:
            loss_sum = fast(
                params,
                opt_state,
                optimizer,
                x,
                y,
                batches,
                lr,
                start=start,
                proximal_mu=proximal_mu,
                sample_weight=sample_weight,
                weight_sums=sums,
            )
        return LocalUpdate(params, opt_state, len(y), mean_loss(loss_sum), len(batches), total_weight)
    loss_sum = 0.0

    def gradient(w, step):
        nonlocal loss_sum
        idx = batches[step]
        if sums is None:
            loss, grad = backend.loss_and_grad(w, x[idx], y[idx])
            loss_sum += loss * len(idx)
        else:
            assert sample_weight is not None  # sums are the batches' weight sums
            loss, grad = backend.loss_and_grad(
                w, x[idx], y[idx], sample_weight=sample_weight[idx], weight_sum=sums[step]
            )
            loss_sum += loss * sums[step]
        if proximal_mu:
            grad += mu * (w - start)
        return grad

    with np.errstate(all="ignore"):  # divergence is reported by the caller, by round and mapper
        run_steps(params, opt_state, optimizer, [lr] * len(batches), gradient)
    return LocalUpdate(params, opt_state, len(y), mean_loss(loss_sum), len(batches), total_weight)
