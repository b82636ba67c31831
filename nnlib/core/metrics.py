"""Weighted metrics as sums that add across blocks and shards, and the functions that finish them.

Scoring a large set happens in blocks (a mapper's rows, ``EVAL_ROWS`` at a
time, then every mapper's part); the metrics are not means of the blocks'
metrics but functions of sums over all rows. So each block yields its
sufficient statistics in float64 (:func:`regression_sums`,
:func:`classification_sums`), an engine adds them in mapper order (``+``, or
one ``Allreduce`` of :meth:`RegressionSums.to_vector`), and
:func:`finish_regression` / :func:`finish_classification` turn the total into
metrics. Adding the blocks' sums gives the one-shot sums up to float64
rounding.

With ``n`` rows, weights ``w_i >= 0`` (all 1 when none are given),
``W = sum_i w_i``, prediction ``p_ij`` and target ``y_ij`` of target ``j``,
``e_ij = p_ij - y_ij``, and ``ybar_j = sum_i w_i y_ij / W``:

- ``MSE_j = sum_i w_i e_ij^2 / W``, ``RMSE_j = sqrt(MSE_j)``, ``MAE_j = sum_i w_i |e_ij| / W``
- ``R2_j = 1 - SS_res_j / SS_tot_j`` with ``SS_res_j = sum_i w_i e_ij^2`` and
  ``SS_tot_j = sum_i w_i (y_ij - ybar_j)^2 = sum_i w_i y_ij^2 - W ybar_j^2``;
  a constant target (``SS_tot = 0``) scores 1 when predicted exactly, else 0.
  This is scikit-learn's ``r2_score(y, p, sample_weight=w)`` (its
  ``force_finite=True``).
- Several targets: each metric is the plain mean over the targets of the
  per-target values (scikit-learn's ``multioutput='uniform_average'``; so the
  RMSE is the mean of the targets' RMSEs, as ``root_mean_squared_error``).
- ``accuracy = sum_i w_i [pred_i == y_i] / W``; the loss is ``sum_i w_i l_i / W``.

Spark ML's ``RegressionEvaluator`` with ``weightCol``
(``mllib/evaluation/RegressionMetrics.scala``) gives the same RMSE, MSE and
MAE (``normL2(err)^2 / weightSum``, ``normL1(err) / weightSum``) and, with
every weight 1, the same R². With other weights its R² takes
``SS_tot = variance * (weightSum - 1)``, where ``variance`` is the
reliability-weighted sample variance ``M2 / (W - sum_i w_i^2 / W)`` of its
summarizer; that is not ``SS_tot`` above, and it changes when every weight is
multiplied by a constant. :attr:`RegressionMetrics.r2_spark` is that value
(hence the sums keep ``sum_i w_i^2``); :attr:`RegressionMetrics.r2` is
scikit-learn's, the one nnlib reports.

``SS_tot`` from plain sums of ``y`` and ``y^2`` cancels badly when a
target's mean is large against its spread, so the sums are of ``y - shift``
(the shifted-data algorithm; any fixed ``shift`` per target, ideally near the
mean: the training targets' mean). Blocks added together must share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np


def _columns(a, n: int) -> np.ndarray:
    """``(n,)`` or ``(n, t)`` values as ``(n, t)`` float64."""
    return np.asarray(a, np.float64).reshape(n, -1)


def _column_sums(a: np.ndarray) -> np.ndarray:
    """Sum ``(n, t)`` over rows, each target's column pairwise (a contiguous row of the transpose)."""
    return np.ascontiguousarray(a.T).sum(axis=1)


def destandardize(z: np.ndarray, mean, std) -> np.ndarray:
    """Outputs in standardised units ``(n, t)`` (or ``(n,)``) to the targets' own: ``z * std + mean`` in float64.

    ``mean`` and ``std`` are ``(t,)`` (or scalars). The one formula every
    prediction and metric path uses, so they agree bit for bit.
    """
    return np.asarray(z, np.float64) * np.asarray(std, np.float64) + np.asarray(mean, np.float64)


