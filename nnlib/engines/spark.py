"""The Spark engine: one cached partition per shard, weights broadcast each round.

The shards are built inside the executors (each partition loads the data and
cuts out its own shard) and cached there, so the training data never travels
through the driver. Each round the driver broadcasts the payload (weights),
maps the mapper function over the cached partitions and collects only the
results. If an executor is lost, Spark rebuilds its shard from the same
deterministic recipe and re-runs the task, which reproduces its result.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nnlib.engines.base import ReduceOnDriver
from nnlib.errors import EngineError, error_from_text, first_line
from nnlib.tasks import train_shard
from nnlib.timing import timed

LOG4J_CONF = Path(__file__).with_name("log4j2.properties")


def get_or_create_session(master: str, app_name: str, log_level: str):
    """Return ``(session, created)``: the active SparkSession if there is one, else a new one."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers use this interpreter
    java_opts = f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()} -Dnnlib.spark.log.level={log_level}"
    session = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.extraJavaOptions", java_opts)
               .getOrCreate())
    session.sparkContext.setLogLevel(log_level)
    return session, True


class SparkEngine(ReduceOnDriver):
    def __init__(self, master: str = "local[*]", app_name: str = "nnlib", log_level: str = "ERROR"):
        self.master, self.app_name, self.log_level = master, app_name, log_level
        self.session = None
        self._owns_session = False
        self._shards = None

    def start(self, source):
        try:
            self.session, self._owns_session = get_or_create_session(self.master, self.app_name, self.log_level)
        except Exception as exc:  # the JVM failed to start: no Java, bad master URL, ...
            raise EngineError(f"spark.master {self.master!r}: could not start Spark ({first_line(exc)})") from None
        sc = self.session.sparkContext
        # range(n) in n slices puts shard i alone in partition i.
        self._shards = sc.parallelize(range(source.mappers), source.mappers).mapPartitions(
            lambda indices: iter(source.build(list(indices)))).cache()
        try:
            self._shards.count()  # build and cache the shards now, not inside round 0's timing
        except Exception as exc:
            raise error_from_text(str(exc), "spark", "building the shards") from None

    def map(self, payload, timings):
        sc = self.session.sparkContext
        with timed(timings, "broadcast"):
            shared = sc.broadcast(payload)
        try:
            with timed(timings, "wait"):
                return self._shards.map(lambda shard: train_shard(shard, shared.value)).collect()
        except Exception as exc:
            raise error_from_text(str(exc), "spark", f"round {payload.round_index}") from None
        finally:
            shared.destroy()

    def sync_round(self, payload, timings):
        raise EngineError("engine=spark cannot run synchronous rounds (combine=gradient, train.sync_rounds)")

    def stop(self):
        if self._shards is not None:
            self._shards.unpersist()
            self._shards = None
        if self._owns_session and self.session is not None:
            self.session.stop()
        self.session = None
