"""nnlib's Spark ML stages and ``nnlib predict --set engine=spark`` on the columns of a user's data.

Two promises, on a real SparkSession (and a Spark Connect one):

* a column the user has is never replaced: an output column that is
  already there is refused before any Spark job, naming the param to
  change (as MLlib's ``Column prediction already exists``), and nnlib's own
  helper columns cannot take a user's name;
* a bad value is reported in one line naming the column and the row's
  place in the input: the key column's value, else the partition and the
  row's offset in it (not in an Arrow batch), a file's row number for
  ``nnlib predict``, with nothing from Spark's loggers on the console.

The oracle for a row's place is the DataFrame's own layout:
``spark.range(0, 40, 1, numPartitions=2)`` holds ids 0..19 in partition 0
and 20..39 in partition 1, in order, so id 25 is row 5 of partition 1.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import on
from spark_cluster import spark_lines

from nnlib.config import load_config
from nnlib.driver import run
from nnlib.errors import DataError
from nnlib.outputs import RunDir

pytestmark = pytest.mark.slow  # a SparkSession

N_FEATURES = 4
BAD_ID = 25  # row 5 of partition 1 in _frame's layout


@pytest.fixture(scope="module")
def keyed_run(tmp_path_factory):
    """A run (local engine) on a Parquet file of 40 rows: key column ``id``, features f0..f3, ``label``; the run
    folder and the rows."""
    tmp = tmp_path_factory.mktemp("columns")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, N_FEATURES)).round(3)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    pq.write_table(
        pa.table({"id": np.arange(40), **{f"f{j}": x[:, j] for j in range(N_FEATURES)}, "label": y}),
        tmp / "rows.parquet",
    )
    config = load_config(
        None,
        [
            "engine=local",
            "mappers=1",
            "train.rounds=1",
            "model.hidden=[4]",
            "seed=1",
            f"data.source={tmp / 'rows.parquet'}",
            "data.key_column=id",
        ],
    )
    run(config, RunDir(tmp / "run"), log=lambda _: None, warn=lambda _: None)
    return tmp / "run", x, y


def _model(run_dir):
    from nnlib.engines.spark.predict import model_bytes
    from nnlib.model.model import Model
    from nnlib.spark import NNClassificationModel

    return NNClassificationModel(model_bytes(Model.load(run_dir)))


def _frame(session, bad: int | None = BAD_ID, key: str = "id"):
    """40 rows in 2 partitions (ids 0..19, 20..39, in order): ``key`` (the id), ``features`` (an array of 4
    doubles, NaN at feature 2 of the row whose id is ``bad``) and ``label``."""
    from pyspark.sql import functions as F

    ids = session.range(0, 40, 1, numPartitions=2)
    values = [(F.col("id") * (j + 1) % 7).cast("double") for j in range(N_FEATURES)]
    if bad is not None:
        values[2] = F.when(F.col("id") == bad, F.lit(float("nan"))).otherwise(values[2])
    return ids.select(F.col("id").alias(key), F.array(*values).alias("features"), (F.col("id") % 3).alias("label"))


def _no_job_runs(spark, action) -> None:
    """``action()`` raises DataError and starts no Spark job (the job group's list stays empty)."""
    sc = spark.sparkContext
    sc.setJobGroup("nnlib-columns", "checks before any job")
    try:
        with pytest.raises(DataError) as caught:
            action()
        assert sc.statusTracker().getJobIdsForGroup("nnlib-columns") == []
    finally:
        sc.setJobGroup("other", "")
    return str(caught.value)


def test_transform_refuses_an_output_column_the_dataframe_has_before_any_job(spark, keyed_run):
    model = _model(keyed_run[0])
    df = _frame(spark, bad=None)
    for param, column in (
        ("predictionCol", "prediction"),
        ("probabilityCol", "probability"),
        ("rawPredictionCol", "rawPrediction"),
        ("predictionCol", "PREDICTION"),
    ):
        taken = df.selectExpr("*", f"1.5 as {column}")
        message = _no_job_runs(spark, lambda: model.transform(taken))
        assert message.startswith(f"{param}: the DataFrame already has a column '{column}'")
        assert f"set {param} to another name" in message and "\n" not in message
    # the job group does see a job: the check above can fail
    sc = spark.sparkContext
    sc.setJobGroup("nnlib-columns-run", "")
    assert model.transform(df).count() == 40
    assert sc.statusTracker().getJobIdsForGroup("nnlib-columns-run")
    sc.setJobGroup("other", "")
    # two params naming one column would replace each other's output
    clash = model.copy().setProbabilityCol("scores").setRawPredictionCol("scores")
    assert _no_job_runs(spark, lambda: clash.transform(df)).startswith(
        "probabilityCol: 'scores' is also rawPredictionCol's column"
    )


def test_an_output_left_out_keeps_the_users_column_and_helper_columns_take_no_users_name(spark, keyed_run):
    from pyspark.sql import functions as F

    model = _model(keyed_run[0])
    df = _frame(spark, bad=None).select("*", F.lit(0.5).alias("probability"), F.lit("mine").alias("_nnlib_scores"))
    out = model.copy().setProbabilityCol("").transform(df)  # an empty name: no probability column written
    assert out.columns == ["id", "features", "label", "probability", "_nnlib_scores", "rawPrediction", "prediction"]
    rows = out.collect()
    assert {r.probability for r in rows} == {0.5} and {r._nnlib_scores for r in rows} == {"mine"}
    assert {r.prediction for r in rows} <= {0.0, 1.0, 2.0} and len(rows) == 40


def test_fit_refuses_taken_output_columns_and_columns_the_reader_needs(spark):
    from nnlib.spark import NNClassifier

    df = _frame(spark, bad=None)
    message = _no_job_runs(
        spark, lambda: NNClassifier(featuresCol="features").fit(df.selectExpr("*", "0 as prediction"))
    )
    assert message.startswith("predictionCol: the DataFrame already has a column 'prediction'")
    with pytest.raises(DataError, match="^labelCol: '_nnlib_row' is a name nnlib's reader gives its own columns"):
        NNClassifier(labelCol="_nnlib_row").fit(df.withColumnRenamed("label", "_nnlib_row"))


def _worker_error(action) -> str:
    """The message of the error an action raises (Spark's PythonException), and its last line, nnlib's."""
    with pytest.raises(Exception) as caught:
        action()
    text = str(caught.value)
    return text, [line for line in text.strip().splitlines() if line.strip()][-1]


def test_a_nan_at_transform_names_the_column_and_the_rows_partition_and_offset(spark, keyed_run):
    model = _model(keyed_run[0])
    df = _frame(spark, key="rid")  # no column of the model's key (id)
    text, last = _worker_error(lambda: model.transform(df).collect())
    assert last == (
        "nnlib.errors.DataError: featuresCol 'features': features must be finite, got nan at row 5 of "
        "partition 1, feature 2"
    )
    assert text.count("\n") < 8  # the worker's traceback is one frame and nnlib's line
    # a filter after transform does not change the offsets: they are the input's
    _, last = _worker_error(lambda: model.transform(df).where("rid > 22").collect())
    assert last.endswith("got nan at row 5 of partition 1, feature 2")
    # the row's place counts the partition's rows, not an Arrow batch's
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "3")
    try:
        _, last = _worker_error(lambda: model.transform(df).collect())
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert last.endswith("got nan at row 5 of partition 1, feature 2")
    # one short row, so that the error cannot come from whichever partition's task fails first
    short = _frame(spark, bad=None, key="rid").selectExpr(
        "rid", "if(rid = 23, slice(features, 1, 3), features) as features"
    )
    _, last = _worker_error(lambda: model.transform(short).collect())
    assert last == (
        "nnlib.errors.DataError: featuresCol 'features': the model takes 4 features, got 3 features at "
        "row 3 of partition 1"
    )


