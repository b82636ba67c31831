"""nnlib.spark and ``nnlib predict --set engine=spark`` on a Spark Connect session, against the classic session.

The oracle is the classic session: the same pipeline on the same rows
fits the same weights and transforms to the same probabilities, bit for
bit; a model saved through one kind of session loads through the other;
``nnlib predict`` over Connect writes what it writes on classic.

pyspark picks its classic or Connect code (``pyspark.sql.functions``,
``pyspark.ml``'s Java stages, ``Observation``) by one process-wide switch,
``SPARK_CONNECT_MODE_ENABLED``, which creating a Connect session sets: a
real program holds one kind of session. This file holds both, so each step
runs under :func:`on` for its kind, and the switch is put back after the
module for the test files that follow.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CONNECT_SWITCH, DIGIT_PIXELS, on

from nnlib.errors import EngineError

pytestmark = pytest.mark.slow  # a SparkSession and a Spark Connect server

PIXELS = DIGIT_PIXELS
PARAMS = dict(mappers=2, hidden=[16], rounds=2, localEpochs=1, lr=0.1, batchSize=32, seed=3)


@pytest.fixture(scope="module", autouse=True)
def classic_after_this_module(spark):
    """The classic session starts first (a Connect session already there would be the one nnlib's session
    rules join), and the switch is off for the files after this one."""
    yield
    os.environ.pop(CONNECT_SWITCH, None)


def _pipeline(**params):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StringIndexer, VectorAssembler

    from nnlib.spark import NNClassifier

    return Pipeline(
        stages=[
            StringIndexer(inputCol="digit", outputCol="indexed"),
            VectorAssembler(inputCols=PIXELS, outputCol="features"),
            NNClassifier(labelCol="indexed", **{**PARAMS, **params}),
        ]
    )


def _digits(session, digits_file):
    return session.read.parquet(str(digits_file)).selectExpr("*", "concat('digit-', label) as digit")


def _probabilities(df) -> np.ndarray:
    """The probability column of ``df``, in the rows' order (one file read in one partition keeps it)."""
    rows = df.select("probability", "prediction").collect()
    proba = np.array([r.probability.toArray() for r in rows])
    assert np.array_equal(np.array([r.prediction for r in rows]), proba.argmax(axis=1).astype(float))
    return proba


@pytest.fixture(scope="module")
def classic_fit(spark, digits_file, tmp_path_factory):
    """The pipeline fitted on the classic session; its probabilities; its save directory."""
    saved = tmp_path_factory.mktemp("classic-saved") / "pipeline"
    with on("classic"):
        fitted = _pipeline().fit(_digits(spark, digits_file))
        proba = _probabilities(fitted.transform(_digits(spark, digits_file)))
        fitted.write().overwrite().save(str(saved))
    return fitted, proba, saved


def _workers_nnlib(session) -> set[str]:
    """Where the session's Python workers import nnlib from (two tasks)."""

    def where(batches):
        import nnlib

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict({"file": [nnlib.__file__]})

    return {row.file for row in session.range(0, 2, 1, numPartitions=2).mapInArrow(where, "file string").collect()}


def test_a_pipeline_fits_transforms_saves_and_loads_on_connect_as_on_classic(
    connect, classic_fit, digits_file, tmp_path
):
    from pyspark.ml import PipelineModel

    from nnlib.spark import NNClassificationModel

    classic, classic_proba, _ = classic_fit
    with on("connect"):
        df = _digits(connect, digits_file)
        fitted = _pipeline().fit(df)
        nn = fitted.stages[-1]
        assert isinstance(nn, NNClassificationModel)
        assert np.array_equal(nn.model.params, classic.stages[-1].model.params)  # the same weights
        assert nn.summary.summary["engine"] == "spark" and nn.summary.summary["n_train"] > 1000
        assert np.array_equal(_probabilities(fitted.transform(df)), classic_proba)
        # the server's workers ran the client's nnlib, shipped as one zip (addArtifacts), not an installed copy
        assert all(
            f.endswith(("nnlib.zip/nnlib/__init__.py", "nnlib.zip\\nnlib\\__init__.py"))
            for f in _workers_nnlib(connect)
        ), _workers_nnlib(connect)
        fitted.write().overwrite().save(str(tmp_path / "pipeline"))
        fitted.write().overwrite().save(str(tmp_path / "pipeline"))  # overwrite works over Connect
        loaded = PipelineModel.load(str(tmp_path / "pipeline"))
        assert np.array_equal(_probabilities(loaded.transform(df)), classic_proba)
        assert loaded.stages[-1].getLabelCol() == "indexed" and loaded.stages[-1].getHidden() == [16]
        assert loaded.stages[-1].summary.rounds == nn.summary.rounds


