"""``nnlib predict ... --set engine=spark``: a model over a data source, scored in Spark's executors.

    nnlib predict runs/digits digits.parquet --set engine=spark --out predictions.parquet

A Parquet source (a file, a dataset directory or glob, any URI Spark reads)
is read in the executors, each row keyed by its ``data.key_column`` or by
its position as training numbers it (files sorted by path, rows in file
order): by pyarrow in the tasks when Spark lists its files as local paths
(:class:`nnlib.engines.spark.reader.ArrowSource`), else by Spark's reader
(Parquet's ``_metadata.row_index`` plus the file's offset). Any
other source (digits, synthetic, ``.npz``, ``.csv``, IDX) is read whole by
the driver, as training reads it, and handed to Spark. The model file's
bytes travel in the scoring function's closure (no broadcast variable, so
the same code runs on a classic session and on Spark Connect; a classic
session broadcasts a closure past 1 MB by itself) and each Python worker
loads the model once (a module-level cache keyed by the bytes' digest,
:class:`SharedModel`). Each Arrow batch is scored by ``mapInArrow`` with
the functions ``engine=local`` uses (:func:`nnlib.model.predict.score_block`
and ``prediction_table``), so the key, ``prediction`` and ``probability``
columns are the same. Each task ends with one row of its totals (rows,
labelled rows, loss sum, correct count), which an ``Observation`` adds up
as Spark writes the output and the writer leaves out: no accumulator, and
the driver never holds a row of a Parquet source.

A regressor's source (a ``.csv``, ``.npz`` or local Parquet source) is read
whole by the driver, as ``engine=local`` reads it
(:func:`nnlib.model.predict.regression_rows`), and its rows scored in the
executors by the same functions (:func:`nnlib.model.predict.regression_outputs`,
``regression_table``): the key and ``prediction`` (or ``prediction_<target>``)
columns are the local ones to the bit. With the targets in the source, each
task's one row of totals also carries its rows' outputs (training units,
float32, by position), which the ``Observation`` collects: the driver puts
them in row order and computes the loss, RMSE, MAE and R² over the whole set
at once, as the local engine does, so the figures are the local ones to the
bit too (the driver holds ``4 t`` bytes a row besides the source it read).

Spark writes the output: a directory of part files (Parquet, or CSV by the
extension). On a classic session they go to a temporary name beside
``--out``, renamed when every task is done. On Spark Connect (``spark.remote``
or ``SPARK_REMOTE``) the client may not see the server's filesystem: the
server's executors write ``--out`` itself (a path they reach), Spark's
commit protocol publishing the part files when every task is done. The rows
are not in input order: join on the key.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from nnlib.data import tables
from nnlib.engines.spark.reader import _FILE, _ROW, SparkReader, split_parts, unit_tables
from nnlib.engines.spark.session import SessionSettings, connect_expected, is_connect, java_root_cause, open_session
from nnlib.errors import ConfigError, DataError, EngineError, NnlibError, first_line, python_failed, root_cause
from nnlib.model import file as model_file
from nnlib.model.model import Model
from nnlib.model.predict import (
    OUT_SUFFIXES,
    Block,
    Prediction,
    Scores,
    TableColumns,
    _explicit_key,
    blocks,
    check_layout,
    check_out,
    pieces,
    predict_config,
    prediction_table,
    regression_outputs,
    regression_prediction,
    regression_rows,
    regression_table,
    score_block,
)

_MODELS: dict[tuple[str, str], Model] = {}  # (digest, backend) -> Model, in each Python worker
_MAX_MODELS = 4  # models a worker keeps (a session may score with several)
_FEATURES, _LABEL, _WEIGHT = "_nnlib_x", "_nnlib_y", "_nnlib_w"  # the columns of rows the driver read


def model_bytes(model: Model) -> bytes:
    """The model file of ``model`` as bytes (written by :meth:`Model.save`)."""
    with tempfile.TemporaryDirectory() as tmp:
        return model.save(Path(tmp) / "model.npz").read_bytes()


def model_from_bytes(data: bytes, backend: str = "numpy") -> Model:
    """The :class:`Model` of a model file's bytes (read, and checked, by :meth:`Model.load`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.npz"
        path.write_bytes(data)
        return Model.load(path, backend)


