"""Data losses of the numpy backend, for classification and regression, each with sample weights.

A batch has ``m`` rows; ``z`` ``(m, k)`` is the output of the last layer (an
affine layer with no activation: the identity output layer, logits under
classification, predictions under regression); ``l_i`` is row ``i``'s loss;
``w_i >= 0`` its sample weight (``None``: every weight 1). Every loss here
returns ``(L, dL/dz)`` with

    L = sum_i w_i * l_i / S,        S = sum_i w_i  unless the caller gives S

so with the default ``S`` it is the weighted mean of Spark MLlib's
objectives with ``weightCol`` (e.g. ``LinearRegression``: ``1/(2 sum w)
sum_i w_i (y_i - f(x_i))^2``) and of scikit-learn's ``sample_weight``. With
``sample_weight=None`` the unweighted code runs, ``L = mean_i l_i``, bit for
bit what nnlib computed before weights existed; weights all 1 give the same
bits (the products by 1 are exact and the sums are taken in the same order).
A batch whose ``S`` is 0 has ``L = 0`` and a zero gradient.

Classification (``y`` ``(m,)`` int64 class ids in ``[0, k)``, ``t_i`` the
one-hot row of ``y_i``):

- ``cross_entropy``: ``l_i = -log softmax(z_i)[y_i]`` (``torch.nn.functional.cross_entropy``)
- ``squared``: ``l_i = 1/2 ||z_i - t_i||^2``

Regression (``y`` float ``(m,)`` for one target or ``(m, t)``, ``k = t``;
``r_ij = z_ij - y_ij``; targets are in standardised units when the data layer
standardises them, and so is ``delta``):

- ``squared``: ``l_i = 1/2 sum_j r_ij^2``: the classification ``squared``
  convention, i.e. half the mean squared error of each target, summed over the
  targets. (scikit-learn's ``MLPRegressor`` divides once more by ``t``;
  torch's ``MSELoss`` is ``2/t`` times this.)
- ``absolute``: ``l_i = sum_j |r_ij|``; the gradient at ``r = 0`` is 0, as torch's ``abs``.
- ``huber``: ``l_i = sum_j h(r_ij)`` with ``h(r) = r^2 / 2`` for ``|r| <= delta`` and
  ``delta * (|r| - delta / 2)`` beyond: torch's ``HuberLoss(delta=delta)``
  (Huber 1964). It equals ``squared`` inside the band and ``delta`` times
  ``absolute`` less ``delta^2 / 2`` outside; its gradient is ``clip(r, -delta, delta)``.

Mini-batches (:func:`nnlib.core.train.local_sgd`): a mini-batch does **not**
normalise by its own weight sum. A step's loss is ``sum_{i in batch} w_i l_i
/ (m * w_bar)``, ``w_bar`` the shard's mean weight: the batch mean of
``w_i l_i`` (what Horovod's Spark estimators do with ``sample_weight_col``,
``horovod/spark/torch/remote.py``, ``calculate_loss``: "the impact of two
samples with identical weights but in different batches will not be equal"
otherwise; Keras's ``sample_weight`` under its default
``sum_over_batch_size`` reduction divides by the batch size too), with the weights rescaled to mean 1 over the shard.
So the step's gradient is an unbiased estimate of the gradient of the
shard's weighted mean loss (a row's weight acts the same in every batch), a
full batch is exactly the weighted mean (so there a row of weight 2 trains
as the row taken twice), weights all 1 are the unweighted loss bit for bit,
and multiplying every weight by a constant changes nothing. Normalising each batch by its
own ``sum w`` (a ratio estimator) has none of the first two properties and
gives a batch of light rows a full-sized step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

TASKS = ("classification", "regression")

# (z (m, k), y, sample_weight (m,) or None, weight_sum S or None) -> (L, dL/dz (m, k))
Loss = Callable[..., tuple[float, np.ndarray]]


def _one_hot(y: np.ndarray, n_classes: int, dtype) -> np.ndarray:
    t = np.zeros((y.shape[0], n_classes), dtype)
    t[np.arange(y.shape[0]), y] = 1
    return t


def as_targets(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Regression targets ``y`` ``(m,)`` or ``(m, t)`` as ``(m, t)`` in ``z``'s dtype (a view when they already are).

    Raises ``ValueError`` when ``t`` is not the outputs' width (a silent broadcast otherwise).
    """
    target = np.asarray(y).reshape(z.shape[0], -1)
    if target.shape[1] != z.shape[1]:
        raise ValueError(f"the targets have {target.shape[1]} column(s), the network {z.shape[1]} output(s)")
    return target.astype(z.dtype, copy=False)


