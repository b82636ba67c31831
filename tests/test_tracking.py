"""Experiment tracking: off by default without importing MLflow; with MLflow, params, per-round metrics, artifacts."""

import subprocess
import sys

import pytest
from conftest import needs

# MLflow's store and client take seconds to import and start: these tests run in the slow tier
needs_mlflow = needs("mlflow", "tracking")

from nnlib.cli import main
from nnlib.outputs import read_csv_rows


def run_and_read_back(uri: str, out) -> None:
    """Train 3 rounds tracked at ``uri``; read the MLflow run back with MLflow's client and check all it holds."""
    assert (
        main(
            [
                "run",
                "--out",
                str(out),
                "--quiet",
                "--set",
                "tracking=mlflow",
                "--set",
                f"mlflow.tracking_uri={uri}",
                "--set",
                "mlflow.experiment=digits",
                "--set",
                "train.rounds=3",
                "--set",
                "model.hidden=[8]",
            ]
        )
        == 0
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.info.run_name == out.name and run.info.status == "FINISHED"
    assert run.data.params["mappers"] == "4" and run.data.params["model.hidden"] == "[8]"
    rounds = read_csv_rows(out / "rounds.csv")
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    # the step is the round's number as the console prints it: 1, 2, 3
    assert [(m.step, m.value) for m in history] == [
        (n, pytest.approx(r["test_accuracy"])) for n, r in zip((1, 2, 3), rounds)
    ]
    assert run.data.metrics["final.final_test_accuracy"] == pytest.approx(rounds[-1]["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "rounds.csv", "mapper_times.csv", "model.npz", "summary.json"}


@pytest.mark.slow
@needs_mlflow
def test_an_mlflow_run_in_a_folder_store_holds_the_params_every_rounds_metrics_and_the_outputs(tmp_path):
    run_and_read_back((tmp_path / "store").as_uri(), tmp_path / "run")


@pytest.mark.slow
@needs_mlflow
def test_an_mlflow_run_in_a_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README's URI, relative to the working directory
    run_and_read_back("sqlite:///mlflow.db", tmp_path / "run")
    assert (tmp_path / "mlflow.db").is_file()


@pytest.mark.slow
@needs_mlflow
def test_a_tracked_run_prints_nothing_of_mlflows_own(tmp_path):
    """A new sqlite store: MLflow logs "Creating initial MLflow database tables..." and "Creating a new
    experiment" at INFO; nnlib keeps them off the console."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnlib",
            "run",
            "--quiet",
            "--set",
            "train.rounds=1",
            "--set",
            "tracking=mlflow",
            "--set",
            "mlflow.tracking_uri=sqlite:///mlflow.db",
            "--out",
            "run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.startswith("final test accuracy") and (tmp_path / "mlflow.db").is_file()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (a free port), its runs in sqlite, stopped by its PID at the end."""
    import os
    import signal
    import socket
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_cli = [sys.executable, "-c", "import sys; from mlflow.cli import cli; sys.exit(cli())"]
    proc = subprocess.Popen(
        [
            *mlflow_cli,
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'db.sqlite'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "log", "w"),
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (folder / "log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not answer in 240 s"
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@needs_mlflow
def test_an_mlflow_run_on_a_tracking_server(tmp_path, mlflow_server):
    run_and_read_back(mlflow_server, tmp_path / "run")


@pytest.mark.slow
@needs_mlflow
def test_a_run_that_fails_is_marked_failed(tmp_path):
    uri = (tmp_path / "store").as_uri()
    missing = tmp_path / "missing.npz"
    assert (
        main(
            [
                "run",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
                "--set",
                "tracking=mlflow",
                "--set",
                f"mlflow.tracking_uri={uri}",
                "--set",
                f"data.source={missing}",
            ]
        )
        == 2
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nnlib").experiment_id])
    assert run.info.status == "FAILED" and "final.final_test_accuracy" not in run.data.metrics


@pytest.mark.slow
def test_tracking_off_never_imports_mlflow(tmp_path):
    code = (
        "import sys; from nnlib.cli import main; "
        f"assert main(['run', '--out', {str(tmp_path / 'run')!r}, '--quiet', '--set', 'train.rounds=1']) == 0; "
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
