"""Side channels are guests: MLflow tracking never ends a run nor changes the caller's MLflow settings.

Real components only: a sqlite MLflow store, a port nobody listens on, real ``nnlib run`` subprocesses.
"""

import logging
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import needs, small_config, wait_for_rounds

from nnlib.outputs import read_csv_rows

needs_mlflow = needs("mlflow", "tracking")


def nnlib_run(*args: str, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "nnlib", "run", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
@needs_mlflow
def test_an_mlflow_run_deleted_mid_run_is_one_warning_and_the_run_completes(tmp_path):
    """After mlflow#1760: another process deletes the MLflow run (as the UI's delete does) after round 2."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 't.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # the store's tables made here, not by two processes at once
    rounds = 40
    proc = nnlib_run(
        "--out",
        "run",
        "--set",
        "tracking=mlflow",
        "--set",
        f"mlflow.tracking_uri={uri}",
        "--set",
        f"train.rounds={rounds}",
        "--set",
        "model.hidden=[64]",
        "--set",
        "train.local_epochs=30",
        cwd=tmp_path,
    )
    wait_for_rounds(proc, tmp_path / "run", 2)
    (run,) = client.search_runs([client.get_experiment_by_name("nnlib").experiment_id])
    client.delete_run(run.info.run_id)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if "tracking" in line]
    assert len(warnings) == 1 and err.count("\n") == 1, err
    assert warnings[0].startswith(f"nnlib: warning: tracking: MLflow run {run.info.run_id}: logging round ")
    assert "tracking is off for the rest of this run, which goes on" in warnings[0]
    # the run's own files are complete, every round printed
    assert len(read_csv_rows(tmp_path / "run" / "rounds.csv")) == rounds
    assert (tmp_path / "run" / "summary.json").is_file() and (tmp_path / "run" / "model.npz").is_file()
    assert f"round {rounds}/{rounds}" in out and "final test accuracy" in out
    logged = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert 2 <= len(logged) < rounds  # logging stopped at the deletion


@pytest.mark.slow
@needs_mlflow
def test_an_unreachable_tracking_server_is_one_line_within_seconds_before_training(tmp_path):
    with socket.socket() as s:  # a free port, then closed: nobody listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    proc = nnlib_run(
        "--out",
        "run",
        "--set",
        "tracking=mlflow",
        "--set",
        f"mlflow.tracking_uri=http://127.0.0.1:{port}",
        "--set",
        "train.rounds=2",
        cwd=tmp_path,
    )
    out, err = proc.communicate(timeout=120)
    seconds = time.monotonic() - start
    assert proc.returncode == 2 and seconds < 30, (seconds, err[-2000:])  # MLflow's own retries: about 4 minutes
    assert err == (
        f"nnlib: error: mlflow.tracking_uri=http://127.0.0.1:{port}: the tracking server cannot be "
        f"reached (127.0.0.1:{port}: Connection refused); start it, fix mlflow.tracking_uri, or set "
        "tracking=none\n"
    )
    assert "round 1" not in out and not (tmp_path / "run").exists()  # refused before training: nothing written


@pytest.fixture
def caller_mlflow(tmp_path, monkeypatch):
    """The caller's MLflow settings in this process (a sqlite store of their own, their experiment), put back
    as they were after the test."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'user.db'}")
    mlflow.set_experiment("mine")
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(before)


def _settings(mlflow):
    """What nnlib must leave as it found: tracking URI, active experiment and run, loggers, environment."""
    from mlflow.tracking.fluent import _get_experiment_id

    active = mlflow.active_run()
    return (
        mlflow.get_tracking_uri(),
        _get_experiment_id(),
        active and active.info.run_id,
        logging.getLogger("mlflow").level,
        logging.getLogger("alembic").level,
        os.environ.get("MLFLOW_ALLOW_FILE_STORE"),
        os.environ.get("MLFLOW_TRACKING_URI"),
    )


@pytest.mark.slow
@needs_mlflow
def test_inside_the_callers_mlflow_run_nnlib_logs_a_child_run_and_leaves_the_settings_as_found(tmp_path, caller_mlflow):
    """After mlflow#12154: nnlib.train inside the user's own ``with mlflow.start_run():``."""
    import nnlib

    mlflow = caller_mlflow
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with mlflow.start_run() as parent:
        before = _settings(mlflow)
        nnlib.train(small_config("tracking=mlflow"), out=tmp_path / "child")  # the caller's store: a child run
        assert _settings(mlflow) == before
        nnlib.train(small_config("tracking=mlflow", f"mlflow.tracking_uri={other}"), out=tmp_path / "beside")
        assert _settings(mlflow) == before
        mlflow.log_metric("users_own", 1.0)  # the caller's run is still theirs, in their store
    client = mlflow.MlflowClient(mlflow.get_tracking_uri())
    runs = {r.info.run_name: r for r in client.search_runs([parent.info.experiment_id])}
    assert set(runs) == {parent.info.run_name, "child"}
    assert runs["child"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs["child"].info.status == "FINISHED" and runs["child"].data.params["mappers"] == "3"
    assert runs[parent.info.run_name].info.status == "FINISHED"
    assert runs[parent.info.run_name].data.metrics == {"users_own": 1.0}
    beside = mlflow.MlflowClient(other)
    (run,) = beside.search_runs([beside.get_experiment_by_name("nnlib").experiment_id])
    assert run.info.run_name == "beside" and "mlflow.parentRunId" not in run.data.tags
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'user.db'}"


@pytest.mark.slow
@needs_mlflow
def test_without_a_caller_run_the_process_settings_are_left_as_found(tmp_path, caller_mlflow, monkeypatch):
    import nnlib

    mlflow = caller_mlflow
    before = _settings(mlflow)
    nnlib.train(
        small_config("tracking=mlflow", f"mlflow.tracking_uri={(tmp_path / 'store').as_uri()}"), out=tmp_path / "run"
    )
    assert _settings(mlflow) == before and mlflow.active_run() is None
    client = mlflow.MlflowClient((tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the folder store back needs its opt-in
    (run,) = client.search_runs([client.get_experiment_by_name("nnlib").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