class SharedModel:
    """A model file's bytes for the executors, carried in a Spark function's closure; :meth:`get` loads the
    model once per Python worker (a module-level cache keyed by the bytes' digest and the backend)."""

    def __init__(self, data: bytes, backend: str = "numpy"):
        self.key = (hashlib.sha256(data).hexdigest(), backend)
        self.data = bytes(data)

    def get(self) -> Model:
        """The model, in an executor (or the driver)."""
        model = _MODELS.get(self.key)
        if model is None:
            if len(_MODELS) >= _MAX_MODELS:
                _MODELS.clear()
            model = _MODELS[self.key] = model_from_bytes(self.data, self.key[1])
        return model


# the columns of the one row of totals each scoring task ends with (null in the prediction rows)
_TOTALS = (
    "_nnlib_rows",
    "_nnlib_labelled",
    "_nnlib_loss_sum",
    "_nnlib_correct",
    "_nnlib_weight",
    "_nnlib_weighted_correct",
)
_DOUBLE_TOTALS = ("_nnlib_loss_sum", "_nnlib_weight", "_nnlib_weighted_correct")
# a regressor's: the task's rows, and with targets its rows' outputs (:func:`_outputs_bytes`)
_REGRESSION_TOTALS = ("_nnlib_rows", "_nnlib_outputs")


def _totals_batch(schema, done: Scores):
    """The Arrow batch of one row holding a task's :class:`Scores` (the prediction columns null)."""
    import pyarrow as pa

    values = dict(
        zip(
            _TOTALS,
            (done.rows, done.labelled, done.loss_sum, done.correct, done.weight, done.weighted_correct),
            strict=True,
        )
    )
    return pa.RecordBatch.from_arrays([pa.array([values.get(f.name)], f.type) for f in schema], schema=schema)


def _without_totals(frame, observation):
    """``frame`` (a :func:`scored_frame`) without its totals rows and columns; ``observation`` adds the
    totals up while an action (the write) runs, :func:`_observed_scores` reads them after."""
    from pyspark.sql import functions as F

    observed = frame.observe(observation, *[F.sum(name).alias(name) for name in _TOTALS])
    return observed.where(F.col(_TOTALS[0]).isNull()).drop(*_TOTALS)


def _observed_scores(observation, weighted: bool = False) -> Scores:
    """The :class:`Scores` that an observation of :func:`_without_totals` added up (zeros where no task ran);
    ``weighted``: the rows had weights (``data.weight_column``)."""
    got = observation.get
    rows, labelled, loss_sum, correct, weight, weighted_correct = (got.get(name) for name in _TOTALS)
    return Scores(
        int(rows or 0),
        int(labelled or 0),
        float(loss_sum or 0.0),
        int(correct or 0),
        float(weight or 0.0),
        float(weighted_correct or 0.0),
        weighted,
    )


def spark_error_line(exc: BaseException) -> str:
    """One line for an error from Spark, classic or Spark Connect: what a Python worker raised (the end of
    its traceback), else the error class and message without the server's JVM stack trace (a Connect
    ``AnalysisException``, ``SparkConnectGrpcException``), else a py4j error's root cause."""
    text = str(exc)
    if python_failed(exc):
        return root_cause(text)
    if getattr(exc, "java_exception", None) is not None:
        return java_root_cause(exc)
    line = first_line(Exception(text.split("JVM stacktrace:")[0]))
    condition = getattr(exc, "getCondition", lambda: None)()
    if condition and not line.startswith(f"[{condition}]"):
        line = f"[{condition}] {line}"
    return line


def quiet_query_context_logs(log_level: str) -> None:
    """Keep pyspark's own logging of a failed query (its query-context loggers print the server's whole JVM
    stack trace) off the console at ``spark.log_level`` ERROR and above: nnlib reports the error in one line."""
    import logging

    if log_level.upper() in ("ERROR", "FATAL", "OFF"):
        for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


class ParquetRows:
    """Blocks of a Parquet source's Arrow batches, as Spark read them (one file's rows at a time)."""

    def __init__(self, columns: TableColumns, offsets: dict):
        self.columns, self.offsets = columns, offsets

    def blocks(self, batch):
        for name, _, positions, table in split_parts(batch, self.offsets):
            block = self.columns.block(table, name, int(positions[0]))
            yield block if self.columns.key is not None else replace(block, keys=positions)