def test_a_model_saved_on_one_kind_of_session_loads_on_the_other(spark, connect, classic_fit, digits_file, tmp_path):
    from pyspark.ml import PipelineModel

    from nnlib.spark import NNClassificationModel

    classic, classic_proba, classic_saved = classic_fit
    with on("connect"):
        df = _digits(connect, digits_file)
        from_classic = PipelineModel.load(str(classic_saved))
        assert np.array_equal(_probabilities(from_classic.transform(df)), classic_proba)
        nn = from_classic.stages[-1]  # the model alone, saved and overwritten over Connect
        nn.write().save(str(tmp_path / "nn"))
        nn.write().overwrite().save(str(tmp_path / "nn"))
        with pytest.raises(
            EngineError,
            match=r"^NNClassificationModel.save .*: \[PATH_ALREADY_EXISTS\] Path "
            r"file:.*/nn/metadata already exists",
        ) as caught:
            nn.write().save(str(tmp_path / "nn"))
        assert "\n" not in str(caught.value) and "JVM stacktrace" not in str(caught.value)
        with pytest.raises(EngineError, match=r"^NNClassificationModel.load .*missing: \[PATH_NOT_FOUND\]") as caught:
            NNClassificationModel.load(str(tmp_path / "missing"))
        assert "\n" not in str(caught.value)
        from_classic.write().overwrite().save(str(tmp_path / "pipeline"))
    with on("classic"):
        df = _digits(spark, digits_file)
        nn_back = NNClassificationModel.load(str(tmp_path / "nn"))
        assert np.array_equal(nn_back.model.params, classic.stages[-1].model.params)
        from_connect = PipelineModel.load(str(tmp_path / "pipeline"))
        assert np.array_equal(_probabilities(from_connect.transform(df)), classic_proba)


@pytest.fixture(scope="module")
def run_dir(digits_file, tmp_path_factory):
    """A local-engine run on the digits Parquet file (a model for nnlib predict)."""
    from nnlib.config import load_config
    from nnlib.driver import run
    from nnlib.outputs import RunDir

    out = tmp_path_factory.mktemp("connect-predict") / "run"
    run(
        load_config(
            None,
            [
                "engine=local",
                "mappers=2",
                "train.rounds=2",
                "model.hidden=[16]",
                "seed=5",
                f"data.source={digits_file}",
            ],
        ),
        RunDir(out),
        log=lambda _: None,
        warn=lambda _: None,
    )
    return out


def _by_row(path) -> dict:
    parts = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".csv"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert table.column_names == ["row", "prediction", "probability"]
    return dict(
        zip(
            table.column("row").to_pylist(),
            zip(table.column("prediction").to_pylist(), table.column("probability").to_pylist()),
        )
    )


