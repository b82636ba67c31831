"""Spark's own errors keep their cause: a master URL or a Spark Connect URL that Spark would refuse, wait on or
retry is one ``nnlib: error:`` line naming it, where it came from and why, within a stated time, with nothing of
Spark's on the console and no run folder left.

The runs are real processes (``nnlib run``, ``spark-submit``); the servers are real: a plain TCP server on
127.0.0.1 that accepts and says nothing (no Spark master, no gRPC), a standalone master with no worker.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from spark_cluster import StandaloneCluster, cluster_env, free_port, spark_lines

from nnlib.engines.spark.session import EXECUTOR_WAIT_KEY, PROBE_SECONDS, REACH_SECONDS, check_master
from nnlib.errors import EngineError

ROOT = Path(__file__).resolve().parent.parent
SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")
LOG4J = (ROOT / "nnlib/engines/spark/log4j2.properties").as_uri()
INVALID = (
    "Invalid master URL: Spark needs spark://HOST:PORT, each address with a host and a port (a standalone "
    "master listens on 7077 unless started otherwise), got "
)
LOCAL = "Spark takes local, local[N], local[*], local[N,F] or local-cluster[N,C,M] with whole numbers N >= 1, got "
FORMS = (
    "not a master URL Spark takes (local, local[N], local[*], local[N,F], spark://HOST:PORT[,HOST:PORT...], "
    "yarn or k8s://HOST[:PORT]), got "
)
K8S = "Spark needs k8s://HOST[:PORT] or k8s://https://HOST[:PORT] (the Kubernetes API server), got "
CONNECT_FORM = (
    "Spark Connect needs sc://HOST[:PORT] with a host and, if given, a port number (a server's is 15002 "
    "unless started otherwise), got "
)


# ---- the fast tier: the master URL's form, as Spark reads it, without a JVM


@pytest.mark.parametrize(
    "master, message",
    [
        ("spark://head", INVALID + "'head'"),
        ("spark://:7077", INVALID + "':7077'"),
        ("spark://h:notaport", INVALID + "'h:notaport'"),
        ("spark://h:7077,other", INVALID + "'other'"),
        ("spark://h:0", INVALID + "'h:0'"),
        ("local[x]", LOCAL + "'local[x]'"),
        ("local[0]", LOCAL + "'local[0]'"),
        ("local[2,0]", LOCAL + "'local[2,0]'"),
        ("k8s://", K8S + "'k8s://'"),
        ("k8s://https://:443", K8S + "'k8s://https://:443'"),
        ("k8s://h:port", K8S + "'k8s://h:port'"),
        ("foo://head:1", FORMS + "'foo://head:1'"),
        ("mesos://head:5050", FORMS + "'mesos://head:5050'"),
        ("yarn-client", FORMS + "'yarn-client'"),
    ],
)
def test_a_master_url_spark_would_refuse_is_one_line_with_its_form(master, message):
    with pytest.raises(EngineError) as caught:
        check_master(master, "spark-submit's master")
    assert str(caught.value) == f"spark-submit's master {master}: {message}"


@pytest.mark.parametrize(
    "master", ["local", "local[*]", "local[3]", "local[*,2]", "local[2, 4]", "local-cluster[2,1,1024]"]
)
def test_the_local_masters_spark_takes_pass(master):
    check_master(master)


def test_yarn_without_its_configuration_folder_is_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    monkeypatch.delenv("YARN_CONF_DIR", raising=False)
    with pytest.raises(
        EngineError,
        match=r"^spark.master yarn: Spark finds the YARN cluster through HADOOP_CONF_DIR "
        r"or YARN_CONF_DIR, and neither is set in the environment; point one at "
        r"the cluster's configuration folder$",
    ):
        check_master("yarn")
    monkeypatch.setenv("YARN_CONF_DIR", str(tmp_path))
    check_master("yarn")  # the folder's contents are Spark's to read


def test_a_host_that_does_not_resolve_and_a_port_nobody_listens_on_are_found_in_seconds():
    start = time.monotonic()
    with pytest.raises(
        EngineError,
        match=r"^spark.master spark://nosuchhost.invalid:7077: host 'nosuchhost.invalid' "
        r"does not resolve \(.+\); check the host name$",
    ):
        check_master("spark://nosuchhost.invalid:7077")
    port = free_port()
    with pytest.raises(
        EngineError,
        match=rf"^spark.master spark://127.0.0.1:{port}: nothing accepts a connection at "
        rf"127.0.0.1:{port} \(Connection refused\): no Spark master listens there; "
        r"start the master, or check the host and port$",
    ):
        check_master(f"spark://127.0.0.1:{port}")
    with pytest.raises(
        EngineError,
        match=rf"^spark.master k8s://127.0.0.1:{port}: nothing accepts a connection at "
        rf"127.0.0.1:{port} \(Connection refused\): no Kubernetes API server",
    ):
        check_master(f"k8s://127.0.0.1:{port}")
    assert time.monotonic() - start < 2 * REACH_SECONDS


# ---- real runs


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers: no Spark master, no gRPC."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def nnlib_run(tmp_path, *sets: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [
        sys.executable,
        "-m",
        "nnlib",
        "run",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "engine=spark",
        "--set",
        "train.rounds=1",
        "--set",
        "mappers=2",
    ]
    for item in sets:
        cmd += ["--set", item]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=cluster_env(tmp_path), capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def one_line(proc: subprocess.CompletedProcess, tmp_path) -> str:
    """The run's one error line (exit 2, nothing else of Spark's on stderr, no run folder), without its prefix."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = spark_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("nnlib: error: "), proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()
    return lines[0][len("nnlib: error: ") :]


