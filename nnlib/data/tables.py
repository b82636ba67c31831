"""Reading a Parquet source block by block in this process (the local and MPI engines; Spark has its own).

A :class:`ParquetSource` is the list of files and their row counts (from the
files' footers, without reading the data). :func:`blocks` yields the rows in
position order, ``BLOCK_ROWS`` at a time, as checked arrays; a reader keeps
only the rows it needs, so its memory grows with what it keeps, not with the
dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from nnlib.data import sources
from nnlib.data.checks import check_features, check_labels
from nnlib.data.rows import RowFiller, RowPlan, Tally, merge_in_order
from nnlib.errors import DataError, first_line

BLOCK_ROWS = 65536  # rows read and checked at a time


def is_row_keyed(source: str) -> bool:
    """True for sources read row by row: a .parquet file, a Parquet directory or glob, a URI."""
    return is_uri(source) or source.lower().endswith(".parquet") or sources.parquet_files(source) is not None


def is_uri(source: str) -> bool:
    return "://" in source


@dataclass(frozen=True)
class ParquetSource:
    """A Parquet dataset's files in position order and how many rows each holds."""

    source: str
    files: tuple[str, ...]
    file_rows: tuple[int, ...]
    label_column: str
    features_column: str | None
    key: str = "data.source"
    key_column: str | None = None  # data.key_column: a row key, not a feature
    column_names: tuple[str, ...] = ()  # the files' columns, when read from their schema here
    chosen_columns: tuple[str, ...] | None = None  # data.feature_columns: only these are features
    dropped_columns: tuple[str, ...] = ()  # data.drop_columns: these are not features
    # what a source read as a load_columns source is read (model.task=regression, data.weight_column,
    # data.validation_column): each block carries float64 targets (or int64 labels), weights and flags
    task: str = "classification"
    label_columns: tuple[str, ...] | None = None  # data.label_columns: several target columns, in order
    weight_column: str | None = None
    validation_column: str | None = None
    target_width: int = 0  # regression: 0 for (rows,) targets, else t of (rows, t) (known after the survey)

    @property
    def carries(self) -> bool:
        """True when blocks are ``(positions, x, y, w, v)`` (:func:`carried_arrays`), not ``(positions, x, y)``."""
        return self.task == "regression" or self.weight_column is not None or self.validation_column is not None

    @property
    def targets(self) -> tuple[str, ...]:
        """The label or target columns: ``data.label_columns``, else the label column."""
        return self.label_columns or (self.label_column,)

    @property
    def y_tail(self) -> tuple | None:
        """How a :class:`nnlib.data.rows.RowFiller` keeps the labels: None (int64 classes), ``()`` or ``(t,)``."""
        if self.task != "regression":
            return None
        return (self.target_width,) if self.target_width else ()

    @property
    def weighted(self) -> bool:
        return self.weight_column is not None

    @property
    def n_rows(self) -> int:
        return sum(self.file_rows)

    @property
    def offsets(self) -> np.ndarray:
        """The position of each file's first row."""
        return np.concatenate([[0], np.cumsum(self.file_rows)[:-1]]).astype(np.int64)

    @classmethod
    def open(
        cls,
        source: str,
        label_column: str,
        features_column: str | None,
        key: str = "data.source",
        key_column: str | None = None,
        check_columns: bool = True,
    ) -> ParquetSource:
        """List the files (sorted by path) and read their footers; a bad file or schema is one line naming it,
        and so is (with ``check_columns``) a label or features column the files lack (:func:`check_schema`)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if is_uri(source):
            raise DataError(
                f"{key}: {source} is a URI, which only engine=spark reads (Spark's own readers); "
                "other engines read local paths"
            )
        files = sources.parquet_files(source)
        if files is None:
            sources.check_exists(Path(source), key)
            files = [Path(source)]
        if not files:
            raise DataError(f"{key}: {source} holds no .parquet files")
        names = [str(f) for f in files]
        rows, first = [], None
        for name in names:
            try:
                meta = pq.ParquetFile(name).metadata
            except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
                raise DataError(f"{key}: {name} is not a readable parquet file ({first_line(exc)})") from None
            schema = meta.schema.to_arrow_schema()
            if first is None:
                first = (name, schema)
            elif not schema.equals(first[1]):
                raise DataError(
                    f"{key}: {name} has columns {schema.names[:10]} of other types than {first[0]}'s "
                    f"{first[1].names[:10]}; every file of a dataset needs the same schema"
                )
            rows.append(meta.num_rows)
        if sum(rows) == 0:
            raise DataError(f"{key}: {source} is empty (its Parquet files hold no rows)")
        assert first is not None  # a source has at least one file (parquet_files)
        if check_columns:
            check_schema(arrow_layout(first[1]), source, label_column, features_column, key)
        return cls(
            source, tuple(names), tuple(rows), label_column, features_column, key, key_column, tuple(first[1].names)
        )

    def columns(self) -> list[str] | None:
        if self.features_column is None:
            return None
        if not self.carries:
            return [self.features_column, self.label_column]
        return [
            self.features_column,
            *self.targets,
            *(c for c in (self.weight_column, self.validation_column) if c is not None),
        ]

    def block(self, data, name: str, first_row: int) -> tuple:
        """An Arrow table of rows of file (or part) ``name`` as checked arrays: ``(x float64, y int64)``, or for
        a source that :attr:`carries` more, ``(x, y, w, v)`` (:func:`carried_arrays`)."""
        if self.carries:
            return carried_arrays(data, name, self, first_row)
        return table_arrays(
            data,
            name,
            self.key,
            self.label_column,
            self.features_column,
            first_row,
            self.key_column,
            self.chosen_columns,
            self.dropped_columns,
        )

    def blocks(
        self, files: list[int] | None = None, span: tuple[int, int] | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(positions, x float64, y int64)`` of the rows of the files ``files`` (default all), in position order
        (``(positions, x, y, w, v)`` for a source that :attr:`carries` targets, weights or flags).

        With ``span = (lo, hi)`` only the files and row groups holding some
        position in ``[lo, hi)`` are read (a ``contiguous`` shard's run), though
        a block may hold rows on either side of it.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        lo, hi = (0, self.n_rows) if span is None else span
        offsets = self.offsets
        for i in range(len(self.files)) if files is None else files:
            name, start = self.files[i], int(offsets[i])
            if start >= hi or start + self.file_rows[i] <= lo:
                continue
            try:
                parquet = pq.ParquetFile(name)
                groups, first, group_start = [], None, start  # the kept groups are one run: [lo, hi) is an interval
                for g in range(parquet.metadata.num_row_groups):
                    n = parquet.metadata.row_group(g).num_rows
                    if n and group_start < hi and group_start + n > lo:
                        groups.append(g)
                        first = group_start if first is None else first
                    group_start += n
                if not groups or first is None:
                    continue
                for batch in parquet.iter_batches(batch_size=BLOCK_ROWS, row_groups=groups, columns=self.columns()):
                    arrays = self.block(pa.Table.from_batches([batch]), name, first - start)
                    yield (np.arange(first, first + len(arrays[0]), dtype=np.int64), *arrays)
                    first += len(arrays[0])
            except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
                raise DataError(f"{self.key}: {name} is not a readable parquet file ({first_line(exc)})") from None


@dataclass(frozen=True)
class Layout:
    """A table source's columns as its schema tells them, read without its rows.

    ``names`` in the table's order; ``lists``: the list columns and the values
    a row of each holds (from a fixed-size list type, else the first row;
    None where no row was read); ``other``: the columns that are neither
    numbers nor lists, with their type as text.
    """

    names: tuple[str, ...]
    lists: dict
    other: dict


def arrow_layout(schema, first_row=None) -> Layout:
    """The :class:`Layout` of an Arrow schema; ``first_row()`` gives ``{list column: its length}`` of a row."""
    import pyarrow as pa

    lists, other = {}, {}
    for field in schema:
        t = field.type
        if pa.types.is_fixed_size_list(t):
            lists[field.name] = t.list_size
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            lists[field.name] = None
        elif not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
            other[field.name] = str(t)
    unknown = [name for name, n in lists.items() if n is None]
    if unknown and first_row is not None:
        lists.update(first_row(unknown))
    return Layout(tuple(schema.names), lists, other)


def parquet_layout(files: list, key: str = "data.source") -> Layout:
    """The :class:`Layout` of a Parquet dataset's first file (its footer, and one row of its list columns)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def first_row(columns: list[str]) -> dict:
        for name in files:  # the first file holding a row
            batch = next(pq.ParquetFile(name).iter_batches(batch_size=1, columns=columns), None)
            if batch is not None and batch.num_rows:
                return {c: pc.list_value_length(batch.column(c))[0].as_py() for c in columns}
        return {}

    try:
        return arrow_layout(pq.read_schema(files[0]), first_row)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise DataError(f"{key}: {files[0]} is not a readable parquet file ({first_line(exc)})") from None


