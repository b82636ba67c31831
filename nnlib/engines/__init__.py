"""Engines: where the shards live and how a round's map and reduce happen (contract in :mod:`.base`)."""

from __future__ import annotations

from nnlib.config import Config


def make_engine(config: Config):
    """Build the engine named by ``config.engine`` (the config has checked the name)."""
    if config.engine == "local":
        from nnlib.engines.local import LocalEngine

        return LocalEngine()
    if config.engine == "spark":
        from nnlib.engines.spark import SparkEngine

        return SparkEngine(config.spark.master, config.spark.app_name, config.spark.log_level)
    if config.engine == "mrjob":
        from nnlib.engines.mrjob_engine import MrjobEngine

        return MrjobEngine(config, config.mrjob.runner, config.mrjob.args)
    from nnlib.engines.mpi import MpiEngine

    return MpiEngine(collective=config.mpi.collective)
