"""``nnlib predict``: a model over a data source, block by block, written as Parquet or CSV.

    nnlib predict runs/digits digits --out predictions.parquet

Reads any source the training side reads (digits, synthetic, ``.npz``,
``.csv``, IDX, a ``.parquet`` file or a Parquet dataset directory or glob)
with the readers of :mod:`nnlib.data`. A Parquet source is streamed
``BLOCK_ROWS`` rows at a time, so memory does not grow with its size. The
output holds one row per input row, in input order: the row key (the
``data.key_column`` column when the source has one, else ``row``, the row's
position: files sorted by path, rows in file order, as training numbers
them), ``prediction`` (int64, the class) and ``probability`` (a list of
float32, one per class; in a CSV file the list is written as text,
``[p0,p1,...]``). With labels in the source, accuracy and loss are
reported. A regressor's output is the key and ``prediction`` (float64, in
the target's own units), or ``prediction_<target>`` per target, and with
the targets in the source its loss, RMSE, MAE and R² are reported.

``--set data.weight_column=NAME`` names a column of sample weights: it is
not a feature, and the reported figures are weighted as a run weighs its
test set (:mod:`nnlib.core.metrics`), so on a run's own test rows they are
the run's final figures to the bit.

Every problem is one :class:`NnlibError` line, and the output is
written to a temporary name and renamed only when every row is done, so a
failed prediction leaves nothing.

Runs in this process (``engine=local``); ``--set engine=spark`` scores in Spark's executors with the same
functions (:mod:`nnlib.engines.spark.predict`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnlib.config import Config, build_config
from nnlib.data import sources, tables
from nnlib.data.checks import check_features
from nnlib.data.tables import Layout, arrow_layout, parquet_layout
from nnlib.errors import ConfigError, DataError, first_line
from nnlib.model.model import CHUNK_ROWS, Model, softmax
from nnlib.outputs import write_error

# the keys --set may give nnlib predict: how to read the source, which backend computes, where (engine=spark)
PREDICT_KEYS = (
    "engine",
    "seed",
    "model.backend",
    "data.label_column",
    "data.features_column",
    "data.key_column",
    "data.feature_columns",
    "data.drop_columns",
    "data.weight_column",
    "data.labels",
    "data.n_samples",
    "data.n_features",
    "data.n_classes",
    "spark.master",
    "spark.remote",
    "spark.app_name",
    "spark.log_level",
    "spark.conf",
)
PREDICT_ENGINES = ("local", "spark")  # local: this process; spark: nnlib.engines.spark.predict
OUT_SUFFIXES = (".parquet", ".csv")
ROW_COLUMN = "row"  # the key column when the source names none: the row's position


@dataclass
class Block:
    """Consecutive rows of a source: their keys, raw features and labels (None when the source has none)."""

    keys: Any  # (n,) a pyarrow array or an int64 array of positions
    x: np.ndarray  # (n, n_features) raw features
    y: np.ndarray | None  # (n,) labels as read
    first_row: int  # the position of the first row (numbers the rows in messages)
    w: np.ndarray | None = None  # (n,) float64 sample weights (data.weight_column) of labelled rows, else None


@dataclass
class Prediction:
    """What ``nnlib predict`` did: rows predicted, and with labels the accuracy and mean loss."""

    rows: int
    accuracy: float | None
    loss: float | None
    out: Path | None
    rmse: float | None = None  # a regressor's, with targets: in the targets' own units (averaged over targets)
    mae: float | None = None
    r2: float | None = None


@dataclass(frozen=True)
class Scores:
    """Sums over predicted rows: rows, labelled rows, the summed data loss and the correct count of those.

    Weighted (``data.weight_column``): ``loss_sum`` is ``sum w * l``, ``weight`` ``sum w`` and
    ``weighted_correct`` ``sum w * [pred == y]``, added block by block in row order as a run adds its test set's
    blocks (:class:`nnlib.core.metrics.ClassificationSums`)."""

    rows: int = 0
    labelled: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    weight: float = 0.0
    weighted_correct: float = 0.0
    weighted: bool = False

    def __add__(self, other: Scores) -> Scores:
        return Scores(
            self.rows + other.rows,
            self.labelled + other.labelled,
            self.loss_sum + other.loss_sum,
            self.correct + other.correct,
            self.weight + other.weight,
            self.weighted_correct + other.weighted_correct,
            self.weighted or other.weighted,
        )

    def prediction(self, out: Path | None, where: str = "DATA") -> Prediction:
        """The :class:`Prediction` of these sums (accuracy and mean loss when some rows had labels; weighted, as
        :func:`nnlib.core.metrics.finish_classification` finishes them). DataError when every labelled row
        weighs 0."""
        if self.labelled and self.weighted:
            if self.weight == 0:
                raise DataError(
                    f"{where} (data.weight_column): every labelled row weighs 0; at least one row must weigh more"
                )
            return Prediction(self.rows, self.weighted_correct / self.weight, self.loss_sum / self.weight, out)
        if self.labelled:
            return Prediction(self.rows, self.correct / self.labelled, self.loss_sum / self.labelled, out)
        return Prediction(self.rows, None, None, out)


def predict_engine(overrides: list[str]) -> str:
    """The engine ``--set engine=...`` names (the last one; default ``local``), one of :data:`PREDICT_ENGINES`."""
    items = [item for item in overrides if item.split("=", 1)[0].strip() == "engine"]
    engine = build_config({}, items[-1:], source="--set").engine if items else "local"
    if engine not in PREDICT_ENGINES:
        raise ConfigError(f"engine: nnlib predict runs on engine {' or '.join(PREDICT_ENGINES)}, got engine={engine}")
    return engine


def predict_config(model: Model, overrides: list[str], engines: tuple[str, ...] = ("local",)) -> Config:
    """The reading settings: the model's own columns (label, features column, key), then ``--set`` overrides
    (only :data:`PREDICT_KEYS`; ``engine`` must be one of ``engines``, which the caller computes on)."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" in item and key not in PREDICT_KEYS:
            raise ConfigError(f"--set: nnlib predict reads only {', '.join(PREDICT_KEYS)}; got '{key}'")
    engine = predict_engine(overrides)
    if engine not in engines:
        raise ConfigError(f"engine: this computes on engine {' or '.join(engines)}, got engine={engine}")
    pre = model.header["preprocessing"]
    base = {
        "data": {
            "label_column": pre["label_column"],
            "features_column": pre["features_column"],
            "key_column": pre["key_column"],
        }
    }
    # the engine is set apart: the config's own check refuses a key column on engine=spark, which reads no key
    # column for training, but prediction reads it on both engines
    rest = [item for item in overrides if item.split("=", 1)[0].strip() != "engine"]
    return build_config(base, rest, source="model header").model_copy(update={"engine": engine})


