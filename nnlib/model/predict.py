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
reported. Every problem is one :class:`NnlibError` line, and the output is
written to a temporary name and renamed only when every row is done, so a
failed prediction leaves nothing.

Runs in this process (``engine=local``); ``--set engine=spark`` scores in Spark's executors with the same
functions (:mod:`nnlib.engines.spark.predict`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from nnlib.config import Config, build_config
from nnlib.data import sources, tables
from nnlib.errors import ConfigError, DataError
from nnlib.model.model import CHUNK_ROWS, Model, softmax
from nnlib.outputs import write_error

# the keys --set may give nnlib predict: how to read the source, which backend computes, where (engine=spark)
PREDICT_KEYS = ("engine", "seed", "model.backend", "data.label_column", "data.features_column", "data.key_column",
                "data.feature_columns", "data.drop_columns",
                "data.labels", "data.n_samples", "data.n_features", "data.n_classes", "spark.master",
                "spark.remote", "spark.app_name", "spark.log_level", "spark.conf")
PREDICT_ENGINES = ("local", "spark")  # local: this process; spark: nnlib.engines.spark.predict
OUT_SUFFIXES = (".parquet", ".csv")
ROW_COLUMN = "row"  # the key column when the source names none: the row's position


@dataclass
class Block:
    """Consecutive rows of a source: their keys, raw features and labels (None when the source has none)."""

    keys: object          # (n,) a pyarrow array or an int64 array of positions
    x: np.ndarray         # (n, n_features) raw features
    y: np.ndarray | None  # (n,) labels as read
    first_row: int        # the position of the first row (numbers the rows in messages)


@dataclass
class Prediction:
    """What ``nnlib predict`` did: rows predicted, and with labels the accuracy and mean loss."""

    rows: int
    accuracy: float | None
    loss: float | None
    out: Path | None


@dataclass(frozen=True)
class Scores:
    """Sums over predicted rows: rows, labelled rows, the summed data loss and the correct count of those."""

    rows: int = 0
    labelled: int = 0
    loss_sum: float = 0.0
    correct: int = 0

    def __add__(self, other: "Scores") -> "Scores":
        return Scores(self.rows + other.rows, self.labelled + other.labelled, self.loss_sum + other.loss_sum,
                      self.correct + other.correct)

    def prediction(self, out: Path | None) -> Prediction:
        """The :class:`Prediction` of these sums (accuracy and mean loss when some rows had labels)."""
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
    base = {"data": {"label_column": pre["label_column"], "features_column": pre["features_column"],
                     "key_column": pre["key_column"]}}
    # the engine is set apart: the config's own check refuses a key column on engine=spark, which reads no key
    # column for training, but prediction reads it on both engines
    rest = [item for item in overrides if item.split("=", 1)[0].strip() != "engine"]
    return build_config(base, rest, source="model header").model_copy(update={"engine": engine})


def _explicit_key(overrides: list[str]) -> bool:
    return any(item.split("=", 1)[0].strip() == "data.key_column" for item in overrides)


def _where(data: str) -> str:
    return f"DATA {data}"


class TableColumns:
    """Which columns of a table source are read, decided once from its column names."""

    def __init__(self, model: Model, names: list[str], config: Config, data: str, key_required: bool):
        d = config.data
        where = _where(data)
        self.label = d.label_column if d.label_column in names else None
        self.features_column = d.features_column
        self.key = d.key_column if d.key_column in names else None
        if d.key_column is not None and self.key is None and key_required:
            raise DataError(f"data.key_column: {data} has no column '{d.key_column}' (columns are {names[:10]})")
        if d.features_column is not None:
            self.features = None
            return
        found = sources.feature_columns(names, self.label, self.key, d.feature_columns, d.drop_columns)
        expected = model.feature_columns
        if expected is None:  # a model trained on a source without column names: the count must agree
            if len(found) != model.n_features:
                raise DataError(f"{where} has {len(found)} feature columns {found[:10]}, the model takes "
                                f"{model.n_features} features")
            self.features = found
            return
        missing = [c for c in expected if c not in found]
        extra = [c for c in found if c not in expected]
        if missing or extra:
            raise DataError(f"{where}: its columns differ from the model's: missing {missing[:10]}, not in the model "
                            f"{extra[:10]} (label column '{d.label_column}', key column {d.key_column!r})")
        self.features = list(expected)

    def read(self) -> list[str]:
        """The columns to read, features first in the model's order."""
        cols = [self.features_column] if self.features is None else list(self.features)
        return cols + [c for c in (self.label, self.key) if c is not None]

    def block(self, table, path: str, first_row: int) -> Block:
        """A block of a table (an Arrow table holding :meth:`read`'s columns)."""
        data = table.drop_columns([self.key]) if self.key is not None else table
        x, y = sources.table_to_arrays(data, Path(path), "DATA", self.label, self.features_column)
        keys = table.column(self.key) if self.key is not None else np.arange(first_row, first_row + len(x))
        return Block(keys, x, y, first_row)


def blocks(model: Model, data: str, config: Config, key_required: bool = False) -> tuple[str, Iterator[Block]]:
    """``(name of the key column, the source's blocks in row order)``.

    ``key_required``: ``data.key_column`` was given on the command line, so a
    source without that column is refused (a key column named only by the
    model's header falls back to row positions).
    """
    d = config.data
    if data in sources.BUILTIN:
        _no_key(d.key_column, data, key_required)
        if data == "digits":
            x, y = sources.load_digits()
        else:
            x, y = sources.make_synthetic(d.n_samples, d.n_features, d.n_classes, config.seed)
        return ROW_COLUMN, iter([_array_block(model, x, y, data)])
    if tables.is_row_keyed(data):
        table = tables.ParquetSource.open(data, d.label_column, d.features_column, "DATA")
        columns = TableColumns(model, list(table.column_names), config, data, key_required)
        return columns.key or ROW_COLUMN, _parquet_blocks(table, columns)
    path = Path(data)
    sources.check_exists(path, "DATA")
    if path.suffix.lower() == ".csv":
        table = sources.read_csv_table(path, "DATA")
        columns = TableColumns(model, table.column_names, config, data, key_required)
        return columns.key or ROW_COLUMN, iter([columns.block(table.select(columns.read()), data, 0)])
    if path.suffix.lower() == ".npz":
        _no_key(d.key_column, data, key_required)
        x, y = sources.read_npz(path, "DATA", need_labels=False)[:2]
        return ROW_COLUMN, iter([_array_block(model, x, y, data)])
    if sources.is_idx(path):
        _no_key(d.key_column, data, key_required)
        x = sources.read_idx(path, "DATA")
        labels = Path(d.labels) if d.labels else sources.idx_labels_path(path)
        y = None
        if d.labels or (labels != path and labels.is_file()):
            sources.check_exists(labels, "data.labels")
            y = sources.read_idx(labels, "data.labels")
        return ROW_COLUMN, iter([_array_block(model, x.reshape(len(x), -1), y, data)])
    allowed = ", ".join(sources.BUILTIN + sources.FILE_SUFFIXES)
    raise DataError(f"DATA: unknown kind of data source {data!r}; allowed: {allowed}")


def _no_key(key_column: str | None, data: str, key_required: bool) -> None:
    if key_column is not None and key_required:
        raise DataError(f"data.key_column: {data} has no columns (only CSV and Parquet sources have a key column)")


def _array_block(model: Model, x, y, data: str) -> Block:
    x = np.asarray(x)
    x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim == 2 and x.shape[1] != model.n_features:
        raise DataError(f"{_where(data)} has {x.shape[1]} features, the model takes {model.n_features}")
    return Block(np.arange(len(x), dtype=np.int64), x, y, 0)


def _parquet_blocks(table: tables.ParquetSource, columns: TableColumns) -> Iterator[Block]:
    """The rows of a Parquet source ``BLOCK_ROWS`` at a time, files in path order (training's positions)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, start in zip(table.files, table.offsets):
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
        self._writer = None

    def write(self, table) -> None:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        try:
            if self._writer is None:
                self._writer = (pacsv.CSVWriter(str(self.tmp), table.schema) if self.csv
                                else pq.ParquetWriter(str(self.tmp), table.schema))
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
    offsets = pa.array(np.arange(0, p.size + 1, p.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(p.ravel(), pa.float32()))


def score_block(model: Model, block: Block, where: str) -> tuple[np.ndarray, Scores]:
    """``(logits (n, n_classes) float32, the block's Scores)`` of a block of at most :data:`CHUNK_ROWS` raw
    rows; bad values and labels the model never saw are DataError lines naming ``where`` and the sample."""
    logits = model.logits_of(model.standardize(block.x, where, block.first_row))
    if block.y is None:
        return logits, Scores(len(block.x))
    indices = model.label_indices(block.y, len(block.x), where, block.first_row)
    loss_sum, correct = model.loss_and_correct(logits, indices)
    return logits, Scores(len(block.x), len(indices), loss_sum, correct)


def prediction_table(model: Model, logits: np.ndarray, key_name: str, keys, as_text: bool):
    """The output rows of a block: ``key_name`` (``keys``), ``prediction`` (int64) and ``probability`` (a list
    of float32, or the text ``[p0,...]`` when ``as_text``), as an Arrow table."""
    import pyarrow as pa

    return pa.table({key_name: keys, "prediction": pa.array(model.classes[logits.argmax(axis=1)], pa.int64()),
                     "probability": _probability_column(softmax(logits), as_text)})


def pieces(source: Iterator[Block]) -> Iterator[Block]:
    """The blocks cut to at most :data:`CHUNK_ROWS` rows (a CSV file or an array is read as one block)."""
    for block in source:
        for lo in range(0, len(block.x), CHUNK_ROWS):
            hi = lo + CHUNK_ROWS
            yield Block(block.keys[lo:hi], block.x[lo:hi], None if block.y is None else block.y[lo:hi],
                        block.first_row + lo)


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


def predict_source(model: Model, data: str, overrides: list[str] = (), out: str | None = None,
                   overwrite: bool = False) -> Prediction:
    """Predict every row of ``data`` in this process; write ``out`` (Parquet or CSV by its extension) if given."""
    path = check_out(out, overwrite)
    config = predict_config(model, list(overrides))
    if config.model.backend != model.backend:
        model = Model(model.file, config.model.backend)
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
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return totals.prediction(path)
