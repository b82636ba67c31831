"""Engines: where the shards live and how a round's map and reduce happen (contract in :mod:`.base`)."""

from __future__ import annotations

from nnlib.config import Config
from nnlib.errors import EngineError


def make_engine(config: Config, warn=None, spark_session=None):
    """Build the engine named by ``config.engine`` (the config has checked the name).

    ``warn`` receives an engine's one-line warnings (a Spark stage started again).
    """
    if config.engine == "local":
        from nnlib.engines.local import LocalEngine

        return LocalEngine()
    if config.engine == "spark":
        return make_spark_engine(config, warn, spark_session)
    if config.engine == "mrjob":
        from nnlib.engines.mrjob.engine import MrjobEngine

        return MrjobEngine(config, config.mrjob.runner, config.mrjob.args)
    from nnlib.engines.mpi.engine import MpiEngine

    return MpiEngine(collective=config.mpi.collective)


def make_spark_engine(config: Config, warn=None, spark_session=None):
    """``spark.mode``'s engine; ``auto``: the long-lived stage on a classic session, a job per round on Spark
    Connect, whose executors cannot reach this process. Which session the run gets is known before it opens
    (:func:`connect_expected`), or given: ``spark_session``, the caller's own (an estimator's DataFrame's), which
    the engine runs on and never stops. What needs the client reachable is refused on Connect, in one line."""
    from nnlib.engines.spark.session import SessionSettings, connect_expected, is_connect

    s = config.spark
    settings = SessionSettings.from_config(s)
    session = dict(settings=settings, min_slots=config.mappers, collect_held_out_mb=s.collect_held_out_mb, warn=warn)
    connect = connect_expected(settings) if spark_session is None else is_connect(spark_session)
    if connect:
        if s.mode == "stage":
            raise EngineError(
                "spark.mode: on Spark Connect the executors cannot reach this process, so it must be "
                "auto or jobs, got stage"
            )
        if s.collective != "tasks":
            raise EngineError(
                "spark.collective: on Spark Connect the gradients are averaged among the tasks, so "
                f"it must be tasks, got {s.collective}"
            )
        if s.port:
            raise EngineError(
                f"spark.port: on Spark Connect nothing listens in this process, so it must be 0 (unset), got {s.port}"
            )
    if s.mode == "jobs" or (s.mode == "auto" and connect):
        from nnlib.engines.spark.jobs import SparkJobsEngine

        return SparkJobsEngine(**session).use_session(spark_session)
    from nnlib.engines.spark.engine import SparkStageEngine

    return SparkStageEngine(
        port=s.port,
        mapper_timeout=s.mapper_timeout,
        stage_attempts=s.stage_attempts,
        collective=s.collective,
        **session,
    ).use_session(spark_session)
