"""Batch jobs on HPC: a clean stop on SIGTERM on every engine, MPI runs that resume, one command for the
first start and every requeue, the SLURM scripts of examples/slurm/.

Signals are real: a real ``nnlib run`` (or ``mpiexec``) in its own session gets a real SIGTERM, as a
scheduler sends it; kills are of the process group the test started, never by name.
"""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import alive, checkpointed_rounds, descendants, saved_params, wait_for_rounds

from nnlib.api import train
from nnlib.config import load_config
from nnlib.driver import run
from nnlib.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SLURM = ROOT / "examples" / "slurm"
# a quick run: rounds of a few milliseconds on digits
QUICK = ["model.hidden=[8]", "mappers=2", "train.local_epochs=1", "seed=5"]
STOPPED = re.compile(
    r"nnlib: stopped by SIGTERM after round (\d+)/(\d+); rounds 1-(\d+) are kept "
    r"\(checkpoint (\S+)\); resume with: nnlib run --resume (\S+)\n"
)


def sets(items):
    return [a for item in items for a in ("--set", item)]


def env_for(tmp_path) -> dict:
    # root in containers and CI; mpiexec on PATH; temporary files inside the test's folder
    return dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        TMPDIR=str(tmp_path),
        OMPI_MCA_rmaps_base_oversubscribe="1",
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        PYSPARK_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
    )


def start(cmd: list[str], tmp_path) -> subprocess.Popen:
    """``cmd`` in its own session (its own process group), stderr captured."""
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env_for(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def nnlib_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "nnlib", "run", *args]