def _explicit_key(overrides: list[str]) -> bool:
    return any(item.split("=", 1)[0].strip() == "data.key_column" for item in overrides)


def _where(data: str) -> str:
    return f"DATA {data}"


# the columns nnlib predict writes beside the key: a key column of one of these names would be lost among them
WRITTEN_COLUMNS = ("prediction", "probability")
RESERVED_PREFIX = "_nnlib_"  # nnlib's own helper columns on Spark (the part, the row, the totals)


def _names(names) -> str:
    names = list(names)
    return str(names) if len(names) <= 10 else f"{names[:10]} and {len(names) - 10} more"


def trained_on(model: Model) -> str:
    """What the model's features were when it was trained, for an error: a list column, named columns, or
    a count alone (digits, .npz, IDX)."""
    pre, n = model.header["preprocessing"], model.n_features
    if pre.get("features_column"):
        return f"the list column '{pre['features_column']}' of {n} values a row"
    if model.feature_columns is not None:
        return f"the {n} columns {_names(model.feature_columns)}"
    return f"{n} features (a source without column names)"


class TableColumns:
    """Which columns of a table source are read, decided once from its column names (and, with ``layout``,
    their types: a list column where separate columns are read, and the reverse, are told apart)."""

    def __init__(
        self,
        model: Model,
        names: list[str],
        config: Config,
        data: str,
        key_required: bool,
        layout: Layout | None = None,
    ):
        d = config.data
        where = self.where = _where(data)
        names = list(names)
        lists = {} if layout is None else layout.lists
        other = {} if layout is None else layout.other
        self.label = d.label_column if d.label_column in names else None
        self.features_column = d.features_column
        self.key = d.key_column if d.key_column in names else None
        if d.key_column is not None and self.key is None and key_required:
            raise DataError(f"data.key_column: {data} has no column '{d.key_column}' (columns are {names[:10]})")
        self.weight = d.weight_column  # only --set names it (a model file keeps no weight column)
        if self.weight is not None and self.weight not in names:
            raise DataError(f"data.weight_column: {data} has no column '{self.weight}' ({sources.columns_text(names)})")
        dropped = [*d.drop_columns, *([] if self.weight is None else [self.weight])]
        if self.key in WRITTEN_COLUMNS:
            raise DataError(
                f"data.key_column: '{self.key}' is also a column nnlib predict writes "
                f"({', '.join(WRITTEN_COLUMNS)}, beside the key); key the rows by another column "
                f"(--set data.key_column=NAME) or by their position (--set data.key_column=null)"
            )
        n = model.n_features
        model_said = f"the model was trained on {trained_on(model)}"
        if d.features_column is not None:
            self.features = None
            self._check_list_column(model, names, layout, d, where, model_said)
            return
        found = sources.feature_columns(names, self.label, self.key, d.feature_columns, dropped)
        found_lists = [c for c in found if c in lists]
        expected = model.feature_columns
        if expected is None:  # a model trained on a source without column names: the count must agree
            if len(found) != n or found_lists:
                raise DataError(
                    f"{where} has {len(found)} feature columns {found[:10]}, the model takes "
                    f"{n} features; {model_said}{_list_fix(found_lists, lists, n)}"
                )
            self._check_numeric(found, other, where)
            self.features = found
            return
        missing = [c for c in expected if c not in found]
        extra = [c for c in found if c not in expected]
        if missing or extra:
            if len(missing) == len(expected) and found_lists:
                fix = _list_fix(found_lists, lists, n)
            elif extra and not missing:
                fix = f"; leave them out with --set data.drop_columns={_yaml_list(extra)}"
                if self.label is None:
                    fix += " (or name the label column with --set data.label_column=...)"
            else:
                fix = ""
            raise DataError(
                f"{where}: its columns differ from the model's: missing {missing[:10]}, not in the model "
                f"{extra[:10]} (label column '{d.label_column}', key column {d.key_column!r}); "
                f"{model_said}{fix}"
            )
        self._check_numeric(expected, {**other, **{c: "a list" for c in lists}}, where)
        self.features = list(expected)

    def _check_list_column(
        self, model: Model, names: list[str], layout: Layout | None, d, where: str, model_said: str
    ) -> None:
        """The features column ``d.features_column`` is in ``names``, holds lists (when ``layout`` tells the
        types) of the model's number of values (when a row was read); else one line with the columns the file
        has, what the model takes and the setting that reads them."""
        column, n = d.features_column, model.n_features
        if layout is None and column in names:
            return  # the types are not known here (a Spark schema's names alone): the rows are checked as read
        lists = {} if layout is None else layout.lists
        other = {} if layout is None else layout.other
        rest = sources.feature_columns(names, self.label, self.key)
        separate = [c for c in rest if c not in lists and c not in other]  # what data.features_column=null reads
        if column not in names:
            problem = f"{where} has no list column '{column}' (data.features_column) to read the features from"
        elif column not in lists:
            problem = (
                f"{where}: features column '{column}' (data.features_column) must hold lists, got "
                f"{other.get(column, 'numbers')}"
            )
        elif lists[column] is not None and lists[column] != n:
            problem = f"{where}: features column '{column}' holds {lists[column]} values a row, the model takes {n}"
        else:
            return
        others = [c for c in lists if c != column and c in rest]
        if others:
            fix = _list_fix(others, lists, n)
        elif len(separate) == n:
            fix = f"; to read its {n} columns {_names(separate)} as the features, --set data.features_column=null"
        elif separate and layout is not None:  # (with the names alone, a list column may be among them)
            fix = (
                f"; with --set data.features_column=null its {len(separate)} columns {_names(separate)} would "
                f"be the features, the model takes {n} (choose them with data.feature_columns=[...])"
            )
        else:
            fix = ""
        raise DataError(f"{problem}; its {sources.columns_text(names)}; {model_said}{fix}")

    @staticmethod
    def _check_numeric(columns: list[str], other: dict, where: str) -> None:
        for name in columns:
            if name in other:
                raise DataError(f"{where}: column '{name}' must be numeric, got {other[name]} (non-numeric cells)")

    def read(self) -> list[str]:
        """The columns to read, features first in the model's order."""
        cols = [self.features_column] if self.features_column is not None else list(self.features or ())
        return cols + [c for c in (self.label, self.key, self.weight) if c is not None]

    def block(self, table, path: str, first_row: int) -> Block:
        """A block of a table (an Arrow table holding :meth:`read`'s columns)."""
        data = table.drop_columns([c for c in (self.key, self.weight) if c is not None])
        x, y = sources.table_to_arrays(data, Path(path), "DATA", self.label, self.features_column)
        if self.features is not None:  # separate columns: a bad value is named by its column, not its index alone
            check_features(x, self.where, first_row, self.features)
        keys = table.column(self.key) if self.key is not None else np.arange(first_row, first_row + len(x))
        w = None
        if self.weight is not None and y is not None:  # weights weigh the figures of labelled rows alone
            w = weight_values(table.column(self.weight), self.weight, self.where, first_row)
        return Block(keys, x, y, first_row, w)


