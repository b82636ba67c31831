"""What a new user meets in the first hour: Ctrl-C and reruns, comparing runs, CSV tables, MPI on a laptop,
the small things of the command line.

Interrupts are real: a real ``nnlib run`` in its own session (SIGINT at its default, as a terminal's
foreground job has it) gets a real SIGINT, as Ctrl-C sends one to the terminal's foreground group.
"""

from __future__ import annotations

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
from conftest import alive, descendants, saved_params, wait_for_rounds
from spark_cluster import spark_lines

from nnlib.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--set", "model.hidden=[8]", "--set", "mappers=2", "--set", "train.local_epochs=1"]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job of a non-interactive shell ignores it


def start_run(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """``python -m nnlib run ARGS`` in its own session (its own process group), SIGINT at its default."""
    return subprocess.Popen(
        [sys.executable, "-m", "nnlib", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,
    )


def ctrl_c(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    """Send SIGINT to ``proc``'s process group, as a terminal's Ctrl-C does; ``(exit status, stderr)``."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err


INTERRUPTED = re.compile(
    r"nnlib: interrupted in round (\d+)/(\d+); rounds 1-(\d+) are kept \(checkpoint (\S+)\); "
    r"resume with: nnlib run --resume (\S+)\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "spark", "mrjob"])
def test_ctrl_c_ends_a_run_in_one_line_leaves_no_process_and_the_resume_finishes_it_bit_for_bit(tmp_path, engine):
    out = tmp_path / "run"
    args = [*QUICK, "--set", f"engine={engine}", "--set", "train.rounds=400", "--out", str(out), "--quiet"]
    proc = start_run(args)
    wait_for_rounds(proc, out, 2, timeout=300)
    started = descendants(proc.pid)  # Spark: its JVM and the mappers' Python workers
    status, err = ctrl_c(proc)
    assert status == 130, err[-2000:]
    found = INTERRUPTED.search(err)
    assert found and err.endswith(found.group(0)), err[-2000:]
    reached, rounds, kept, checkpoint, resume_dir = found.groups()
    assert int(reached) == int(kept) + 1 and int(rounds) == 400 and resume_dir == str(out)
    assert Path(checkpoint) == out / "checkpoints" / f"round-{int(kept):05d}.npz" and Path(checkpoint).is_file()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Process " not in err, err[-2000:]
    if engine == "spark":
        assert len(started) >= 3  # the JVM and at least the mappers' workers were running
    deadline = time.monotonic() + 20
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive(started) == [], "processes left behind after Ctrl-C"

    # the same command again: refused in one line, nothing touched
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    again = subprocess.run([sys.executable, "-m", "nnlib", "run", *args], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert (
        f"nnlib: error: --out: {out} holds an unfinished run (its checkpoint holds {kept} finished round(s)); "
        f"continue it with --resume {out}, or start over with --overwrite"
    ) in again.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before

    # the resume the message names (a few rounds more than were kept) ends with an uninterrupted run's weights
    total = int(kept) + 2
    resumed = subprocess.run(
        [sys.executable, "-m", "nnlib", "run", "--resume", resume_dir, "--quiet", "--set", f"train.rounds={total}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [int(line.split(",")[0]) for line in (out / "rounds.csv").read_text().splitlines()[1:]] == list(
        range(1, total + 1)
    )
    whole = tmp_path / "whole"
    assert (
        main(["run", *QUICK, "--set", "engine=local", "--set", f"train.rounds={total}", "--out", str(whole), "--quiet"])
        == 0
    )
    np.testing.assert_array_equal(saved_params(out), saved_params(whole))
    assert json.loads((out / "summary.json").read_text())["resumed_after_round"] == int(kept)


def test_ctrl_c_while_the_command_loads_is_one_line():
    # the interrupt lands while nnlib.cli's modules are imported (about a second on a cold start); raised at
    # that import here, so that the moment is certain
    code = (
        "import builtins; real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'nnlib.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "from nnlib.__main__ import main; main(['run'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "nnlib: interrupted while loading; nothing was done\n")


def in_session(sid: int) -> dict[int, str]:
    """``{pid: command line}`` of the running processes of session ``sid`` (a process that left its parent keeps
    its session, so a JVM orphaned by its driver is still found)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found[int(stat.parent.name)] = command
    return found


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["the JVM launched", "the mappers' Python workers started"])
def test_ctrl_c_while_spark_starts_is_one_line_and_leaves_no_jvm(tmp_path, moment):
    # the JVM launched but not yet connected back: cut there, it used to keep running with nobody to stop it;
    # the workers starting: the barrier stage's tasks are not yet connected to the driver
    out = tmp_path / "run"
    proc = start_run([*QUICK, "--set", "engine=spark", "--out", str(out), "--quiet"])
    mark = "java" if moment == "the JVM launched" else "pyspark.daemon"
    deadline = time.monotonic() + 120
    while not any(mark in command for command in in_session(proc.pid).values()):
        assert proc.poll() is None and time.monotonic() < deadline, f"no process with {mark!r} appeared"
        time.sleep(0.02)
    start = time.monotonic()
    status, err = ctrl_c(proc, timeout=60)
    assert status == 130 and "Traceback" not in err, err[-3000:]
    assert err.splitlines()[-1] == "nnlib: interrupted before the first round started; nothing was written", err
    assert time.monotonic() - start < 30  # measured 0.4-9 s: the JVM's start is finished first, then stopped
    deadline = time.monotonic() + 20
    while (left := in_session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {}, f"processes left behind after Ctrl-C: {left}"
    assert not out.exists()


@pytest.fixture(scope="module")
def mapper_runs(tmp_path_factory) -> Path:
    """Three finished runs that differ in their mapper count, as after ``nnlib run conf/mappers_N.yaml --out runs/mN``."""
    runs = tmp_path_factory.mktemp("compare")
    for m in (1, 2, 4):
        assert (
            main(
                [
                    "run",
                    "--quiet",
                    "--set",
                    f"mappers={m}",
                    "--set",
                    "train.rounds=2",
                    "--set",
                    "model.hidden=[8]",
                    "--out",
                    str(runs / f"m{m}"),
                ]
            )
            == 0
        )
    return runs


@pytest.mark.slow  # trains four runs and draws
def test_report_of_several_runs_compares_them_as_a_sweeps_report(mapper_runs, capsys):
    from nnlib.outputs import read_csv_rows

    out = mapper_runs / "cmp"
    assert main(["report", str(mapper_runs / "m*"), "--out", str(out)]) == 0  # a glob, as the shell would not expand
    assert f"report: 3 runs compared in {out / 'report.md'}" in capsys.readouterr().out
    rows = read_csv_rows(out / "results.csv")
    assert [(r["run"], r["mappers"], r["case"]) for r in rows] == [
        (f"../m{m}", m, f"mappers={m}") for m in (1, 2, 4)
    ]  # the one key that differs, nothing else
    for row in rows:
        summary = json.loads((out / row["run"] / "summary.json").read_text())
        assert row["final_test_accuracy"] == summary["final_test_accuracy"] and row["status"] == "ok"
    figures = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert figures == ["convergence.png", "mappers.png", "speedup.png", "timeline.png"]
    md = (out / "report.md").read_text()
    assert md.startswith("# nnlib report: 3 runs compared")
    for m, row in zip((1, 2, 4), rows):
        assert re.search(rf"^\| {m} \| 1/1 \| {row['final_test_accuracy']:.4g} \|", md, re.M)
    assert all(f"(plots/{name})" in md for name in figures)
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4
    # the same runs named one by one give the same table
    again = mapper_runs / "cmp2"
    assert main(["report", *(str(mapper_runs / f"m{m}") for m in (1, 2, 4)), "--out", str(again)]) == 0
    assert [r["final_test_accuracy"] for r in read_csv_rows(again / "results.csv")] == [
        r["final_test_accuracy"] for r in rows
    ]


def test_an_interrupt_after_the_last_round_says_so(mapper_runs):
    from nnlib.api import interrupted

    run_dir = mapper_runs / "m2"  # 2 rounds, both checkpointed
    assert str(interrupted(run_dir, 2, "local")) == (
        f"interrupted after the last round (2/2), before the run's outputs were written; rounds 1-2 are kept "
        f"(checkpoint {run_dir / 'checkpoints' / 'round-00002.npz'}); resume with: nnlib run --resume {run_dir}"
    )
    assert str(interrupted(run_dir, 5, "local")).startswith("interrupted in round 3/5; rounds 1-2 are kept")


def test_report_refuses_what_it_cannot_compare_in_one_line(mapper_runs, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"nnlib: error: {tmp_path / 'nope'} does not exist\n"
    assert main(["report", str(mapper_runs / "m1"), str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"nnlib: error: report: {tmp_path} is not a finished run (no summary.json); "
        "only finished runs can be compared\n"
    )


def test_version_names_the_package_and_where_it_is(capsys):
    import nnlib

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == (
        f"nnlib {nnlib.__version__} (Python {sys.version.split()[0]}, {Path(nnlib.__file__).parent})\n"
    )


# ---- MPI on one machine ------------------------------------------------------------------------


def test_more_ranks_than_cores_oversubscribe_with_one_warning_and_root_is_refused_in_one_line(monkeypatch):
    from nnlib.engines.mpi.launcher import launcher_options
    from nnlib.errors import ConfigError

    for name in ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"):
        monkeypatch.delenv(name, raising=False)
    warnings = []
    options = lambda ranks, args=(), uid=1000, open_mpi=True: launcher_options(  # noqa: E731
        ["mpiexec"], ranks, list(args), warnings.append, cores=2, uid=uid, open_mpi=open_mpi
    )
    assert options(2) == [] and warnings == []
    assert options(4, ["--bind-to", "none"]) == ["--oversubscribe", "--bind-to", "none"]
    assert warnings == ["mappers=4 is more than the 2 cores here: the ranks share them (mpiexec --oversubscribe)"]
    assert options(4, ["--host", "a,b"]) == ["--host", "a,b"]  # ranks placed elsewhere: left alone
    assert options(4, open_mpi=False) == []  # MPICH oversubscribes and runs as root by itself
    with pytest.raises(ConfigError) as refused:
        options(2, ["--bind-to", "none"], uid=0)
    assert str(refused.value) == (
        "engine=mpi: Open MPI's mpiexec refuses to run as root; to run as root anyway, add --set "
        "'mpi.args=[--allow-run-as-root,--bind-to,none]' (or export OMPI_ALLOW_RUN_AS_ROOT=1 "
        "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)"
    )
    assert options(2, ["--allow-run-as-root"], uid=0) == ["--allow-run-as-root"]
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT", "1")
    monkeypatch.setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    assert options(2, uid=0) == []


def test_mpiexec_stderr_relay_drops_open_mpis_report_of_a_non_zero_exit_and_passes_the_rest():
    from nnlib.engines.mpi.launcher import StderrRelay

    rule, short_rule = "-" * 74 + "\n", "-" * 55 + "\n"
    dropped_5 = [
        rule,
        "prterun detected that one or more processes exited with non-zero status,\n",
        "thus causing the job to be terminated. The first process to do so was:\n",
        "\n",
        "   Process name: [prterun-vm-2456@1,0]\n",
        "   Exit code:    2\n",
        rule,
    ]
    dropped_4 = [
        short_rule,
        "Primary job  terminated normally, but 1 process returned\n",
        "a non-zero exit code. Per user-direction, the job has been aborted.\n",
        short_rule,
    ]
    kept = [
        rule,
        "prterun noticed that process rank 1 with PID 4242 on node vm exited on\n",
        "signal 9 (Killed).\n",
        rule,
    ]
    error = "nnlib: error: data.source: file /nope.npz does not exist\n"
    epoll = (
        "[warn] Epoll MOD(1) on fd 24 failed. Old events were 6; read change was 0 (none); write change "
        "was 2 (del); close change was 0 (none): Bad file descriptor\n"
    )
    traceback = "Traceback (most recent call last):\n"
    relay = StderrRelay()
    assert relay.feed(error) == [error] and relay.feed(traceback) == [traceback]  # at once, as they come
    assert relay.feed(epoll) == []
    assert [relay.feed(line) for line in dropped_5] == [[]] * len(dropped_5)
    assert [relay.feed(line) for line in dropped_4] == [[]] * len(dropped_4)
    assert [relay.feed(line) for line in kept] == [[]] * (len(kept) - 1) + [kept]  # held, then whole
    assert relay.feed("last") == ["last"] and relay.close() == []
    # a block that never closes (mpiexec ended mid-way) is written whole at the end
    assert relay.feed(rule) == [] and relay.feed("half a block\n") == []
    assert relay.close() == [rule, "half a block\n"] and relay.close() == []


def _without_root_permission() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("OMPI_ALLOW_RUN_AS_ROOT")}


@pytest.mark.slow
def test_nnlib_run_on_mpi_with_more_mappers_than_cores_runs_and_equals_the_local_engine(tmp_path):
    from nnlib.engines.mpi.launcher import usable_cores

    mappers = usable_cores() + 1
    root = ["--set", "mpi.args=[--allow-run-as-root]"] if os.geteuid() == 0 else []
    args = [*QUICK, "--set", f"mappers={mappers}", "--set", "train.rounds=2", "--quiet"]
    proc = subprocess.run(
        [sys.executable, "-m", "nnlib", "run", *args, "--set", "engine=mpi", *root, "--out", str(tmp_path / "mpi")],
        cwd=ROOT,
        env=_without_root_permission(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == (
        f"nnlib: warning: mappers={mappers} is more than the {mappers - 1} cores here: "
        "the ranks share them (mpiexec --oversubscribe)\n"
    )
    assert main(["run", *args, "--set", "engine=local", "--out", str(tmp_path / "local")]) == 0
    np.testing.assert_allclose(saved_params(tmp_path / "mpi"), saved_params(tmp_path / "local"), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="Open MPI refuses root only; the refusal's text is checked above")
def test_nnlib_run_on_mpi_as_root_says_in_one_line_what_to_set(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nnlib", "run", *QUICK, "--set", "engine=mpi", "--out", str(tmp_path / "r")],
        cwd=ROOT,
        env=_without_root_permission(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "refuses to run as root; to run as root anyway, add --set 'mpi.args=[--allow-run-as-root]'" in proc.stderr
    assert not (tmp_path / "r").exists()


# ---- CSV tables --------------------------------------------------------------------------------


def test_a_csv_written_with_pandas_index_leaves_the_index_out_with_one_warning(tmp_path, capsys):
    import pandas as pd

    import nnlib

    # rows sorted by label, so the index 0..n-1 alone gives the label away (the first half is class 0)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(400, 3)), columns=["a", "b", "c"])
    frame["label"] = np.repeat([0, 1], 200)
    frame.to_csv(tmp_path / "d.csv")  # with its index: a first column with an empty header
    assert (tmp_path / "d.csv").read_text().startswith(",a,b,c,label\n0,")
    args = ["--set", "mappers=2", "--set", "train.rounds=3", "--set", "model.hidden=[8]", "--quiet"]
    assert main(["run", *args, "--set", f"data.source={tmp_path / 'd.csv'}", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert err == (
        f"nnlib: warning: data.source: {tmp_path / 'd.csv'}'s first column, with an empty header, is an "
        "index pandas wrote (df.to_csv without index=False); it is left out of the features\n"
    )
    model = nnlib.load_model(tmp_path / "r")
    assert model.feature_columns == ["a", "b", "c"]
    # noise features and no index: the accuracy of a coin (with the index as a feature it was 1.0)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    frame.to_csv(tmp_path / "plain.csv", index=False)
    assert main(["run", *args, "--set", f"data.source={tmp_path / 'plain.csv'}", "--out", str(tmp_path / "p")]) == 0
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(saved_params(tmp_path / "r"), saved_params(tmp_path / "p"))
    assert summary["final_test_accuracy"] < 0.7


def test_no_label_column_lists_every_column_or_says_how_many_are_left_out(tmp_path, capsys):
    names = [f"f{i}" for i in range(12)] + ["target"]
    (tmp_path / "d.csv").write_text(",".join(names) + "\n" + ",".join(["1"] * 12 + ["0"]) + "\n")
    assert main(["run", "--quiet", "--set", f"data.source={tmp_path / 'd.csv'}", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err == (
        f"nnlib: error: data.source: {tmp_path / 'd.csv'} has no label column 'label' "
        f"(set data.label_column; columns are {names})\n"
    )
    wide = [f"f{i}" for i in range(70)] + ["target"]
    (tmp_path / "w.csv").write_text(",".join(wide) + "\n" + ",".join(["1"] * 70 + ["0"]) + "\n")
    assert main(["run", "--quiet", "--set", f"data.source={tmp_path / 'w.csv'}", "--out", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.endswith(f"columns are {wide[:50]} and 21 more)\n")


# ---- a quiet start, and the small things ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nnlib run", "submit.sh", "spark-submit with nnlib's log4j2"])
def test_a_spark_run_starts_with_none_of_sparks_lines(tmp_path, how):
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_LOCAL_IP", "SPARK_CONF_DIR")}
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    args = ["--set", "train.rounds=1", "--set", "mappers=2", "--out", str(tmp_path / "r")]
    cmd = {
        "nnlib run": [sys.executable, "-m", "nnlib", "run", "--set", "engine=spark", *args],
        "submit.sh": ["bash", "submit.sh", "--master", "local[2]", "--", *args],
        # the README's way: nnlib's logging configuration as a driver option, the user's conf dir kept
        "spark-submit with nnlib's log4j2": [
            str(bin_dir / "spark-submit"),
            "--conf",
            "spark.driver.defaultJavaOptions=-Dlog4j2.configurationFile=nnlib/engines/spark/log4j2.properties",
            "jobs/model_avg.py",
            *args,
        ],
    }[how]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert spark_lines(proc.stderr) == [], proc.stderr
    assert proc.stdout.splitlines()[0].startswith("nnlib: engine=spark mappers=2")


@pytest.mark.slow
def test_submit_sh_help_is_its_usage_and_no_code():
    proc = subprocess.run(["bash", "submit.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Submit nnlib's Spark job to a cluster.\n")
    header = [line[2:] for line in (ROOT / "submit.sh").read_text().splitlines()[1:] if line.startswith("#")][
        : len(proc.stdout.splitlines())
    ]
    assert proc.stdout.splitlines() == [line.rstrip() for line in header]
    assert "set -euo" not in proc.stdout and "here=" not in proc.stdout


@pytest.mark.slow
def test_the_spark_jobs_errors_read_nnlib_error(tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "spark-submit"), "jobs/model_avg.py", "--set", "mapers=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2  # spark-submit passes the job's stderr on to its stdout
    assert proc.stdout.splitlines()[-1] == "nnlib: error: --set: unknown config key 'mapers'; did you mean 'mappers'?"


def test_a_section_takes_a_mapping_in_set_or_says_how_to_set_it(capsys):
    from nnlib.config import load_config

    config = load_config(None, ["train={rounds: 2, lr: 0.05}"])
    assert (config.train.rounds, config.train.lr, config.train.local_epochs) == (2, 0.05, 2)
    assert load_config(None, ["train={rounds: 2}", "train.lr=0.3"]).train.lr == 0.3
    assert main(["run", "--set", "train=2"]) == 2
    assert capsys.readouterr().err == (
        "nnlib: error: --set: 'train' is a section: set one of its keys "
        "(train.rounds=...) or give it a mapping (train={rounds: ...}), got '2'\n"
    )
    assert main(["run", "--set", "train={rouns: 2}"]) == 2
    assert (
        capsys.readouterr().err
        == "nnlib: error: --set: unknown config key 'train.rouns'; did you mean 'train.rounds'?\n"
    )


# ---- Python 3.13 -------------------------------------------------------------------------------

PYTHON313 = os.environ.get("NNLIB_PYTHON313")  # a Python 3.13 with nnlib[mrjob] installed (.ci/run makes one)


@pytest.mark.slow
@pytest.mark.skipif(
    not PYTHON313,
    reason="no Python 3.13 with nnlib: .ci/run makes one where python3.13 exists and sets NNLIB_PYTHON313",
)
@pytest.mark.parametrize("runner", ["inline", "local"])
def test_mrjob_runs_on_python_313_and_equals_the_local_engine(tmp_path, runner):
    version = subprocess.run(
        [PYTHON313, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert version == "(3, 13)"
    args = [*QUICK, "--set", "train.rounds=2", "--quiet"]
    proc = subprocess.run(
        [
            PYTHON313,
            "-m",
            "nnlib",
            "run",
            *args,
            "--set",
            "engine=mrjob",
            "--set",
            f"mrjob.runner={runner}",
            "--out",
            str(tmp_path / "mrjob"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert main(["run", *args, "--set", "engine=local", "--out", str(tmp_path / "local")]) == 0
    np.testing.assert_allclose(saved_params(tmp_path / "mrjob"), saved_params(tmp_path / "local"), rtol=0, atol=1e-6)


def test_a_run_directory_with_rounds_numbered_from_0_resumes_renumbered(tmp_path):
    """Run directories written before rounds were numbered from 1 (rounds.csv and mapper_times.csv from 0)."""
    from nnlib.outputs import read_csv_rows

    args = [*QUICK, "--quiet"]
    old = tmp_path / "old"
    assert main(["run", *args, "--set", "train.rounds=2", "--out", str(old)]) == 0
    (old / "summary.json").unlink()  # as a run stopped after 2 of 4 rounds, written the old way
    for name in ("rounds.csv", "mapper_times.csv"):
        lines = (old / name).read_text().splitlines()
        (old / name).write_text(
            "\n".join([lines[0]] + [f"{int(line.split(',')[0]) - 1},{line.split(',', 1)[1]}" for line in lines[1:]])
            + "\n"
        )
    assert [r["round"] for r in read_csv_rows(old / "rounds.csv")] == [0, 1]
    assert main(["run", "--resume", str(old), "--set", "train.rounds=4", "--quiet"]) == 0
    assert [r["round"] for r in read_csv_rows(old / "rounds.csv")] == [1, 2, 3, 4]
    assert sorted({r["round"] for r in read_csv_rows(old / "mapper_times.csv")}) == [1, 2, 3, 4]
    assert main(["run", *args, "--set", "train.rounds=4", "--out", str(tmp_path / "whole")]) == 0
    np.testing.assert_array_equal(saved_params(old), saved_params(tmp_path / "whole"))


def _table(tmp_path) -> "object":
    """4 feature columns, an id and the label in a CSV and a Parquet file; and the features b, d alone in each."""
    import pandas as pd

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["id"] = np.arange(300) * 7
    frame["label"] = (x[:, 1] + x[:, 3] > 0).astype(int)
    frame.to_csv(tmp_path / "all.csv", index=False)
    frame[["d", "b", "label"]].to_csv(tmp_path / "db.csv", index=False)
    frame[["b", "d", "label"]].to_csv(tmp_path / "bd.csv", index=False)
    frame.to_parquet(tmp_path / "all.parquet", index=False)
    frame[["d", "b", "label"]].to_parquet(tmp_path / "db.parquet", index=False)
    frame[["b", "d", "label"]].to_parquet(tmp_path / "bd.parquet", index=False)
    return frame


@pytest.mark.parametrize(
    "choose,same_as",
    [
        (["--set", "data.feature_columns=[d,b]"], "db"),  # in the order given
        (["--set", "data.drop_columns=[a,c,id]"], "bd"),  # the table's order, less the dropped
    ],
)
def test_feature_columns_and_drop_columns_choose_the_features_of_a_csv_and_a_parquet_source(tmp_path, choose, same_as):
    import nnlib

    _table(tmp_path)
    args = ["--set", "mappers=2", "--set", "train.rounds=2", "--set", "model.hidden=[8]", "--quiet"]
    for kind in ("csv", "parquet"):  # the same training as on a file holding only the chosen columns
        ref, out = tmp_path / f"ref-{kind}", tmp_path / f"all-{kind}"
        assert main(["run", *args, "--set", f"data.source={tmp_path / f'{same_as}.{kind}'}", "--out", str(ref)]) == 0
        assert main(["run", *args, *choose, "--set", f"data.source={tmp_path / f'all.{kind}'}", "--out", str(out)]) == 0
        assert nnlib.load_model(out).feature_columns == nnlib.load_model(ref).feature_columns == list(same_as)
        np.testing.assert_array_equal(saved_params(out), saved_params(ref))


def test_a_column_to_choose_or_drop_that_is_not_there_is_one_line(tmp_path, capsys):
    _table(tmp_path)
    for setting, message in [
        (
            "data.feature_columns=[a,x]",
            "data.feature_columns: no column 'x' (columns are ['a', 'b', 'c', 'd', 'id', 'label'])",
        ),
        (
            "data.drop_columns=[zz]",
            "data.drop_columns: no column 'zz' (columns are ['a', 'b', 'c', 'd', 'id', 'label'])",
        ),
        ("data.feature_columns=[a,label]", "data.feature_columns: 'label' is the label or key column, not a feature"),
    ]:
        out = tmp_path / "r"
        assert (
            main(
                ["run", "--quiet", "--set", f"data.source={tmp_path / 'all.csv'}", "--set", setting, "--out", str(out)]
            )
            == 2
        )
        assert capsys.readouterr().err == f"nnlib: error: {message}\n"
        assert not out.exists()
    assert main(["run", "--set", "data.features_column=f", "--set", "data.drop_columns=[a]"]) == 2
    assert "use one or the other" in capsys.readouterr().err


@pytest.mark.slow
def test_drop_columns_of_a_parquet_source_read_by_spark_equals_the_local_engine(tmp_path, spark):
    _table(tmp_path)
    args = [
        "--set",
        "mappers=2",
        "--set",
        "train.rounds=2",
        "--set",
        "model.hidden=[8]",
        "--quiet",
        "--set",
        f"data.source={tmp_path / 'all.parquet'}",
        "--set",
        "data.drop_columns=[a,c,id]",
    ]
    assert main(["run", *args, "--set", "engine=spark", "--out", str(tmp_path / "spark")]) == 0
    assert main(["run", *args, "--set", "engine=local", "--out", str(tmp_path / "local")]) == 0
    np.testing.assert_array_equal(saved_params(tmp_path / "spark"), saved_params(tmp_path / "local"))


def test_resuming_a_finished_run_is_refused_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "done"
    assert main(["run", *QUICK, "--set", "train.rounds=1", "--quiet", "--out", str(out)]) == 0
    before = (out / "summary.json").read_bytes()
    capsys.readouterr()
    assert main(["run", "--resume", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert f"--resume: {out} finished its 1 rounds already; to train on, raise train.rounds" in captured.err
    assert (out / "summary.json").read_bytes() == before


def test_a_data_error_prints_its_one_line_and_no_start_line(tmp_path, capsys):
    assert main(["run", "--set", f"data.source={tmp_path / 'missing.npz'}", "--out", str(tmp_path / "r")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "missing.npz" in captured.err
    assert not (tmp_path / "r").exists()
