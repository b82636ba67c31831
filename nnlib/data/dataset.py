"""From a ``data`` config to checked, standardised train and test arrays.

:func:`load_dataset` is deterministic in ``(data config, seed)``: the driver
calls it to get the test set and the data's shape, and every engine's
workers call it again to build their own shard, so the training data never
has to travel through the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnlib.config import DataConfig
from nnlib.data import sources
from nnlib.data.partition import partition
from nnlib.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """Standardised float32 features and int64 labels."""

    x_train: np.ndarray  # (n_train, n_features) float32
    y_train: np.ndarray  # (n_train,) int64
    x_test: np.ndarray   # (n_test, n_features) float32
    y_test: np.ndarray   # (n_test,) int64
    n_classes: int
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of a row, when the rows are images
    x_val: np.ndarray | None = None  # data.validation_fraction of the training set, held out (float32)
    y_val: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def _as_features(x, where: str) -> np.ndarray:
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
        raise DataError(f"{where}: features must be finite, got {x[row, col]} at sample {row}, feature {col}")
    return x


def _as_labels(y, n_rows: int, where: str) -> np.ndarray:
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
            raise DataError(f"{where}: labels must be integers 0..n_classes-1, got {y[i]} at sample {i}")
    y = y.astype(np.int64)
    if y.min() < 0:
        i = int(np.argmin(y))
        raise DataError(f"{where}: labels must be integers 0..n_classes-1, got {y[i]} at sample {i}")
    return y


def _read_source(cfg: DataConfig, seed: int):
    if cfg.source == "digits":
        return sources.load_digits()
    if cfg.source == "synthetic":
        return sources.make_synthetic(cfg.n_samples, cfg.n_features, cfg.n_classes, seed)
    return sources.read_file(Path(cfg.source), "data.source", cfg.label_column, cfg.features_column, cfg.labels)


def _split(n: int, fraction: float, seed: int, salt: int = 0x7E57,
           key: str = "data.test_fraction") -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held out)`` sorted indices: a seeded ``fraction`` of ``range(n)`` held out (at least one)."""
    order = np.random.default_rng([seed, salt]).permutation(n)
    n_held = max(1, int(round(n * fraction)))
    if n_held >= n:
        raise DataError(f"{key}: {fraction} of {n} samples leaves no training data")
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Read ``cfg.source``, check it, split off a test set if none is given (and a validation set
    if asked), standardise.

    Standardisation statistics are fitted on the training part only; constant
    features keep a scale of 1.
    """
    arrays = _read_source(cfg, seed)
    src = cfg.source
    x = _as_features(arrays[0], f"data.source {src}")
    y = _as_labels(arrays[1], x.shape[0], f"data.source {src}")
    if cfg.test_source is not None:
        if len(arrays) == 4:
            raise DataError(f"data.test_source: {src} already holds x_test/y_test; "
                            "give one or the other, not both")
        test = sources.read_file(Path(cfg.test_source), "data.test_source", cfg.label_column,
                                 cfg.features_column, cfg.test_labels, "data.test_labels")
        arrays = (*arrays[:2], test[0], test[1])
    if len(arrays) == 4:
        where = f"data.test_source {cfg.test_source}" if cfg.test_source else f"data.source {src} (x_test)"
        x_test = _as_features(arrays[2], where)
        y_test = _as_labels(arrays[3], x_test.shape[0], where)
        if x_test.shape[1] != x.shape[1]:
            raise DataError(f"{where}: test set has {x_test.shape[1]} features, training set has {x.shape[1]}")
        x_train, y_train = x, y
    else:
        train_idx, test_idx = _split(x.shape[0], cfg.test_fraction, seed)
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]

    n_classes = int(y_train.max()) + 1
    if y_test.max() >= n_classes:
        i = int(np.argmax(y_test >= n_classes))
        where = f"data.test_source {cfg.test_source}" if cfg.test_source else f"data.source {src} (test part)"
        raise DataError(f"{where}: labels must be in 0..{n_classes - 1} (the training labels), "
                        f"got {y_test[i]} at sample {i}")
    if len(np.unique(y_train)) < 2:
        raise DataError(f"data.source {src}: the training set holds a single class ({y_train[0]}); "
                        "at least 2 are needed")
    x_val = y_val = None
    if cfg.validation_fraction:
        keep, held = _split(len(y_train), cfg.validation_fraction, seed, 0x7A11, "data.validation_fraction")
        x_train, y_train, x_val, y_val = x_train[keep], y_train[keep], x_train[held], y_train[held]
    if cfg.standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
        x_val = None if x_val is None else (x_val - mean) / std
    return Dataset(x_train.astype(np.float32), y_train, x_test.astype(np.float32), y_test, n_classes,
                   _image_shape(cfg, x_train.shape[1]), None if x_val is None else x_val.astype(np.float32), y_val)


def _image_shape(cfg: DataConfig, n_features: int) -> tuple[int, int, int] | None:
    """``data.image_shape`` as ``(C, H, W)`` (checked against the features), else the source's own, else None."""
    if cfg.image_shape is None:
        return sources.image_shape(cfg.source)
    shape = tuple(cfg.image_shape)
    shape = (1, *shape) if len(shape) == 2 else shape
    if int(np.prod(shape)) != n_features:
        raise DataError(f"data.image_shape: {list(cfg.image_shape)} holds {int(np.prod(shape))} values per "
                        f"sample, data.source {cfg.source} has {n_features} features")
    return shape


@dataclass(frozen=True)
class Shard:
    """One mapper's part of the training set."""

    index: int
    x: np.ndarray  # (n_samples, n_features) float32
    y: np.ndarray  # (n_samples,) int64

    @property
    def n_samples(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class ShardSource:
    """The recipe for the shards: plain data that any engine can ship to its workers."""

    data: DataConfig
    seed: int
    mappers: int

    def build(self, indices: list[int]) -> list[Shard]:
        """Load the data once and cut out the shards ``indices``; what a worker runs."""
        dataset = load_dataset(self.data, self.seed)
        parts = partition(dataset.y_train, self.mappers, self.data.partition, self.seed,
                          self.data.skew_alpha)
        return [Shard(i, dataset.x_train[parts[i]], dataset.y_train[parts[i]]) for i in indices]
