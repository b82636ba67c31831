"""Local training: the mini-batch order and the one training loop.

Pure functions of arrays: no engine, no I/O. Randomness comes only from the
``rng`` passed in, so a caller that seeds it from ``(seed, round, shard)``
gets the same result every time the same shard is trained in the same round,
which is what makes a retried task reproduce its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

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


def run_steps(params: np.ndarray, state: np.ndarray | None, optimizer, lrs: Iterable[float],
              gradient: Callable[[np.ndarray, int], np.ndarray]) -> None:
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

    params: np.ndarray           # (n_params,) float32
    opt_state: np.ndarray | None  # the optimizer's state, e.g. the momentum buffer
    n_samples: int               # size of the shard
    train_loss: float            # mean data loss over the round's batches
    steps: int                   # mini-batch steps taken


def local_sgd(backend, params, opt_state, optimizer, x, y, schedule: LocalSchedule, lr: float,
              rng: np.random.Generator, proximal_mu: float = 0.0) -> LocalUpdate:
    """Train a copy of ``params`` on the shard ``(x, y)`` for one round of ``schedule``.

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
    seen = sum(len(b) for b in batches)
    fast = getattr(backend, "train_steps", None)
    if fast is not None:  # the backend's own loop (torch: one flat tensor for the whole round)
        loss_sum = fast(params, opt_state, optimizer, x, y, batches, lr, start=start, proximal_mu=proximal_mu)
        return LocalUpdate(params, opt_state, len(y), loss_sum / max(seen, 1), len(batches))
    loss_sum = 0.0

    def gradient(w, step):
        nonlocal loss_sum
        idx = batches[step]
        loss, grad = backend.loss_and_grad(w, x[idx], y[idx])
        loss_sum += loss * len(idx)
        if proximal_mu:
            grad += mu * (w - start)
        return grad

    with np.errstate(all="ignore"):  # divergence is reported by the caller, by round and mapper
        run_steps(params, opt_state, optimizer, [lr] * len(batches), gradient)
    return LocalUpdate(params, opt_state, len(y), loss_sum / max(seen, 1), len(batches))
