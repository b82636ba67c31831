"""Combine rules: pure functions over the mappers' ``(flat_params, n_samples)`` pairs.

Every rule has the signature ``rule(results, start) -> flat`` where
``results`` is a list of ``(flat (n_params,) float32, n_samples)`` in mapper
order and ``start`` is the round's starting vector (used by ``sum_updates``).
Validation (finite values, matching shapes) is done by the caller, so the
maths here can assume good input.
"""

from __future__ import annotations

import numpy as np

from nnlib.core.params import DTYPE

Results = list[tuple[np.ndarray, int]]


def combine_average(results: Results, start: np.ndarray | None = None) -> np.ndarray:
    """Plain mean of the mappers' vectors."""
    return np.mean([w for w, _ in results], axis=0, dtype=np.float64).astype(DTYPE)


def combine_weighted(results: Results, start: np.ndarray | None = None) -> np.ndarray:
    """Mean weighted by each mapper's sample count."""
    total = sum(n for _, n in results)
    acc = np.zeros_like(results[0][0], dtype=np.float64)
    for w, n in results:
        acc += (n / total) * w.astype(np.float64)
    return acc.astype(DTYPE)


def combine_sum(results: Results, start: np.ndarray | None = None) -> np.ndarray:
    """Plain sum of the mappers' weights (the threads study's eq. 2)."""
    return np.sum([w for w, _ in results], axis=0, dtype=np.float64).astype(DTYPE)


def combine_sum_updates(results: Results, start: np.ndarray) -> np.ndarray:
    """``start + sum_i (w_i - start)``: summing the changes, meaningful over many rounds."""
    acc = start.astype(np.float64).copy()
    for w, _ in results:
        acc += w.astype(np.float64) - start
    return acc.astype(DTYPE)


COMBINE_RULES = {
    "average": combine_average,
    "weighted": combine_weighted,
    "sum": combine_sum,
    "sum_updates": combine_sum_updates,
}


def linear_coefficients(rule: str, n_samples: list[int]) -> tuple[np.ndarray, float]:
    """Every rule above is linear: ``combined = sum_i c_i * w_i + c_start * start``.

    Returns ``(c, c_start)`` with ``c`` of shape ``(k,)`` float64. This is what
    lets one Allreduce (a sum) carry any rule: rank ``i`` contributes
    ``c_i * w_i``.
    """
    k = len(n_samples)
    if rule == "average":
        return np.full(k, 1.0 / k), 0.0
    if rule == "weighted":
        n = np.asarray(n_samples, np.float64)
        return n / n.sum(), 0.0
    if rule == "sum":
        return np.ones(k), 0.0
    if rule == "sum_updates":
        return np.ones(k), 1.0 - k
    raise ValueError(f"combine must be one of {sorted(COMBINE_RULES)}, got {rule!r}")