class ArrowRows:
    """Blocks of a Parquet source's units (an :class:`nnlib.engines.spark.reader.ArrowSource`: the batch holds
    unit ids), each read by pyarrow in the task."""

    def __init__(self, columns: TableColumns, table):
        self.columns, self.table = columns, table

    def blocks(self, batch):
        for name, _, first, data in unit_tables(self.table, batch.column(0).to_pylist(), self.columns.read()):
            yield self.columns.block(data, name, first)  # without a key column, the keys are the positions


class DriverRows:
    """Blocks of rows the driver read (a list column of float64 features, the labels, the weights, the key, the
    position)."""

    def __init__(self, key_name: str, labelled: bool, weighted: bool = False):
        self.key_name, self.labelled, self.weighted = key_name, labelled, weighted

    def blocks(self, batch):
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return
        features = batch.column(_FEATURES)
        x = pc.list_flatten(features).to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        y = batch.column(_LABEL).to_numpy(zero_copy_only=False) if self.labelled else None
        w = batch.column(_WEIGHT).to_numpy(zero_copy_only=False) if self.weighted else None
        yield Block(batch.column(self.key_name), x, y, int(batch.column(_ROW)[0].as_py()), w)


def _driver_frame(session, key_name: str, block: Block):
    """A source the driver read whole, as a DataFrame: the key, the position, the features, the labels and
    weights."""
    import pyarrow as pa

    x = np.ascontiguousarray(block.x, np.float64)
    columns = {
        key_name: block.keys,
        _ROW: np.arange(len(x), dtype=np.int64),
        _FEATURES: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
    }
    if block.y is not None:
        columns[_LABEL] = block.y
    if block.w is not None:
        columns[_WEIGHT] = np.asarray(block.w, np.float64)
    return session.createDataFrame(pa.table(columns))


def _output_schema(key_name: str, key_type, as_text: bool):
    from pyspark.sql.types import ArrayType, FloatType, LongType, StringType, StructField, StructType

    probability = StringType() if as_text else ArrayType(FloatType())
    return StructType(
        [
            StructField(key_name, key_type),
            StructField("prediction", LongType()),
            StructField("probability", probability),
        ]
    )


def scored_frame(frame, rows, shared: SharedModel, key_name: str, as_text: bool, where: str, key_type=None):
    """``frame``'s rows scored by ``mapInArrow``: the key, ``prediction`` and ``probability`` columns, and
    the :data:`_TOTALS` columns, null but in the one row each task ends with (its :class:`Scores`).

    ``rows`` turns an Arrow batch into :class:`Block` s (:class:`ParquetRows`, :class:`ArrowRows`,
    :class:`DriverRows`). ``key_type``: the key column's Spark type (None: ``frame``'s column, else long).
    """
    from pyspark.sql.types import DoubleType, LongType, StructField

    if key_type is None:
        key_type = frame.schema[key_name].dataType if key_name in frame.columns else LongType()
    schema = _output_schema(key_name, key_type, as_text)
    for name in _TOTALS:
        schema.add(StructField(name, DoubleType() if name in _DOUBLE_TOTALS else LongType()))

    def score(batches):
        from pyspark.sql.pandas.types import to_arrow_schema

        arrow_schema = to_arrow_schema(schema)
        model = shared.get()
        done = Scores()
        for batch in batches:
            for block in rows.blocks(batch):
                for piece in pieces([block]):
                    logits, scores = score_block(model, piece, where)
                    done += scores
                    table = prediction_table(model, logits, key_name, piece.keys, as_text)
                    for name in _TOTALS:
                        table = table.append_column(
                            arrow_schema.field(name), _nulls(arrow_schema.field(name).type, table.num_rows)
                        )
                    yield from table.to_batches()
        yield _totals_batch(arrow_schema, done)

    return frame.mapInArrow(score, schema)


def _nulls(arrow_type, n: int):
    import pyarrow as pa

    return pa.nulls(n, arrow_type)


def _outputs_bytes(starts: list[int], parts: list[np.ndarray]) -> bytes:
    """A task's outputs as bytes: ``.npz`` arrays ``starts`` (int64, each piece's first position) and ``z`` (the
    pieces' float32 outputs ``(rows, t)`` one after another), no pickle."""
    import io

    buf = io.BytesIO()
    z = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    lengths = np.array([len(p) for p in parts], np.int64)
    np.savez(buf, starts=np.array(starts, np.int64), lengths=lengths, z=z)
    return buf.getvalue()