def test_a_nan_at_transform_names_the_key_columns_value(spark, keyed_run):
    model = _model(keyed_run[0])
    assert model.model.header["preprocessing"]["key_column"] == "id"
    _, last = _worker_error(lambda: model.transform(_frame(spark)).collect())
    assert last == (
        f"nnlib.errors.DataError: featuresCol 'features': features must be finite, got nan at the row "
        f"whose id is {BAD_ID}, feature 2"
    )
    # a key column given to the estimator (conf's data.key_column) is the model's
    from nnlib.spark import NNClassifier

    keyed = NNClassifier(mappers=1, rounds=1, hidden=[4], conf={"data.key_column": "id"}).fit(_frame(spark, bad=None))
    assert keyed.model.header["preprocessing"]["key_column"] == "id"
    _, last = _worker_error(lambda: keyed.transform(_frame(spark)).collect())
    assert last.endswith(f"got nan at the row whose id is {BAD_ID}, feature 2")
    named = _frame(spark).selectExpr("concat('r', id) as id", "features")
    _, last = _worker_error(lambda: model.transform(named).collect())
    assert last.endswith(f"got nan at the row whose id is 'r{BAD_ID}', feature 2")


def test_a_nan_in_training_rows_names_the_column_and_the_rows_partition_and_offset(spark):
    from nnlib.spark import NNClassifier

    with pytest.raises(DataError) as caught:
        NNClassifier(mappers=1, rounds=1, hidden=[4]).fit(_frame(spark))
    assert str(caught.value) == (
        "featuresCol 'features': features must be finite, got nan at row 5 of partition 1, feature 2"
    )
    with pytest.raises(
        DataError,
        match=r"^labelCol 'label': labels must be integers 0..n_classes-1, got 2.5 at row "
        r"3 of partition 0$",
    ):
        NNClassifier(mappers=1, rounds=1, hidden=[4]).fit(
            _frame(spark, bad=None).selectExpr("features", "if(id = 3, cast(2.5 as double), label) as label")
        )