def check_schema(
    layout: Layout, source: str, label_column: str | None, features_column: str | None, key: str = "data.source"
) -> None:
    """A training source's label column and features column are among its columns, the features column
    holding lists; else one line with the columns it has and the setting that reads them."""
    names = list(layout.names)
    if label_column is not None and label_column not in names:
        raise DataError(
            f"{key}: {source} has no label column '{label_column}' (set data.label_column; "
            f"{sources.columns_text(names)})"
        )
    if features_column is None or features_column in layout.lists:
        return
    if features_column not in names:
        problem = f"has no list column '{features_column}' (data.features_column) to read the features from"
    else:
        problem = (
            f"holds no lists in its features column '{features_column}' (data.features_column), but "
            f"{layout.other.get(features_column, 'numbers')}"
        )
    rest = [c for c in names if c != label_column]
    lists = [c for c in rest if c in layout.lists]
    separate = [c for c in rest if c not in layout.lists and c not in layout.other]
    if lists:
        fix = f"; to read the list column '{lists[0]}', set data.features_column={lists[0]}"
    elif separate:
        fix = (
            f"; to read its {len(separate)} columns {separate[:10]} as the features, leave "
            "data.features_column unset (null)"
        )
    else:
        fix = ""
    raise DataError(f"{key}: {source} {problem}; its {sources.columns_text(names)}{fix}")