def _gathered_outputs(blobs: list[bytes], n: int, t: int) -> np.ndarray:
    """Every task's :func:`_outputs_bytes` put in row order: ``(n, t)`` float32. EngineError when some row's
    output is missing or came twice (a task's totals counted once per task, as Spark counts observed metrics)."""
    import io

    z = np.zeros((n, t), np.float32)
    seen = np.zeros(n, np.int64)
    for blob in blobs:
        with np.load(io.BytesIO(bytes(blob)), allow_pickle=False) as parts:
            offset = 0
            for start, length in zip(parts["starts"].tolist(), parts["lengths"].tolist(), strict=True):
                z[start : start + length] = parts["z"][offset : offset + length]
                seen[start : start + length] += 1
                offset += length
    if not (seen == 1).all():
        i = int(np.argmax(seen != 1))
        raise EngineError(f"spark: the tasks returned the output of row {i} {int(seen[i])} times, not once")
    return z


def regression_frame(
    frame,
    rows: DriverRows,
    shared: SharedModel,
    key_name: str,
    key_type,
    names: list[str],
    keep_outputs: bool,
    where: str,
):
    """``frame``'s rows (the driver's, :func:`_driver_frame`) scored by a regressor in ``mapInArrow``: the key and
    the float64 prediction columns ``names``, and the :data:`_REGRESSION_TOTALS` columns, null but in the one row
    each task ends with (its row count and, with ``keep_outputs``, its rows' outputs)."""
    from pyspark.sql.types import BinaryType, DoubleType, LongType, StructField, StructType

    schema = StructType(
        [
            StructField(key_name, key_type),
            *[StructField(n, DoubleType()) for n in names],
            StructField(_REGRESSION_TOTALS[0], LongType()),
            StructField(_REGRESSION_TOTALS[1], BinaryType()),
        ]
    )

    def score(batches):
        import pyarrow as pa
        from pyspark.sql.pandas.types import to_arrow_schema

        arrow_schema = to_arrow_schema(schema)
        model = shared.get()
        count, starts, parts = 0, [], []
        for batch in batches:
            for block in rows.blocks(batch):
                for piece in pieces([block]):
                    z = regression_outputs(model, piece.x, where, piece.first_row)
                    count += len(z)
                    if keep_outputs:
                        starts.append(piece.first_row)
                        parts.append(z)
                    table = regression_table(model, z, key_name, piece.keys)
                    for name in _REGRESSION_TOTALS:
                        table = table.append_column(
                            arrow_schema.field(name), _nulls(arrow_schema.field(name).type, table.num_rows)
                        )
                    yield from table.cast(arrow_schema).to_batches()
        values = {
            _REGRESSION_TOTALS[0]: count,
            _REGRESSION_TOTALS[1]: _outputs_bytes(starts, parts) if keep_outputs else None,
        }
        yield pa.RecordBatch.from_arrays(
            [pa.array([values.get(f.name)], f.type) for f in arrow_schema], schema=arrow_schema
        )

    return frame.mapInArrow(score, schema)


def _without_regression_totals(frame, observation):
    """``frame`` (a :func:`regression_frame`) without its totals rows and columns; ``observation`` adds up the
    rows and collects the outputs while the write runs."""
    from pyspark.sql import functions as F

    rows, outputs = _REGRESSION_TOTALS
    observed = frame.observe(observation, F.sum(rows).alias(rows), F.collect_list(outputs).alias(outputs))
    return observed.where(F.col(rows).isNull()).drop(*_REGRESSION_TOTALS)


def _write(scored, path: Path | None, reader: SparkReader, data: str) -> None:
    """Run the scoring job: Spark writes ``path`` (a directory of part files), or nothing without ``path``.

    The files go to a temporary directory beside ``path``, renamed into place when every task is done (an
    existing ``path`` is replaced then, as ``--overwrite`` allowed); a failure leaves nothing."""
    what = f"predicting {data}"
    if path is None:
        reader.run_job(lambda: scored.write.format("noop").mode("overwrite").save(), what, data, "DATA")
        return
    tmp = path.absolute().with_name(f".{path.name}.tmp{os.getpid()}")
    writer = scored.write.mode("overwrite")
    try:
        if path.suffix.lower() == ".csv":
            reader.run_job(lambda: writer.option("header", True).csv(str(tmp)), what, data, "DATA")
        else:
            reader.run_job(lambda: writer.parquet(str(tmp)), what, data, "DATA")
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_scored(
    scored, connect: bool, out: str | None, overwrite: bool, path: Path | None, reader: SparkReader, data: str
) -> Path | None:
    """Run the scoring job and write its rows: on a Spark Connect server its executors write ``out``
    (:func:`_write_on_server`), else this process writes ``path`` (:func:`_write`); returns the path written."""
    if connect:
        _write_on_server(scored, out, overwrite, reader, data)
        return None if out is None else Path(out)
    _write(scored, path, reader, data)
    return path


