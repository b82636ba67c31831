"""Experiment tracking: off by default without importing MLflow; with MLflow, params, per-round metrics, artifacts."""

import subprocess
import sys

import pytest

from nnlib.cli import main
from nnlib.outputs import read_csv_rows


def test_an_mlflow_run_holds_the_params_every_rounds_metrics_and_the_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "store").as_uri()
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--quiet", "--set", "tracking=mlflow", "--set", f"mlflow.tracking_uri={uri}",
                 "--set", "mlflow.experiment=digits", "--set", "train.rounds=3", "--set", "model.hidden=[8]"]) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["mappers"] == "4" and run.data.params["model.hidden"] == "[8]"
    rounds = read_csv_rows(out / "rounds.csv")
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], pytest.approx(r["test_accuracy"])) for r in rounds]
    assert run.data.metrics["final.final_test_accuracy"] == pytest.approx(rounds[-1]["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "rounds.csv", "mapper_times.csv", "model.npz", "summary.json"}


def test_a_run_that_fails_is_marked_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "store").as_uri()
    missing = tmp_path / "missing.npz"
    assert main(["run", "--out", str(tmp_path / "run"), "--quiet", "--set", "tracking=mlflow",
                 "--set", f"mlflow.tracking_uri={uri}", "--set", f"data.source={missing}"]) == 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nnlib").experiment_id])
    assert run.info.status == "FAILED" and "final.final_test_accuracy" not in run.data.metrics


@pytest.mark.slow
def test_tracking_off_never_imports_mlflow(tmp_path):
    code = ("import sys; from nnlib.cli import main; "
            f"assert main(['run', '--out', {str(tmp_path / 'run')!r}, '--quiet', '--set', 'train.rounds=1']) == 0; "
            "assert 'mlflow' not in sys.modules, 'mlflow was imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
