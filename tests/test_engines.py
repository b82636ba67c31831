"""Every engine against the local engine; the local engine against plain sequential training."""

import numpy as np
import pytest
from conftest import small_config

from nnlib.core.backends import get_backend
from nnlib.core.params import init_params
from nnlib.core.train import LocalSchedule, batch_indices
from nnlib.data.dataset import load_dataset
from nnlib.driver import run
from nnlib.engines.spark import SparkEngine
from nnlib.tasks import model_spec, shard_rng
from nnlib.threads import one_blas_thread

QUIET = dict(log=lambda _msg: None)


def test_one_mapper_equals_plain_sequential_training():
    config = small_config("mappers=1", "train.rounds=3", "train.local_epochs=2", "train.momentum=0.9")
    result = run(config, **QUIET)

    # the oracle: a plain mini-batch SGD loop over the whole training set, written out here
    data = load_dataset(config.data, config.seed)
    spec = model_spec(config, data)
    mlp = get_backend("numpy", spec)
    w = init_params(spec.layers, config.seed)
    v = np.zeros_like(w)
    lr, mu = np.float32(config.train.lr), np.float32(config.train.momentum)
    schedule = LocalSchedule(config.train.batch_size, config.train.local_epochs)
    with one_blas_thread():
        for r in range(config.train.rounds):
            for idx in batch_indices(len(data.y_train), schedule, shard_rng(config.seed, r, 0)):
                _, g = mlp.loss_and_grad(w, data.x_train[idx], data.y_train[idx])
                v = mu * v + g
                w = w - lr * v
    np.testing.assert_array_equal(result.params, w)


def test_local_steps_counts_mini_batches():
    result = run(small_config("train.local_steps=5"), **QUIET)
    assert {row["steps"] for row in result.mapper_rows} == {5}


def test_training_learns_digits():
    result = run(small_config("train.rounds=4", "train.local_epochs=2"), **QUIET)
    accs = [row["test_accuracy"] for row in result.rounds]
    assert accs[-1] > 0.85 and accs[-1] > accs[0]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("combine=average",),
    ("combine=weighted", "data.partition=stratified", "train.momentum=0.5"),
    ("combine=sum_updates", "train.lr=0.02", "model.backend=torch"),
])
def test_spark_engine_equals_local_engine(spark, overrides):
    config = small_config("mappers=4", *overrides)
    local = run(config, **QUIET)
    on_spark = run(config.model_copy(update={"engine": "spark"}), engine=SparkEngine("local[2]"), **QUIET)
    assert np.abs(local.params - on_spark.params).max() <= 1e-6
    assert len(on_spark.mapper_rows) == 4 * config.train.rounds
    assert [r["mapper"] for r in on_spark.mapper_rows[:4]] == [0, 1, 2, 3]
    assert [r["n_samples"] for r in on_spark.mapper_rows] == [r["n_samples"] for r in local.mapper_rows]
    assert on_spark.rounds[-1]["test_accuracy"] == local.rounds[-1]["test_accuracy"]


@pytest.mark.slow
def test_spark_mappers_run_in_executor_processes(spark):
    import os

    result = run(small_config("engine=spark"), engine=SparkEngine("local[2]"), **QUIET)
    assert all(row["pid"] != os.getpid() for row in result.mapper_rows)
    assert all(row["train_seconds"] > 0 for row in result.mapper_rows)
