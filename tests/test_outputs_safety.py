"""Outputs nobody else owns, and writes that fail cleanly.

A run holds its folder with an OS lock (a second run is refused naming the first; a killed run never blocks
its own resume); a resume refuses another run's checkpoints; a write that fails (here: past the file-size
limit, ``RLIMIT_FSIZE``, which CPython turns into EFBIG by ignoring SIGXFSZ) is one line naming the file and
the cause, leaves no temporary file, keeps the last good checkpoint, and ``--resume`` goes on from it.
"""

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import saved_params, small_config, wait_for_rounds

import nnlib
from nnlib.errors import ConfigError, NnlibError, OutputError
from nnlib.outputs import atomic_write_bytes, read_csv_rows
from nnlib.util.lock import LOCK_NAME, hold

SMALL = [
    "engine=local",
    "mappers=3",
    "train.local_epochs=1",
    "model.hidden=[8]",
    "train.batch_size=32",
    "train.lr=0.1",
    "seed=7",
]


def sets(items) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def nnlib_cli(*args: str, cwd, file_limit: int | None = None, **popen) -> subprocess.Popen:
    """``nnlib ARGS`` in a subprocess; ``file_limit``: its RLIMIT_FSIZE in bytes (``ulimit -f``)."""

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.Popen(
        [sys.executable, "-m", "nnlib", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=limit if file_limit else None,
        **popen,
    )


def debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp*"))


# --- a failed write -----------------------------------------------------------------------------------------


def test_a_failed_atomic_write_keeps_the_old_file_leaves_no_temporary_and_names_the_cause(tmp_path):
    path = tmp_path / "model.npz"
    atomic_write_bytes(path, b"old")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))  # CPython ignores SIGXFSZ: the write gets EFBIG
    try:
        with pytest.raises(OutputError) as caught:
            atomic_write_bytes(path, b"x" * 5000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(caught.value).startswith(f"cannot write {path}: the file is too large (past the file-size limit")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.npz"]
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'none' / 'f'}: its folder does not exist"):
        atomic_write_bytes(tmp_path / "none" / "f", b"x")


