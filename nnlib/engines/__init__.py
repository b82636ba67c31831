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

        s = config.spark
        session = dict(master=s.master, app_name=s.app_name, log_level=s.log_level, min_slots=config.mappers,
                       conf=s.conf, collect_held_out_mb=s.collect_held_out_mb)
        if s.mode == "jobs":
            return SparkJobsEngine(**session)
        return SparkStageEngine(port=s.port, mapper_timeout=s.mapper_timeout, stage_attempts=s.stage_attempts,
                                collective=s.collective, warn=warn, **session)
    if config.engine == "mrjob":
        from nnlib.engines.mrjob.engine import MrjobEngine

        return MrjobEngine(config, config.mrjob.runner, config.mrjob.args)
    from nnlib.engines.mpi.engine import MpiEngine

    return MpiEngine(collective=config.mpi.collective)
