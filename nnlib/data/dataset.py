"""From a ``data`` config to checked, standardised train and test arrays.

:func:`load_dataset` is deterministic in ``(data config, seed)``: the driver
calls it to get the test set and the data's shape, and every engine's
workers call it again to build their own shard, so the training data never
has to travel through the driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from nnlib.config import DataConfig
from nnlib.data import sources, tables
from nnlib.data.checks import check_class_ids, check_features, check_labels, check_standardized
from nnlib.data.partition import partition, shard_sizes
from nnlib.data.rows import (
    ROLE_NAMES,
    TEST,
    TRAIN,
    VAL,
    FixedPlan,
    RowFiller,
    RowPlan,
    add_digests,
    check_partition,
    row_digest,
    standardize_into,
)
from nnlib.data.tables import ParquetSource
from nnlib.errors import DataError


@dataclass(frozen=True)
class RowKeyed:
    """A row-keyed (Parquet) source as its mappers read it: the files, each row's role and shard, the statistics."""

    table: ParquetSource
    plan: RowPlan
    mean: np.ndarray | None  # None: data.standardize is off
    std: np.ndarray | None
    shard_sizes: tuple[int, ...]
    n_features: int
    mapper_roles: tuple[int, ...] = (TRAIN,)  # what the mappers keep: TRAIN, and TEST/VAL when scored there
    target_mean: np.ndarray | None = None  # regression under data.standardize_target: (t,) float64 statistics
    target_std: np.ndarray | None = None  # of the training targets the shards' targets are standardised with

    @property
    def scored_by_mappers(self) -> bool:
        """True when the test (and validation) rows stay with the mappers, each scoring its part."""
        return len(self.mapper_roles) > 1


@dataclass(frozen=True)
class Dataset:
    """Standardised float32 features and int64 labels (under regression: float64 targets, :attr:`task`).

    ``x_train``/``y_train`` are None for a row-keyed source (``rows``): the
    training rows stay with the mappers that read them, and the driver keeps
    only the test and validation sets, the sizes and the statistics.
    """

    x_train: np.ndarray | None  # (n_train, n_features) float32
    y_train: np.ndarray | None  # (n_train,) int64
    x_test: np.ndarray | None  # (n_test, n_features) float32; None when the mappers score it
    y_test: np.ndarray | None  # (n_test,) int64
    n_classes: int
    image_shape: tuple[int, int, int] | None = None  # (C, H, W) of a row, when the rows are images
    x_val: np.ndarray | None = None  # data.validation_fraction of the training set, held out (float32)
    y_val: np.ndarray | None = None
    rows: RowKeyed | None = None  # how the mappers read a row-keyed source
    n_train_rows: int = 0  # training rows of a row-keyed source
    n_held_rows: tuple[int, int] = (0, 0)  # its test and validation rows (their arrays are None when the
    #                                        mappers keep and score them: rows.scored_by_mappers)
    mean: np.ndarray | None = None  # (n_features,) float64 standardisation statistics of the training rows;
    std: np.ndarray | None = None  # None when data.standardize is off
    feature_names: tuple[str, ...] | None = None  # a table source's feature columns in order (else None)
    missing_classes: tuple[int, ...] = ()  # class indices in 0..n_classes-1 that no training row has
    fingerprint: tuple[tuple[str, str], ...] = ()  # (key, digest of the rows read) of every input: --resume
    #                                                compares them with the checkpoint's
    task: str = "classification"  # "regression": y_* are float64 targets (n,) or (n, t), standardised when
    #                               target_mean is set (data.standardize_target)
    target_names: tuple[str, ...] = ()  # regression: the target columns (an .npz's: y, or y0, y1, ...)
    target_mean: np.ndarray | None = None  # (t,) float64: the training targets' mean and std (std 0 -> 1)
    target_std: np.ndarray | None = None
    y_test_raw: np.ndarray | None = None  # regression: the test and validation targets in their own units
    y_val_raw: np.ndarray | None = None
    w_train: np.ndarray | None = None  # (n,) float64 sample weights (data.weight_column), else None
    w_test: np.ndarray | None = None
    w_val: np.ndarray | None = None
    train_weight_mean: float | None = None  # a row-keyed source's mean training weight (from its survey)

    @property
    def weighted(self) -> bool:
        """True when the rows have sample weights (data.weight_column)."""
        return self.w_train is not None or self.w_test is not None or self.train_weight_mean is not None

    @property
    def mean_weight(self) -> float | None:
        """The mean weight (float64) of the training rows (None without weights): of ``w_train`` when the
        driver holds it, else of a row-keyed source's survey."""
        if self.w_train is not None:
            return float(np.mean(self.w_train, dtype=np.float64))
        return self.train_weight_mean

    @property
    def n_features(self) -> int:
        if self.rows is not None:
            return self.rows.n_features
        assert self.x_test is not None  # a source read whole holds its test rows
        return self.x_test.shape[1]

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def n_outputs(self) -> int:
        """The network's output width: the classes, or the targets under regression."""
        return len(self.target_names) if self.regression else self.n_classes

    @property
    def n_train(self) -> int:
        return self.n_train_rows if self.y_train is None else len(self.y_train)

    @property
    def n_test(self) -> int:
        return self.n_held_rows[0] if self.y_test is None else len(self.y_test)

    @property
    def n_val(self) -> int:
        return self.n_held_rows[1] if self.y_val is None else len(self.y_val)

    def shard_sizes(self, mappers: int, scheme: str, seed: int, alpha: float) -> list[int]:
        """Training samples in each shard."""
        if self.rows is not None:
            return list(self.rows.shard_sizes)
        assert self.y_train is not None  # a source read whole holds its training rows
        return shard_sizes(self.y_train, mappers, scheme, seed, alpha)


def _read_source(cfg: DataConfig, seed: int):
    if cfg.source == "digits":
        return sources.load_digits()
    if cfg.source == "synthetic":
        return sources.make_synthetic(cfg.n_samples, cfg.n_features, cfg.n_classes, seed)
    return sources.read_file(
        Path(cfg.source),
        "data.source",
        cfg.label_column,
        cfg.labels,
        key_column=cfg.key_column,
        chosen=cfg.feature_columns,
        dropped=cfg.drop_columns,
    )


