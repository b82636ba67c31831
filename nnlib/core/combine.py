"""Combine rules: one table of coefficients, one :func:`combine`.

Every rule is linear in the mappers' vectors::

    combined = sum_i c_i * w_i + c_start * start

where ``w_i`` is mapper ``i``'s flat float32 vector (in mapper order),
``start`` the round's starting vector, and the coefficients depend only on
the mappers' sample counts (with sample weights, the caller passes each
mapper's total weight, :attr:`nnlib.core.train.LocalUpdate.total_weight`, so
``weighted`` weighs mappers by weight). :data:`COEFFICIENTS` holds each rule as the
function ``n_samples -> (c, c_start)``; :func:`combine` applies it, summing
in float64 in mapper order. An engine whose reduce is a sum over processes
(one MPI Allreduce) uses the same table: mapper ``i`` contributes
``c_i * w_i``.

Validation (finite values, matching shapes) is done by the caller, so the
maths here can assume good input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _average(n_samples: list[float]) -> tuple[np.ndarray, float]:
    """The plain mean: ``c_i = 1/k``."""
    k = len(n_samples)
    return np.full(k, 1.0 / k), 0.0


def _weighted(n_samples: list[float]) -> tuple[np.ndarray, float]:
    """The mean weighted by sample count: ``c_i = n_i / sum n``."""
    n = np.asarray(n_samples, np.float64)
    return n / n.sum(), 0.0


def _sum(n_samples: list[float]) -> tuple[np.ndarray, float]:
    """The plain sum of the weights (the threads study's eq. 2): ``c_i = 1``."""
    return np.ones(len(n_samples)), 0.0


def _sum_updates(n_samples: list[float]) -> tuple[np.ndarray, float]:
    """``start + sum_i (w_i - start)``: summing the changes, meaningful over many rounds."""
    k = len(n_samples)
    return np.ones(k), 1.0 - k


COEFFICIENTS: dict[str, Callable[[list[float]], tuple[np.ndarray, float]]] = {
    "average": _average,
    "weighted": _weighted,
    "sum": _sum,
    "sum_updates": _sum_updates,
}


def combine(
    rule: str, vectors: list[np.ndarray], n_samples: list[float], start: np.ndarray | None = None
) -> np.ndarray:
    """Combine the mappers' ``vectors`` (each ``(n_params,)``, in mapper order) with ``rule``.

    ``start`` is the round's starting vector; only rules with ``c_start != 0``
    (``sum_updates``) read it. Returns ``(n_params,)`` in the vectors' dtype
    (float32 for weights; float64 vectors stay float64, which the tests use).
    """
    coefs, start_coef = COEFFICIENTS[rule](n_samples)
    acc = np.zeros(vectors[0].shape, np.float64)
    for c, w in zip(coefs, vectors, strict=True):
        acc += c * w.astype(np.float64)
    if start_coef:
        if start is None:
            raise ValueError(f"combine rule {rule!r} reads the round's starting vector: pass start")
        acc += start_coef * start.astype(np.float64)
    return acc.astype(vectors[0].dtype)