@pytest.mark.slow
def test_a_checkpoint_past_the_file_size_limit_is_one_line_and_resume_goes_on(tmp_path):
    """After ray#32481: ``ulimit -f`` below a checkpoint's size, at round 1."""
    proc = nnlib_cli(
        "run", "--out", "run", *sets(SMALL + ["train.rounds=3", "model.hidden=[64]"]), cwd=tmp_path, file_limit=20_000
    )
    out, err = proc.communicate(timeout=300)
    run = tmp_path / "run"
    assert proc.returncode == 2, err
    assert err == (
        "nnlib: error: cannot write run/checkpoints/round-00001.npz: the file is too large (past the "
        "file-size limit, ulimit -f, or the file system's); round 1 is lost; no round was checkpointed; "
        "make room, then resume with: nnlib run --resume run\n"
    )
    assert debris(run) == [] and list((run / "checkpoints").iterdir()) == []
    assert read_csv_rows(run / "rounds.csv") == []  # no row for a round with no checkpoint
    proc = nnlib_cli("run", "--resume", "run", "--quiet", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and err == "", err
    assert len(read_csv_rows(run / "rounds.csv")) == 3 and debris(run) == []


@pytest.mark.slow
def test_a_failed_write_mid_run_keeps_the_last_good_checkpoint_and_resume_gives_the_same_weights(tmp_path):
    """mapper_times.csv grows each round: a file-size limit it passes mid-run fails round k's write."""
    rounds = 30
    items = SMALL + [f"train.rounds={rounds}", "mappers=8"]
    whole = nnlib.train(small_config(*items), out=tmp_path / "whole")
    mapper_csv = (tmp_path / "whole" / "mapper_times.csv").stat().st_size
    checkpoint = max(p.stat().st_size for p in (tmp_path / "whole" / "checkpoints").iterdir())
    limit = mapper_csv * 18 // 30  # mapper_times.csv passes it after about 18 of the 30 rounds
    assert limit > checkpoint + 1000 and limit > (tmp_path / "whole" / "model.npz").stat().st_size
    proc = nnlib_cli("run", "--out", "run", "--quiet", *sets(items), cwd=tmp_path, file_limit=limit)
    _, err = proc.communicate(timeout=300)
    run = tmp_path / "run"
    assert proc.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    (kept,) = [p for p in sorted((run / "checkpoints").iterdir())][-1:]
    done = int(kept.stem.split("-")[1])
    assert 1 < done < rounds - 1
    assert err == (
        f"nnlib: error: cannot write run/mapper_times.csv: the file is too large (past the file-size "
        f"limit, ulimit -f, or the file system's); round {done + 1} is lost; the last good checkpoint is "
        f"run/checkpoints/round-{done:05d}.npz; make room, then resume with: nnlib run --resume run\n"
    )
    assert debris(run) == [] and not (run / "summary.json").exists()
    assert [r["round"] for r in read_csv_rows(run / "rounds.csv")] == list(range(1, done + 1))
    proc = nnlib_cli("run", "--resume", "run", "--quiet", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    np.testing.assert_array_equal(saved_params(run), whole.model.params)
    assert [r["round"] for r in read_csv_rows(run / "rounds.csv")] == list(range(1, rounds + 1))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_predictions_past_the_file_size_limit_are_one_line_and_no_file(tmp_path, suffix):
    nnlib.train(small_config(), out=tmp_path / "model")
    proc = nnlib_cli("predict", "model", "digits", "--out", f"preds.{suffix}", cwd=tmp_path, file_limit=20_000)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and out == "", err
    assert err == (
        f"nnlib: error: --out: cannot write preds.{suffix}: the file is too large (past the file-size "
        "limit, ulimit -f, or the file system's)\n"
    )
    assert sorted(os.listdir(tmp_path)) == ["model"]


# --- who owns a folder --------------------------------------------------------------------------------------


def test_a_folder_another_run_holds_is_refused_naming_its_pid_and_host(tmp_path):
    (tmp_path / "run").mkdir()
    lock = hold(tmp_path / "run")  # as a live run holds it
    try:
        for kwargs in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(NnlibError) as caught:
                nnlib.train(small_config(), out=tmp_path / "run", **kwargs)
            assert str(caught.value).startswith(
                f"--out: {tmp_path / 'run'} is in use by another run, PID "
                f"{os.getpid()} on host {socket.gethostname()} (since "
            )
        assert sorted(os.listdir(tmp_path / "run")) == [LOCK_NAME]  # nothing written
    finally:
        lock.release()
    run = nnlib.train(small_config(), out=tmp_path / "run")  # released: the folder is free again
    assert run.path == tmp_path / "run" and (tmp_path / "run" / "summary.json").is_file()


def test_default_folders_of_runs_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: fmt.replace("%Y%m%d-%H%M%S", "20260101-000000"))
    first = nnlib.train(small_config("train.rounds=1"))
    second = nnlib.train(small_config("train.rounds=1", "seed=8"))
    assert (first.path.name, second.path.name) == ("20260101-000000", "20260101-000000-2")
    assert first.summary["final_test_accuracy"] != second.summary["final_test_accuracy"]


def test_a_resume_refuses_checkpoints_of_another_run(tmp_path):
    nnlib.train(small_config("train.rounds=2"), out=tmp_path / "a")
    nnlib.train(small_config("train.rounds=2", "train.lr=0.05"), out=tmp_path / "b")
    for f in (tmp_path / "a" / "checkpoints").iterdir():
        f.unlink()
    for f in (tmp_path / "b" / "checkpoints").iterdir():  # as two runs sharing one --out once left it
        shutil.copy(f, tmp_path / "a" / "checkpoints" / f.name)
    (tmp_path / "a" / "summary.json").unlink()
    with pytest.raises(
        ConfigError,
        match="the checkpoint round-00002.npz was written by a run with another "
        "config than .*config.yaml .*it belongs to another run",
    ):
        nnlib.train(out=tmp_path / "a", resume=True, overrides={"train.rounds": 3})
    assert not (tmp_path / "a" / "summary.json").exists()


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder_one_is_refused_naming_the_other(tmp_path):
    """After ray#35006: the same --out, different seeds and rounds, started together."""
    long = SMALL + ["train.rounds=120", "train.local_epochs=3"]
    first = nnlib_cli("run", "--out", "run", "--quiet", *sets(long + ["seed=1"]), cwd=tmp_path)
    second = nnlib_cli("run", "--out", "run", "--quiet", *sets(long + ["seed=2", "train.rounds=100"]), cwd=tmp_path)
    results = {p.pid: (p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in (first, second)}
    codes = sorted(code for code, _, _ in results.values())
    assert codes == [0, 2], results
    (winner,) = [pid for pid, (code, _, _) in results.items() if code == 0]
    (loser,) = [r for r in results.values() if r[0] == 2]
    assert loser[2] == (
        f"nnlib: error: --out: run is in use by another run, PID {winner} on host "
        f"{socket.gethostname()} (since {loser[2].split('(since ')[1]}"
    ), loser[2]
    seed = 1 if winner == first.pid else 2
    assert f"seed: {seed}\n" in (tmp_path / "run" / "config.yaml").read_text()
    assert len(read_csv_rows(tmp_path / "run" / "rounds.csv")) == (120 if seed == 1 else 100)


@pytest.mark.slow
def test_a_killed_run_never_blocks_its_own_resume(tmp_path):
    proc = nnlib_cli(
        "run", "--out", "run", "--quiet", *sets(SMALL + ["train.rounds=400", "train.local_epochs=3"]), cwd=tmp_path
    )
    wait_for_rounds(proc, tmp_path / "run", 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "run" / LOCK_NAME).is_file()  # the file stays; the kernel dropped the lock with the process
    again = nnlib_cli("run", "--resume", "run", "--quiet", "--set", "train.rounds=5", cwd=tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(read_csv_rows(tmp_path / "run" / "rounds.csv")) == 5


@pytest.mark.parametrize(
    "sets",
    [
        ["engine=spark", "spark.task_gpus=1"],  # refused as the engine opens, on any
        # local master: nnlib's own or that of a session already running in the process
        ["mappers=5000"],
    ],
)  # refused once the data is read
def test_a_run_refused_after_claiming_its_folder_takes_back_the_parents_it_made(tmp_path, capsys, sets):
    from nnlib.cli import main

    out = tmp_path / "new" / "deeper" / "run"
    args = ["run", "--quiet", "--set", "train.rounds=1", *[a for s in sets for a in ("--set", s)], "--out", str(out)]
    assert main(args) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