def test_nnlib_predict_on_connect_writes_what_classic_writes(
    spark, connect, connect_server, run_dir, digits_file, tmp_path, capsys
):
    from nnlib.cli import main
    from nnlib.engines.spark.predict import predict_spark

    with on("classic"):
        classic = predict_spark(run_dir, str(digits_file), ["engine=spark"], str(tmp_path / "classic.parquet"))
    with on("connect"):
        remote = f"spark.remote={connect_server.url}/;token=s3cr3t-nnlib"
        out = tmp_path / "connect.parquet"
        assert (
            main(
                ["predict", str(run_dir), str(digits_file), "--set", "engine=spark", "--set", remote, "--out", str(out)]
            )
            == 0
        )
        printed = capsys.readouterr()
        assert (
            f"predict: 1797 rows; accuracy {classic.accuracy:.4f}, loss {classic.loss:.4f}; predictions in "
            f"{out}" in printed.out
        )
        assert "s3cr3t" not in printed.out + printed.err
        assert (
            main(
                ["predict", str(run_dir), str(digits_file), "--set", "engine=spark", "--set", remote, "--out", str(out)]
            )
            == 2
        )  # the server's executors find it there
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out: {out} exists; choose another file or pass --overwrite" in err
        assert "s3cr3t" not in err
        done = predict_spark(run_dir, str(digits_file), ["engine=spark", remote], None)
    by_row = _by_row(out)
    assert len(by_row) == 1797 and by_row == _by_row(tmp_path / "classic.parquet")  # bit for bit
    assert (done.rows, done.accuracy) == (classic.rows, classic.accuracy)
    assert done.loss == pytest.approx(classic.loss, rel=1e-12)  # the same sums, added in another order


def test_a_connect_error_in_predict_is_one_line(connect, connect_server, run_dir, tmp_path, capsys):
    from nnlib.cli import main

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")  # pyarrow fails on it in a task of the server's executors
    with on("connect"):
        assert (
            main(
                [
                    "predict",
                    str(run_dir),
                    str(broken),
                    "--set",
                    "engine=spark",
                    "--set",
                    f"spark.remote={connect_server.url}",
                ]
            )
            == 2
        )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nnlib: error: DATA: {broken} is not a readable parquet file ("), (
        err
    )
    assert "magic bytes" in err and "JVM stacktrace" not in err and "Traceback" not in err


def _tuned(estimator_cls, df, **kwargs):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.tuning import ParamGridBuilder

    from nnlib.spark import NNClassifier

    nn = NNClassifier(**{**PARAMS, "mappers": 3, "rounds": 1})
    grid = ParamGridBuilder().addGrid(nn.hidden, [[8], [16]]).build()
    tuner = estimator_cls(
        estimator=nn,
        estimatorParamMaps=grid,
        seed=1,
        parallelism=2,
        evaluator=MulticlassClassificationEvaluator(metricName="accuracy"),
        **kwargs,
    )
    return tuner.fit(VectorAssembler(inputCols=PIXELS, outputCol="features").transform(df))


# each tuner on one kind of session here, on the other in test_spark_regression_ml.py's regressor (the same
# fitMultiple path): every tuner meets both kinds of session and both estimators, at half the fits
@pytest.mark.parametrize(
    "kind, tuner", [("classic", "TrainValidationSplit"), ("connect", "CrossValidator")], ids=["classic", "connect"]
)
def test_cross_validation_and_train_validation_split_leave_the_session_alive(kind, tuner, request, digits_file):
    """Two grid points, two fits at a time of three mappers each (and two folds for CrossValidator): six slots
    asked of four, so the fits take turns, and the caller's session answers after."""
    from pyspark.ml import tuning

    # the session first: the connect fixture's start leaves the switch off, which on(kind) then sets
    session = request.getfixturevalue("spark" if kind == "classic" else "connect")
    with on(kind):
        df = session.read.parquet(str(digits_file))
        start = time.monotonic()
        if tuner == "CrossValidator":
            cv = _tuned(tuning.CrossValidator, df, numFolds=2)
            assert len(cv.avgMetrics) == 2 and all(0.1 < m <= 1 for m in cv.avgMetrics)
            assert cv.bestModel.getHidden() in ([8], [16]) and cv.bestModel.numFeatures == 64
        else:
            tvs = _tuned(tuning.TrainValidationSplit, df, trainRatio=0.75)
            assert len(tvs.validationMetrics) == 2 and all(0.1 < m <= 1 for m in tvs.validationMetrics)
            assert tvs.bestModel.getHidden() in ([8], [16]) and tvs.bestModel.numFeatures == 64
        seconds = time.monotonic() - start
        assert session.range(3).count() == 3
        assert seconds < 600