@pytest.mark.slow
@pytest.mark.parametrize(
    "master, message",
    [
        ("spark://head", INVALID + "'head'"),
        ("spark://:7077", INVALID + "':7077'"),
        ("spark://h:notaport", INVALID + "'h:notaport'"),
    ],
)
def test_nnlib_run_with_a_malformed_master_is_one_line_before_the_jvm(tmp_path, master, message):
    proc, seconds = nnlib_run(tmp_path, f"spark.master={master}")
    assert one_line(proc, tmp_path) == f"spark.master {master}: {message}"
    assert seconds < 20  # no JVM was started: Python's own start


@pytest.mark.slow
def test_a_port_that_answers_but_is_no_spark_master_is_one_line_within_the_stated_wait(tmp_path, silent):
    url = f"spark://127.0.0.1:{silent.port}"
    proc, seconds = nnlib_run(tmp_path, f"spark.master={url}")
    assert one_line(proc, tmp_path) == (
        f"spark.master {url}: no Spark master answers (127.0.0.1:{silent.port} accepts connections but gives no "
        f"Spark RPC answer within {PROBE_SECONDS} s); check the port (a standalone master's is 7077 unless started "
        "otherwise, its web UI's is another)"
    )
    assert silent.accepted  # the probe did reach it
    # the probe's wait and the JVM's start (slow on a loaded machine), not Spark's minute and a stopped context
    assert PROBE_SECONDS <= seconds < PROBE_SECONDS + 150


@pytest.mark.slow
def test_a_master_with_no_worker_is_one_line_naming_the_wait_and_its_setting(tmp_path):
    cluster = StandaloneCluster(tmp_path / "cluster").start(n_workers=0)
    try:
        deadline = time.monotonic() + 60
        while not _master_ui(cluster) and time.monotonic() < deadline:  # the master's UI answers: it runs
            time.sleep(0.5)
        proc, seconds = nnlib_run(
            tmp_path,
            f"spark.master={cluster.url}",
            "spark.app_name=nnlib-no-workers",
            f"spark.conf={{{EXECUTOR_WAIT_KEY}: 4s}}",
        )
        assert one_line(proc, tmp_path) == (
            f"spark.master {cluster.url}: no executor registered within 4s ({EXECUTOR_WAIT_KEY}): the cluster "
            "accepted the application but started no executor (no worker alive, or none with the all free core(s) "
            "and 1g of memory an executor asks); start a worker, or wait longer with --set "
            f"'spark.conf={{{EXECUTOR_WAIT_KEY}: 120s}}'"
        )
        assert 4 <= seconds < 4 + 150  # the stated wait, and the JVM's start on a loaded machine
        apps = _master_ui(cluster)
        # the master saw the application, and it is finished: nnlib stopped the session it built
        assert [a["state"] for a in apps["completedapps"] if a["name"] == "nnlib-no-workers"] == ["FINISHED"]
        assert not [a for a in apps["activeapps"] if a["name"] == "nnlib-no-workers"]
    finally:
        cluster.stop()