def terminate(proc: subprocess.Popen, out: Path, after: int, sig=signal.SIGTERM) -> tuple[int, str, list[int]]:
    """Once ``after`` rounds are checkpointed, send ``sig`` to ``proc`` alone (as a scheduler signals the batch
    step's command); ``(exit status, stderr, the processes it had started)``."""
    try:
        wait_for_rounds(proc, out, after, timeout=300)
        started = descendants(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err, started


def assert_nothing_left(pids: list[int]) -> None:
    deadline = time.monotonic() + 20
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(pids) == [], "processes left behind after SIGTERM"


@functools.lru_cache(maxsize=None)
def local_params(rounds: int, *extra: str) -> np.ndarray:
    """An uninterrupted local run's weights (the reference every engine and every resume must equal)."""
    config = load_config(None, [*QUICK, *extra, f"train.rounds={rounds}", "engine=local"])
    return run(config, log=lambda _m: None, warn=lambda _m: None).params


def check_stopped(status: int, err: str, out: Path, rounds: int) -> int:
    """The one line of a clean stop and exit 143; the rounds kept (== the newest checkpoint's)."""
    assert status == 143, err[-3000:]
    found = STOPPED.search(err)
    assert found and err.endswith(found.group(0)), err[-3000:]
    after, total, kept, checkpoint, resume_dir = found.groups()
    assert after == kept and int(total) == rounds and resume_dir == str(out)
    assert Path(checkpoint) == out / "checkpoints" / f"round-{int(kept):05d}.npz"
    assert checkpointed_rounds(out) == int(kept) and not (out / "summary.json").exists()
    return int(kept)


# --- SIGTERM on every engine, then the same command with --resume -------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "spark", "mpi"])
def test_sigterm_stops_after_a_round_and_the_same_command_resumes_bit_for_bit(tmp_path, engine):
    out = tmp_path / "run"
    rounds = 400 if engine != "spark" else 60
    items = [*QUICK, f"engine={engine}", f"train.rounds={rounds}", "spark.master=local[2]"]
    command = nnlib_run(*sets(items), "--resume", str(out), "--quiet")  # the batch script's one command
    status, err, started = terminate(start(command, tmp_path), out, 2)
    kept = check_stopped(status, err, out, rounds)
    assert kept < rounds
    if engine != "local":
        assert len(started) >= 2  # Spark: its JVM and workers; MPI: mpiexec and its ranks
    assert_nothing_left(started)

    # the same command again, with fewer rounds to go: it resumes to an uninterrupted run's weights
    total = kept + 2
    again = subprocess.run(
        [*command[:-3], "--set", f"train.rounds={total}", *command[-3:]],
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_after_round"] == kept and summary["engine"] == engine
    assert [int(line.split(",")[0]) for line in (out / "rounds.csv").read_text().splitlines()[1:]] == list(
        range(1, total + 1)
    )
    np.testing.assert_array_equal(saved_params(out), local_params(total))


@pytest.mark.slow
@pytest.mark.parametrize("combine", ["gradient", "ist"])
def test_mpi_stopped_by_sigterm_resumes_bit_for_bit_with_momentum_and_server_state(tmp_path, combine):
    extra = ["train.momentum=0.9", "server.momentum=0.5"] if combine == "ist" else ["train.momentum=0.9"]
    extra += [f"combine={combine}", "model.hidden=[9]"]
    out = tmp_path / "run"
    command = nnlib_run(*sets([*QUICK, *extra, "engine=mpi", "train.rounds=400"]), "--resume", str(out), "--quiet")
    status, err, started = terminate(start(command, tmp_path), out, 2)
    kept = check_stopped(status, err, out, 400)
    assert_nothing_left(started)
    again = subprocess.run(
        [*command, "--set", f"train.rounds={kept + 2}"],
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    np.testing.assert_array_equal(saved_params(out), local_params(kept + 2, *extra))


@pytest.mark.slow
def test_mpi_ranks_under_a_plain_mpiexec_stop_together_on_sigusr1(tmp_path):
    """Open MPI's mpiexec ends its ranks at once on SIGTERM but passes SIGUSR1 on: the ranks agree on the round,
    rank 0 prints the one line, the job exits 143, and nnlib run --resume continues it."""
    out = tmp_path / "run"
    cmd = [
        str(BIN / "mpiexec"),
        "-n",
        "2",
        sys.executable,
        "jobs/mpi_model_avg.py",
        *sets([*QUICK, "train.rounds=400"]),
        "--out",
        str(out),
        "--quiet",
    ]
    status, err, started = terminate(start(cmd, tmp_path), out, 2, signal.SIGUSR1)
    assert status == 143, err[-3000:]
    found = re.search(
        r"nnlib: stopped by SIGUSR1 after round (\d+)/400; rounds 1-\1 are kept \(checkpoint \S+\); "
        rf"resume with: nnlib run --resume {re.escape(str(out))}\n",
        err,
    )
    assert found, err[-3000:]
    kept = int(found.group(1))
    assert checkpointed_rounds(out) == kept
    assert_nothing_left(started)
    resumed = subprocess.run(
        nnlib_run("--resume", str(out), "--set", f"train.rounds={kept + 1}", "--quiet"),
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    np.testing.assert_array_equal(saved_params(out), local_params(kept + 1))


@pytest.mark.slow
def test_mpi_resumes_after_kill_9_of_the_whole_job(tmp_path):
    out = tmp_path / "run"
    cmd = [
        str(BIN / "mpiexec"),
        "-n",
        "2",
        sys.executable,
        "jobs/mpi_model_avg.py",
        *sets([*QUICK, "train.rounds=400", "train.momentum=0.9"]),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = start(cmd, tmp_path)
    try:
        wait_for_rounds(proc, out, 2, timeout=300)
        started = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert_nothing_left(started)
    kept = checkpointed_rounds(out)
    assert 2 <= kept < 400 and not (out / "summary.json").exists()
    resumed = subprocess.run(
        [
            str(BIN / "mpiexec"),
            "-n",
            "2",
            sys.executable,
            "jobs/mpi_model_avg.py",
            "--resume",
            str(out),
            "--set",
            f"train.rounds={kept + 2}",
            "--quiet",
        ],
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["resumed_after_round"] == kept
    np.testing.assert_array_equal(saved_params(out), local_params(kept + 2, "train.momentum=0.9"))


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("mpi", "local"), ("local", "mpi")])
def test_a_checkpoint_resumes_on_the_other_engine(tmp_path, first, then):
    out = tmp_path / "run"
    items = [*QUICK, "train.momentum=0.9", "server.momentum=0.5"]
    done = subprocess.run(
        nnlib_run(*sets([*items, f"engine={first}", "train.rounds=2"]), "--out", str(out), "--quiet"),
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    again = subprocess.run(
        nnlib_run("--resume", str(out), "--set", f"engine={then}", "--set", "train.rounds=4", "--quiet"),
        cwd=ROOT,
        env=env_for(tmp_path),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == then and summary["resumed_after_round"] == 2
    np.testing.assert_array_equal(saved_params(out), local_params(4, "train.momentum=0.9", "server.momentum=0.5"))


@pytest.mark.slow
def test_a_round_longer_than_the_grace_is_abandoned_and_the_last_finished_round_kept(tmp_path):
    out = tmp_path / "run"
    slow = [
        "data.source=synthetic",
        "data.n_samples=20000",
        "data.n_features=100",
        "model.hidden=[256,256]",
        "mappers=2",
        "train.rounds=50",
        "train.stop_grace_seconds=0.001",
    ]
    status, err, _ = terminate(start(nnlib_run(*sets(slow), "--out", str(out), "--quiet"), tmp_path), out, 1)
    assert status == 143, err[-3000:]
    kept = checkpointed_rounds(out)
    assert re.search(
        rf"nnlib: stopped by SIGTERM after round {kept}/50 \(round {kept + 1} was abandoned: "
        rf"train.stop_grace_seconds=0.001 passed\); (rounds 1-{kept} are|round 1 is) kept",
        err,
    ), err[-3000:]
    assert err.count("\n") == 1 and "Traceback" not in err


# --- --resume on a directory that holds no run: the first start --------------------------------------------


def test_resume_on_an_empty_directory_starts_there_and_a_second_call_resumes(tmp_path, capsys):
    from nnlib.cli import main

    out = tmp_path / "job"
    out.mkdir()
    args = ["run", *sets([*QUICK, "train.rounds=2"]), "--resume", str(out), "--quiet"]
    assert main(args) == 0
    first = json.loads((out / "summary.json").read_text())
    assert first["resumed_after_round"] == 0 and first["rounds_run"] == 2
    assert main([*args, "--set", "train.rounds=3"]) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_after_round"] == 2
    np.testing.assert_array_equal(saved_params(out), local_params(3))
    # a missing directory is a start too; a config that differs from the run's is refused in one line
    assert main(["run", *sets([*QUICK, "train.rounds=1"]), "--resume", str(tmp_path / "new"), "--quiet"]) == 0
    capsys.readouterr()
    assert main([*args, "--set", "train.rounds=4", "--set", "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"nnlib: error: --resume {out}: the config differs from the run's in train.lr (the run has 0.1, "
        "given 0.5); only train.rounds may change (and the engine: engine, spark.*, mpi.*, mrjob.*, train.stop_grace_seconds)\n"
    )


def test_train_with_resume_starts_then_resumes_and_refuses_another_config(tmp_path):
    out = tmp_path / "api"
    first = train(None, [*QUICK, "train.rounds=2"], out=out, resume=True)
    assert first.summary["resumed_after_round"] == 0
    # no conf: the saved config, with more rounds
    second = train(None, {"train.rounds": 3}, out=out, resume=True)
    assert second.summary["resumed_after_round"] == 2
    np.testing.assert_array_equal(saved_params(out), local_params(3))
    with pytest.raises(
        ConfigError,
        match=r"differs from the run's in mappers \(the run has 2, given 3\); only train.rounds "
        "may change",
    ):
        train(None, [*QUICK, "mappers=3", "train.rounds=4"], out=out, resume=True)
    with pytest.raises(ConfigError, match="resume=True continues the run in out"):
        train(None, QUICK, resume=True)


def test_sigterm_in_nnlib_train_raises_stopped_after_the_round_and_restores_the_handler(tmp_path):
    from nnlib.api import Stopped

    out = tmp_path / "api"
    before = signal.getsignal(signal.SIGTERM)
    rows = []

    def on_round(message: str) -> None:  # the signal arrives while round 2 runs its progress line
        rows.append(message)
        if message.startswith("round 2/"):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Stopped) as stop:
        train(None, [*QUICK, "train.rounds=50"], out=out, log=on_round)
    assert stop.value.status == 143 and stop.value.path == out
    assert str(stop.value) == (
        f"stopped by SIGTERM after round 2/50; rounds 1-2 are kept (checkpoint "
        f"{out / 'checkpoints' / 'round-00002.npz'}); resume with: nnlib run --resume {out}"
    )
    assert signal.getsignal(signal.SIGTERM) is before
    run_again = train(None, {"train.rounds": 4}, out=out, resume=True)
    assert run_again.summary["resumed_after_round"] == 2
    np.testing.assert_array_equal(saved_params(out), local_params(4))


# --- examples/slurm ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["mpi.sbatch", "spark.sbatch"])
def test_the_slurm_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_the_mpi_batch_script_runs_here_stops_on_sigterm_and_its_rerun_finishes_the_run(tmp_path):
    """The script's own path without SLURM (NNLIB_NO_SLURM=1): nnlib run --set engine=mpi --resume DIR; SIGTERM
    to the batch shell is passed on; the same script again (a requeue) ends with an uninterrupted run's weights."""
    out = tmp_path / "job"
    env = dict(
        env_for(tmp_path), NNLIB_NO_SLURM="1", RUN_DIR=str(out), NNLIB_ARGS=" ".join(sets([*QUICK, "train.rounds=400"]))
    )
    proc = subprocess.Popen(
        ["bash", str(SLURM / "mpi.sbatch")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    status, err, started = terminate(proc, out, 2)
    kept = check_stopped(status, err, out, 400)
    assert_nothing_left(started)
    env["NNLIB_ARGS"] = " ".join(sets([*QUICK, f"train.rounds={kept + 2}"]))
    again = subprocess.run(
        ["bash", str(SLURM / "mpi.sbatch")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    np.testing.assert_array_equal(saved_params(out), local_params(kept + 2))
    # a requeue of a finished run does nothing, and says so
    done = subprocess.run(["bash", str(SLURM / "mpi.sbatch")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and f"{out} holds a finished run" in done.stdout, done.stdout + done.stderr


def _sleep_long() -> None:
    time.sleep(60)


def test_a_child_forked_while_stops_are_handled_ends_on_sigterm_as_by_default():
    """mrjob's local runner forks a pool from the run and ends it with SIGTERM: the stop request is the run's
    alone; in a forked child the signal ends the child at once."""
    import multiprocessing

    from nnlib.util.stop import handling_stop, requested

    with handling_stop(grace=30):
        child = multiprocessing.get_context("fork").Process(target=_sleep_long)
        child.start()
        time.sleep(0.5)
        started = time.monotonic()
        child.terminate()  # SIGTERM
        child.join(10)
        assert child.exitcode == -signal.SIGTERM
        assert time.monotonic() - started < 5
        assert requested() is None  # the parent's run goes on
