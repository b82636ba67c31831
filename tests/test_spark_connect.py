"""Training on Spark Connect (``spark.mode: jobs``): the local engine's weights bit for bit, nothing connecting back
to the client, Ctrl-C, SIGTERM and --resume; and the same engine on a classic session.

The server is the session-wide ``connect_server`` fixture (pyspark's own SparkConnectServer, local[4]); engines
given its ``spark.remote`` use the ``connect`` fixture's session and leave it open. pyspark picks its classic or
Connect code by one process-wide switch, ``SPARK_CONNECT_MODE_ENABLED``, which creating a Connect session sets (a
real program holds one kind of session): this file holds both, so each run goes under :func:`on` for its kind,
the classic session starts first (its tests ask for ``spark`` before ``connect``), and the switch is put back
after the module.
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
import yaml
from conftest import CONNECT_SWITCH, alive, descendants, needs_torch, on, saved_params, small_config, wait_for_rounds

from nnlib.cli import main
from nnlib.config import load_config
from nnlib.driver import run

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
QUIET = dict(log=lambda _m: None, warn=lambda _m: None)
# a quick run on digits: rounds of a fraction of a second over Connect
QUICK = ["model.hidden=[8]", "mappers=2", "train.local_epochs=1", "seed=5"]
INTERRUPTED = re.compile(
    r"nnlib: interrupted in round (\d+)/(\d+); rounds 1-(\d+) are kept \(checkpoint (\S+)\); "
    r"resume with: nnlib run --resume (\S+)\n"
)
STOPPED = re.compile(
    r"nnlib: stopped by SIGTERM after round (\d+)/(\d+); rounds 1-(\d+) are kept "
    r"\(checkpoint (\S+)\); resume with: nnlib run --resume (\S+)\n"
)


@pytest.fixture(scope="module", autouse=True)
def classic_after_this_module():
    """The switch is off for the test files after this one."""
    yield
    os.environ.pop(CONNECT_SWITCH, None)


def sets(items):
    return [a for item in items for a in ("--set", item)]


def env() -> dict:
    environ = {k: v for k, v in os.environ.items() if k != CONNECT_SWITCH}
    return dict(environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1", PYTHONPATH=str(TESTS))


def jobs_engine(where: str, connect_server, **kwargs):
    """``spark.mode=jobs`` on the Connect fixture's server (``where`` "connect") or the classic fixture's
    session ("classic")."""
    from nnlib.engines.spark.jobs import SparkJobsEngine
    from nnlib.engines.spark.session import SessionSettings

    settings = SessionSettings(remote=connect_server.url) if where == "connect" else SessionSettings("local[4]")
    return SparkJobsEngine(settings, min_slots=4, **kwargs)


def client_tcp(pid: int) -> list[tuple[int, int, str]]:
    """``(local port, remote port, state)`` of every TCP socket process ``pid`` holds (its fds' socket inodes
    looked up in /proc/PID/net/tcp and tcp6; state 0A is LISTEN, 01 ESTABLISHED)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16), fields[3]))
    return found


# --- pure parts: no Spark ---------------------------------------------------------------------------------


def test_results_travel_as_rows_of_at_most_a_mebibyte_and_come_back_whole():
    from nnlib.engines.spark.jobs import CHUNK_BYTES, arrow_rows, from_chunks, to_chunks

    data = {0: os.urandom(2 * CHUNK_BYTES + 5), 3: b"", 7: os.urandom(CHUNK_BYTES)}
    batches = [b for m, d in data.items() for b in to_chunks(m, d)]
    assert max(b.column(2)[0].as_py().__len__() for b in batches) <= CHUNK_BYTES
    assert [b.num_rows for b in batches] == [1] * (3 + 1 + 1)
    assert from_chunks(reversed(list(arrow_rows(batches)))) == data  # any arrival order


def test_the_shard_keys_hash_to_their_own_partition():
    from nnlib.engines.spark.reader import shard_keys, spark_hash_long

    # Spark SQL's hash() of these longs, as Spark 4.3 computes them (SELECT hash(CAST(v AS BIGINT)))
    assert [spark_hash_long(v) for v in (0, 1, 2)] == [-1670924195, -1712319331, -797927272]
    for k in (1, 2, 5, 16):
        assert [spark_hash_long(v) % k for v in shard_keys(k)] == list(range(k))


