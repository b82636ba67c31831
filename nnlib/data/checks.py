"""The one check of every source's values: finite numeric features, integer labels 0, 1, ...

Every problem is a one-line :class:`DataError` naming where the data came
from and the sample at fault.
"""

from __future__ import annotations

import numpy as np

from nnlib.errors import DataError


def check_features(x, where: str, first_row: int = 0) -> np.ndarray:
    """``x`` as a finite float64 (samples x features) array; ``first_row`` numbers the samples in messages."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(f"{where}: features must be a 2-d array (samples x features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{where}: holds no samples")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where}: features must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{where}: features must be finite, got {x[row, col]} at sample {first_row + row}, "
                        f"feature {col}")
    return x


def check_labels(y, n_rows: int, where: str, first_row: int = 0) -> np.ndarray:
    """``y`` as int64 labels 0, 1, ...; ``first_row`` numbers the samples in messages."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{where}: labels must be a 1-d array, got shape {y.shape}")
    if y.shape[0] != n_rows:
        raise DataError(f"{where}: {n_rows} feature rows but {y.shape[0]} labels")
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{where}: labels must be integers 0..n_classes-1, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        frac = ~np.isfinite(y) | (y != np.round(y))
        if frac.any():
            i = int(np.argmax(frac))
            raise DataError(f"{where}: labels must be integers 0..n_classes-1, got {y[i]} at sample {first_row + i}")
    y = y.astype(np.int64)
    if y.min() < 0:
        i = int(np.argmin(y))
        raise DataError(f"{where}: labels must be integers 0..n_classes-1, got {y[i]} at sample {first_row + i}")
    return y
