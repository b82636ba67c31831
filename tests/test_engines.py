"""Every engine against the local engine; the local engine against plain sequential training."""

import numpy as np
import pytest
from conftest import needs_torch, small_config

from nnlib.core.backends import get_backend
from nnlib.core.params import init_params
from nnlib.core.train import LocalSchedule, batch_indices
from nnlib.data.dataset import load_dataset
from nnlib.driver import run
from nnlib.rounds.mapper import peak_rss_mb, shard_rng
from nnlib.rounds.payload import model_spec
from nnlib.util.threads import one_blas_thread

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
    assert accs == sorted(accs) and accs[-1] > accs[0]  # every round does better on the test set
    # measured 0.733, 0.847, 0.875, 0.889 by round (numpy 2.4, 2026-11-29) with
    # nnlib run --set mappers=3 --set train.rounds=4 --set train.local_epochs=2 --set model.hidden=[16]
    #   --set train.batch_size=32 --set train.lr=0.1 --set seed=7; the floor leaves about 4 points of room
    assert accs[-1] > 0.85


def spark_engine(mode: str, **kwargs):
    from nnlib.engines.spark.engine import SparkStageEngine
    from nnlib.engines.spark.jobs import SparkJobsEngine
    from nnlib.engines.spark.session import SessionSettings

    settings = SessionSettings("local[4]")
    return SparkStageEngine(settings, **kwargs) if mode == "stage" else SparkJobsEngine(settings, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stage", "jobs"])
@pytest.mark.parametrize(
    "overrides",
    [
        ("combine=average",),
        ("combine=weighted", "data.partition=stratified", "train.momentum=0.5"),
        pytest.param(("combine=sum_updates", "train.lr=0.02", "model.backend=torch"), marks=needs_torch),
        ("combine=ist", "model.hidden=[16,12]", "train.momentum=0.9"),
        ("combine=split", "split.method=alternating", "split.groups=2", "model.hidden=[16,12]"),
        ("combine=ist", "train.optimizer=adamw", "train.weight_decay=0.01", "train.lr=0.01"),
        ("model.type=cnn", "model.channels=[4,6]", "model.kernel=3"),
        ("data.partition=label_skew", "train.proximal_mu=0.1", "server.momentum=0.5", "train.lr_schedule=cosine"),
    ],
)
def test_spark_engine_equals_local_engine(spark, overrides, mode):
    config = small_config("mappers=4", *overrides)
    local = run(config, **QUIET)
    on_spark = run(config.model_copy(update={"engine": "spark"}), engine=spark_engine(mode), **QUIET)
    np.testing.assert_array_equal(on_spark.params, local.params)
    assert len(on_spark.mapper_rows) == 4 * config.train.rounds
    assert [r["mapper"] for r in on_spark.mapper_rows[:4]] == [0, 1, 2, 3]
    assert [r["n_samples"] for r in on_spark.mapper_rows] == [r["n_samples"] for r in local.mapper_rows]
    assert on_spark.rounds[-1]["test_accuracy"] == local.rounds[-1]["test_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("combine=gradient", "train.momentum=0.9", "train.lr_scaling=linear"),
        ("train.sync_rounds=1", "combine=weighted"),
    ],
    ids=["gradient", "post-local"],
)
def test_synchronous_rounds_on_spark_equal_the_local_engine(spark, overrides):
    config = small_config("mappers=3", "train.rounds=2", *overrides)
    local = run(config, **QUIET)
    on_spark = run(config.model_copy(update={"engine": "spark"}), engine=spark_engine("stage"), **QUIET)
    np.testing.assert_array_equal(on_spark.params, local.params)
    assert [r["steps"] for r in on_spark.mapper_rows] == [r["steps"] for r in local.mapper_rows]


@pytest.mark.slow
def test_spark_stage_keeps_one_process_per_mapper_for_the_whole_run(spark):
    import os

    result = run(small_config("engine=spark", "train.rounds=3"), engine=spark_engine("stage"), **QUIET)
    pids = {}
    for row in result.mapper_rows:
        pids.setdefault(row["mapper"], set()).add(row["pid"])
    assert all(len(p) == 1 for p in pids.values()) and len(set().union(*pids.values())) == 3
    assert os.getpid() not in set().union(*pids.values())
    # a mapper's training is part of its round, and its round's slowest mapper is the one the driver recorded
    for r, row in enumerate(result.rounds, start=1):
        mine = [m["train_seconds"] for m in result.mapper_rows if m["round"] == r]
        assert len(mine) == 3 and max(mine) == row["max_mapper_seconds"] <= row["seconds"]


@pytest.mark.slow
def test_the_stage_listens_on_loopback_in_local_mode(spark):
    from nnlib.data.dataset import ShardSource

    config = small_config("engine=spark", "mappers=2")
    engine = spark_engine("stage")
    engine.start(ShardSource(config.data, config.seed, config.mappers))
    try:
        assert engine.hub.address[0] == "127.0.0.1"
        assert all(conn.getpeername()[0] == "127.0.0.1" for conn in engine.hub.conns)
    finally:
        engine.stop()