def _split(
    n: int, fraction: float, seed: int, salt: int = 0x7E57, key: str = "data.test_fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held out)`` sorted indices: a seeded ``fraction`` of ``range(n)`` held out (at least one)."""
    order = np.random.default_rng([seed, salt]).permutation(n)
    n_held = max(1, int(round(n * fraction)))
    if n_held >= n:
        raise DataError(f"{key}: {fraction} of {n} samples leaves no training data; lower {key} or use more data")
    return np.sort(order[n_held:]), np.sort(order[:n_held])


def load_dataset(
    cfg: DataConfig, seed: int, mappers: int = 1, reader: tables.Reader | None = None, task: str = "classification"
) -> Dataset:
    """Read ``cfg.source``, check it, split off a test set if none is given (and a validation set
    if asked), standardise.

    Standardisation statistics are fitted on the training part only; constant
    features keep a scale of 1. A row-keyed (Parquet) source is surveyed, not
    loaded: see :func:`load_row_keyed`; ``reader`` is how (default: pyarrow in
    this process). ``task="regression"``, ``data.weight_column`` and
    ``data.validation_column`` read a local source whole (:func:`load_columns`), and a URI (a DataFrame
    given to Spark's reader, ``hdfs://``, ``s3a://``, ``file:``) row by row with the same semantics
    (:func:`load_row_keyed`).
    """
    if task == "regression" or cfg.weight_column is not None or cfg.validation_column is not None:
        if tables.is_uri(cfg.source):
            return load_row_keyed(cfg, seed, mappers, reader or tables.LocalReader(), task)
        return load_columns(cfg, seed, task)
    if tables.is_row_keyed(cfg.source):
        return load_row_keyed(cfg, seed, mappers, reader or tables.LocalReader())
    arrays = _read_source(cfg, seed)
    src = cfg.source
    names = _csv_feature_names(cfg, src, "data.source")
    x = check_features(arrays[0], f"data.source {src}", names=names)
    y = _class_labels(arrays[1], x.shape[0], f"data.source {src}")
    fingerprint = [("data.source", row_digest(np.arange(len(y)), x, y))]
    if cfg.test_source is not None:
        if len(arrays) == 4:
            raise DataError(f"data.test_source: {src} already holds x_test/y_test; give one or the other, not both")
        x_test, y_test, test_digest = _test_set(cfg, x.shape[1])
        fingerprint.append(("data.test_source", test_digest))
        x_train, y_train = x, y
    elif len(arrays) == 4:
        where = f"data.source {src} (x_test)"
        x_test = check_features(arrays[2], where)
        y_test = _class_labels(arrays[3], x_test.shape[0], where)
        _check_width(x_test, x.shape[1], where)
        fingerprint[0] = (
            "data.source",
            add_digests(fingerprint[0][1], row_digest(-1 - np.arange(len(y_test)), x_test, y_test)),
        )
        x_train, y_train = x, y
    else:
        train_idx, test_idx = _split(x.shape[0], cfg.test_fraction, seed)
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]

    n_classes, missing = _class_count(
        y_train,
        y_test,
        src,
        f"data.test_source {cfg.test_source}" if cfg.test_source else f"data.source {src} (test part)",
    )
    x_val = y_val = None
    if cfg.validation_fraction:
        keep, held = _split(len(y_train), cfg.validation_fraction, seed, 0x7A11, "data.validation_fraction")
        x_train, y_train, x_val, y_val = x_train[keep], y_train[keep], x_train[held], y_train[held]
    mean, std, x_train, x_test, x_val = _standardized_float32(cfg, src, x_train, x_test, x_val)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        n_classes,
        _image_shape(cfg, x_train.shape[1]),
        x_val,
        y_val,
        mean=mean,
        std=std,
        feature_names=names,
        missing_classes=tuple(missing.tolist()),
        fingerprint=tuple((key, f"{digest:016x}") for key, digest in fingerprint),
    )


def run_dataset(config, reader: tables.Reader | None = None) -> Dataset:
    """The run's data as every engine's driver reads it: ``config.data`` with the run's seed, mapper count and
    ``model.task`` (a regression run's float targets). ``config`` is an :class:`nnlib.config.Config`."""
    return load_dataset(config.data, config.seed, config.mappers, reader, config.model.task)


def _csv_feature_names(cfg: DataConfig, path: str, key: str) -> tuple[str, ...] | None:
    """A CSV source's feature columns in order (None for any other kind of source)."""
    if not path.lower().endswith(".csv") or cfg.features_column is not None:
        return None
    return tuple(
        sources.feature_columns(
            sources.csv_columns(Path(path), key),
            cfg.label_column,
            cfg.key_column,
            cfg.feature_columns,
            cfg.drop_columns,
        )
    )


def _chosen(cfg: DataConfig) -> tuple[str, ...] | None:
    """``data.feature_columns`` as a ParquetSource holds it (None: every column but the label, key, dropped)."""
    return None if cfg.feature_columns is None else tuple(cfg.feature_columns)


def _class_count(y_train: np.ndarray, y_test: np.ndarray, src, test_where: str) -> tuple[int, np.ndarray]:
    """``(n_classes, missing class ids)`` of int64 labels: the training rows must hold at least 2 classes, and
    the test rows (``test_where`` names them) no label past the training rows' largest; else a DataError."""
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise DataError(
            f"data.source {src}: the training set holds a single class ({y_train[0]}); at least 2 are needed"
        )
    missing = check_class_ids(classes, f"data.source {src}")
    n_classes = int(classes[-1]) + 1
    if y_test.max() >= n_classes:
        i = int(np.argmax(y_test >= n_classes))
        raise DataError(
            f"{test_where}: labels must be in 0..{n_classes - 1} (the training labels), got {y_test[i]} at sample {i}"
        )
    return n_classes, missing


def _test_where(cfg: DataConfig) -> str:
    return f"data.test_source {cfg.test_source}" if cfg.test_source else f"data.source {cfg.source} (test part)"


def _standardized_float32(cfg, src, x_train: np.ndarray, x_test: np.ndarray, x_val: np.ndarray | None):
    """``(mean, std, x_train, x_test, x_val)``: the features standardised by the training rows' mean and standard
    deviation (a constant column's std taken as 1) where ``data.standardize`` says so (else mean and std are
    None), then as float32, each checked finite there (:class:`DataError` naming its part of the data)."""
    mean = std = None
    if cfg.standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0] = 1.0
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std
        x_val = None if x_val is None else (x_val - mean) / std
    x_train, x_test = _as_float32(x_train, f"data.source {src}"), _as_float32(x_test, _test_where(cfg))
    x_val = None if x_val is None else _as_float32(x_val, f"data.source {src} (validation part)")
    return mean, std, x_train, x_test, x_val


