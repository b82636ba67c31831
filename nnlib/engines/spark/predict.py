"""``nnlib predict ... --set engine=spark``: a model over a data source, scored in Spark's executors.

    nnlib predict runs/digits digits.parquet --set engine=spark --out predictions.parquet

A Parquet source (a file, a dataset directory or glob, any URI Spark reads)
is read by Spark in the executors, each row keyed by its ``data.key_column``
or by its position as training numbers it (files sorted by path, rows in
file order: Parquet's ``_metadata.row_index`` plus the file's offset). Any
other source (digits, synthetic, ``.npz``, ``.csv``, IDX) is read whole by
the driver, as training reads it, and handed to Spark. The model file's
bytes are broadcast once and each Python worker loads the model once (a
module-level cache keyed by the bytes' digest, :class:`SharedModel`). Each
Arrow batch is scored by ``mapInArrow`` with the functions ``engine=local``
uses (:func:`nnlib.model.predict.score_block` and ``prediction_table``), so
the key, ``prediction`` and ``probability`` columns are the same. Spark
writes the output: a directory of part files (Parquet, or CSV by the
extension), written to a temporary name beside ``--out`` and renamed when
every task is done. The rows are not in input order: join on the key. With
labels, each task adds its rows' loss sum and correct count to an
accumulator, which the driver reads once the job is done; the driver never
holds a row of a Parquet source.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from nnlib.data import tables
from nnlib.engines.spark.session import SessionSettings, open_session
from nnlib.engines.spark.reader import _FILE, _ROW, SparkReader, split_parts
from nnlib.errors import EngineError, first_line
from nnlib.model import file as model_file
from nnlib.model.model import Model
from nnlib.model.predict import (Block, Prediction, Scores, TableColumns, blocks, check_out, pieces, predict_config,
                                  prediction_table, score_block, _explicit_key)

_MODELS: dict[tuple[str, str], Model] = {}  # (digest, backend) -> Model, in each Python worker
_MAX_MODELS = 4  # models a worker keeps (a session may score with several)
_FEATURES, _LABEL = "_nnlib_x", "_nnlib_y"  # the columns of rows the driver read


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
    """A model file broadcast to the executors; :meth:`get` loads it once per Python worker."""

    def __init__(self, sc, data: bytes, backend: str = "numpy"):
        self.key = (hashlib.sha256(data).hexdigest(), backend)
        self._data = sc.broadcast(data)

    def get(self) -> Model:
        """The model, in an executor (or the driver)."""
        model = _MODELS.get(self.key)
        if model is None:
            if len(_MODELS) >= _MAX_MODELS:
                _MODELS.clear()
            model = _MODELS[self.key] = model_from_bytes(self._data.value, self.key[1])
        return model

    def release(self) -> None:
        """Drop the broadcast from the executors (its value stays readable where already loaded)."""
        self._data.unpersist()


def _scores_param():
    from pyspark.accumulators import AccumulatorParam

    class ScoresParam(AccumulatorParam):
        """:class:`Scores` added up across tasks."""

        def zero(self, value):
            return Scores()

        def addInPlace(self, a, b):
            return a + b

    return ScoresParam()


class ParquetRows:
    """Blocks of a Parquet source's Arrow batches, as Spark read them (one file's rows at a time)."""

    def __init__(self, columns: TableColumns, offsets: dict):
        self.columns, self.offsets = columns, offsets

    def blocks(self, batch):
        for name, _, positions, table in split_parts(batch, self.offsets):
            block = self.columns.block(table, name, int(positions[0]))
            yield block if self.columns.key is not None else replace(block, keys=positions)


class DriverRows:
    """Blocks of rows the driver read (a list column of float64 features, the labels, the key, the position)."""

    def __init__(self, key_name: str, labelled: bool):
        self.key_name, self.labelled = key_name, labelled

    def blocks(self, batch):
        import pyarrow.compute as pc

        if batch.num_rows == 0:
            return
        features = batch.column(_FEATURES)
        x = pc.list_flatten(features).to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        y = batch.column(_LABEL).to_numpy(zero_copy_only=False) if self.labelled else None
        yield Block(batch.column(self.key_name), x, y, int(batch.column(_ROW)[0].as_py()))


def _driver_frame(session, key_name: str, block: Block):
    """A source the driver read whole, as a DataFrame: the key, the position, the features, the labels."""
    import pyarrow as pa

    x = np.ascontiguousarray(block.x, np.float64)
    columns = {key_name: block.keys, _ROW: np.arange(len(x), dtype=np.int64),
               _FEATURES: pa.FixedSizeListArray.from_arrays(x.ravel(), x.shape[1])}
    if block.y is not None:
        columns[_LABEL] = block.y
    return session.createDataFrame(pa.table(columns))


def _output_schema(key_name: str, key_type, as_text: bool):
    from pyspark.sql.types import ArrayType, FloatType, LongType, StringType, StructField, StructType

    probability = StringType() if as_text else ArrayType(FloatType())
    return StructType([StructField(key_name, key_type), StructField("prediction", LongType()),
                       StructField("probability", probability)])


def scored_frame(frame, rows, shared: SharedModel, key_name: str, as_text: bool, where: str, totals):
    """``frame``'s rows scored by ``mapInArrow``: the key, ``prediction`` and ``probability`` columns.

    ``rows`` turns an Arrow batch into :class:`Block` s (:class:`ParquetRows`, :class:`DriverRows`);
    each task adds its :class:`Scores` to the accumulator ``totals``.
    """
    key_type = frame.schema[key_name].dataType if key_name in frame.columns else None
    if key_type is None:
        from pyspark.sql.types import LongType

        key_type = LongType()

    def score(batches):
        model = shared.get()
        done = Scores()
        for batch in batches:
            for block in rows.blocks(batch):
                for piece in pieces([block]):
                    logits, scores = score_block(model, piece, where)
                    done += scores
                    yield from prediction_table(model, logits, key_name, piece.keys, as_text).to_batches()
        totals.add(done)

    return frame.mapInArrow(score, _output_schema(key_name, key_type, as_text))


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


def predict_spark(model_path: str | Path, data: str, overrides: list[str] = (), out: str | None = None,
                  overwrite: bool = False) -> Prediction:
    """Predict every row of ``data`` in Spark's executors; Spark writes ``out`` (Parquet or CSV) if given.

    ``model_path``: a run directory or a model file. ``overrides``: ``--set`` items (``engine=spark``; how to
    read ``data``; ``spark.master``, ``spark.conf``, ... for a session started here; an active SparkSession is
    joined instead). Every problem is one :class:`nnlib.errors.NnlibError` line and leaves no output.
    """
    overrides = list(overrides)
    path = check_out(out, overwrite)
    model = Model.load(model_path)
    config = predict_config(model, overrides, engines=("spark",))
    opened = open_session(SessionSettings.from_config(config.spark))
    session = opened.session
    shared = SharedModel(session.sparkContext, model_file.model_path(model_path).read_bytes(), config.model.backend)
    reader = SparkReader(lambda: session)
    totals = session.sparkContext.accumulator(Scores(), _scores_param())
    as_text = path is not None and path.suffix.lower() == ".csv"
    try:
        key_required = _explicit_key(overrides)
        if tables.is_row_keyed(data):
            frame = reader.source_frame(data, "DATA")
            names = [c for c in frame.columns if c not in (_FILE, _ROW)]
            columns = TableColumns(model, names, config, data, key_required)
            parts, counts = reader.part_rows(frame, data, "DATA")
            offsets = dict(zip(parts, np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()))
            key_name = columns.key or "row"
            frame, rows = frame.select(*columns.read(), _FILE, _ROW), ParquetRows(columns, offsets)
        else:
            key_name, source = blocks(model, data, config, key_required)
            block = next(source)  # sources other than Parquet are one block
            frame, rows = _driver_frame(session, key_name, block), DriverRows(key_name, block.y is not None)
        _write(scored_frame(frame, rows, shared, key_name, as_text, f"DATA {data}", totals), path, reader, data)
    finally:
        shared.release()
        opened.stop()
    return totals.value.prediction(path)
