"""Regression, sample weights and a validation column on every engine: the local engine's weights, bit for bit.

The source is a CSV with a target, a weight column that varies from row to row and a validation column, so a
shard's weights, the targets' statistics and the best validation round all have to travel as they do locally.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import needs_mrjob, saved_params
from test_mpi import MPIEXEC, ROOT, mpi_env
from test_regression import friedman1, write_csv

from nnlib.config import load_config
from nnlib.driver import run

pytestmark = pytest.mark.slow  # Spark, mrjob's local runner and mpiexec

QUIET = dict(log=lambda _m: None, warn=lambda _m: None)
BASE = [
    "mappers=2",
    "train.rounds=3",
    "train.batch_size=16",
    "train.lr=0.05",
    "model.hidden=[12]",
    "seed=5",
    "train.patience=5",
]
REGRESSION = [
    "model.task=regression",
    "data.label_column=target",
    "data.weight_column=w",
    "data.validation_column=v",
    "data.drop_columns=[label,t2]",
]
WEIGHTED_CLASSIFIER = [
    "data.label_column=label",
    "data.weight_column=w",
    "data.drop_columns=[target,t2]",
    "data.validation_column=v",
]
CASES = {
    "regression": REGRESSION,
    "huber-weighted-combine": [*REGRESSION, "model.loss=huber", "combine=weighted", "train.momentum=0.5"],
    "two-targets": [
        "model.task=regression",
        "data.label_columns=[target,t2]",
        "data.weight_column=w",
        "data.validation_column=v",
        "data.drop_columns=[label]",
    ],
    "weighted-classifier": WEIGHTED_CLASSIFIER,
    "gradient": [*REGRESSION, "combine=gradient"],
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    """240 rows: 10 features, a target, a second target, weights in [0, 2), a validation flag, a class label."""
    x, y = friedman1(240, seed=4)
    rng = np.random.default_rng(9)
    columns = {f"f{j}": x[:, j] for j in range(10)}
    columns.update(
        target=y,
        t2=x[:, 0] * 3 - y,
        w=rng.uniform(0, 2, 240),
        v=rng.uniform(size=240) < 0.2,
        label=(y > np.median(y)).astype(int),
    )
    return write_csv(tmp_path_factory.mktemp("reg") / "rows.csv", columns)


def config(source: str, case: str, engine: str = "local"):
    return load_config(None, [*BASE, *CASES[case], f"data.source={source}", f"engine={engine}"])


@pytest.fixture(scope="module")
def local_runs(source):
    return {case: run(config(source, case), **QUIET) for case in CASES}


@pytest.mark.parametrize("case", list(CASES))
def test_spark_equals_local(spark, source, local_runs, case):
    from nnlib.engines.spark.engine import SparkStageEngine
    from nnlib.engines.spark.session import SessionSettings

    on_spark = run(config(source, case, "spark"), engine=SparkStageEngine(SessionSettings("local[4]")), **QUIET)
    local = local_runs[case]
    np.testing.assert_array_equal(on_spark.params, local.params)
    for key in ("test_rmse" if "task=regression" in " ".join(CASES[case]) else "test_accuracy", "val_loss"):
        assert [r[key] for r in on_spark.rounds] == [r[key] for r in local.rounds]


@needs_mrjob
@pytest.mark.parametrize(
    "case, runner",
    [
        *((c, "inline") for c in CASES if c != "gradient"),  # mrjob runs no synchronous rounds
        ("huber-weighted-combine", "local"),  # separate task processes: the payload file and result lines carry it all
    ],
)
def test_mrjob_equals_local(source, local_runs, case, runner):
    from nnlib.engines.mrjob.engine import MrjobEngine

    mr = config(source, case, "mrjob")
    result = run(mr, engine=MrjobEngine(mr, runner), **QUIET)
    np.testing.assert_array_equal(result.params, local_runs[case].params)


@pytest.mark.parametrize("case", list(CASES))
def test_mpi_equals_local(tmp_path, source, local_runs, case):
    out = tmp_path / "mpi"
    sets = [a for s in [*BASE, *CASES[case], f"data.source={source}"] for a in ("--set", s)]
    cmd = [
        MPIEXEC,
        "-n",
        "2",
        "--oversubscribe",
        sys.executable,
        "jobs/mpi_model_avg.py",
        "conf/default.yaml",
        *sets,
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=mpi_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(saved_params(out), local_runs[case].params)


@pytest.mark.parametrize("pyarrow_in_tasks", [True, False], ids=["executors-pyarrow", "sparks-reader"])
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_parquet_uri_read_by_spark_records_its_feature_columns(spark, tmp_path, task, pyarrow_in_tasks):
    """The model file's feature columns are how nnlib predict matches a table's columns by name: a run over a
    Parquet URI read in Spark's executors must record them as a local file's run does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nnlib.data.dataset import load_dataset
    from nnlib.engines.spark.reader import SparkReader

    x, y = friedman1(60)
    pq.write_table(
        pa.table(
            {
                "b": x[:, 1],
                "a": x[:, 0],
                "target": y,
                "w": np.ones(60),
                "label": (y > np.median(y)).astype(np.int64),
                "c": x[:, 2],
            }
        ),
        tmp_path / "t.parquet",
    )
    sets = [f"data.source=file://{tmp_path / 't.parquet'}"]  # the classifier's survey, the regressor's own
    sets += (
        ["model.task=regression", "data.label_column=target", "data.drop_columns=[label]", "data.weight_column=w"]
        if task == "regression"
        else ["data.label_column=label", "data.drop_columns=[target,w]"]
    )
    cfg = load_config(None, sets)
    data = load_dataset(cfg.data, 0, 2, SparkReader(lambda: spark, local_by_pyarrow=pyarrow_in_tasks), cfg.model.task)
    assert data.feature_names == ("b", "a", "c")