def check_here(cfg) -> None:
    """What a training source's footers tell, checked on this machine before an engine that reads the source
    elsewhere (Spark) starts, so that such an error costs no JVM start: ``cfg`` (a ``DataConfig``)'s label,
    features and key columns and its chosen and dropped columns against the first file's schema
    (:func:`check_schema`, :func:`check_feature_columns`), and ``data.test_source`` (read here in any case)
    exists with the same feature columns. A URI, or a path this machine does not hold, is left to that
    engine."""
    source = cfg.source
    layout = _local_layout(source, "data.source")
    features = None if layout is None else check_feature_columns(layout, source, cfg, "data.source")
    _check_test_source(cfg, features)


def check_before_launch(cfg) -> None:
    """The checks of a training source that need no pass over its rows, on this machine, before an engine
    starts processes that would each find the same error (mpiexec's ranks): a file source exists, a CSV
    file's header has the label, key, chosen and dropped columns; a Parquet source as :func:`check_here`."""
    source = cfg.source
    if source in sources.BUILTIN or is_uri(source):
        return
    if is_row_keyed(source):
        check_here(cfg)
        return
    path = Path(source)
    sources.check_exists(path, "data.source")
    if path.suffix.lower() == ".csv":
        names = sources.csv_columns(path, "data.source")
        if cfg.label_column not in names:
            raise DataError(
                f"data.source: {path} has no label column '{cfg.label_column}' (set data.label_column; "
                f"{sources.columns_text(names)})"
            )
        if cfg.key_column is not None and cfg.key_column not in names:
            raise DataError(
                f"data.source: {path} has no key column '{cfg.key_column}' (set data.key_column; "
                f"{sources.columns_text(names)})"
            )
        sources.feature_columns(names, cfg.label_column, cfg.key_column, cfg.feature_columns, cfg.drop_columns)
    _check_test_source(cfg, None)