def test_a_shard_missed_in_a_worker_is_read_from_its_scratch_file_not_built_again(tmp_path, monkeypatch):
    import pyspark

    from nnlib.data.dataset import Shard
    from nnlib.engines.spark import jobs

    # Prepare: a task of partition 2 on an executor whose block-manager dir is tmp_path; a build that counts
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path},{tmp_path / 'second'}")
    task = type("Task", (), {"partitionId": lambda _self: 2})()
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: task))
    monkeypatch.setattr(jobs, "_held", {})
    rng = np.random.default_rng(0)
    shard = Shard(
        2,
        rng.standard_normal((5, 3)).astype(np.float32),
        np.arange(5),
        {
            2: (rng.standard_normal((2, 3)).astype(np.float32), np.array([1, 0])),
            1: (np.zeros((0, 3), np.float32), np.zeros(0, np.int64)),
        },
    )
    builds = []

    def build(mapper, batches):
        builds.append(mapper)
        return shard

    # Execute: the first task builds; then another worker (an empty cache) takes the same shard; then a
    # worker of another run
    first = jobs.task_shard("run-a", iter([[2]]), build)
    folder = Path(jobs.scratch_folder("run-a"))
    jobs._held.clear()
    second = jobs.task_shard("run-a", iter([[2]]), build)
    jobs._held.clear()
    other = jobs.task_shard("run-b", iter([[2]]), build)

    # Assert: one build per run; the file's shard equals the built one, array for array, dtype for dtype
    assert builds == [2, 2]
    assert (
        folder.parent == tmp_path
        and "run-a" not in folder.name
        and sorted(p.name for p in folder.iterdir()) == ["shard-2"]
    )
    assert first == (2, shard) and second[0] == 2 and second[1] is not shard and other[1] is shard
    loaded = second[1]
    assert loaded.index == 2 and sorted(loaded.held_out) == [1, 2]
    for got, want in [
        (loaded.x, shard.x),
        (loaded.y, shard.y),
        *((g, w) for role in (1, 2) for g, w in zip(loaded.held_out[role], shard.held_out[role])),
    ]:
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert list(jobs._held) == [("run-b", 2)]  # one shard in a worker's memory

    # the run's clean-up task removes its folder and its shard from the worker, leaving other runs'
    assert list(jobs.clean_task("run-b")(iter([]))) == []
    assert jobs._held == {} and folder.exists() and not Path(jobs.scratch_folder("run-b")).exists()


