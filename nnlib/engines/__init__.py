"""Engines: where the shards live and how a round's map and reduce happen (contract in :mod:`.base`)."""

from __future__ import annotations

from nnlib.config import Config


def make_engine(config: Config, warn=None):
    """Build the engine named by ``config.engine`` (the config has checked the name).

    ``warn`` receives an engine's one-line warnings (a Spark stage started again).
    """
    if config.engine == "local":
        from nnlib.engines.local import LocalEngine

        return LocalEngine()
    if config.engine == "spark":
        from nnlib.engines.spark.engine import SparkJobsEngine, SparkStageEngine
        from nnlib.engines.spark.session import SessionSettings

        s = config.spark
        session = dict(settings=SessionSettings.from_config(s), min_slots=config.mappers,
                       collect_held_out_mb=s.collect_held_out_mb, warn=warn)
        if s.mode == "jobs":
            return SparkJobsEngine(**session)
        return SparkStageEngine(port=s.port, mapper_timeout=s.mapper_timeout, stage_attempts=s.stage_attempts,
                                collective=s.collective, **session)
    if config.engine == "mrjob":
        from nnlib.engines.mrjob.engine import MrjobEngine

        return MrjobEngine(config, config.mrjob.runner, config.mrjob.args)
    from nnlib.engines.mpi.engine import MpiEngine

    return MpiEngine(collective=config.mpi.collective)
