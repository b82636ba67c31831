"""Shared fixtures: one SparkSession for the whole test run, small configs, helpers."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

# Executors must use this interpreter (the one with nnlib and numpy installed).
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from nnlib.config import load_config  # noqa: E402


def needs(module: str, extra: str):
    """Skip, saying why, where ``module`` (from the ``extra`` of setup.py) is not installed."""
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"needs {module}, not installed (pip install -e '.[{extra}]')"
    )


# extras: a plain `pip install -e .` runs the fast tier with the tests that need them skipped
needs_torch = needs("torch", "torch")
needs_mrjob = needs("mrjob", "mrjob")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: starts a JVM, mpiexec, mrjob's local runner, a subprocess or MLflow; pytest -m 'not slow' leaves it out",
    )


def pytest_collection_modifyitems(items):
    """A test that asks for a SparkSession must be marked slow, so the fast tier never starts a JVM."""
    unmarked = [
        item.nodeid
        for item in items
        if {"spark", "connect", "connect_server"} & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests using the spark fixture must be marked slow: {unmarked}")


@pytest.fixture(scope="session")
def spark():
    """One SparkSession for every test that needs Spark; engines reuse it.

    Four task slots on this 2-core machine: a long-lived stage holds one slot per mapper.
    """
    from nnlib.engines.spark.session import SessionSettings, open_session

    session = open_session(SessionSettings("local[4]", app_name="nnlib-tests")).session
    yield session
    session.stop()


# pyspark picks its classic or its Spark Connect code (pyspark.sql.functions, pyspark.ml's Java stages, mapInArrow,
# Observation) by one process-wide switch, which creating a Connect session sets: a real program holds one kind of
# session, the tests hold both, so each step runs under on(kind)
CONNECT_SWITCH = "SPARK_CONNECT_MODE_ENABLED"


@contextmanager
def on(kind: str):
    """The block runs with pyspark's process-wide switch set for a ``kind`` ("classic" or "connect") session."""
    before = os.environ.get(CONNECT_SWITCH)
    if kind == "connect":
        os.environ[CONNECT_SWITCH] = "1"
    else:
        os.environ.pop(CONNECT_SWITCH, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CONNECT_SWITCH, None)
        else:
            os.environ[CONNECT_SWITCH] = before


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """One Spark Connect server (pyspark's own SparkConnectServer, local[4], on 127.0.0.1) for the whole run."""
    from spark_cluster import ConnectServer

    server = ConnectServer(tmp_path_factory.mktemp("connect")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def connect(connect_server, spark):
    """A Spark Connect session to :func:`connect_server`, shared by every test that needs one. Engines given
    ``spark.remote`` of the same server use it (and leave it open). The classic ``spark`` session starts
    first: a Connect session already there would be the one nnlib's session rules give ``spark``."""
    from pyspark.sql import SparkSession

    session = SparkSession.builder.remote(connect_server.url).create()
    os.environ.pop(CONNECT_SWITCH, None)  # classic until a test says on("connect")
    yield session
    session.stop()


DIGIT_PIXELS = [f"px{i}" for i in range(64)]  # the columns of digits_file


@pytest.fixture(scope="session")
def digits_file(tmp_path_factory):
    """scikit-learn's digits as one Parquet file: float32 columns ``DIGIT_PIXELS`` and the integer ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nnlib.data.sources import load_digits

    x, y = load_digits()
    path = tmp_path_factory.mktemp("digits-file") / "digits.parquet"
    pq.write_table(pa.table({**{c: x[:, i].astype(np.float32) for i, c in enumerate(DIGIT_PIXELS)}, "label": y}), path)
    return path


def small_config(*overrides: str):
    """A quick digits run on the local engine, changed by ``key=value`` overrides.

    The same run as ``nnlib run --set engine=local --set mappers=3 --set train.rounds=2 --set train.local_epochs=1
    --set model.hidden=[16] --set train.batch_size=32 --set train.lr=0.1 --set seed=7`` with the overrides after.
    """
    base = [
        "engine=local",
        "mappers=3",
        "train.rounds=2",
        "train.local_epochs=1",
        "model.hidden=[16]",
        "train.batch_size=32",
        "train.lr=0.1",
        "seed=7",
    ]
    return load_config(None, base + list(overrides))


def saved_params(run_dir) -> np.ndarray:
    """A run directory's model.npz as the flat parameter vector (the file keeps the arrays in flat order)."""
    from nnlib.outputs import load_model

    return np.concatenate([a.ravel() for a in load_model(run_dir / "model.npz").values()])


def checkpointed_rounds(run_dir) -> int:
    """The rounds done in ``run_dir``'s newest checkpoint (``checkpoints/round-NNNNN.npz``), 0 without one."""
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("round-*.npz"))
    return int(names[-1][len("round-") : -len(".npz")]) if names else 0


def wait_for_rounds(proc, run_dir, rounds: int, timeout: float = 300.0) -> int:
    """Wait until the run of ``proc`` (a ``Popen``) has checkpointed at least ``rounds`` rounds in ``run_dir``.

    Returns the rounds checkpointed; fails the test if the process ends first or ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while (done := checkpointed_rounds(run_dir)) < rounds:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            err = err.decode() if isinstance(err, bytes) else err
            pytest.fail(
                f"the run ended (exit {proc.returncode}) after {done} of the {rounds} rounds waited for:\n{err[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{done} rounds checkpointed in {run_dir} after {timeout:.0f}s; waited for {rounds}")
        time.sleep(0.05)
    return done


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still running (a zombie has ended)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running