def _write_on_server(scored, out: str | None, overwrite: bool, reader: SparkReader, data: str) -> None:
    """Run the scoring job on a Spark Connect server: its executors write ``out`` (a path they reach; the
    client's filesystem may be another), replacing it only with ``overwrite``."""
    what = f"predicting {data}"
    if out is None:
        reader.run_job(lambda: scored.write.format("noop").mode("overwrite").save(), what, data, "DATA")
        return
    writer = scored.write.mode("overwrite" if overwrite else "error")
    try:
        if out.lower().endswith(".csv"):
            reader.run_job(lambda: writer.option("header", True).csv(out), what, data, "DATA")
        else:
            reader.run_job(lambda: writer.parquet(out), what, data, "DATA")
    except NnlibError as exc:
        if "PATH_ALREADY_EXISTS" in str(exc):
            raise ConfigError(f"--out: {out} exists; choose another file or pass --overwrite") from None
        raise


def _check_suffix(out: str | None) -> None:
    if out is not None and not out.lower().endswith(OUT_SUFFIXES):
        raise ConfigError(f"--out: the predictions file must end in {' or '.join(OUT_SUFFIXES)}, got {out}")


def predict_spark(
    model_path: str | Path, data: str, overrides: Sequence[str] = (), out: str | None = None, overwrite: bool = False
) -> Prediction:
    """Predict every row of ``data`` in Spark's executors; Spark writes ``out`` (Parquet or CSV) if given.

    ``model_path``: a run directory or a model file. ``overrides``: ``--set`` items (``engine=spark``; how to
    read ``data``; ``spark.master``, ``spark.conf``, ... for a session started here; an active SparkSession is
    joined instead). Every problem is one :class:`nnlib.errors.NnlibError` line and leaves no output.
    """
    overrides = list(overrides)
    _check_suffix(out)
    model = Model.load(model_path)
    config = predict_config(model, overrides, engines=("spark",))
    settings = SessionSettings.from_config(config.spark)
    remote = connect_expected(settings)
    path = None if remote else check_out(out, overwrite)  # the client's filesystem, checked before Spark starts
    if model.is_regressor:
        return _predict_regressor(model, model_path, data, config, settings, overrides, out, overwrite, path)
    # the source's layout against the model, from its footer or header: a mismatch costs no JVM start (a Connect
    # server reads Parquet paths on its own filesystem, so those are left to it)
    check_layout(model, data, config, _explicit_key(overrides), parquet=not remote, spark=True)
    quiet_query_context_logs(config.spark.log_level)
    opened = open_session(settings)
    session = opened.session
    try:
        if remote and not opened.connect:
            path = check_out(out, overwrite)
        shared = SharedModel(model_file.model_path(model_path).read_bytes(), config.model.backend)
        reader = SparkReader(lambda: session)
        as_text = out is not None and out.lower().endswith(".csv")
        key_required = _explicit_key(overrides)
        # a Parquet source of local files is read by pyarrow in the tasks (one job reads the footers); any other
        # by Spark's reader, whose cost grows with the columns far faster than with the data
        arrow = reader.arrow_source(data, "DATA") if tables.is_row_keyed(data) else None
        key_type = None
        rows: ArrowRows | ParquetRows | DriverRows
        if arrow is not None:
            from pyspark.sql.pandas.types import from_arrow_type

            columns = TableColumns(
                model, list(arrow.column_names), config, data, key_required, tables.arrow_layout(arrow.schema)
            )
            key_name = columns.key or "row"
            if columns.key is not None:
                key_type = from_arrow_type(arrow.schema.field(columns.key).type)
            frame, rows = reader.units_frame(arrow), ArrowRows(columns, arrow)
        elif tables.is_row_keyed(data):
            frame = reader.source_frame(data, "DATA")
            try:  # on Spark Connect the server reads the files' schema only now
                names = [c for c in frame.columns if c not in (_FILE, _ROW)]
            except Exception as exc:  # noqa: BLE001  - AnalysisException, SparkException: the path or the files
                raise DataError(f"DATA: Spark cannot read {data} ({spark_error_line(exc)})") from None
            columns = TableColumns(model, names, config, data, key_required)
            if columns.features is not None:
                reader.warn_if_wide(len(columns.features), data, "DATA")
            parts, counts = reader.part_rows(frame, data, "DATA")
            offsets = dict(zip(parts, np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist(), strict=True))
            key_name = columns.key or "row"
            frame, rows = frame.select(*columns.read(), _FILE, _ROW), ParquetRows(columns, offsets)
        else:
            key_name, source = blocks(model, data, config, key_required)
            block = next(source)  # sources other than Parquet are one block
            frame = _driver_frame(session, key_name, block)
            rows = DriverRows(key_name, block.y is not None, block.w is not None)
        observation = _observation(session)
        scored = _without_totals(
            scored_frame(frame, rows, shared, key_name, as_text, f"DATA {data}", key_type), observation
        )
        path = _write_scored(scored, opened.connect, out, overwrite, path, reader, data)
        totals = _observed_scores(observation, config.data.weight_column is not None)
    except NnlibError:
        raise
    except Exception as exc:  # noqa: BLE001  - Spark Connect's errors (AnalysisException, gRPC's) and py4j's
        raise EngineError(f"spark: predicting {data} failed: {spark_error_line(exc)}") from None
    finally:
        opened.stop()
    return totals.prediction(path, f"DATA {data}")