def _check_test_source(cfg, features: list[str] | None) -> None:
    """``data.test_source`` exists; a Parquet one has the feature columns ``features`` (data.source's)."""
    test = cfg.test_source
    if test is None or is_uri(test):
        return
    if not is_row_keyed(test):
        sources.check_exists(Path(test), "data.test_source")
        return
    ParquetSource.open(
        test, cfg.label_column, cfg.features_column, "data.test_source", cfg.key_column, check_columns=False
    )  # the files exist and are Parquet files of one schema
    layout = _local_layout(test, "data.test_source")
    assert layout is not None  # the source is local and its files were opened above
    test_features = check_feature_columns(layout, test, cfg, "data.test_source")
    if features is not None and test_features != features:
        raise DataError(
            f"data.test_source: {test}'s feature columns {test_features[:10]} are not data.source's {features[:10]}"
        )


def _local_layout(source: str, key: str) -> Layout | None:
    """The :class:`Layout` of a Parquet source this machine holds; None for a URI or a path it does not."""
    files = [] if is_uri(source) else sources.parquet_files(source)
    files = ([Path(source)] if Path(source).is_file() else []) if files is None else files
    return parquet_layout(files, key) if files else None


def check_feature_columns(layout: Layout, source: str, cfg, key: str) -> list[str]:
    """The feature columns of a training source's :class:`Layout` (``[data.features_column]`` for a list
    column), checked: label, features and key columns present (:func:`check_schema`), the chosen and dropped
    columns present, separate feature columns numeric (a list column among them names the setting that reads
    it)."""
    check_schema(layout, source, cfg.label_column, cfg.features_column, key)
    names = list(layout.names)
    if cfg.key_column is not None and cfg.key_column not in names:
        raise DataError(
            f"{key}: {source} has no key column '{cfg.key_column}' (set data.key_column; {sources.columns_text(names)})"
        )
    if cfg.features_column is not None:
        return [cfg.features_column]
    found = sources.feature_columns(names, cfg.label_column, cfg.key_column, cfg.feature_columns, cfg.drop_columns)
    for name in found:
        if name in layout.lists:
            raise DataError(
                f"{key}: {source} column '{name}' holds lists, not numbers; to read it as the features, "
                f"set data.features_column={name}"
            )
        if name in layout.other:
            raise DataError(
                f"{key}: {source} column '{name}' must be numeric, got {layout.other[name]} "
                f"(non-numeric cells); leave it out of the features with --set data.drop_columns=[{name}]"
            )
    return found


def schema_names(source: str) -> tuple[str, ...]:
    """The column names of a local Parquet source's first file (its footer alone is read); () for none."""
    import pyarrow.parquet as pq

    files = sources.parquet_files(source)
    files = [Path(source)] if files is None else files
    return tuple(pq.read_schema(files[0]).names) if files else ()