def _weights(z: np.ndarray, sample_weight: np.ndarray, weight_sum: float | None):
    """``(w (m, 1), S)`` in ``z``'s dtype: the weights as a column and the loss's denominator."""
    w = np.asarray(sample_weight).astype(z.dtype, copy=False)
    s = w.sum() if weight_sum is None else z.dtype.type(weight_sum)
    return w[:, None], s


def cross_entropy(
    z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, weight_sum: float | None = None
) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy of the logits ``z`` ``(m, k)`` against the classes ``y`` ``(m,)`` int64."""
    m = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    delta = np.exp(log_p)
    delta[np.arange(m), y] -= 1
    if sample_weight is None:
        loss = -log_p[np.arange(m), y].mean()
        return float(loss), delta / m
    w, s = _weights(z, sample_weight, weight_sum)
    if s == 0:
        return 0.0, np.zeros_like(delta)
    loss = -(log_p[np.arange(m), y] * w[:, 0]).sum() / s
    return float(loss), delta * w / s


def _squared_difference(z: np.ndarray, target: np.ndarray, sample_weight, weight_sum):
    """``1/2 sum_j (z_ij - target_ij)^2`` per row, weighted as the module docstring says."""
    m = z.shape[0]
    diff = z - target
    if sample_weight is None:
        return float(0.5 * (diff * diff).sum() / m), diff / m
    w, s = _weights(z, sample_weight, weight_sum)
    if s == 0:
        return 0.0, np.zeros_like(diff)
    return float(0.5 * ((diff * diff) * w).sum() / s), diff * w / s


def squared_one_hot(
    z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, weight_sum: float | None = None
) -> tuple[float, np.ndarray]:
    """Half the squared distance of ``z`` ``(m, k)`` to the one-hot rows of the classes ``y`` ``(m,)``."""
    return _squared_difference(z, _one_hot(y, z.shape[1], z.dtype), sample_weight, weight_sum)


def squared_error(
    z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, weight_sum: float | None = None
) -> tuple[float, np.ndarray]:
    """Half the squared error of the predictions ``z`` ``(m, t)`` to the targets ``y`` ``(m,)`` or ``(m, t)``."""
    return _squared_difference(z, as_targets(z, y), sample_weight, weight_sum)


def _elementwise(z, y, sample_weight, weight_sum, per_entry):
    """A loss that is a sum over targets of ``per_entry(r) -> (h(r), h'(r))``, ``r = z - y``."""
    m = z.shape[0]
    value, slope = per_entry(z - as_targets(z, y))
    if sample_weight is None:
        return float(value.sum() / m), slope / m
    w, s = _weights(z, sample_weight, weight_sum)
    if s == 0:
        return 0.0, np.zeros_like(slope)
    return float((value * w).sum() / s), slope * w / s


def absolute_error(
    z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, weight_sum: float | None = None
) -> tuple[float, np.ndarray]:
    """The absolute error of ``z`` ``(m, t)`` to the targets ``y`` ``(m,)`` or ``(m, t)``, summed over targets."""
    return _elementwise(z, y, sample_weight, weight_sum, lambda r: (np.abs(r), np.sign(r)))


def huber(
    z: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None = None,
    weight_sum: float | None = None,
    delta: float = 1.0,
) -> tuple[float, np.ndarray]:
    """Huber's loss (threshold ``delta``) of ``z`` ``(m, t)`` to ``y`` ``(m,)`` or ``(m, t)``, summed over targets."""
    d = z.dtype.type(delta)

    def per_entry(r):
        a = np.abs(r)
        inside = a <= d
        value = np.where(inside, z.dtype.type(0.5) * r * r, d * (a - z.dtype.type(0.5) * d))
        return value, np.clip(r, -d, d)

    return _elementwise(z, y, sample_weight, weight_sum, per_entry)


CLASSIFICATION_LOSSES: dict[str, Loss] = {"cross_entropy": cross_entropy, "squared": squared_one_hot}
REGRESSION_LOSSES: dict[str, Loss] = {"squared": squared_error, "absolute": absolute_error, "huber": huber}
LOSSES_BY_TASK = {"classification": CLASSIFICATION_LOSSES, "regression": REGRESSION_LOSSES}


def loss_function(task: str, name: str, huber_delta: float = 1.0) -> Loss:
    """The loss ``name`` of ``task`` as ``(z, y, sample_weight=None, weight_sum=None) -> (L, dL/dz)``.

    Raises ``ValueError`` naming the allowed tasks or losses (the config
    checks ``model.task`` and ``model.loss`` before a backend is built), and
    for ``huber_delta <= 0``.
    """
    if task not in LOSSES_BY_TASK:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    table = LOSSES_BY_TASK[task]
    if name not in table:
        raise ValueError(f"loss for task {task} must be one of {', '.join(table)}, got {name!r}")
    if name == "huber":
        if not huber_delta > 0:
            raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
        return partial(huber, delta=float(huber_delta))
    return table[name]
