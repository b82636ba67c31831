"""``nnlib predict --set engine=spark``: scored in Spark's executors, the same columns as ``engine=local``.

The oracle is the local path: the same model over the same source must give
the same keys, predictions and probabilities, bit for bit, joined on the key
(Spark writes its rows in parts, in no set order).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from nnlib.cli import main
from nnlib.config import load_config
from nnlib.data.sources import load_digits
from nnlib.driver import run
from nnlib.engines.spark.predict import predict_spark
from nnlib.errors import ConfigError, DataError
from nnlib.model.model import Model
from nnlib.model.predict import predict_source
from nnlib.outputs import RunDir

pytestmark = pytest.mark.slow  # a SparkSession

QUICK = ["engine=local", "mappers=2", "train.rounds=2", "train.local_epochs=1", "model.hidden=[16]", "seed=5"]
SPARK = ["engine=spark"]


def _table(x, y, ids=None) -> pa.Table:
    cols = {f"px{i}": x[:, i] for i in range(x.shape[1])}
    return pa.table({**({"id": ids} if ids is not None else {}), **cols, "label": y})


def _read(path) -> pa.Table:
    """A predictions file of the local path, or the directory of part files Spark wrote."""
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".csv"))
        assert parts, f"no part files in {path}"
        reader = pq.read_table if path.suffix == ".parquet" else pacsv.read_csv
        return pa.concat_tables([reader(p) for p in parts])
    return pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)


def _by_key(table: pa.Table, key: str) -> dict:
    """``{key: (prediction, probability)}`` of a predictions table."""
    return dict(
        zip(
            table.column(key).to_pylist(),
            zip(table.column("prediction").to_pylist(), table.column("probability").to_pylist()),
        )
    )


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory):
    """A run on raw-scale digits (x * 1000 + 7000) in a Parquet dataset of three files of several row groups,
    each row keyed by an id column; and the dataset."""
    tmp = tmp_path_factory.mktemp("spark-predict")
    x, y = load_digits()
    x = x * 1000.0 + 7000.0
    ids = np.array([f"r{i:04d}" for i in range(len(y))])
    (tmp / "data").mkdir()
    for i, (lo, hi) in enumerate(((0, 500), (500, 1300), (1300, len(y)))):
        pq.write_table(_table(x[lo:hi], y[lo:hi], ids[lo:hi]), tmp / "data" / f"part-{i}.parquet", row_group_size=128)
    out = tmp / "run"
    summary = run(
        load_config(None, [*QUICK, f"data.source={tmp / 'data'}", "data.key_column=id"]),
        RunDir(out),
        log=lambda _: None,
        warn=lambda _: None,
    ).summary
    return summary, out, tmp, x, y


def test_spark_trains_on_a_keyed_parquet_dataset_as_the_local_engine_does(spark, parquet_run):
    from nnlib.engines.spark.engine import SparkStageEngine
    from nnlib.engines.spark.session import SessionSettings

    summary, out, tmp, _, _ = parquet_run
    config = load_config(None, [*QUICK, f"data.source={tmp / 'data'}", "data.key_column=id", "engine=spark"])
    result = run(config, engine=SparkStageEngine(SessionSettings("local[4]")), log=lambda _: None, warn=lambda _: None)
    assert result.summary["n_features"] == summary["n_features"] == 64  # the string key is no feature
    np.testing.assert_array_equal(result.params, Model.load(out).params)
    assert result.summary["final_test_accuracy"] == summary["final_test_accuracy"]


def test_spark_predicts_a_parquet_dataset_as_the_local_path_does(spark, parquet_run, tmp_path):
    _, out, tmp, x, y = parquet_run
    local = predict_source(Model.load(out), str(tmp / "data"), [], str(tmp_path / "local.parquet"))
    done = predict_spark(out, str(tmp / "data"), SPARK, str(tmp_path / "spark.parquet"))
    assert (done.rows, done.accuracy) == (local.rows, local.accuracy) == (len(y), local.accuracy)
    assert done.loss == pytest.approx(local.loss, rel=1e-12)  # the same sums, added in another order
    written = _read(tmp_path / "spark.parquet")
    assert written.column_names == ["id", "prediction", "probability"]
    assert written.schema.field("probability").type.value_type == pa.float32()
    spark_rows, local_rows = _by_key(written, "id"), _by_key(_read(tmp_path / "local.parquet"), "id")
    assert len(spark_rows) == len(y) and spark_rows == local_rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local.parquet", "spark.parquet"]  # no temporary left


def test_relative_paths_are_this_process_folder_after_a_chdir(spark, parquet_run, tmp_path, monkeypatch):
    """A program (a notebook, a script calling nnlib's API) that changes folder after the SparkSession started:
    a relative data path is the process's folder, as for the local path, not the JVM's starting folder."""
    import shutil

    _, out, tmp, _x, y = parquet_run
    shutil.copytree(tmp / "data", tmp_path / "rel")
    monkeypatch.chdir(tmp_path)
    done = predict_spark(out, "rel", SPARK, "scored.parquet")
    local = predict_source(Model.load(out), "rel", [], "local.parquet")
    assert (done.rows, done.accuracy) == (local.rows, local.accuracy) == (len(y), local.accuracy)
    assert (tmp_path / "scored.parquet").exists()


def test_without_a_key_column_rows_are_keyed_by_the_training_position(spark, parquet_run, tmp_path):
    _, out, tmp, x, y = parquet_run
    (tmp_path / "nokey").mkdir()
    for f in sorted((tmp / "data").iterdir()):  # the same files, the id column dropped
        pq.write_table(pq.read_table(f).drop_columns(["id"]), tmp_path / "nokey" / f.name, row_group_size=100)
    done = predict_spark(out, str(tmp_path / "nokey"), SPARK, str(tmp_path / "p.parquet"))
    written = _read(tmp_path / "p.parquet")
    assert written.column_names == ["row", "prediction", "probability"] and done.rows == len(y)
    order = np.argsort(written.column("row").to_numpy())
    assert np.array_equal(written.column("row").to_numpy()[order], np.arange(len(y)))
    model = Model.load(out)
    assert np.array_equal(written.column("prediction").to_numpy()[order], model.predict(x))
    proba = np.array(written.column("probability").to_pylist(), np.float32)[order]
    assert np.array_equal(proba, model.predict_proba(x))


def test_a_source_the_driver_reads_and_csv_output(spark, parquet_run, tmp_path):
    _, out, tmp, x, y = parquet_run
    pacsv.write_csv(_table(x[:300], y[:300], np.array([f"c{i}" for i in range(300)])), tmp_path / "rows.csv")
    local = predict_source(Model.load(out), str(tmp_path / "rows.csv"), [], str(tmp_path / "local.csv"))
    done = predict_spark(out, str(tmp_path / "rows.csv"), SPARK, str(tmp_path / "spark.csv"))
    assert (done.rows, done.accuracy) == (300, local.accuracy)
    written = _read(tmp_path / "spark.csv")
    assert written.column_names == ["id", "prediction", "probability"]
    assert _by_key(written, "id") == _by_key(_read(tmp_path / "local.csv"), "id")  # the same text, [p0,...]


def test_cli_predict_on_spark_prints_the_accuracy_and_refuses_bad_input_in_one_line(
    spark, parquet_run, tmp_path, capsys
):
    summary, out, tmp, x, y = parquet_run
    p = tmp_path / "p.parquet"
    assert main(["predict", str(out), str(tmp / "data"), "--set", "engine=spark", "--out", str(p)]) == 0
    local = predict_source(Model.load(out), str(tmp / "data"))
    assert (
        f"predict: {len(y)} rows; accuracy {local.accuracy:.4f}, loss {local.loss:.4f}; predictions in {p}"
        in capsys.readouterr().out
    )

    def one_line(*args) -> str:
        assert main(["predict", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("nnlib: error: ")
        return err

    assert "exists; choose another file or pass --overwrite" in one_line(
        str(tmp / "data"), "--set", "engine=spark", "--out", str(p)
    )
    (tmp_path / "narrow").mkdir()
    pq.write_table(
        pq.read_table(tmp / "data" / "part-0.parquet").drop_columns(["px5"]), tmp_path / "narrow" / "part-0.parquet"
    )
    err = one_line(str(tmp_path / "narrow"), "--set", "engine=spark", "--out", str(tmp_path / "q.parquet"))
    assert "columns differ from the model's: missing ['px5']" in err
    (tmp_path / "bad").mkdir()
    bad = pq.read_table(tmp / "data" / "part-1.parquet")
    column = bad.column("px3").to_numpy().copy()
    column[7] = np.nan
    pq.write_table(
        bad.set_column(bad.column_names.index("px3"), "px3", pa.array(column)), tmp_path / "bad" / "part-0.parquet"
    )
    err = one_line(str(tmp_path / "bad"), "--set", "engine=spark", "--out", str(tmp_path / "q.parquet"))
    assert "features must be finite, got nan at sample 7, feature 3" in err  # raised in an executor
    err = one_line(str(tmp / "data"), "--set", "engine=mrjob")
    assert "engine: nnlib predict runs on engine local or spark, got engine=mrjob" in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bad", "narrow", "p.parquet"]  # nothing half-written


def test_predict_spark_refuses_another_engine(parquet_run):
    _, out, tmp, _, _ = parquet_run
    with pytest.raises(ConfigError, match="engine: this computes on engine spark, got engine=local"):
        predict_spark(out, str(tmp / "data"), ["engine=local"])
    with pytest.raises(DataError, match="no such run directory or model file"):
        predict_spark(tmp / "missing", str(tmp / "data"), SPARK)