def test_spark_mode_auto_picks_jobs_on_connect_and_refuses_what_needs_the_client_reachable(capsys):
    from nnlib.engines import make_engine
    from nnlib.engines.spark.jobs import SparkJobsEngine

    remote = ["engine=spark", "spark.remote=sc://127.0.0.1:1"]  # never contacted: the engine is only built
    assert isinstance(make_engine(small_config(*remote)), SparkJobsEngine)
    assert small_config("engine=spark").spark.mode == "auto"
    for extra, message in [
        (
            "spark.mode=stage",
            "spark.mode: on Spark Connect the executors cannot reach this process, so it must be "
            "auto or jobs, got stage",
        ),
        (
            "spark.collective=driver",
            "spark.collective: on Spark Connect the gradients are averaged among the "
            "tasks, so it must be tasks, got driver",
        ),
        (
            "spark.port=7000",
            "spark.port: on Spark Connect nothing listens in this process, so it must be 0 (unset), got 7000",
        ),
    ]:
        assert main(["run", *sets([*QUICK, *remote, extra]), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err == f"nnlib: error: {message}\n"


def test_an_unreachable_connect_server_is_one_line_within_seconds(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    code = main(
        [
            "run",
            *sets([*QUICK, "engine=spark", f"spark.remote=sc://127.0.0.1:{port}"]),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"sc://127.0.0.1:{port}" in err and "Traceback" not in err
    assert time.monotonic() - start < 15
    assert not (tmp_path / "r").exists()


# --- the engine on a Connect server and on a classic session -----------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("where", ["connect", "classic"])
@pytest.mark.parametrize(
    "overrides",
    [
        ("combine=average",),
        ("combine=weighted", "data.partition=stratified", "train.momentum=0.5"),
        ("combine=gradient", "train.momentum=0.9"),  # synchronous rounds: a barrier job, the tasks' own mesh
        ("combine=ist", "model.hidden=[16,12]", "train.momentum=0.9"),
        pytest.param(
            ("model.type=module", "model.module=user_models.tiny:make", "train.sync_rounds=1"), marks=needs_torch
        ),  # a user's nn.Module with BatchNorm: a synchronous round, then an average
    ],
)
def test_spark_jobs_equal_the_local_engine(spark, connect, connect_server, where, overrides):
    config = small_config("mappers=4", *overrides)
    local = run(config, **QUIET)
    engine = jobs_engine(where, connect_server)
    with on(where):
        on_spark = run(config.model_copy(update={"engine": "spark"}), engine=engine, **QUIET)
    np.testing.assert_array_equal(on_spark.params, local.params)
    assert engine.opened is None  # stopped; the fixture's session is left open
    assert len(on_spark.mapper_rows) == 4 * config.train.rounds
    assert [r["mapper"] for r in on_spark.mapper_rows[:4]] == [0, 1, 2, 3]
    assert [r["n_samples"] for r in on_spark.mapper_rows] == [r["n_samples"] for r in local.mapper_rows]
    assert all(r["train_seconds"] > 0 and r["pid"] != os.getpid() for r in on_spark.mapper_rows)
    assert {r["pid"] for r in on_spark.mapper_rows} & set(
        connect_server.pids() if where == "connect" else descendants(os.getpid())
    )
    for row in on_spark.rounds:
        assert row["wait_seconds"] > 0 and row["combine_seconds"] > 0
    # the client's bytes: the payloads sent, and one Combined (plus a few hundred bytes of stats per mapper)
    # collected per round, whatever the number of mappers
    assert engine.bytes_collected < (config.train.rounds + 1) * (2 * on_spark.params.nbytes + 4 * 400) + 4096


def scratch_probe(token: str):
    """A one-task job's function: the run's scratch folder on the task's executor (``{file: [inode, mtime_ns]}``,
    None when there is none), after dropping this run's shard from the task's Python worker (which mapper's)."""

    def task(batches):
        import json as json_
        import os as os_

        from nnlib.engines.spark import jobs

        for _ in batches:
            pass
        dropped = [m for t, m in list(jobs._held) if t == token]
        for m in dropped:
            del jobs._held[(token, m)]
        folder = jobs.scratch_folder(token)
        files = (
            None
            if not os_.path.isdir(folder)
            else {
                name: [os_.stat(os_.path.join(folder, name)).st_ino, os_.stat(os_.path.join(folder, name)).st_mtime_ns]
                for name in sorted(os_.listdir(folder))
            }
        )
        yield from jobs.to_chunks(0, json_.dumps({"files": files, "dropped": dropped}).encode())

    return task


@pytest.mark.slow
@pytest.mark.parametrize("where", ["connect", "classic"])
def test_shards_are_built_once_and_a_worker_that_misses_one_reads_its_scratch_file(
    spark, connect, connect_server, where
):
    from nnlib.engines.spark.jobs import CHUNKS, collected

    # scored in line, so each probe runs between two rounds, on an idle worker that holds a shard
    config = small_config("mappers=4", "train.rounds=4", "train.overlap_scoring=false")
    local = run(config, **QUIET)
    engine = jobs_engine(where, connect_server)
    session = connect if where == "connect" else spark
    probes = []

    def probe(_row):
        frame = session.range(0, 1, 1, 1).mapInArrow(scratch_probe(engine.token), CHUNKS)
        probes.append(json.loads(collected(frame.collect())[0]))

    with on(where):
        on_spark = run(config.model_copy(update={"engine": "spark"}), engine=engine, on_round=probe, **QUIET)
        probe(None)
    np.testing.assert_array_equal(on_spark.params, local.params)
    during, after = probes[:-1], probes[-1]
    names = [f"shard-{m}" for m in range(4)]
    assert len(during) == 4 and all(sorted(p["files"]) == names for p in during), during  # no half-written files
    # a rebuilt shard is written again (a new file): every file is the one written when the shards were built
    assert all(p["files"] == during[0]["files"] for p in during), during
    # the shards that changed workers (a mapper's task in another process than before, or dropped by a probe)
    # were read from those files
    holder = {r["mapper"]: r["pid"] for r in on_spark.mapper_rows[:4]}
    moved = [m for p in during[:-1] for m in p["dropped"]]
    for row in on_spark.mapper_rows[4:]:
        if row["pid"] != holder[row["mapper"]]:
            moved.append(row["mapper"])
        holder[row["mapper"]] = row["pid"]
    assert moved, (during, on_spark.mapper_rows)
    assert after["files"] is None  # stop() removed the run's folder


@pytest.fixture(scope="module")
def digits_parquet(tmp_path_factory):
    """scikit-learn's digits as 3 uneven Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    folder = tmp_path_factory.mktemp("digits") / "ds"
    folder.mkdir()
    for i, (a, b) in enumerate([(0, 500), (500, 501), (501, len(y))]):
        table = pa.table({**{f"p{j}": x[a:b, j].astype(np.float32) for j in range(64)}, "label": y[a:b]})
        pq.write_table(table, folder / f"part-{i:05d}.parquet", row_group_size=128)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("where", ["connect", "classic"])
def test_a_parquet_source_on_spark_jobs_equals_the_local_engine(spark, connect, connect_server, digits_parquet, where):
    from pyspark.sql import functions as F

    # the shard keys rest on Spark's hash(): Python's Murmur3 gives Spark's own values
    values = [0, 1, -7, 2**40 + 3, -(2**62)]
    session = connect if where == "connect" else spark
    with on(where):
        hashed = session.createDataFrame([(v,) for v in values], "v long").select(F.hash("v")).collect()
    from nnlib.engines.spark.reader import spark_hash_long

    assert [r[0] for r in hashed] == [spark_hash_long(v) for v in values]

    # the held-out rows stay with the mappers (collect_held_out_mb=0): every round they score them in Spark
    config = small_config(
        "mappers=3",
        f"data.source={digits_parquet}",
        "data.validation_fraction=0.1",
        "train.momentum=0.9",
        "train.rounds=3",
    )
    local = run(config, **QUIET)
    engine = jobs_engine(where, connect_server, collect_held_out_mb=0)
    with on(where):
        on_spark = run(config.model_copy(update={"engine": "spark"}), engine=engine, **QUIET)
    np.testing.assert_array_equal(on_spark.params, local.params)
    assert [r["n_samples"] for r in on_spark.mapper_rows] == [r["n_samples"] for r in local.mapper_rows]
    for mine, theirs in zip(on_spark.rounds, local.rounds, strict=True):
        assert (mine["test_accuracy"], mine["val_accuracy"]) == (theirs["test_accuracy"], theirs["val_accuracy"])
    assert on_spark.rounds[-1]["test_accuracy"] > 0.5


@pytest.mark.slow
def test_nnlib_run_on_connect_prints_each_round_records_the_mode_and_saves_the_model(connect_server, tmp_path):
    out = tmp_path / "run"
    items = [*QUICK, "engine=spark", f"spark.remote={connect_server.url}", "train.rounds=3"]
    proc = subprocess.run(
        [sys.executable, "-m", "nnlib", "run", *sets(items), "--out", str(out)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    round_lines = [line for line in proc.stdout.splitlines() if re.match(r"\s*round\s+\d+/3\b", line)]
    assert len(round_lines) == 3, proc.stdout
    recorded = yaml.safe_load((out / "config.yaml").read_text())["spark"]
    assert (recorded["mode"], recorded["remote"]) == ("jobs", connect_server.url)
    local = run(load_config(None, [*QUICK, "train.rounds=3"]), **QUIET)
    np.testing.assert_array_equal(saved_params(out), local.params)


@pytest.mark.slow
def test_ctrl_c_on_connect_is_one_line_the_client_only_talks_to_the_server_and_a_classic_resume_is_bit_for_bit(
    connect_server, tmp_path
):
    out = tmp_path / "run"
    items = [*QUICK, "engine=spark", f"spark.remote={connect_server.url}", "train.rounds=400"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nnlib", "run", *sets(items), "--out", str(out), "--quiet"],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for_rounds(proc, out, 2, timeout=180)
        seen = []
        for _ in range(10):  # while rounds run: the client's sockets, sampled
            seen += client_tcp(proc.pid)
            time.sleep(0.05)
        children = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # nothing listens in the client and every connection it holds goes to the Connect server; no JVM, no worker
    assert seen and {(remote, state) for _, remote, state in seen} == {(connect_server.port, "01")}, seen
    assert children == []
    assert proc.returncode == 130, err[-2000:]
    found = INTERRUPTED.search(err)
    assert found and err.endswith(found.group(0)) and err.count("\n") == 1, err[-2000:]
    kept = int(found.group(3))
    assert found.group(5) == str(out) and kept >= 2

    total = kept + 2  # resumed on a classic session (spark.remote unset): the checkpoints cross session kinds
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "nnlib",
            "run",
            "--resume",
            str(out),
            "--quiet",
            "--set",
            f"train.rounds={total}",
            "--set",
            "spark.remote=null",
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["resumed_after_round"] == kept
    assert yaml.safe_load((out / "config.yaml").read_text())["spark"]["master"].startswith("local")
    whole = run(load_config(None, [*QUICK, f"train.rounds={total}"]), **QUIET)
    np.testing.assert_array_equal(saved_params(out), whole.params)


@pytest.mark.slow
def test_sigterm_on_connect_stops_after_a_round_and_the_same_command_resumes_bit_for_bit(connect_server, tmp_path):
    out = tmp_path / "run"
    training = ["combine=gradient", "train.momentum=0.9"]  # synchronous rounds: one barrier job each
    items = [*QUICK, *training, "engine=spark", f"spark.remote={connect_server.url}", "train.rounds=400"]
    command = [sys.executable, "-m", "nnlib", "run", *sets(items), "--resume", str(out), "--quiet"]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_rounds(proc, out, 2, timeout=180)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    found = STOPPED.search(err)
    assert found and err.endswith(found.group(0)) and err.count("\n") == 1, err[-2000:]
    kept = int(found.group(3))

    total = kept + 2
    again = subprocess.run(
        [*command, "--set", f"train.rounds={total}"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["resumed_after_round"] == kept
    whole = run(load_config(None, [*QUICK, *training, f"train.rounds={total}"]), **QUIET)
    np.testing.assert_array_equal(saved_params(out), whole.params)
    assert alive([pid for pid in connect_server.pids()])  # the server serves on


@pytest.mark.slow
def test_a_ten_million_parameter_model_trains_on_connect_and_saves_whole(spark, connect, connect_server, tmp_path):
    # 784 -> 12600 -> 10: 10,016,610 parameters (40 MB of float32 each way, in 1 MiB rows)
    items = [
        "data.source=synthetic",
        "data.n_samples=600",
        "data.n_features=784",
        "data.n_classes=10",
        "model.hidden=[12600]",
        "mappers=2",
        "train.rounds=1",
        "train.local_epochs=1",
        "train.batch_size=100",
        "seed=3",
    ]
    out = tmp_path / "big"
    with on("connect"):
        assert (
            main(
                [
                    "run",
                    *sets([*items, "engine=spark", f"spark.remote={connect_server.url}"]),
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
    params = saved_params(out)
    assert params.size == 784 * 12600 + 12600 + 12600 * 10 + 10 > 10_000_000
    np.testing.assert_array_equal(params, run(load_config(None, items), **QUIET).params)


@pytest.mark.slow
def test_spark_task_gpus_reaches_the_jobs_training_stage_and_a_local_master_is_refused_in_one_line(spark):
    """The jobs engine asks for spark.task_gpus by stage-level scheduling as the stage does (its ResourceProfile is
    built at start); a local master, where Spark has none, is one ConfigError line naming the key."""
    from nnlib.engines.spark.jobs import SparkJobsEngine
    from nnlib.engines.spark.session import SessionSettings
    from nnlib.errors import ConfigError

    with on("classic"):
        engine = SparkJobsEngine(SessionSettings("local[4]", task_gpus=1), min_slots=2)
        with pytest.raises(ConfigError, match=r"^spark.task_gpus=1 needs a cluster master .* got master local\["):
            run(small_config("engine=spark", "spark.mode=jobs", "mappers=2"), engine=engine, **QUIET)
        assert spark.range(3).count() == 3  # the caller's session is left running