def test_train_in_a_thread_leaves_the_callers_session_alive(spark, digits_file):
    import nnlib

    result = {}

    def train():
        try:
            result["run"] = nnlib.train(
                overrides={"mappers": 2, "train.rounds": 1, "model.hidden": [8], "data.source": str(digits_file)},
                engine="spark",
                write=False,
            )
        except BaseException as exc:  # noqa: BLE001  - reported by the test below
            result["error"] = exc

    with on("classic"):
        thread = threading.Thread(target=train)
        thread.start()
        thread.join(timeout=300)
        assert not thread.is_alive() and "error" not in result, result.get("error")
        assert result["run"].summary["engine"] == "spark"
        assert spark.range(3).count() == 3 and spark.sparkContext._jsc is not None


def test_the_readme_example_pipeline_runs_against_a_connect_server(connect_server, tmp_path):
    """examples/spark_connect_pipeline.py, as the manual's "Spark Connect" (docs/pages/guide/spark.md) runs it, in a client process of its own."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    environ = {k: v for k, v in os.environ.items() if k != CONNECT_SWITCH}
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "spark_connect_pipeline.py"), connect_server.url],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "the same predictions: True" in done.stdout
    accuracy = float(done.stdout.split("training accuracy ")[1].split(",")[0])
    assert accuracy > 0.9 and (tmp_path / "runs" / "connect-pipeline" / "stages").is_dir()


def test_a_connect_fit_asks_the_server_no_schema_string_nothing_in_a_round_and_a_frame_s_columns_once(
    connect, digits_file, monkeypatch
):
    """nnlib's mapInArrow schemas are built on the client (local_schema equals the server's parse of each); a
    round asks the server nothing about plans (analyze) before its job, and the passes over a DataFrame source
    (survey, held-out rows, shards) ask its columns once between them, not once a pass."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql.connect.client.core import SparkConnectClient

    from nnlib.engines.spark.jobs import CHUNKS, SparkJobsEngine
    from nnlib.engines.spark.reader import SparkReader
    from nnlib.engines.spark.session import local_schema
    from nnlib.spark import NNClassifier

    asked: list[tuple[str, str]] = []  # (the analyze method, where nnlib was: "round", "pass" or "")
    inside = [""]
    analyze = SparkConnectClient._analyze

    def counted(self, method, **kwargs):
        asked.append((method, inside[0]))
        return analyze(self, method, **kwargs)

    def marked(name, function):
        def call(*args, **kwargs):
            inside[0] = name
            try:
                return function(*args, **kwargs)
            finally:
                inside[0] = ""

        return call

    with on("connect"):
        for ddl in (CHUNKS, "blob binary", "shard long, blob binary", "file long, blob binary"):
            assert local_schema(ddl) == connect._parse_ddl(ddl), ddl
        with pytest.raises(ValueError, match="vector"):
            local_schema("features vector")
        df = VectorAssembler(inputCols=PIXELS, outputCol="features").transform(_digits(connect, digits_file))
        assert "features" in df.columns  # the caller's own question, before the fit
        monkeypatch.setattr(SparkConnectClient, "_analyze", counted)
        monkeypatch.setattr(SparkJobsEngine, "round", marked("round", SparkJobsEngine.round))
        monkeypatch.setattr(SparkReader, "_pass", marked("pass", SparkReader._pass))
        model = NNClassifier(**{**PARAMS, "rounds": 3}).fit(df)
    assert model.summary.summary["rounds"] == 3
    assert "ddl_parse" not in [method for method, _ in asked], asked
    assert [a for a in asked if a[1] == "round"] == [], asked
    assert len([a for a in asked if a == ("schema", "pass")]) <= 1, asked
    assert asked, "the fit asked the server nothing: the count above saw no call"