@dataclass(frozen=True)
class ClassificationSums:
    """The sufficient statistics of the loss and accuracy over a set of rows."""

    rows: int
    weight: float  # sum w
    loss: float  # sum w * l
    correct: float  # sum w * [pred == y]

    def __add__(self, other: ClassificationSums) -> ClassificationSums:
        return ClassificationSums(
            self.rows + other.rows, self.weight + other.weight, self.loss + other.loss, self.correct + other.correct
        )

    def to_vector(self) -> np.ndarray:
        """``[rows, weight, loss, correct]`` float64: what an Allreduce sums."""
        return np.array([self.rows, self.weight, self.loss, self.correct], np.float64)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> ClassificationSums:
        return cls(int(v[0]), float(v[1]), float(v[2]), float(v[3]))


@dataclass(frozen=True)
class RegressionSums:
    """The sufficient statistics of the loss, RMSE, MAE and R² over a set of rows, per target ``(t,)``."""

    rows: int
    weight: float  # sum w
    weight2: float  # sum w^2 (Spark's R² only)
    loss: float  # sum w * l (training units)
    target: np.ndarray  # sum w * (y - shift)
    target2: np.ndarray  # sum w * (y - shift)^2
    error2: np.ndarray  # sum w * (p - y)^2
    abs_error: np.ndarray  # sum w * |p - y|
    shift: np.ndarray  # not a sum: the per-target shift every block used

    def __add__(self, other: RegressionSums) -> RegressionSums:
        if self.shift.shape != other.shift.shape or not np.array_equal(self.shift, other.shift):
            raise ValueError(f"regression sums with different shifts cannot be added: {self.shift} and {other.shift}")
        return RegressionSums(
            self.rows + other.rows,
            self.weight + other.weight,
            self.weight2 + other.weight2,
            self.loss + other.loss,
            self.target + other.target,
            self.target2 + other.target2,
            self.error2 + other.error2,
            self.abs_error + other.abs_error,
            self.shift,
        )

    def to_vector(self) -> np.ndarray:
        """``[rows, weight, weight2, loss, target, target2, error2, abs_error]`` float64, ``(4 + 4t,)``:
        what an Allreduce sums (the shift travels apart)."""
        return np.concatenate(
            [[self.rows, self.weight, self.weight2, self.loss], self.target, self.target2, self.error2, self.abs_error]
        ).astype(np.float64)

    @classmethod
    def from_vector(cls, v: np.ndarray, shift: np.ndarray) -> RegressionSums:
        t = (len(v) - 4) // 4
        target, target2, error2, abs_error = (np.array(v[4 + k * t : 4 + (k + 1) * t], np.float64) for k in range(4))
        return cls(
            int(v[0]),
            float(v[1]),
            float(v[2]),
            float(v[3]),
            target,
            target2,
            error2,
            abs_error,
            np.asarray(shift, np.float64),
        )


def classification_sums(
    predicted: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, loss_sum: float = 0.0
) -> ClassificationSums:
    """Sums of a block: ``predicted`` and ``y`` ``(n,)`` class ids, ``sample_weight`` ``(n,)`` or None (all 1),
    ``loss_sum`` the block's ``sum w * l``."""
    hit = np.asarray(predicted) == np.asarray(y)
    if sample_weight is None:
        return ClassificationSums(len(hit), float(len(hit)), float(loss_sum), float(hit.sum()))
    w = np.asarray(sample_weight, np.float64)
    return ClassificationSums(len(hit), float(w.sum()), float(loss_sum), float(w[hit].sum()))


def regression_sums(
    prediction: np.ndarray,
    target: np.ndarray,
    sample_weight: np.ndarray | None = None,
    loss_sum: float = 0.0,
    shift=None,
) -> RegressionSums:
    """Sums of a block: ``prediction`` and ``target`` ``(n,)`` or ``(n, t)`` in the same units,
    ``sample_weight`` ``(n,)`` or None (all 1), ``loss_sum`` the block's ``sum w * l``, ``shift`` ``(t,)``
    (default 0) subtracted from the targets before their sums (see the module docstring)."""
    n = len(target)
    y, p = _columns(target, n), _columns(prediction, len(prediction))
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and targets {y.shape} differ in shape")
    e = p - y
    t = y.shape[1]
    shift = np.zeros(t) if shift is None else np.broadcast_to(np.asarray(shift, np.float64), (t,)).copy()
    ys = y - shift
    if sample_weight is None:
        w, weight, weight2 = np.ones((n, 1)), float(n), float(n)
    else:
        flat = np.asarray(sample_weight, np.float64)
        w, weight, weight2 = flat[:, None], float(flat.sum()), float((flat * flat).sum())
    return RegressionSums(
        n,
        weight,
        weight2,
        float(loss_sum),
        _column_sums(w * ys),
        _column_sums(w * ys * ys),
        _column_sums(w * e * e),
        _column_sums(w * np.abs(e)),
        shift,
    )