def weight_values(column, name: str, where: str, first_row: int = 0) -> np.ndarray:
    """A block's sample weights ``(n,)`` float64 from an Arrow column: finite numbers ``>= 0``; an empty cell, a
    non-numeric column or a bad value is one DataError line naming the column and the sample (numbered from
    ``first_row``). That every weight is 0 is known only at the end (:meth:`Scores.prediction`)."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise DataError(f"{where}: weight column '{name}' (data.weight_column) must hold numbers >= 0, got {kind}")
    if column.null_count:
        i = int(np.argmax(np.asarray(column.is_null().to_numpy(zero_copy_only=False))))
        raise DataError(
            f"{where}: weight column '{name}' (data.weight_column) has an empty (null) cell at sample "
            f"{first_row + i}; every row needs a weight"
        )
    w = np.asarray(column.to_numpy(zero_copy_only=False), np.float64)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{where}: weight column '{name}' (data.weight_column) must hold finite numbers >= 0, got "
            f"{w[i]} at sample {first_row + i}"
        )
    return w


def _yaml_list(names: list[str]) -> str:
    return "[" + ",".join(names) + "]"


def _list_fix(candidates: list[str], lists: dict, n: int) -> str:
    """The setting that reads a list column of ``candidates`` holding ``n`` values a row (or of unknown length)
    instead of separate columns, or ''."""
    fitting = [c for c in candidates if lists.get(c) in (n, None)]
    if not fitting:
        return ""
    return f"; to read the list column '{fitting[0]}' as the features, --set data.features_column={fitting[0]}"


def blocks(model: Model, data: str, config: Config, key_required: bool = False) -> tuple[str, Iterator[Block]]:
    """``(name of the key column, the source's blocks in row order)``.

    ``key_required``: ``data.key_column`` was given on the command line, so a
    source without that column is refused (a key column named only by the
    model's header falls back to row positions).
    """
    d = config.data
    y: np.ndarray | None  # labels as read, None for a source without them
    if data in sources.BUILTIN:
        _no_key(d.key_column, data, key_required, d.weight_column)
        if data == "digits":
            x, y = sources.load_digits()
        else:
            x, y = sources.make_synthetic(d.n_samples, d.n_features, d.n_classes, config.seed)
        return ROW_COLUMN, iter([_array_block(model, x, y, data)])
    if tables.is_row_keyed(data):
        # the columns are checked below against the model's (a label is optional here, the model names the rest)
        table = tables.ParquetSource.open(data, d.label_column, d.features_column, "DATA", check_columns=False)
        columns = TableColumns(
            model,
            list(table.column_names),
            config,
            data,
            key_required,
            parquet_layout([Path(f) for f in table.files], "DATA"),
        )
        return columns.key or ROW_COLUMN, _parquet_blocks(table, columns)
    path = Path(data)
    sources.check_exists(path, "DATA")
    if path.suffix.lower() == ".csv":
        table = sources.read_csv_table(path, "DATA")
        columns = TableColumns(model, table.column_names, config, data, key_required, arrow_layout(table.schema))
        return columns.key or ROW_COLUMN, iter([columns.block(table.select(columns.read()), data, 0)])
    if path.suffix.lower() == ".npz":
        _no_key(d.key_column, data, key_required, d.weight_column)
        x, y = sources.read_npz(path, "DATA", need_labels=False)[:2]
        return ROW_COLUMN, iter([_array_block(model, x, y, data)])
    if sources.is_idx(path):
        _no_key(d.key_column, data, key_required, d.weight_column)
        x = sources.read_idx(path, "DATA")
        labels = Path(d.labels) if d.labels else sources.idx_labels_path(path)
        y = None
        if d.labels or (labels != path and labels.is_file()):
            sources.check_exists(labels, "data.labels")
            y = sources.read_idx(labels, "data.labels")
        return ROW_COLUMN, iter([_array_block(model, x.reshape(len(x), -1), y, data)])
    allowed = ", ".join(sources.BUILTIN + sources.FILE_SUFFIXES)
    raise DataError(f"DATA: unknown kind of data source {data!r}; allowed: {allowed}")


def _no_key(key_column: str | None, data: str, key_required: bool, weight_column: str | None = None) -> None:
    if key_column is not None and key_required:
        raise DataError(f"data.key_column: {data} has no columns (only CSV and Parquet sources have a key column)")
    if weight_column is not None:
        raise DataError(
            f"data.weight_column: {data} has no columns (only CSV and Parquet sources have a weight "
            f"column), got '{weight_column}'"
        )


def _array_block(model: Model, x, y, data: str) -> Block:
    x = np.asarray(x)
    x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim == 2:
        _check_count(model, x.shape[1], data)
    return Block(np.arange(len(x), dtype=np.int64), x, y, 0)


def _check_count(model: Model, n_features: int, data: str) -> None:
    if n_features != model.n_features:
        raise DataError(
            f"{_where(data)} has {n_features} features, the model takes {model.n_features}; the model "
            f"was trained on {trained_on(model)}"
        )


def _npz_shapes(path: Path) -> dict | None:
    """``{array name: shape}`` of an ``.npz`` file from its arrays' headers (no data read); None when the file
    cannot be read so (the full reader then says why)."""
    import zipfile

    try:
        shapes = {}
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shapes[name[:-4]] = read(f)[0]
        return shapes
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def check_layout(
    model: Model, data: str, config: Config, key_required: bool, parquet: bool = True, spark: bool = False
) -> None:
    """Check ``data``'s layout against ``model`` from what tells it cheaply: a Parquet footer and one row of
    its list columns, a CSV header, an ``.npz`` file's array headers, an IDX header, the built-in sources'
    sizes; raise the :class:`DataError` line :func:`blocks` would (the columns the file has, what the model
    takes, the setting that reads them). Run before an engine's expensive start (a JVM) so such an error
    costs the same on every engine.

    ``parquet=False``: a Parquet path is left to the engine (a Spark Connect server reads its own
    filesystem). A path or URI that is not on this machine is left to the engine too. ``spark``: also refuse
    a column whose name nnlib's helper columns on Spark take (``_nnlib_*``).
    """
    d = config.data
    if data in sources.BUILTIN:
        _no_key(d.key_column, data, key_required, d.weight_column)
        _check_count(model, 64 if data == "digits" else d.n_features, data)
        return
    path = Path(data)
    if tables.is_uri(data):
        return
    if tables.is_row_keyed(data):
        files = sources.parquet_files(data)
        files = ([path] if path.is_file() else []) if files is None else files
        if not parquet or not files:
            return
        layout = parquet_layout(files, "DATA")
    elif path.suffix.lower() == ".csv":
        sources.check_exists(path, "DATA")
        layout = arrow_layout(_csv_schema(path))
    elif path.suffix.lower() == ".npz":
        sources.check_exists(path, "DATA")
        _no_key(d.key_column, data, key_required, d.weight_column)
        shapes = _npz_shapes(path)
        if shapes is not None and "x" in shapes and len(shapes["x"]) >= 2:
            _check_count(model, int(np.prod(shapes["x"][1:])), data)
        return
    else:
        if sources.is_idx(path) and path.is_file():
            _no_key(d.key_column, data, key_required, d.weight_column)
            dims = _idx_dims(path)
            if dims is not None and len(dims) >= 2:
                _check_count(model, int(np.prod(dims[1:])), data)
        return
    if spark:
        for name in layout.names:
            if name.startswith(RESERVED_PREFIX):
                raise DataError(
                    f"{_where(data)}: column '{name}' takes a name nnlib keeps for its own columns on "
                    f"Spark (names starting {RESERVED_PREFIX}); rename it"
                )
    TableColumns(model, list(layout.names), config, data, key_required, layout)


def _csv_schema(path: Path):
    """The schema of a CSV file's first block (its header and the types of the first rows)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        if path.stat().st_size == 0:
            return sources.read_csv_table(path, "DATA")  # says the file is empty
        with pacsv.open_csv(path) as reader:
            return reader.schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"DATA: {path} is not a well-formed CSV file ({first_line(exc)})") from None


def _idx_dims(path: Path) -> tuple[int, ...] | None:
    """The shape an IDX file's header states, or None when the header cannot be read (the reader says why)."""
    import gzip

    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] or head[1]:
                return None
            raw = f.read(4 * head[3])
    except (OSError, EOFError):
        return None
    if len(raw) < 4 * head[3]:
        return None
    return tuple(int.from_bytes(raw[4 * i : 4 * i + 4], "big") for i in range(head[3]))