def _as_float32(x: np.ndarray, where: str) -> np.ndarray:
    """Standardised float64 features as float32, refused where standardising took them past float32."""
    with np.errstate(over="ignore"):
        out = x.astype(np.float32)
    check_standardized(out, where)
    return out


def _check_width(x_test: np.ndarray, n_features: int, where: str) -> None:
    if x_test.shape[1] != n_features:
        raise DataError(f"{where}: test set has {x_test.shape[1]} features, training set has {n_features}")


def _test_set(cfg: DataConfig, n_features: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``data.test_source`` read whole (a Parquet one block by block), checked against the training set's width;
    ``(x float64, y, digest of its rows)``."""
    key, where = "data.test_source", f"data.test_source {cfg.test_source}"
    test_source = cfg.test_source
    assert test_source is not None  # called when data.test_source is set
    if tables.is_row_keyed(test_source):
        x, y = tables.read_whole(
            replace(
                ParquetSource.open(test_source, cfg.label_column, cfg.features_column, key, cfg.key_column),
                chosen_columns=_chosen(cfg),
                dropped_columns=tuple(cfg.drop_columns),
            )
        )
    else:
        x, y = sources.read_file(
            Path(test_source),
            key,
            cfg.label_column,
            cfg.test_labels,
            "data.test_labels",
            cfg.key_column,
            cfg.feature_columns,
            cfg.drop_columns,
        )[:2]
        x = check_features(x, where, names=_csv_feature_names(cfg, test_source, key))
        y = _class_labels(y, x.shape[0], where)
    _check_width(x, n_features, where)
    return x, y, row_digest(np.arange(len(y)), x, y)


def _standardized_rows(x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None, where: str) -> np.ndarray:
    """Held-out rows of a row-keyed source standardised with the training statistics (None: as they are), as
    float32 (in place when ``x`` is float32); a value past float32 after scaling is one line naming ``where``."""
    out = x if x.dtype == np.float32 else np.empty(x.shape, np.float32)
    with np.errstate(over="ignore"):
        standardize_into(out, x, mean, std)
    check_standardized(out, where)
    return out


def load_row_keyed(
    cfg: DataConfig, seed: int, mappers: int, reader: tables.Reader, task: str = "classification"
) -> Dataset:
    """A Parquet source surveyed by ``reader``: sizes, labels and statistics from one pass over the rows,
    then the test (and validation) rows collected; the training rows are left to the mappers.

    Under ``task="regression"``, ``data.weight_column`` or ``data.validation_column`` the rows are read
    as :func:`load_columns` reads them (:func:`_load_carried`)."""
    if task == "regression" or cfg.weight_column is not None or cfg.validation_column is not None:
        return _load_carried(cfg, seed, mappers, reader, task)
    check_partition(cfg.partition, cfg.source)
    tables.check_here(cfg)  # the local footers, before a reader's JVM starts
    table = replace(
        reader.open(cfg.source, cfg.label_column, cfg.features_column),
        key_column=cfg.key_column,
        chosen_columns=_chosen(cfg),
        dropped_columns=tuple(cfg.drop_columns),
    )
    plan = RowPlan(
        seed,
        mappers,
        table.n_rows,
        None if cfg.test_source else cfg.test_fraction,
        cfg.validation_fraction,
        cfg.partition,
    )
    tally = reader.survey(table, plan)
    src = f"data.source {cfg.source}"
    n_train, n_val, n_test = (int(tally.role_counts[r]) for r in (TRAIN, VAL, TEST))
    if n_train == 0:
        raise DataError(
            f"{src}: no row of its {table.n_rows} was drawn for training; lower data.test_fraction "
            "or data.validation_fraction"
        )
    if cfg.test_source is None and n_test == 0:
        raise DataError(f"{src}: no row of its {table.n_rows} was drawn for the test set; raise data.test_fraction")
    if cfg.validation_fraction and n_val == 0:
        raise DataError(f"{src}: no row of its {table.n_rows} was drawn for validation; raise data.validation_fraction")
    n_classes, missing = _surveyed_classes(tally, src)
    mean = std = None
    if cfg.standardize:
        mean, std = tally.moments.mean, tally.moments.std()

    held = [TEST] if cfg.test_source is None else []
    held += [VAL] if cfg.validation_fraction else []
    limit = reader.collect_limit_bytes  # None: this reader always collects them
    on_mappers = bool(held) and limit is not None and sum(tally.role_counts[held]) * tally.n_features * 4 > limit
    rows = RowKeyed(
        table,
        plan,
        mean,
        std,
        tuple(int(c) for c in tally.shard_counts),
        tally.n_features,
        (TRAIN, *held) if on_mappers else (TRAIN,),
    )

    def held_out(role: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if on_mappers:
            return None, None
        x, y = reader.rows(table, plan, role, tally.n_features)
        return _standardized_rows(x, mean, std, f"{src} ({ROLE_NAMES[role]} rows)"), y

    fingerprint = [("data.source", f"{tally.digest:016x}")]
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    if cfg.test_source is not None:
        x_test, y_test, test_digest = _test_set(cfg, tally.n_features)
        fingerprint.append(("data.test_source", f"{test_digest:016x}"))
        x_test = _standardized_rows(x_test, mean, std, f"data.test_source {cfg.test_source}")
        if y_test.max() >= n_classes:
            i = int(np.argmax(y_test >= n_classes))
            raise DataError(
                f"data.test_source {cfg.test_source}: labels must be in 0..{n_classes - 1} (the "
                f"training labels), got {y_test[i]} at test sample {i}"
            )
    else:
        x_test, y_test = held_out(TEST)
    x_val, y_val = held_out(VAL) if cfg.validation_fraction else (None, None)
    names = _table_feature_names(cfg, table, cfg.label_column, cfg.drop_columns)
    return Dataset(
        None,
        None,
        x_test,
        y_test,
        n_classes,
        _image_shape(cfg, tally.n_features),
        x_val,
        y_val,
        rows,
        n_train,
        (int(tally.role_counts[TEST]), int(tally.role_counts[VAL])),
        mean,
        std,
        names,
        tuple(missing.tolist()),
        tuple(fingerprint),
    )


def _surveyed_classes(tally, src: str) -> tuple[int, np.ndarray]:
    """``(n_classes, missing class ids)`` of a row-keyed source's survey, as :func:`_class_count` gives them
    for a source read whole: at least 2 training classes, no test or validation label past the training ones."""
    if len(tally.train_labels_seen) < 2:
        raise DataError(
            f"{src}: the training set holds a single class ({min(tally.train_labels_seen)}); at least 2 are needed"
        )
    missing = check_class_ids(np.array(sorted(tally.train_labels_seen)), src)
    n_classes = tally.train_label_max + 1
    if tally.label_max >= n_classes:
        raise DataError(
            f"{src}: labels must be in 0..{n_classes - 1} (the training labels), got {tally.label_max} "
            "in its test or validation rows"
        )
    return n_classes, missing


def _table_feature_names(cfg: DataConfig, table: ParquetSource, label: str | None, dropped) -> tuple[str, ...] | None:
    """A row-keyed source's feature columns in order, for the model file (by them ``nnlib predict`` matches a
    table's columns by name): from the columns its reader listed (Spark's readers list them for a URI), else
    from a local file's schema; None for one list column of features (``data.features_column``)."""
    if cfg.features_column is not None:
        return None
    columns = table.column_names or (() if tables.is_uri(cfg.source) else tables.schema_names(cfg.source))
    if not columns:
        return None
    return tuple(sources.feature_columns(columns, label, cfg.key_column, cfg.feature_columns, dropped))


