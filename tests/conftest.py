"""Shared fixtures: one SparkSession for the whole test run, small configs, helpers."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

# Executors must use this interpreter (the one with nnlib and numpy installed).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from nnlib.config import load_config  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts a JVM, mpiexec, mrjob's local runner or a subprocess; "
                                       "pytest -m 'not slow' leaves it out")


def pytest_collection_modifyitems(items):
    """A test that asks for a SparkSession must be marked slow, so the fast tier never starts a JVM."""
    unmarked = [item.nodeid for item in items if "spark" in getattr(item, "fixturenames", ())
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(f"tests using the spark fixture must be marked slow: {unmarked}")


@pytest.fixture(scope="session")
def spark():
    """One SparkSession for every test that needs Spark; engines reuse it.

    Four task slots on this 2-core machine: a long-lived stage holds one slot per mapper.
    """
    from nnlib.engines.spark.engine import get_or_create_session

    session, _ = get_or_create_session("local[4]", "nnlib-tests", "ERROR")
    yield session
    session.stop()


def small_config(*overrides: str):
    """A quick digits run on the local engine, changed by ``key=value`` overrides."""
    base = ["engine=local", "mappers=3", "train.rounds=2", "train.local_epochs=1",
            "model.hidden=[16]", "train.batch_size=32", "train.lr=0.1", "seed=7"]
    return load_config(None, base + list(overrides))


def saved_params(run_dir) -> np.ndarray:
    """A run directory's model.npz as the flat parameter vector (the file keeps the arrays in flat order)."""
    from nnlib.outputs import load_model

    return np.concatenate([a.ravel() for a in load_model(run_dir / "model.npz").values()])