Sums = TypeVar("Sums", ClassificationSums, RegressionSums)


def total(parts: list[Sums]) -> Sums:
    """The sums of several blocks added in the given (mapper) order."""
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


@dataclass(frozen=True)
class ClassificationMetrics:
    loss: float  # weighted mean data loss
    accuracy: float  # weighted, in [0, 1]


@dataclass(frozen=True)
class RegressionMetrics:
    """Averaged metrics (floats) and the per-target values (tuples), as the module docstring defines them."""

    loss: float
    rmse: float
    mae: float
    r2: float
    r2_spark: float
    rmse_per_target: tuple[float, ...]
    mae_per_target: tuple[float, ...]
    r2_per_target: tuple[float, ...]
    r2_spark_per_target: tuple[float, ...]


def finish_classification(sums: ClassificationSums) -> ClassificationMetrics:
    """Loss and accuracy of the summed rows (NaN for a total weight of 0)."""
    if sums.weight == 0:
        return ClassificationMetrics(float("nan"), float("nan"))
    return ClassificationMetrics(sums.loss / sums.weight, sums.correct / sums.weight)


def finish_regression(sums: RegressionSums) -> RegressionMetrics:
    """Loss, RMSE, MAE and R² (scikit-learn's and Spark's) of the summed rows (NaN for a total weight of 0)."""
    weight = sums.weight
    if weight == 0:
        nan, none = float("nan"), tuple(float("nan") for _ in sums.target)
        return RegressionMetrics(nan, nan, nan, nan, nan, none, none, none, none)
    mse = sums.error2 / weight
    rmse, mae = np.sqrt(mse), sums.abs_error / weight
    ss_res = sums.error2
    m2 = np.maximum(sums.target2 - sums.target * sums.target / weight, 0.0)  # sum w (y - ybar)^2
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(m2 > 0, 1 - ss_res / np.where(m2 > 0, m2, 1.0), np.where(ss_res == 0, 1.0, 0.0))
        denominator = weight - sums.weight2 / weight  # Spark's summarizer: variance = M2 / denominator
        variance = m2 / denominator if denominator > 0 else np.zeros_like(m2)
        r2_spark = 1 - ss_res / (variance * (weight - 1))
    return RegressionMetrics(
        sums.loss / weight,
        float(rmse.mean()),
        float(mae.mean()),
        float(r2.mean()),
        float(r2_spark.mean()),
        tuple(map(float, rmse)),
        tuple(map(float, mae)),
        tuple(map(float, r2)),
        tuple(map(float, r2_spark)),
    )


def regression_metrics(
    prediction: np.ndarray, target: np.ndarray, sample_weight: np.ndarray | None = None
) -> RegressionMetrics:
    """One-shot :func:`finish_regression` of :func:`regression_sums` (the loss field is then 0)."""
    return finish_regression(regression_sums(prediction, target, sample_weight))


def block_sums(
    regression: bool,
    z: np.ndarray,
    y: np.ndarray,
    loss: float,
    sample_weight: np.ndarray | None = None,
    target_mean=None,
    target_std=None,
    raw_target: np.ndarray | None = None,
) -> ClassificationSums | RegressionSums:
    """The sums of one scored block from a backend's outputs ``z`` ``(n, k)`` and its weighted mean ``loss``.

    Classification: the predicted class is ``z``'s argmax. Regression: ``z``
    and ``y`` are in training (standardised) units; with ``target_mean`` and
    ``target_std`` ``(t,)`` the predictions are :func:`destandardize`\\ d and so
    are the targets, unless ``raw_target`` (the targets in their own units)
    is given; ``target_mean`` is then also the sums' shift.
    """
    weight = float(len(y)) if sample_weight is None else float(np.sum(sample_weight, dtype=np.float64))
    loss_sum = float(loss) * weight
    if not regression:
        return classification_sums(np.asarray(z).argmax(axis=1), y, sample_weight, loss_sum)
    if target_mean is None:
        return regression_sums(z, y if raw_target is None else raw_target, sample_weight, loss_sum)
    n = len(y)
    target = raw_target if raw_target is not None else destandardize(_columns(y, n), target_mean, target_std)
    return regression_sums(
        destandardize(z, target_mean, target_std), target, sample_weight, loss_sum, shift=target_mean
    )