def _train_shards(n_train: int, cfg: DataConfig, seed: int, mappers: int) -> np.ndarray:
    """The shard (int32) of each of ``n_train`` training rows in position order, as :meth:`ShardSource.build`
    cuts a source read whole (:func:`nnlib.data.partition.partition` of the training rows)."""
    shard = np.zeros(n_train, np.int32)
    for k, part in enumerate(partition(np.zeros(n_train, np.int64), mappers, cfg.partition, seed, cfg.skew_alpha)):
        shard[part] = k
    return shard


def _load_carried(cfg: DataConfig, seed: int, mappers: int, reader: tables.Reader, task: str) -> Dataset:
    """A row-keyed source with regression targets, sample weights or a validation column, read by ``reader``
    with :func:`load_columns`'s semantics, the training rows left to the mappers.

    The test rows are :func:`_split` of every position (none under ``data.test_source``, read whole here);
    of the rest, the rows ``data.validation_column`` marks (found by the survey: their positions come to
    the driver) or a seeded ``data.validation_fraction`` validate; the training rows are cut into shards
    as :meth:`ShardSource.build` cuts them (:class:`nnlib.data.rows.FixedPlan`). One survey gives the
    features' and targets' moments and the training weights' sum; targets are standardised with the
    training rows' mean and std per target (std 0 -> 1) under ``data.standardize_target``. The test and
    validation rows are always collected to the driver, which scores them (``spark.collect_held_out_mb``
    does not apply). Statistics merged over blocks (:class:`nnlib.data.rows.Moments`) equal numpy's
    whole-array ``mean``/``std`` to rounding, and bit for bit when the training rows arrive in one block.
    Errors are :func:`load_columns`'s, one DataError line each (a bad value names its file or partition).
    """
    regression = task == "regression"
    check_partition(cfg.partition, cfg.source)
    src = f"data.source {cfg.source}"
    targets = cfg.targets
    extras = [c for c in (cfg.weight_column, cfg.validation_column) if c is not None]
    for name in cfg.feature_columns or ():
        if name in targets or name in extras:
            raise DataError(f"data.feature_columns: '{name}' is a label, weight or validation column, not a feature")
    table = replace(
        reader.open(cfg.source, targets[0], cfg.features_column),
        key_column=cfg.key_column,
        chosen_columns=_chosen(cfg),
        dropped_columns=tuple(cfg.drop_columns),
        task=task,
        label_columns=None if cfg.label_columns is None else tuple(cfg.label_columns),
        weight_column=cfg.weight_column,
        validation_column=cfg.validation_column,
    )
    if table.column_names:  # else each block is checked as it is read
        label_key = "data.label_columns" if cfg.label_columns else "data.label_column"
        checked: tuple[tuple[str, list[str | None]], ...] = (
            (label_key, list(targets)),
            ("data.weight_column", [cfg.weight_column]),
            ("data.validation_column", [cfg.validation_column]),
        )
        for what, wanted in checked:
            for column in wanted:
                if column is not None and column not in table.column_names:
                    raise DataError(
                        f"{what}: {cfg.source} has no column '{column}' "
                        f"({sources.columns_text(list(table.column_names))})"
                    )
    n = table.n_rows
    test_pos = np.empty(0, np.int64) if cfg.test_source is not None else _split(n, cfg.test_fraction, seed)[1]
    rest = np.delete(np.arange(n, dtype=np.int64), test_pos)
    val_pos = train_shard = None
    if cfg.validation_fraction:
        val_pos = rest[_split(len(rest), cfg.validation_fraction, seed, 0x7A11, "data.validation_fraction")[1]]
    elif cfg.validation_column is None:
        val_pos = np.empty(0, np.int64)
    if val_pos is not None:
        train_shard = _train_shards(len(rest) - len(val_pos), cfg, seed, mappers)
    plan = FixedPlan(
        seed,
        mappers,
        n,
        None if cfg.test_source else cfg.test_fraction,
        cfg.validation_fraction,
        cfg.partition,
        test_pos=test_pos,
        val_pos=val_pos,
        train_shard=train_shard,
        regression=regression,
    )
    tally = reader.survey(table, plan)
    if val_pos is None:  # the validation column's rows, found by the survey
        marked = np.sort(tally.marked) if tally.marked is not None else np.empty(0, np.int64)
        if len(marked) in (0, len(rest)):
            raise DataError(
                f"{src}: data.validation_column '{cfg.validation_column}' marks "
                f"{'no' if len(marked) == 0 else 'every'} training row ({len(marked)} of {len(rest)}); "
                "it must mark some rows for validation and leave others for training"
            )
        plan = replace(plan, val_pos=marked, train_shard=_train_shards(len(rest) - len(marked), cfg, seed, mappers))
    n_train, n_val, n_test = (int(tally.role_counts[r]) for r in (TRAIN, VAL, TEST))
    assert plan.train_shard is not None  # the plan above drew the training rows' shards
    shard_counts = np.bincount(plan.train_shard, minlength=mappers)
    table = replace(table, target_width=tally.n_targets)
    if tally.weight_sum is not None and tally.weight_sum == 0:
        raise DataError(
            f"{src}: data.weight_column '{cfg.weight_column}': every training row weighs 0; at least "
            "one must weigh more"
        )
    mean = std = None
    if cfg.standardize:
        mean, std = tally.moments.mean, tally.moments.std()

    target_names: tuple[str, ...] = ()
    target_mean = target_std = None
    n_classes, missing = 0, np.empty(0, np.int64)
    if regression:
        if cfg.label_columns is not None:
            target_names = tuple(cfg.label_columns)
        elif tally.n_targets:  # one column of lists: a target per value
            target_names = tuple(f"{cfg.label_column}_{j}" for j in range(tally.n_targets))
        else:
            target_names = (cfg.label_column,)
        if cfg.standardize_target:
            assert tally.targets is not None  # a regression survey keeps the targets' moments
            target_mean, target_std = tally.targets.mean, tally.targets.std()
    else:
        n_classes, missing = _surveyed_classes(tally, src)

    def scaled(y: np.ndarray) -> np.ndarray:
        if target_mean is None or target_std is None:
            return y
        return (y - target_mean[0]) / target_std[0] if y.ndim == 1 else (y - target_mean) / target_std

    def held_out(role: int) -> tuple:
        """``(x standardised float32, y, w or None, y in its own units)`` of the rows with ``role``."""
        x, y, *w = reader.rows(table, plan, role, tally.n_features)
        return _standardized_rows(x, mean, std, f"{src} ({ROLE_NAMES[role]} rows)"), scaled(y), (w[0] if w else None), y

    fingerprint = [("data.source", f"{tally.digest:016x}")]
    if cfg.test_source is not None:
        test = _read_columns(cfg, cfg.test_source, "data.test_source", regression)
        where = f"data.test_source {cfg.test_source}"
        _check_width(test.x, tally.n_features, where)
        width = lambda y: 1 if y.ndim == 1 else y.shape[1]  # noqa: E731
        if regression and (width(test.y) != max(tally.n_targets, 1) or (test.y.ndim == 2) != bool(tally.n_targets)):
            raise DataError(
                f"{where}: {len(test.target_names)} target(s) of shape {test.y.shape[1:]}, data.source "
                f"has {len(target_names)}"
            )
        fingerprint.append(("data.test_source", f"{_digest(test.x, test.y, test.w, test.v):016x}"))
        x_test = _standardized_rows(test.x, mean, std, where)
        y_test, w_test, y_test_raw = scaled(test.y), test.w, test.y
        if not regression and y_test.max() >= n_classes:
            i = int(np.argmax(y_test >= n_classes))
            raise DataError(
                f"{where}: labels must be in 0..{n_classes - 1} (the training labels), got {y_test[i]} "
                f"at test sample {i}"
            )
    else:
        x_test, y_test, w_test, y_test_raw = held_out(TEST)
    x_val = y_val = w_val = y_val_raw = None
    if n_val:
        x_val, y_val, w_val, y_val_raw = held_out(VAL)
    names = _table_feature_names(cfg, table, None, [*cfg.drop_columns, *targets, *extras])
    rows = RowKeyed(
        table, plan, mean, std, tuple(int(c) for c in shard_counts), tally.n_features, (TRAIN,), target_mean, target_std
    )
    regression_fields: dict[str, Any] = (
        {}
        if not regression
        else dict(
            task="regression",
            target_names=target_names,
            target_mean=target_mean,
            target_std=target_std,
            y_test_raw=y_test_raw,
            y_val_raw=y_val_raw,
        )
    )
    return Dataset(
        None,
        None,
        x_test,
        y_test,
        n_classes,
        _image_shape(cfg, tally.n_features),
        x_val,
        y_val,
        rows,
        n_train,
        (n_test, n_val),
        mean,
        std,
        names,
        tuple(missing.tolist()),
        tuple(fingerprint),
        w_test=w_test,
        w_val=w_val,
        train_weight_mean=None if tally.weight_sum is None else tally.weight_sum / n_train,
        **regression_fields,
    )


