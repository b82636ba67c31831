"""Synchronous rounds on Spark among the tasks (``spark.collective: tasks``) and through the driver (``driver``)."""

import numpy as np
import pytest
from conftest import small_config

from nnlib.driver import run
from nnlib.engines.spark.session import SessionSettings

pytestmark = pytest.mark.slow  # every test here uses the session's SparkSession

QUIET = dict(log=lambda _m: None, warn=lambda _m: None)
UNEVEN_ADAM = ("data.partition=quantity_skew", "data.skew_alpha=0.3", "train.optimizer=adam", "train.lr=0.01")


def counting_engine(collective: str):
    """A stage engine on the test session that records, per synchronous round, the driver's received bytes
    and the round's steps."""
    from nnlib.engines.spark.engine import SparkStageEngine

    class Counting(SparkStageEngine):
        rounds: list = []

        def sync_round(self, payload, timings):
            before = self.hub.bytes_received
            out = super().sync_round(payload, timings)
            self.rounds.append((self.hub.bytes_received - before, len(payload.plan.sync_lrs)))
            return out

    engine = Counting(SessionSettings("local[4]"), collective=collective)
    engine.rounds = []
    return engine


def sync_config(mappers: int, *overrides: str):
    return small_config("combine=gradient", f"mappers={mappers}", "train.rounds=2", *overrides)


@pytest.mark.parametrize(
    "mappers,overrides",
    [(2, ("train.momentum=0.9",)), (3, ("train.momentum=0.9",)), (3, UNEVEN_ADAM), (2, UNEVEN_ADAM)],
    ids=["2 mappers", "3 mappers", "3 uneven adam", "2 uneven adam"],
)
def test_sync_rounds_among_the_tasks_equal_the_local_engine_and_the_driver_path(spark, mappers, overrides):
    config = sync_config(mappers, *overrides)
    local = run(config, **QUIET)
    on_spark = config.model_copy(update={"engine": "spark"})
    tasks = run(on_spark, engine=counting_engine("tasks"), **QUIET)
    driver = run(on_spark, engine=counting_engine("driver"), **QUIET)
    np.testing.assert_array_equal(tasks.params, local.params)
    np.testing.assert_array_equal(driver.params, local.params)
    assert [r["steps"] for r in tasks.mapper_rows] == [r["steps"] for r in local.mapper_rows]
    assert tasks.rounds[-1]["test_accuracy"] == local.rounds[-1]["test_accuracy"]


def test_post_local_sgd_among_the_tasks_equals_the_local_engine(spark):
    # a synchronous round, then rounds of averaging, then the mesh is idle: the same stage serves both
    config = small_config("mappers=3", "train.rounds=3", "train.sync_rounds=1", "combine=weighted")
    local = run(config, **QUIET)
    tasks = run(config.model_copy(update={"engine": "spark"}), engine=counting_engine("tasks"), **QUIET)
    np.testing.assert_array_equal(tasks.params, local.params)


def test_the_drivers_bytes_per_round_do_not_grow_with_the_mappers_among_the_tasks(spark):
    received = {}
    for collective in ("tasks", "driver"):
        for mappers in (2, 3):
            engine = counting_engine(collective)
            result = run(
                sync_config(mappers, "train.rounds=1").model_copy(update={"engine": "spark"}), engine=engine, **QUIET
            )
            (received[collective, mappers],) = engine.rounds
    vector_bytes = 4 * result.params.size
    (tasks2, steps2), (tasks3, steps3) = received["tasks", 2], received["tasks", 3]
    (driver2, _), (driver3, _) = received["driver", 2], received["driver", 3]
    # among the tasks the driver receives the round's weights from mapper 0 and a few hundred bytes of
    # statistics from each mapper, not a gradient a step: a third mapper adds one statistics record
    assert tasks3 - tasks2 < 1024 and tasks3 < 2 * vector_bytes + 3 * 1024
    # through the driver every mapper sends a gradient every step
    assert driver2 >= 2 * steps2 * vector_bytes and driver3 >= 3 * steps3 * vector_bytes


def test_a_task_killed_mid_round_restarts_the_stage_and_changes_nothing(spark):
    import os
    import signal
    import threading

    from nnlib.engines.spark.engine import SparkStageEngine

    class KillsMapper1(SparkStageEngine):
        """Kills mapper 1's Python worker 0.3 s into the second synchronous round, once."""

        killed: list = []

        def sync_round(self, payload, timings):
            if payload.round_index == 1 and not self.killed:
                pid = self.hub.executors[1][1]
                self.killed.append(pid)
                threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
            return super().sync_round(payload, timings)

    # 6000 steps a round: the round is still running when the timer fires, however fast a step is
    config = sync_config(3, "train.local_epochs=400", "train.momentum=0.9")
    local = run(config, **QUIET)
    warnings = []
    engine = KillsMapper1(SessionSettings("local[4]"), collective="tasks", warn=warnings.append)
    engine.killed = []
    result = run(
        config.model_copy(update={"engine": "spark"}), engine=engine, log=lambda _m: None, warn=warnings.append
    )
    assert engine.killed and engine.killed[0] != os.getpid()
    # the dead task is seen as a broken connection, as a peer's report, or as Spark aborting the stage
    assert any("in round 2; starting the stage again (attempt 2 of 3) and redoing round 2" in w for w in warnings), (
        warnings
    )
    np.testing.assert_array_equal(result.params, local.params)


def test_a_diverged_step_is_the_same_one_line_on_every_path(spark):
    from nnlib.errors import DivergenceError

    config = sync_config(3, "train.lr=1e30")
    messages = []
    for engine in (None, counting_engine("tasks"), counting_engine("driver")):
        with pytest.raises(DivergenceError) as caught:
            run(config if engine is None else config.model_copy(update={"engine": "spark"}), engine=engine, **QUIET)
        messages.append(str(caught.value))
    assert messages[0].startswith("round 1, step ") and "computed gradients containing NaN or inf" in messages[0]
    assert messages[1:] == [messages[0]] * 2, messages