def _parquet_blocks(table: tables.ParquetSource, columns: TableColumns) -> Iterator[Block]:
    """The rows of a Parquet source ``BLOCK_ROWS`` at a time, files in path order (training's positions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, start in zip(table.files, table.offsets, strict=True):
        first = int(start)
        try:
            batches = pq.ParquetFile(name).iter_batches(batch_size=tables.BLOCK_ROWS, columns=columns.read())
            for batch in batches:
                yield columns.block(pa.Table.from_batches([batch]), name, first)
                first += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            raise DataError(f"DATA: {name} is not a readable parquet file ({exc})") from None


class OutputFile:
    """Predictions written block by block to a temporary file beside ``path``, renamed at :meth:`commit`.

    A write that fails (disk full, file too large, permission: pyarrow's
    OSError) removes the temporary file and raises one ``OutputError`` line
    naming ``path`` and the cause; ``path`` is left as it was.
    """

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        self.csv = path.suffix.lower() == ".csv"
        self._writer: Any = None  # a pyarrow CSVWriter or ParquetWriter, opened on the first table

    def write(self, table) -> None:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        try:
            if self._writer is None:
                self._writer = (
                    pacsv.CSVWriter(str(self.tmp), table.schema)
                    if self.csv
                    else pq.ParquetWriter(str(self.tmp), table.schema)
                )
            self._writer.write_table(table)
        except OSError as exc:
            raise self._failed(exc) from None

    def commit(self) -> None:
        try:
            self._writer.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError):
        self.abort()
        return write_error(self.path, exc, "--out")

    def abort(self) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                writer.close()  # flushes what it holds: may fail as the write did
        except OSError:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)


def _probability_column(p: np.ndarray, as_text: bool):
    import pyarrow as pa

    if as_text:
        return pa.array(["[" + ",".join(f"{v:.9g}" for v in row) + "]" for row in p.tolist()], pa.string())
    offsets = pa.array(np.arange(0, p.size + 1, p.shape[1], dtype=np.int32), pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(p.ravel(), pa.float32()))


def score_block(model: Model, block: Block, where: str) -> tuple[np.ndarray, Scores]:
    """``(logits (n, n_classes) float32, the block's Scores)`` of a block of at most :data:`CHUNK_ROWS` raw
    rows; bad values and labels the model never saw are DataError lines naming ``where`` and the sample.

    With weights (``block.w``) the block's sums are the model's backend's ``score`` of its rows, the call a run
    scores each ``EVAL_ROWS``-row block of its test set with (:data:`CHUNK_ROWS` is ``EVAL_ROWS``), so that a
    run's own test rows, read as one block, give its weighted figures to the bit."""
    rows = model.standardize(block.x, where, block.first_row)
    logits = model.logits_of(rows, block.first_row)
    if block.y is None:
        return logits, Scores(len(block.x))
    indices = model.label_indices(block.y, len(block.x), where, block.first_row)
    if block.w is not None:
        sums = model._backend().score(model.params, rows, indices, block.w)
        return logits, Scores(
            len(block.x),
            len(indices),
            sums.loss,
            int((logits.argmax(axis=1) == indices).sum()),
            sums.weight,
            sums.correct,
            True,
        )
    loss_sum, correct = model.loss_and_correct(logits, indices)
    return logits, Scores(len(block.x), len(indices), loss_sum, correct)


def prediction_table(model: Model, logits: np.ndarray, key_name: str, keys, as_text: bool):
    """The output rows of a block: ``key_name`` (``keys``), ``prediction`` (int64) and ``probability`` (a list
    of float32, or the text ``[p0,...]`` when ``as_text``), as an Arrow table."""
    import pyarrow as pa

    return pa.table(
        {
            key_name: keys,
            "prediction": pa.array(model.classes[logits.argmax(axis=1)], pa.int64()),
            "probability": _probability_column(softmax(logits), as_text),
        }
    )


def pieces(source: Iterable[Block]) -> Iterator[Block]:
    """The blocks cut to at most :data:`CHUNK_ROWS` rows (a CSV file or an array is read as one block)."""
    for block in source:
        for lo in range(0, len(block.x), CHUNK_ROWS):
            hi = lo + CHUNK_ROWS
            yield Block(
                block.keys[lo:hi],
                block.x[lo:hi],
                None if block.y is None else block.y[lo:hi],
                block.first_row + lo,
                None if block.w is None else block.w[lo:hi],
            )


def check_out(out: str | None, overwrite: bool) -> Path | None:
    """``--out`` as a path: a ``.parquet`` or ``.csv`` file in an existing folder, not there yet unless
    ``overwrite``."""
    if out is None:
        return None
    path = Path(out)
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise ConfigError(f"--out: the predictions file must end in {' or '.join(OUT_SUFFIXES)}, got {out}")
    if not path.parent.is_dir():
        raise ConfigError(f"--out: folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ConfigError(f"--out: {out} exists; choose another file or pass --overwrite")
    return path


def predict_source(
    model: Model, data: str, overrides: Sequence[str] = (), out: str | None = None, overwrite: bool = False
) -> Prediction:
    """Predict every row of ``data`` in this process; write ``out`` (Parquet or CSV by its extension) if given."""
    path = check_out(out, overwrite)
    config = predict_config(model, list(overrides))
    if config.model.backend != model.backend:
        model = Model(model.file, config.model.backend)
    if model.is_regressor:
        return predict_regression(model, data, config, path, _explicit_key(list(overrides)))
    key_name, source = blocks(model, data, config, _explicit_key(list(overrides)))
    writer = OutputFile(path) if path is not None else None
    totals = Scores()
    try:
        for block in pieces(source):
            logits, scores = score_block(model, block, _where(data))
            totals += scores
            if writer is not None:
                writer.write(prediction_table(model, logits, key_name, block.keys, writer.csv))
        if writer is not None:
            if totals.rows == 0:
                raise DataError(f"{_where(data)} holds no rows")
            done = totals.prediction(path, _where(data))
            writer.commit()
        else:
            done = totals.prediction(path, _where(data))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return done


@dataclass
class RegressionRows:
    """A regressor's source read whole: the key column's name and values, the raw features, and when the source
    holds the targets, those (in their own units) and the weights (``data.weight_column``)."""

    key_name: str
    keys: object  # (n,) a pyarrow array or an int64 array of positions
    x: np.ndarray  # (n, n_features) raw features
    y: np.ndarray | None  # (n,) or (n, t) float64 targets
    w: np.ndarray | None  # (n,) float64 sample weights


def regression_rows(model: Model, data: str, config: Config, key_required: bool) -> RegressionRows:
    """A regressor's source, read whole: a CSV or local Parquet source's feature columns (the model's), key,
    weight and target columns (all of the targets, or none), or an .npz's ``x`` (and ``y``). Every problem is one
    DataError line naming the column or the file."""
    from nnlib.data.dataset import _table

    d, where = config.data, _where(data)
    path = Path(data)
    if path.suffix.lower() == ".npz":
        _no_key(d.key_column, data, key_required, d.weight_column)
        sources.check_exists(path, "DATA")
        x, y = sources.read_npz(path, "DATA", need_labels=False)[:2]
        x = np.asarray(x).reshape(len(x), -1)
        _check_count(model, x.shape[1], data)
        return RegressionRows(ROW_COLUMN, np.arange(len(x), dtype=np.int64), x, y, None)
    if path.suffix.lower() != ".csv" and not tables.is_row_keyed(data):
        raise DataError(f"DATA: a regressor predicts a .csv, .npz or local Parquet source, got {data!r}")
    if path.suffix.lower() == ".csv":
        sources.check_exists(path, "DATA")
    table = _table(data, "DATA")
    names = table.column_names
    targets = model.target_names
    present = [c for c in targets if c in names]
    key = d.key_column if d.key_column in names else None
    if d.key_column is not None and key is None and key_required:
        raise DataError(f"data.key_column: {data} has no column '{d.key_column}' ({sources.columns_text(names)})")
    weight = d.weight_column
    if weight is not None and weight not in names:
        raise DataError(f"data.weight_column: {data} has no column '{weight}' ({sources.columns_text(names)})")
    if weight is not None and weight in (*targets, key):
        raise DataError(f"data.weight_column: '{weight}' is a target or the key column, not a weight")
    if d.features_column is not None:
        x, _ = sources.table_to_arrays(table, path, "DATA", None, d.features_column)
    else:
        features = model.feature_columns
        if features is None:
            features = sources.feature_columns(
                names, None, key, d.feature_columns, [*d.drop_columns, *present, *([weight] if weight else [])]
            )
        missing = [c for c in features if c not in names]
        if missing:
            raise DataError(
                f"{where} lacks the model's feature columns {missing[:10]}; the model was trained on "
                f"{trained_on(model)}"
            )
        x, _ = sources.table_to_arrays(table.select(features), path, "DATA", None, None, chosen=features)
    _check_count(model, x.shape[1], data)
    y = w = None
    if present:
        if len(present) != len(targets):
            absent = [c for c in targets if c not in present]
            raise DataError(
                f"{where} holds the target columns {present} but not {absent}; give all of the model's targets, or none"
            )
        from nnlib.data.dataset import _column_values, _targets

        cols = [_column_values(table, data, "DATA", c, "target column") for c in targets]
        y = _targets(np.stack(cols, axis=1) if len(cols) > 1 else cols[0], len(x), where, tuple(targets))
        if weight is not None:  # weights weigh the figures, which need the targets
            w = weight_values(table.column(weight), weight, where)
            if len(w) and not w.any():
                raise DataError(
                    f"{where} (data.weight_column '{weight}'): every weight is 0; at least one row must weigh more"
                )
    keys = table.column(key) if key is not None else np.arange(len(x), dtype=np.int64)
    return RegressionRows(key or ROW_COLUMN, keys, x, y, w)


def regression_outputs(model: Model, x: np.ndarray, where: str, first_row: int = 0) -> np.ndarray:
    """A regressor's outputs ``(n, t)`` float32 in training units of raw rows ``x`` at positions ``first_row, ...``
    of their source, :data:`CHUNK_ROWS` at a time, each row's bits fixed by its position and values
    (:meth:`Model.logits_of`): the same on every engine, however the rows are cut."""
    rows = model.rows(x, where)
    parts = [
        model.logits_of(model.standardize(rows[lo : lo + CHUNK_ROWS], where, first_row + lo), first_row + lo)
        for lo in range(0, len(rows), CHUNK_ROWS)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, len(model.target_names)), np.float32)


def regression_table(model: Model, z: np.ndarray, key_name: str, keys):
    """The output rows of a regressor: ``key_name`` (``keys``) and ``prediction`` float64 in the target's own units,
    or ``prediction_<target>`` per target, from its outputs ``z`` ``(n, t)`` (training units), as an Arrow table."""
    import pyarrow as pa

    predicted = model.destandardize(z)
    columns = {key_name: keys}
    if predicted.ndim == 1:
        columns["prediction"] = pa.array(predicted, pa.float64())
    else:
        columns.update(
            {f"prediction_{name}": pa.array(predicted[:, j], pa.float64()) for j, name in enumerate(model.target_names)}
        )
    return pa.table(columns)


def regression_prediction(
    model: Model, rows: int, z: np.ndarray | None, y: np.ndarray | None, w: np.ndarray | None, out: Path | None
) -> Prediction:
    """The :class:`Prediction` of a regressor's outputs ``z`` ``(n, t)`` of every row, in row order, against the
    targets ``y`` (their own units; None: no figures, and ``z`` may be None) weighted by ``w``: the loss, RMSE,
    MAE and R² of :meth:`Model.regression_metrics` and of a run's test set, to the bit (sums over the whole set
    at once)."""
    from nnlib.core import metrics
    from nnlib.model.model import regression_sums

    if y is None:
        return Prediction(rows, None, None, out)
    if z is None:
        raise ValueError("the outputs z are needed to score them against the targets y")
    mean, std = model._target_stats()
    done = metrics.finish_regression(regression_sums(model.file.spec(), z, y, w, mean, std))
    return Prediction(rows, None, done.loss, out, done.rmse, done.mae, done.r2)


def predict_regression(
    model: Model, data: str, config: Config, path: Path | None, key_required: bool = False
) -> Prediction:
    """A regressor's predictions of every row of ``data`` (float64, in the targets' own units; one column
    ``prediction``, or ``prediction_<target>`` per target), written to ``path`` if given; with the targets in the
    source, their loss, RMSE, MAE and R² (:meth:`Model.regression_metrics`'s, to the bit), weighted by
    ``data.weight_column`` when it names a column."""
    where = _where(data)
    read = regression_rows(model, data, config, key_required)
    if len(read.x) == 0:
        raise DataError(f"{where} holds no rows")
    z = regression_outputs(model, read.x, where)
    done = regression_prediction(model, len(read.x), z, read.y, read.w, path)
    if path is not None:
        writer = OutputFile(path)
        try:
            writer.write(regression_table(model, z, read.key_name, read.keys))
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    return done