def _image_shape(cfg: DataConfig, n_features: int) -> tuple[int, int, int] | None:
    """``data.image_shape`` as ``(C, H, W)`` (checked against the features), else the source's own, else None."""
    if cfg.image_shape is None:
        return sources.image_shape(cfg.source)
    given = tuple(int(d) for d in cfg.image_shape)
    shape = (1, given[0], given[1]) if len(given) == 2 else (given[0], given[1], given[2])
    if int(np.prod(shape)) != n_features:
        raise DataError(
            f"data.image_shape: {list(cfg.image_shape)} holds {int(np.prod(shape))} values per "
            f"sample, data.source {cfg.source} has {n_features} features"
        )
    return shape


@dataclass(frozen=True)
class Shard:
    """One mapper's part of the training set (and its part of the held-out sets, when they are scored there)."""

    index: int
    x: np.ndarray  # (n_samples, n_features) float32
    y: np.ndarray  # (n_samples,) int64
    held_out: dict = field(default_factory=dict)  # TEST/VAL -> (x, y): this mapper's part, to score
    w: np.ndarray | None = None  # (n_samples,) float64 sample weights (data.weight_column), else None

    @property
    def n_samples(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class ShardSource:
    """The recipe for the shards: plain data that any engine can ship to its workers."""

    data: DataConfig
    seed: int
    mappers: int
    rows: RowKeyed | None = None  # a row-keyed source: each worker reads only its shards' rows
    task: str = "classification"  # model.task: how the labels are read (load_dataset)

    @classmethod
    def of_run(cls, config, rows: RowKeyed | None = None) -> ShardSource:
        """The shards' recipe of a run (an :class:`nnlib.config.Config`), as every engine's workers build it:
        its data, seed, mappers and ``model.task``; ``rows`` is the driver's survey of a row-keyed source."""
        return cls(config.data, config.seed, config.mappers, rows, config.model.task)

    def build(self, indices: list[int]) -> list[Shard]:
        """The shards ``indices``: what a worker runs. An in-memory source is loaded once and cut; a
        row-keyed one is streamed, keeping only these shards' rows."""
        if self.rows is not None:
            return self._read(indices)
        dataset = load_dataset(self.data, self.seed, task=self.task)
        assert dataset.x_train is not None and dataset.y_train is not None  # a source read whole
        parts = partition(dataset.y_train, self.mappers, self.data.partition, self.seed, self.data.skew_alpha)
        w = dataset.w_train
        return [
            Shard(i, dataset.x_train[parts[i]], dataset.y_train[parts[i]], w=None if w is None else w[parts[i]])
            for i in indices
        ]

    def _read(self, indices: list[int]) -> list[Shard]:
        rows = self.rows
        assert rows is not None  # a row-keyed source's recipe
        fillers: list[ShardFiller] = []
        try:
            fillers = [ShardFiller(i, rows, self.data) for i in indices]
            spans = [rows.plan.span(i) for i in indices]
            for block in rows.table.blocks(span=(min(s[0] for s in spans), max(s[1] for s in spans))):
                for filler in fillers:
                    filler.add(*block)
            return [filler.finish() for filler in fillers]
        except BaseException:
            for filler in fillers:  # nothing half-written stays
                filler.discard()
            raise


class ShardFiller(RowFiller):
    """Shard ``index`` of a row-keyed source (with its part of the held-out rows when the mappers score them).

    Under ``data.shard_storage: disk`` (``data``) the training rows' features, labels or targets and weights
    are written to a scratch folder as their blocks arrive (:class:`nnlib.data.shard_files.BuildFolder`) and
    standardised there block by block: the shard's ``x``, ``y``, ``w`` are then
    :class:`nnlib.data.shard_files.DiskArray` of the same bits as in memory, and the filler holds one block at a
    time. Held-out rows stay in memory. A failed write raises :class:`DataError` naming the folder.
    """

    def __init__(self, index: int, rows: RowKeyed, data: DataConfig | None = None):
        self.index, self.rows = index, rows
        self.build = None
        allocate = None
        if data is not None and data.shard_storage == "disk":
            from nnlib.data.shard_files import BuildFolder

            build = self.build = BuildFolder(data, index)

            def allocate(role, name, shape, dtype):
                return build.array(name, shape, dtype) if role == TRAIN else np.empty(shape, dtype)

        super().__init__(
            rows.plan.positions(index, rows.mapper_roles),
            rows.n_features,
            rows.table.y_tail,
            rows.table.weighted,
            allocate,
        )

    def add(self, pos, x, y, w=None, v=None) -> None:
        try:
            super().add(pos, x, y, w, v)
        except OSError as exc:
            if self.build is None:
                raise
            raise self.build.error(exc) from None

    def discard(self) -> None:
        """Remove what was written of the shard (``data.shard_storage: disk``)."""
        if self.build is not None:
            self.build.remove()

    def finish(self) -> Shard:
        """The shard, its features standardised in place (and its regression targets with the training
        targets' statistics, as :func:`load_columns` standardises them)."""
        try:
            return self._finish()
        except OSError as exc:
            if self.build is None:
                raise
            raise self.build.error(exc) from None
        except BaseException:
            self.discard()
            raise

    def _finish(self) -> Shard:
        where = f"data.source {self.rows.table.source}: shard {self.index}"
        parts = self.arrays(where)
        for role, (x, *_) in parts.items():
            label, positions = f"{where} ({ROLE_NAMES[role]} rows)", self.parts[role][0]
            if isinstance(x, np.ndarray):
                with np.errstate(over="ignore"):
                    standardize_into(x, x, self.rows.mean, self.rows.std)
                check_standardized(x, label, positions)
                continue
            for lo, hi in x.blocks():  # on disk: block by block, the same arithmetic as standardize_into
                block = x.read(lo, hi)
                if self.rows.mean is not None:
                    with np.errstate(over="ignore"):
                        block = ((block.astype(np.float64) - self.rows.mean) / self.rows.std).astype(np.float32)
                    x.write(lo, block)
                check_standardized(block, label, positions[lo:hi])
        x, y, *w = parts.pop(TRAIN)
        if len(y) == 0:
            raise DataError(f"data.source {self.rows.table.source}: shard {self.index} holds no training rows")
        mean, std = self.rows.target_mean, self.rows.target_std
        held = {role: part[:2] for role, part in parts.items()}
        if self.build is None:
            if mean is not None and std is not None:
                y = (y - mean[0]) / std[0] if y.ndim == 1 else (y - mean) / std
            return Shard(self.index, x, y, held, w[0] if w else None)
        if mean is not None and std is not None:
            for lo, hi in y.blocks():
                block = y.read(lo, hi)
                y.write(lo, (block - mean[0]) / std[0] if block.ndim == 1 else (block - mean) / std)
        arrays = self.build.opened()
        self.parts = {}  # the filler lets go of its files: the shard's arrays own the folder now
        return Shard(self.index, arrays["x"], arrays["y"], held, arrays.get("w"))  # type: ignore[arg-type]


def _class_labels(y, n_rows: int, where: str) -> np.ndarray:
    """:func:`check_labels`, whose refusal of fractional labels suggests ``model.task=regression``."""
    try:
        return check_labels(y, n_rows, where)
    except DataError as exc:
        values = np.asarray(y)
        if (
            np.issubdtype(values.dtype, np.floating)
            and np.isfinite(values).all()
            and (values != np.round(values)).any()
        ):
            raise DataError(f"{exc}; for numeric targets set model.task=regression") from None
        raise


@dataclass
class _Columns:
    """One file's rows as :func:`load_columns` reads them (float64 features, labels or targets, weights, flags)."""

    x: np.ndarray
    y: np.ndarray  # int64 (n,) classes, or float64 targets (n,) / (n, t)
    w: np.ndarray | None  # (n,) float64 weights
    v: np.ndarray | None  # (n,) bool validation flags
    names: tuple[str, ...] | None  # feature columns
    target_names: tuple[str, ...]
    test: _Columns | None = None  # an .npz's own x_test/y_test


def _table(path: str, key: str):
    """A CSV file or a local Parquet file, directory or glob as one Arrow table."""
    if tables.is_uri(path):
        raise DataError(
            f"{key}: {path}: model.task=regression, data.weight_column and data.validation_column "
            "read a local file so far (.csv, .npz, .parquet), got a URI"
        )
    if path.lower().endswith(".csv"):
        return sources.read_csv_table(Path(path), key)
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sources.parquet_files(path) or [Path(path)]
    if not files:
        raise DataError(f"{key}: {path} holds no .parquet file")
    try:
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{key}: {path} is not a readable Parquet source ({str(exc).splitlines()[0]})") from None


def _column_values(table, path: str, key: str, name: str, what: str) -> np.ndarray:
    """Column ``name`` of ``table`` as numpy; missing or holding empty cells: one line naming it."""
    import pyarrow as pa

    if name not in table.column_names:
        raise DataError(f"{key}: {path} has no {what} '{name}' ({sources.columns_text(table.column_names)})")
    col = table.column(name)
    if col.null_count:
        raise DataError(
            f"{key}: {path} {what} '{name}' has {col.null_count} empty (null) cell(s); every row needs a value"
        )
    if pa.types.is_boolean(col.type):
        return col.to_numpy(zero_copy_only=False).astype(bool)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DataError(f"{key}: {path} {what} '{name}' must be numeric, got {col.type}")
    return col.to_numpy(zero_copy_only=False)


def _targets(y, n: int, where: str, names: tuple[str, ...]) -> np.ndarray:
    """Regression targets: finite numbers, ``(n,)`` or ``(n, t)``, as float64."""
    y = np.asarray(y)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise DataError(f"{where}: targets must be (rows,) or (rows, targets) for {n} rows, got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise DataError(f"{where}: targets must be numeric, got dtype {y.dtype}")
    y = y.astype(np.float64)
    bad = ~np.isfinite(y.reshape(n, -1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{where}: target '{names[col]}' must be finite, got {y.reshape(n, -1)[row, col]} at sample {row}"
        )
    return y


def _weights(w, n: int, where: str) -> np.ndarray:
    """Sample weights: ``(n,)`` finite numbers ``>= 0``, not all 0, as float64."""
    w = np.asarray(w)
    if w.shape != (n,):
        raise DataError(f"{where}: weights must be one per row ({n}), got shape {w.shape}")
    if w.dtype == bool or not np.issubdtype(w.dtype, np.number) or np.issubdtype(w.dtype, np.complexfloating):
        raise DataError(f"{where}: weights must be numbers >= 0, got dtype {w.dtype}")
    w = w.astype(np.float64)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: weights must be finite numbers >= 0, got {w[i]} at sample {i}")
    if not w.any():
        raise DataError(f"{where}: every weight is 0; at least one row must weigh more")
    return w


def _flags(v, n: int, where: str) -> np.ndarray:
    """The validation column: ``(n,)`` booleans."""
    v = np.asarray(v)
    if v.shape != (n,) or v.dtype != bool:
        raise DataError(
            f"{where}: must be boolean (true/false), got dtype {v.dtype}"
            + ("" if v.shape == (n,) else f" and shape {v.shape}")
        )
    return v


def _read_columns(cfg: DataConfig, path: str, key: str, regression: bool) -> _Columns:
    """A file's features, labels or targets, weights and validation flags (the last two when configured)."""
    where = f"{key} {path}"
    if path.lower().endswith(".npz"):
        sources.check_exists(Path(path), key)
        arrays = sources.read_npz(Path(path), key)
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            extra = {}
            for what, name in (("weight_column", cfg.weight_column), ("validation_column", cfg.validation_column)):
                if name is not None and name not in f.files:
                    raise DataError(f"{where}: data.{what}: no array '{name}' (arrays are {sorted(f.files)})")
                extra[what] = None if name is None else f[name]
        x = check_features(arrays[0], where)
        n = x.shape[0]
        y_raw = np.asarray(arrays[1])
        t = 1 if y_raw.ndim < 2 else y_raw.shape[1]
        target_names = ("y",) if y_raw.ndim < 2 else tuple(f"y{j}" for j in range(t))
        y = _targets(y_raw, n, where, target_names) if regression else _class_labels(y_raw, n, where)
        w = (
            None
            if extra["weight_column"] is None
            else _weights(extra["weight_column"], n, f"{where} (data.weight_column '{cfg.weight_column}')")
        )
        v = (
            None
            if extra["validation_column"] is None
            else _flags(extra["validation_column"], n, f"{where} (data.validation_column '{cfg.validation_column}')")
        )
        test = None
        if len(arrays) == 4:
            tw = f"{where} (x_test)"
            xt = check_features(arrays[2], tw)
            yt = (
                _targets(arrays[3], xt.shape[0], tw, target_names)
                if regression
                else _class_labels(arrays[3], xt.shape[0], tw)
            )
            _check_width(xt, x.shape[1], tw)
            test = _Columns(xt, yt, None, None, None, target_names)
        return _Columns(x, y, w, v, None, target_names, test)
    table = _table(path, key)
    targets = cfg.targets
    extras = [c for c in (cfg.weight_column, cfg.validation_column) if c is not None]
    label_key = "data.label_columns" if cfg.label_columns else "data.label_column"
    for what, wanted in (
        (label_key, targets),
        ("data.weight_column", [cfg.weight_column]),
        ("data.validation_column", [cfg.validation_column]),
    ):
        for name in wanted:  # named by the key that asked for it, not as a column left out of the features
            if name is not None and name not in table.column_names:
                raise DataError(f"{what}: {path} has no column '{name}' ({sources.columns_text(table.column_names)})")
    for name in cfg.feature_columns or ():
        if name in targets or name in extras:
            raise DataError(f"data.feature_columns: '{name}' is a label, weight or validation column, not a feature")
    x, _ = sources.table_to_arrays(
        table,
        Path(path),
        key,
        None,
        cfg.features_column,
        cfg.key_column,
        cfg.feature_columns,
        [*cfg.drop_columns, *targets, *extras],
    )
    x = check_features(x, where)
    n = x.shape[0]
    names = None
    if cfg.features_column is None:
        names = tuple(
            sources.feature_columns(
                table.column_names, None, cfg.key_column, cfg.feature_columns, [*cfg.drop_columns, *targets, *extras]
            )
        )
    label_what = "target column" if regression else "label column"
    if regression and len(targets) == 1 and tables._is_list(table.column(targets[0]).type):  # several targets
        y_list = tables._target_values(table, where, (targets[0],), 0)  # as a row-keyed reader reads a block
        target_names = tuple(f"{targets[0]}_{j}" for j in range(y_list.shape[1]))
        columns = [y_list]
    else:
        target_names = tuple(targets)
        columns = [_column_values(table, path, key, name, label_what) for name in targets]
    if regression and columns[0].ndim == 2:
        y = _targets(columns[0], n, where, target_names)
    elif regression:
        for name, col in zip(targets, columns, strict=True):
            if col.dtype == bool:
                raise DataError(f"{where}: target column '{name}' must be numeric, got bool")
        y = _targets(np.stack(columns, axis=1) if len(columns) > 1 else columns[0], n, where, target_names)
    else:
        y = _class_labels(columns[0], n, f"{where} (label column '{targets[0]}')")
    w = v = None
    if cfg.weight_column is not None:
        w = _weights(
            _column_values(table, path, key, cfg.weight_column, "weight column"),
            n,
            f"{where} (data.weight_column '{cfg.weight_column}')",
        )
    if cfg.validation_column is not None:
        v = _flags(
            _column_values(table, path, key, cfg.validation_column, "validation column"),
            n,
            f"{where} (data.validation_column '{cfg.validation_column}')",
        )
    return _Columns(x, y, w, v, names, target_names)


def _digest(x: np.ndarray, y: np.ndarray, w, v, first: int = 0) -> int:
    """:func:`row_digest` of rows with float targets, weights and flags (all taken as feature bits)."""
    n = len(x)
    parts = [x, np.asarray(y, np.float64).reshape(n, -1)]
    parts += [] if w is None else [w[:, None]]
    parts += [] if v is None else [v[:, None].astype(np.float64)]
    return row_digest(first + np.arange(n), np.concatenate(parts, axis=1), np.zeros(n, np.int64))


def load_columns(cfg: DataConfig, seed: int, task: str = "classification") -> Dataset:
    """A source read whole with its targets (``task="regression"``), weights (``data.weight_column``) and
    validation flags (``data.validation_column``).

    The test set is drawn as :func:`load_dataset` draws it (``data.test_fraction``, the file's own test set,
    or ``data.test_source``); of the training rows, those ``data.validation_column`` marks (a marked row
    drawn for the test set stays a test row) or a seeded ``data.validation_fraction`` validate. Regression
    targets are float64, standardised with the training rows' mean and standard deviation per target (a
    constant target keeps a scale of 1) under ``data.standardize_target``; weights are float64 ``(n,)``.
    Raises :class:`DataError` (one line) for a missing, empty, non-numeric or non-finite target, label,
    weight or flag, negative weights or all weights 0, and a validation column that is not boolean or
    marks no training row or every one.
    """
    regression = task == "regression"
    src = cfg.source
    read = _read_columns(cfg, src, "data.source", regression)
    x, y, w, v = read.x, read.y, read.w, read.v
    fingerprint = [("data.source", _digest(x, y, w, v))]
    w_test = None
    if cfg.test_source is not None:
        if read.test is not None:
            raise DataError(f"data.test_source: {src} already holds x_test/y_test; give one or the other, not both")
        test = _read_columns(cfg, cfg.test_source, "data.test_source", regression)
        _check_width(test.x, x.shape[1], f"data.test_source {cfg.test_source}")
        if regression and np.asarray(test.y).reshape(len(test.y), -1).shape[1] != y.reshape(len(y), -1).shape[1]:
            raise DataError(
                f"data.test_source {cfg.test_source}: {len(test.target_names)} target(s), "
                f"data.source has {len(read.target_names)}"
            )
        fingerprint.append(("data.test_source", _digest(test.x, test.y, test.w, test.v)))
        x_train, y_train, w_train, v_train = x, y, w, v
        x_test, y_test, w_test = test.x, test.y, test.w
    elif read.test is not None:
        x_train, y_train, w_train, v_train = x, y, w, v
        x_test, y_test = read.test.x, read.test.y
        fingerprint[0] = ("data.source", add_digests(fingerprint[0][1], _digest(x_test, y_test, None, None, -len(y))))
    else:
        train_idx, test_idx = _split(x.shape[0], cfg.test_fraction, seed)
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        w_train, w_test = (None, None) if w is None else (w[train_idx], w[test_idx])
        v_train = None if v is None else v[train_idx]
    x_val = y_val = w_val = None
    if v_train is not None:
        marked = int(v_train.sum())
        if marked in (0, len(v_train)):
            raise DataError(
                f"data.source {src}: data.validation_column '{cfg.validation_column}' marks "
                f"{'no' if marked == 0 else 'every'} training row ({marked} of {len(v_train)}); it must "
                "mark some rows for validation and leave others for training"
            )
        keep, held = np.flatnonzero(~v_train), np.flatnonzero(v_train)
    elif cfg.validation_fraction:
        keep, held = _split(len(y_train), cfg.validation_fraction, seed, 0x7A11, "data.validation_fraction")
    if v_train is not None or cfg.validation_fraction:
        x_train, y_train, x_val, y_val = x_train[keep], y_train[keep], x_train[held], y_train[held]
        if w_train is not None:
            w_train, w_val = w_train[keep], w_train[held]
    if w_train is not None and not w_train.any():
        raise DataError(
            f"data.source {src}: data.weight_column '{cfg.weight_column}': every training row "
            "weighs 0; at least one must weigh more"
        )
    mean, std, x_train, x_test, x_val = _standardized_float32(cfg, src, x_train, x_test, x_val)
    common = dict(
        mean=mean,
        std=std,
        feature_names=read.names,
        w_train=w_train,
        w_test=w_test,
        w_val=w_val,
        fingerprint=tuple((key, f"{digest:016x}") for key, digest in fingerprint),
    )
    shape = _image_shape(cfg, x_train.shape[1])
    if not regression:
        n_classes, missing = _class_count(y_train, y_test, src, _test_where(cfg))
        return Dataset(
            x_train,
            y_train,
            x_test,
            y_test,
            n_classes,
            shape,
            x_val,
            y_val,
            missing_classes=tuple(missing.tolist()),
            **common,
        )
    t = y_train.reshape(len(y_train), -1).shape[1]
    target_mean = target_std = None
    y_test_raw, y_val_raw = y_test, y_val
    if cfg.standardize_target:
        target_mean = y_train.reshape(len(y_train), t).mean(axis=0)
        target_std = y_train.reshape(len(y_train), t).std(axis=0)
        target_std[target_std == 0] = 1.0
        scale = (
            (lambda a: (a - target_mean[0]) / target_std[0])
            if y_train.ndim == 1
            else (lambda a: (a - target_mean) / target_std)
        )
        y_train, y_test = scale(y_train), scale(y_test)
        y_val = None if y_val is None else scale(y_val)
    return Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        0,
        shape,
        x_val,
        y_val,
        task="regression",
        target_names=read.target_names,
        target_mean=target_mean,
        target_std=target_std,
        y_test_raw=y_test_raw,
        y_val_raw=y_val_raw,
        **common,
    )
