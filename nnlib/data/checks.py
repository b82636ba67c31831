"""The one check of every source's values: finite float32 features, labels that are class indices 0..K-1.

Every problem is a one-line :class:`DataError` naming where the data came
from and the sample at fault. Features are trained on as float32, so a value
that is finite in float64 but not in float32 (``1e39``) is refused here, and
again after standardising (:func:`check_standardized`), whatever the source
format and whichever engine reads it.
"""

from __future__ import annotations

import numpy as np

from nnlib.errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028235e+38
# labels are class indices: the output layer has max(label) + 1 units, so a largest label past this many
# times the number of distinct labels (and past CLASS_ID_SLACK) means ids, not indices, and is refused
CLASS_ID_FACTOR, CLASS_ID_SLACK = 10, 100


def _feature_name(col: int, names) -> str:
    return f"feature {col} ('{names[col]}')" if names is not None and col < len(names) else f"feature {col}"


def _row_name(row: int, first_row: int, row_name) -> str:
    return f"sample {first_row + row}" if row_name is None else row_name(int(row))


def check_features(x, where: str, first_row: int = 0, names=None, row_name=None) -> np.ndarray:
    """``x`` as a float64 (samples x features) array whose values are finite in float32.

    ``first_row`` numbers the samples in messages; ``names`` (the feature
    columns, when the source has them) names the column at fault;
    ``row_name`` (``i -> str``, e.g. ``"row 5 of partition 0"``), when
    given, names sample ``i`` instead, for sources whose rows have no one
    number (a DataFrame's: a key's value, or a partition and an offset).
    """
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(f"{where}: features must be a 2-d array (samples x features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: holds no samples (it is empty)")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: features must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{where}: features must be finite, got {x[row, col]} at "
            f"{_row_name(row, first_row, row_name)}, {_feature_name(col, names)}"
        )
    with np.errstate(over="ignore"):
        past = np.isinf(x.astype(np.float32))  # what training sees: the value after the cast
    if past.any():
        row, col = np.argwhere(past)[0]
        raise DataError(
            f"{where}: features must be finite in float32 (|value| <= {FLOAT32_MAX:.4g}), got "
            f"{x[row, col]:.6g} at {_row_name(row, first_row, row_name)}, {_feature_name(col, names)}; "
            "rescale that column"
        )
    return x


def check_standardized(x: np.ndarray, where: str, positions=None) -> None:
    """Refuse float32 features that standardising (with the training rows' mean and std) took past float32.

    ``positions`` numbers the rows in messages (default ``0..n-1``). This
    happens when a column is nearly constant in the training rows and a
    held-out value lies far from it, so ``(x - mean) / std`` overflows.
    """
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        sample = row if positions is None else int(positions[row])
        raise DataError(
            f"{where}: sample {sample}, feature {col} is past float32's range once standardised "
            "with the training rows' mean and standard deviation (the training column is nearly "
            "constant, or the value lies far outside it); check that column, or set "
            "data.standardize=false"
        )


def check_labels(y, n_rows: int, where: str, first_row: int = 0, row_name=None) -> np.ndarray:
    """``y`` as int64 labels 0, 1, ...; ``first_row`` numbers the samples in messages (``row_name``, ``i ->
    str``, names them instead, as :func:`check_features`)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-d array, got shape {y.shape}")
    if y.shape[0] != n_rows:
        raise DataError(f"{where}: {n_rows} feature rows but {y.shape[0]} labels")
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{where}: labels must be integers 0..n_classes-1, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        frac = ~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) > 2.0**62)
        if frac.any():
            i = int(np.argmax(frac))
            raise DataError(
                f"{where}: labels must be integers 0..n_classes-1, got {y[i]} at {_row_name(i, first_row, row_name)}"
            )
    y = y.astype(np.int64)
    if y.min() < 0:
        i = int(np.argmin(y))
        raise DataError(
            f"{where}: labels must be integers 0..n_classes-1, got {y[i]} at {_row_name(i, first_row, row_name)}"
        )
    return y


def check_class_ids(classes: np.ndarray, where: str) -> np.ndarray:
    """The class indices in ``0..max(classes)`` that no training row has (int64, sorted).

    ``classes`` are the distinct training labels, sorted. The model gets one
    output per index up to the largest label, so labels that are ids
    (``{0, 500000, 999999}``) rather than indices would build a huge output
    layer: a largest label past ``CLASS_ID_FACTOR`` times the number of
    distinct labels (and past ``CLASS_ID_SLACK``) is refused.
    """
    classes = np.asarray(classes, np.int64)
    largest, distinct = int(classes[-1]), len(classes)
    if largest >= max(CLASS_ID_SLACK, CLASS_ID_FACTOR * distinct):
        shown = ", ".join(str(c) for c in classes[:4]) + (", ..." if distinct > 4 else "")
        raise DataError(
            f"{where}: labels must be class indices 0..K-1, got {distinct} distinct labels "
            f"({shown}) up to {largest}, which would make a {largest + 1:,}-unit output layer; "
            f"remap them to 0..{distinct - 1} (e.g. numpy.unique(y, return_inverse=True))"
        )
    present = np.zeros(largest + 1, bool)
    present[classes] = True
    return np.flatnonzero(~present).astype(np.int64)