def _predict_regressor(
    model: Model,
    model_path,
    data: str,
    config,
    settings: SessionSettings,
    overrides: list[str],
    out: str | None,
    overwrite: bool,
    path: Path | None,
) -> Prediction:
    """:func:`predict_spark` of a regressor: the driver reads ``data`` as ``engine=local`` does (before Spark
    starts: a bad source costs no JVM), the executors score it, Spark writes ``out``; the figures are computed
    by the driver from the outputs the tasks return (see the module docstring)."""
    where = f"DATA {data}"
    read = regression_rows(model, data, config, _explicit_key(overrides))
    if len(read.x) == 0:
        raise DataError(f"{where} holds no rows")
    quiet_query_context_logs(config.spark.log_level)
    opened = open_session(settings)
    session = opened.session
    try:
        if connect_expected(settings) and not opened.connect:
            path = check_out(out, overwrite)
        shared = SharedModel(model_file.model_path(model_path).read_bytes(), config.model.backend)
        reader = SparkReader(lambda: session)
        frame = _driver_frame(session, read.key_name, Block(read.keys, read.x, None, 0))
        key_type = frame.schema[read.key_name].dataType
        targets = model.target_names
        names = ["prediction"] if len(targets) == 1 else [f"prediction_{t}" for t in targets]
        observation = _observation(session)
        scored = _without_regression_totals(
            regression_frame(
                frame,
                DriverRows(read.key_name, False),
                shared,
                read.key_name,
                key_type,
                names,
                read.y is not None,
                where,
            ),
            observation,
        )
        path = _write_scored(scored, opened.connect, out, overwrite, path, reader, data)
        got = observation.get
        rows = int(got.get(_REGRESSION_TOTALS[0]) or 0)
        z = None
        if read.y is not None:
            z = _gathered_outputs(got.get(_REGRESSION_TOTALS[1]) or [], len(read.x), len(targets))
    except NnlibError:
        raise
    except Exception as exc:  # noqa: BLE001  - Spark Connect's errors (AnalysisException, gRPC's) and py4j's
        raise EngineError(f"spark: predicting {data} failed: {spark_error_line(exc)}") from None
    finally:
        opened.stop()
    return regression_prediction(model, rows, z, read.y, read.w, path)


def _observation(session):
    """A new ``Observation`` of the kind ``session`` takes (classic or Spark Connect)."""
    if is_connect(session):
        from pyspark.sql.connect.observation import Observation as ConnectObservation

        return ConnectObservation()
    from pyspark.sql.observation import Observation

    return Observation()
