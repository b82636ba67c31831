"""The command line end to end: outputs of a run, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnlib.cli import main
from nnlib.outputs import MAPPER_COLUMNS, ROUND_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--set", "engine=local", "--set", "train.rounds=3", "--set", "mappers=3", "--quiet"]


def test_round_trip_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "conf/default.yaml"), *QUICK, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_test_accuracy", "final_test_loss", "wall_seconds", "engine", "mappers", "combine", "rounds"):
        assert key in summary
    assert 0.9 <= summary["final_test_accuracy"] <= 1
    assert (summary["engine"], summary["mappers"], summary["rounds"]) == ("local", 3, 3)

    rounds = (out / "rounds.csv").read_text().splitlines()
    assert rounds[0].split(",") == ROUND_COLUMNS and len(rounds) == 1 + 3
    mappers = (out / "mapper_times.csv").read_text().splitlines()
    assert mappers[0].split(",") == MAPPER_COLUMNS and len(mappers) == 1 + 3 * 3

    with np.load(out / "model.npz", allow_pickle=False) as model:
        assert model["layer0.weight"].shape == (64, 64) and model["layer1.bias"].shape == (10,)
    config = (out / "config.yaml").read_text()
    assert "engine: local" in config and "source: digits" in config
    assert "final test accuracy" in capsys.readouterr().out


def test_finished_run_is_not_overwritten_without_flag(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", *QUICK, "--set", "train.rounds=1", "--out", str(out)]
    assert main(args) == 0
    before = (out / "summary.json").read_bytes()
    assert main(args) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_extends_layers_conf_files(tmp_path):
    from nnlib.config import load_config

    config = load_config(ROOT / "conf/mappers_8.yaml")
    assert config.mappers == 8 and config.engine == "spark" and config.train.rounds == 5
    for k in (1, 2, 4, 8):
        assert load_config(ROOT / f"conf/mappers_{k}.yaml").mappers == k


def test_scientific_notation_is_a_number():
    from nnlib.config import load_config

    assert load_config(None, ["train.lr=1e-3"]).train.lr == 0.001


@pytest.mark.slow
def test_process_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nnlib", "run", "--set", "train.batch_size=0", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "nnlib: error: --set: config key 'train.batch_size': Input should be greater than or equal to 1, got 0"
    )


def test_two_runs_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    from nnlib.outputs import default_run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20260101-000000")
    first = default_run_dir()  # made here, with mkdir: the second of the same second cannot get it
    second = default_run_dir()
    assert (first.name, second.name) == ("20260101-000000", "20260101-000000-2")
    assert first.is_dir() and second.is_dir()