def table_arrays(
    table,
    name: str,
    key: str,
    label_column: str,
    features_column: str | None,
    first_row: int,
    key_column: str | None = None,
    chosen: tuple[str, ...] | None = None,
    dropped: tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """A block's checked ``(x float64, y int64)``; a bad value names the file and its row there."""
    x, y = sources.table_to_arrays(
        table,
        Path(name),
        key,
        label_column,
        features_column,
        key_column,
        None if chosen is None else list(chosen),
        list(dropped),
    )
    where = f"{key} {name}"
    names = (
        None
        if features_column is not None
        else sources.feature_columns(table.column_names, label_column, key_column, chosen, dropped)
    )
    x = check_features(x, where, first_row, names)
    return x, check_labels(y, len(x), where, first_row)


def _null_row(col) -> int:
    import pyarrow.compute as pc

    return int(np.argmax(pc.is_null(col).to_numpy(zero_copy_only=False)))


def _numeric(col, where: str, what: str, first_row: int, needs: str) -> np.ndarray:
    """A scalar column of a block as float64 (its own dtype for booleans: refused by the caller)."""
    import pyarrow as pa

    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise DataError(f"{where}: {what} must be numeric, got {col.type}")
    if col.null_count:
        raise DataError(
            f"{where}: {what} has an empty (null) value at sample {first_row + _null_row(col)}; every row needs {needs}"
        )
    return col.to_numpy(zero_copy_only=False).astype(np.float64)


def _target_values(data, where: str, names: tuple[str, ...], first_row: int) -> np.ndarray:
    """float64 targets of a block: ``(rows,)`` for one numeric column, ``(rows, t)`` for several columns or
    one column of lists (an ML Vector's or array's values), every value finite."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = data.num_rows
    if len(names) == 1 and _is_list(data.column(names[0]).type):
        name = names[0]
        col = data.column(name).combine_chunks()
        what = f"target column '{name}'"
        if col.null_count:
            raise DataError(
                f"{where}: {what} has an empty (null) value at sample {first_row + _null_row(col)}; "
                "every row needs its targets"
            )
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if n and (lengths != lengths[0]).any():
            i = int(np.argmax(lengths != lengths[0]))
            raise DataError(
                f"{where}: {what} must hold lists of one length (one value per target), got "
                f"{lengths[0]} and {lengths[i]} values at sample {first_row + i}"
            )
        if n and lengths[0] == 0:
            raise DataError(f"{where}: {what} holds empty lists; it needs one value per target")
        values = pc.list_flatten(col)
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
            raise DataError(f"{where}: {what} must hold numbers, got lists of {values.type}")
        if values.null_count:
            raise DataError(
                f"{where}: {what} has an empty (null) value at sample "
                f"{first_row + _null_row(values) // int(lengths[0])}; every target needs a value"
            )
        y = values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(n, -1)
        labels = [f"target column '{name}' (target {j})" for j in range(y.shape[1])]
    else:
        columns = [_numeric(data.column(c), where, f"target column '{c}'", first_row, "a target") for c in names]
        y = np.stack(columns, axis=1) if len(columns) > 1 else columns[0]
        labels = [f"target column '{c}'" for c in names]
    bad = ~np.isfinite(y.reshape(n, -1))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{where}: {labels[col]} must be finite, got {y.reshape(n, -1)[row, col]} at sample {first_row + row}"
        )
    return y


def _is_list(t) -> bool:
    import pyarrow as pa

    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def carried_arrays(data, name: str, table: ParquetSource, first_row: int) -> tuple:
    """A block's checked ``(x float64, y, w, v)`` for a source read as :func:`nnlib.data.dataset.load_columns`
    reads one: ``y`` float64 targets ``(rows,)`` or ``(rows, t)`` under regression, else int64 class labels;
    ``w`` float64 weights ``>= 0`` (None without ``data.weight_column``), ``v`` bool validation flags (None
    without ``data.validation_column``). A bad value is one DataError line naming the file (or part), the
    column and the sample (its index in the file): a non-numeric, null or non-finite target, a negative,
    null or non-finite weight, a flag column that is not boolean or holds a null.
    """
    import pyarrow as pa

    where = f"{table.key} {name}"
    targets = table.targets
    extras = [c for c in (table.weight_column, table.validation_column) if c is not None]
    for column in (*targets, *extras):
        if column not in data.column_names:
            raise DataError(f"{where}: has no column '{column}' ({sources.columns_text(data.column_names)})")
    dropped = [*table.dropped_columns, *targets, *extras]
    chosen = None if table.chosen_columns is None else list(table.chosen_columns)
    x, _ = sources.table_to_arrays(
        data, Path(name), table.key, None, table.features_column, table.key_column, chosen, dropped
    )
    names = (
        None
        if table.features_column is not None
        else sources.feature_columns(data.column_names, None, table.key_column, chosen, dropped)
    )
    x = check_features(x, where, first_row, names)
    if table.task == "regression":
        for column in targets:
            if pa.types.is_boolean(data.column(column).type):
                raise DataError(f"{where}: target column '{column}' must be numeric, got bool")
        y = _target_values(data, where, targets, first_row)
    else:
        col = data.column(targets[0])
        if _is_list(col.type):
            raise DataError(
                f"{where}: label column '{targets[0]}' must hold class indices 0, 1, ... (numbers), "
                f"got {col.type}; for several numeric targets set model.task=regression"
            )
        labels = _numeric(col, where, f"label column '{targets[0]}'", first_row, "a label")
        try:
            y = check_labels(labels, len(x), where, first_row)
        except DataError as exc:
            if np.isfinite(labels).all() and (labels != np.round(labels)).any():
                raise DataError(f"{exc}; for numeric targets set model.task=regression") from None
            raise
    w = v = None
    if table.weight_column is not None:
        what = f"weight column '{table.weight_column}' (data.weight_column)"
        col = data.column(table.weight_column)
        if pa.types.is_boolean(col.type):
            raise DataError(f"{where}: {what} must be numeric, got bool")
        w = _numeric(col, where, what, first_row, "a weight")
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{where}: {what} must hold finite numbers >= 0, got {w[i]} at sample {first_row + i}")
    if table.validation_column is not None:
        what = f"validation column '{table.validation_column}' (data.validation_column)"
        col = data.column(table.validation_column)
        if not pa.types.is_boolean(col.type):
            raise DataError(f"{where}: {what} must be boolean (true/false), got {col.type}")
        if col.null_count:
            raise DataError(
                f"{where}: {what} has an empty (null) value at sample {first_row + _null_row(col)}; "
                "every row needs true or false"
            )
        v = col.to_numpy(zero_copy_only=False).astype(bool)
    return x, y, w, v


def tally(table: ParquetSource, plan: RowPlan, files: list[int] | None = None) -> list[tuple[int, Tally]]:
    """The tallies of the blocks of ``files`` (default all), keyed by their first position."""
    return [plan.tally(*block) for block in table.blocks(files)]


class Reader(Protocol):
    """How a row-keyed (Parquet) source is read: the contract of the local, Spark and MPI readers.

    :func:`nnlib.data.dataset.load_row_keyed` calls ``open``, then ``survey``
    once, then ``rows`` for each held-out set it collects to the driver.
    """

    #: Held-out (test, validation) rows past this many bytes of float32 stay with the mappers, which score
    #: them (the engine's ``score``); ``None``: always collected to the driver.
    collect_limit_bytes: float | None

    def open(self, source: str, label_column: str, features_column: str | None) -> ParquetSource:
        """The source's files and schema, checked (a bad file or column is one line naming it)."""

    def survey(self, table: ParquetSource, plan: RowPlan) -> Tally:
        """One pass over every row: counts per role and shard, labels seen, moments, merged in position order."""

    def rows(self, table: ParquetSource, plan: RowPlan, role: int, n_features: int) -> tuple[np.ndarray, ...]:
        """``(x float32 (n, n_features), y int64 (n,))`` of every row with ``role``, in position order; for a
        source that carries targets and weights, ``y`` as ``table.y_tail`` says and ``w`` after it when
        ``table.weighted``."""


class LocalReader:
    """Reads a Parquet source with pyarrow in this process."""

    collect_limit_bytes: float | None = None

    def open(self, source: str, label_column: str, features_column: str | None) -> ParquetSource:
        return ParquetSource.open(source, label_column, features_column)

    def survey(self, table: ParquetSource, plan: RowPlan) -> Tally:
        return merge_in_order(tally(table, plan))

    def rows(self, table: ParquetSource, plan: RowPlan, role: int, n_features: int) -> tuple[np.ndarray, ...]:
        """``(x float32, y[, w])`` of every row with ``role``, in position order."""
        filler = RowFiller(plan.positions(None, (role,)), n_features, table.y_tail, table.weighted)
        for block in table.blocks():
            filler.add(*block)
        return filler.arrays(f"{table.key} {table.source}")[role]


def read_whole(table: ParquetSource) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``table``, checked, as ``(x float64, y)`` (a test set given as its own Parquet source)."""
    blocks = list(table.blocks())
    return np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks])