def _master_ui(cluster) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{cluster.ui_port}/json/", timeout=2) as r:
            return json.load(r)
    except OSError:
        return {}


def submit_refused(tmp_path, master: str, timeout: float = 120) -> list[str]:
    """``spark-submit --master MASTER jobs/model_avg.py`` refused: exit 2, only the JVM's own notices on stderr
    (spark-submit hands Python's stderr to its own stdout), no run folder; its stdout's lines."""
    proc = subprocess.run(
        [
            SPARK_SUBMIT,
            "--master",
            master,
            "--conf",
            f"spark.driver.defaultJavaOptions=-Dlog4j2.configurationFile={LOG4J}",
            "jobs/model_avg.py",
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=cluster_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 2
    assert spark_lines(proc.stderr) == [], proc.stderr
    assert not (tmp_path / "run").exists()
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_spark_submits_malformed_master_is_one_line_on_its_stdout(tmp_path):
    out = submit_refused(tmp_path, "spark://head")
    assert (
        [line for line in out if line.startswith("nnlib: error")]
        == out[-1:]
        == [f"nnlib: error: spark-submit's master spark://head: {INVALID}'head'"]
    )


@pytest.mark.slow
def test_spark_submit_to_a_port_that_is_no_master_is_one_line(tmp_path, silent):
    url = f"spark://127.0.0.1:{silent.port}"
    assert submit_refused(tmp_path, url, timeout=180)[-1] == (
        f"nnlib: error: spark-submit's master {url}: no Spark master answers (127.0.0.1:{silent.port} accepts "
        f"connections but gives no Spark RPC answer within {PROBE_SECONDS} s); check the port (a standalone "
        "master's is 7077 unless started otherwise, its web UI's is another)"
    )


# ---- Spark Connect URLs


@pytest.mark.slow
@pytest.mark.parametrize(
    "remote, message",
    [
        ("sc://h:notaport", CONNECT_FORM + "'h:notaport'"),
        ("sc://:15002", CONNECT_FORM + "':15002'"),
    ],
)
def test_a_malformed_connect_url_is_one_line(tmp_path, remote, message):
    proc, _ = nnlib_run(tmp_path, f"spark.remote={remote}")
    assert one_line(proc, tmp_path) == f"spark.remote {remote}: {message}"


@pytest.mark.slow
def test_a_connect_url_nobody_answers_is_one_line_with_the_cause(tmp_path, silent):
    port = free_port()
    proc, seconds = nnlib_run(tmp_path, f"spark.remote=sc://127.0.0.1:{port}")
    assert one_line(proc, tmp_path) == (
        f"spark.remote sc://127.0.0.1:{port}: nothing accepts a connection at 127.0.0.1:{port} (Connection refused): "
        "no Spark Connect server listens there; start one, or check the host and port"
    )
    proc, _ = nnlib_run(tmp_path, "spark.remote=sc://nosuchhost.invalid:15002")
    assert one_line(proc, tmp_path).startswith(
        "spark.remote sc://nosuchhost.invalid:15002: host 'nosuchhost.invalid' does not resolve ("
    )
    # a port that accepts but speaks no gRPC: the client would retry for minutes
    proc, seconds = nnlib_run(tmp_path, f"spark.remote=sc://127.0.0.1:{silent.port}")
    assert one_line(proc, tmp_path) == (
        f"spark.remote sc://127.0.0.1:{silent.port}: 127.0.0.1:{silent.port} accepts connections but no gRPC server "
        f"answers there within {PROBE_SECONDS} s: not a Spark Connect server (another service's port?)"
    )
    assert PROBE_SECONDS <= seconds < PROBE_SECONDS + 30  # no JVM: Python's start and the probe


# ---- Spark refusing a setting as it starts


def test_the_cause_is_read_from_what_a_jvm_that_failed_to_start_printed():
    from nnlib.engines.spark.session import jvm_start_cause

    trace = (
        'Exception in thread "main" org.apache.spark.SparkException: Executor memory must be a positive number\n'
        "\tat org.apache.spark.deploy.SparkSubmitArguments.validateSubmitArguments(SparkSubmitArguments.scala:1)\n"
    )
    assert jvm_start_cause(trace) == "org.apache.spark.SparkException: Executor memory must be a positive number"
    chained = trace + 'Caused by: java.lang.NumberFormatException: For input string: "1x"\n\tat x.y(z)\n'
    assert jvm_start_cause(chained) == 'java.lang.NumberFormatException: For input string: "1x"'
    assert (
        jvm_start_cause("Error: Unrecognized option: --bad\n\nUsage: spark-submit ...")
        == "Error: Unrecognized option: --bad"
    )
    assert jvm_start_cause("WARNING: Using incubator modules: jdk.incubator.vector\n") is None


@pytest.mark.slow
def test_a_setting_spark_submit_refuses_is_one_line_with_its_cause(tmp_path):
    proc, _ = nnlib_run(tmp_path, "spark.master=local[2]", "spark.conf={spark.executor.memory: 1x}")
    assert one_line(proc, tmp_path) == (
        "spark.master local[2]: could not start Spark's JVM (org.apache.spark."
        "SparkException: Executor memory must be a positive number)"
    )


@pytest.mark.slow
def test_a_setting_the_spark_context_refuses_is_one_line_without_sparks_trace(tmp_path):
    proc, _ = nnlib_run(tmp_path, "spark.master=local[2]", "spark.conf={spark.task.cpus: abc}")
    line = one_line(proc, tmp_path)  # no "ERROR SparkContext: Error initializing SparkContext." and its trace
    assert line.startswith(
        "spark.master local[2]: could not start Spark (org.apache.spark."
        "SparkIllegalArgumentException: [INVALID_CONF_VALUE.TYPE_MISMATCH] The value 'abc' in the "
        'config "spark.task.cpus" is invalid.'
    ), line


@pytest.mark.slow
@pytest.mark.parametrize(
    "master, message",
    [
        (
            "yarn",
            "spark.master yarn: Spark finds the YARN cluster through HADOOP_CONF_DIR or YARN_CONF_DIR, and neither is "
            "set in the environment; point one at the cluster's configuration folder",
        ),
        ("k8s://https://:443", f"spark.master k8s://https://:443: {K8S}'k8s://https://:443'"),
        # nnlib's own config refuses what is no master URL at all, before the session's check
        (
            "local[x]",
            "--set: spark.master: must be local, local[N], local[*], local[N,F], spark://HOST:PORT, yarn or "
            "k8s://HOST:PORT, got 'local[x]'",
        ),
    ],
)
def test_nnlib_run_with_a_master_spark_would_refuse_is_one_line(tmp_path, master, message):
    env_free = {k: v for k, v in cluster_env(tmp_path).items() if k not in ("HADOOP_CONF_DIR", "YARN_CONF_DIR")}
    cmd = [
        sys.executable,
        "-m",
        "nnlib",
        "run",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "engine=spark",
        "--set",
        f"spark.master={master}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_free, capture_output=True, text=True, timeout=120)
    assert one_line(proc, tmp_path) == message


@pytest.mark.slow
def test_spark_submits_local_master_of_no_thread_count_is_one_line(tmp_path):
    assert (
        submit_refused(tmp_path, "local[x]")[-1] == f"nnlib: error: spark-submit's master local[x]: {LOCAL}'local[x]'"
    )


@pytest.mark.slow
def test_a_token_to_a_server_without_tls_names_tls_and_the_local_form(tmp_path, connect_server):
    """pyspark's client speaks TLS when a token goes to a host other than localhost: against a server without TLS
    that is one line saying so, not "not a Spark Connect server"."""
    port = connect_server.url.rsplit(":", 1)[1]
    proc, seconds = nnlib_run(tmp_path, f"spark.remote=sc://127.0.0.1:{port}/;token=s3cr3t")
    assert one_line(proc, tmp_path) == (
        f"spark.remote sc://127.0.0.1:{port}/;token=***: no gRPC server answers 127.0.0.1:{port} over TLS within "
        f"{PROBE_SECONDS} s (pyspark's client uses TLS for a token to a host other than localhost): a server "
        "without TLS, or another service's port; for a local server without TLS write sc://localhost:PORT"
    )
