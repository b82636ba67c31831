"""The Python API: nnlib.train runs the same path as nnlib run and returns the run, its tables and its model."""

import numpy as np
import pytest

import nnlib
from conftest import saved_params, small_config
from nnlib.driver import run as driver_run
from nnlib.errors import ConfigError

SMALL = {
    "engine": "local",
    "mappers": 3,
    "train.rounds": 2,
    "train.local_epochs": 1,
    "model.hidden": [16],
    "train.batch_size": 32,
    "train.lr": 0.1,
    "seed": 7,
}  # conftest's small_config()


def test_train_returns_the_driver_runs_weights_tables_and_model(tmp_path):
    run = nnlib.train(overrides=SMALL, out=tmp_path / "run")
    reference = driver_run(small_config())
    np.testing.assert_array_equal(run.model.params, reference.params)
    assert run.summary["final_test_accuracy"] == reference.summary["final_test_accuracy"]
    assert [r["round"] for r in run.rounds] == [1, 2] and len(run.mappers) == 2 * 3
    assert run.path == tmp_path / "run"
    np.testing.assert_array_equal(saved_params(run.path), reference.params)
    frames = run.frames()
    assert list(frames["rounds"]["test_accuracy"]) == [r["test_accuracy"] for r in run.rounds]


def test_a_run_read_back_equals_the_run_returned(tmp_path):
    run = nnlib.train(overrides=SMALL, out=tmp_path / "run")
    back = nnlib.Run.load(tmp_path / "run")
    assert back.summary == run.summary
    assert [r["test_accuracy"] for r in back.rounds] == [r["test_accuracy"] for r in run.rounds]
    np.testing.assert_array_equal(back.model.params, run.model.params)
    x = np.random.default_rng(0).normal(size=(5, run.model.n_features))
    np.testing.assert_array_equal(back.model.predict_proba(x), run.model.predict_proba(x))


def test_overrides_as_a_dict_or_as_strings_and_a_config_object_give_the_same_run(tmp_path):
    a = nnlib.train(overrides=SMALL, write=False)
    b = nnlib.train(overrides=[f"{k}={v}" for k, v in SMALL.items()], write=False)
    c = nnlib.train(small_config(), write=False)
    np.testing.assert_array_equal(a.model.params, b.model.params)
    np.testing.assert_array_equal(a.model.params, c.model.params)
    assert a.path is None


def test_write_false_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nnlib.train(overrides=SMALL, write=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"mappers": 0}, "mappers"),
        ({"train.nosuchkey": 1}, "train.nosuchkey"),
        ("mappers=2", "dict or a list"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, overrides, says):
    with pytest.raises(ConfigError, match=says) as info:
        nnlib.train(overrides=overrides, out=tmp_path / "run")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_engine_mpi_launches_the_ranks_and_reads_the_run_back(tmp_path):
    run = nnlib.train(
        small_config("mappers=2"),
        engine="mpi",
        out=tmp_path / "mpi",
        overrides={"mpi.args": ["--oversubscribe", "--allow-run-as-root"]},
    )
    local = nnlib.train(small_config("mappers=2"), write=False)
    assert run.summary["engine"] == "mpi" and run.summary["mappers"] == 2
    np.testing.assert_array_equal(run.model.params, local.model.params)