@pytest.mark.slow
def test_a_failing_mapper_is_one_line_naming_it(spark, tmp_path):
    from nnlib.errors import DataError

    missing = tmp_path / "gone.npz"
    np.savez(missing, x=np.random.default_rng(0).normal(size=(40, 3)), y=np.arange(40) % 2)
    config = small_config("engine=spark", f"data.source={missing}", "mappers=2")

    class DeletesTheData:  # the driver reads the file; the mappers then find it gone
        def __init__(self):
            self.engine = spark_engine("stage")

        def start(self, source):
            missing.unlink()
            self.engine.start(source)

        def __getattr__(self, name):
            return getattr(self.engine, name)

    with pytest.raises(DataError, match=r"^mapper [01]: data.source: file .*gone.npz does not exist$"):
        run(config, engine=DeletesTheData(), **QUIET)


@pytest.mark.slow
def test_a_silent_mapper_ends_the_run_after_the_timeout(spark):
    from nnlib.errors import EngineError

    # a round of several seconds against a one-second timeout: to the driver, a hung mapper
    config = small_config(
        "engine=spark",
        "mappers=2",
        "data.source=synthetic",
        "data.n_samples=20000",
        "data.n_features=100",
        "model.hidden=[1024,1024]",
        "train.local_epochs=6",
    )
    with pytest.raises(EngineError, match=r"mapper 0 sent nothing for 1s in round 1 \(spark.mapper_timeout\)"):
        run(config, engine=spark_engine("stage", mapper_timeout=1.0), **QUIET)


def test_target_accuracy_stops_at_the_first_round_that_reaches_it():
    before_mb = peak_rss_mb()
    full = run(small_config("train.rounds=6"), **QUIET)
    accs = [row["test_accuracy"] for row in full.rounds]
    target = accs[2]
    first = next(i for i, a in enumerate(accs) if a >= target)
    stopped = run(small_config("train.rounds=6", f"train.target_accuracy={target}"), **QUIET)
    assert stopped.summary["rounds_run"] == len(stopped.rounds) == first + 1
    assert [row["test_accuracy"] for row in stopped.rounds] == accs[: first + 1]
    assert stopped.summary["train_seconds"] == sum(row["seconds"] for row in stopped.rounds)
    assert full.summary["rounds_run"] == 6
    # the driver is this process: its peak in MiB lies between the peak before that run and the peak now
    assert before_mb <= full.summary["driver_peak_rss_mb"] <= peak_rss_mb()


@pytest.mark.slow
def test_spark_scores_round_r_while_the_mappers_train_round_r_plus_1(spark, tmp_path):
    import threading

    from nnlib.outputs import RunDir

    config = small_config("mappers=2", "train.rounds=4", "combine=weighted", "server.momentum=0.5")
    spark_config = small_config(
        "engine=spark", "mappers=2", "train.rounds=4", "combine=weighted", "server.momentum=0.5"
    )
    local = run(config, **QUIET)
    where = []
    overlapped = run(
        spark_config,
        RunDir(tmp_path / "run"),
        engine=spark_engine("stage"),
        on_round=lambda row: where.append(threading.current_thread().name),
        **QUIET,
    )
    assert all(name.startswith("nnlib-score") for name in where) and len(where) == 4
    np.testing.assert_array_equal(overlapped.params, local.params)
    score_keys = ("round", "test_accuracy", "test_loss", "train_loss")
    assert [{k: row[k] for k in score_keys} for row in overlapped.rounds] == [
        {k: row[k] for k in score_keys} for row in local.rounds
    ]
    # each round's checkpoint holds that round's weights and server momentum, written while the next round ran
    ckpt = RunDir(tmp_path / "run", resume=True).latest_checkpoint()
    assert ckpt.rounds_done == 4
    np.testing.assert_array_equal(ckpt.params, local.params)
    in_line = run(
        small_config(
            "engine=spark",
            "mappers=2",
            "train.rounds=4",
            "combine=weighted",
            "server.momentum=0.5",
            "train.overlap_scoring=false",
        ),
        engine=spark_engine("stage"),
        on_round=lambda row: where.append(threading.current_thread().name),
        **QUIET,
    )
    assert where[4:] == ["MainThread"] * 4
    np.testing.assert_array_equal(in_line.params, local.params)


@pytest.mark.slow
def test_target_accuracy_on_spark_scores_in_line_and_stops_at_the_first_round_that_reaches_it(spark):
    full = run(small_config("train.rounds=6"), **QUIET)
    accs = [row["test_accuracy"] for row in full.rounds]
    first = next(i for i, a in enumerate(accs) if a >= accs[2])
    stopped = run(
        small_config("engine=spark", "train.rounds=6", f"train.target_accuracy={accs[2]}"),
        engine=spark_engine("stage"),
        **QUIET,
    )
    assert [row["test_accuracy"] for row in stopped.rounds] == accs[: first + 1]