def test_on_spark_connect_a_taken_column_is_refused_and_a_nan_named(connect, keyed_run):
    model = _model(keyed_run[0])
    with on("connect"):
        df = _frame(connect, key="rid")
        with pytest.raises(DataError, match="^predictionCol: the DataFrame already has a column 'prediction'"):
            model.transform(df.selectExpr("*", "1.0 as prediction"))
        text, _ = _worker_error(lambda: model.transform(df).collect())
    assert (
        "nnlib.errors.DataError: featuresCol 'features': features must be finite, got nan at row 5 of "
        "partition 1, feature 2"
    ) in text


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_cli_predict_on_spark_names_the_column_and_the_files_row_with_no_spark_lines(keyed_run, tmp_path, suffix):
    run_dir, x, y = keyed_run
    k = 23
    bad = x.copy()
    bad[k, 2] = np.nan if suffix == ".parquet" else np.inf  # a CSV reader reads "nan" as an empty cell
    table = pa.table({"id": np.arange(40), **{f"f{j}": bad[:, j] for j in range(N_FEATURES)}, "label": y})
    data = tmp_path / f"bad{suffix}"
    if suffix == ".parquet":
        pq.write_table(table, data, row_group_size=8)  # several batches: row k is not the first of one
    else:
        pacsv.write_csv(table, data)
    out = tmp_path / "p.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "nnlib", "predict", str(run_dir), str(data), "--set", "engine=spark", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = spark_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("nnlib: error: "), proc.stderr[-3000:]
    value = "nan" if suffix == ".parquet" else "inf"
    assert (
        lines[0] == f"nnlib: error: DATA {data}: features must be finite, got {value} at sample {k}, feature 2 ('f2')"
    )
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [data.name]


def test_spark_keeps_its_other_errors_on_the_console(tmp_path):
    """The failed write task's "Aborting task" line is dropped from Spark's Utils logger, nothing else of it."""
    script = (
        "from nnlib.engines.spark.session import SessionSettings, open_session\n"
        "opened = open_session(SessionSettings('local[1]'))\n"
        "log = opened.session.sparkContext._jvm.org.apache.logging.log4j.LogManager.getLogger("
        "'org.apache.spark.util.Utils')\n"
        "log.error('Aborting task')\n"
        "log.error('Uncaught exception in thread nnlib-test')\n"
        "opened.stop()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = spark_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].endswith("ERROR Utils: Uncaught exception in thread nnlib-test"), lines
