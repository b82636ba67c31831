"""A real Spark standalone cluster on 127.0.0.1: one master, N workers (one core each unless told).

pyspark's pip package has no start scripts, so the master and the workers are
started with ``spark-class``, each in its own process group, and stopped by
PID (never by name).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SPARK_CLASS = str(Path(sys.executable).parent / "spark-class")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(folder: Path) -> dict:
    return dict(
        os.environ,
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_LOG_DIR=str(folder / "logs"),
        SPARK_WORKER_DIR=str(folder / "work"),
        PYSPARK_PYTHON=sys.executable,
        SPARK_NO_DAEMONIZE="1",
    )


# the one line Spark's JVM prints itself, for the vector module Spark's launcher adds; log4j cannot reach it
JVM_LINE = "WARNING: Using incubator modules: jdk.incubator.vector"


def spark_lines(stderr: str) -> list[str]:
    """The lines of a Spark run's stderr that are not the JVM's own notices: the vector module's, and the
    "Picked up JAVA_TOOL_OPTIONS: ..." every JVM prints where that variable is set (as .ci/run does)."""
    return [
        line for line in stderr.splitlines() if line != JVM_LINE and not line.startswith("Picked up JAVA_TOOL_OPTIONS:")
    ]


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    """Every live process below ``root`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(_parent(int(entry)), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class StandaloneCluster:
    folder: Path
    port: int = field(default_factory=free_port)
    ui_port: int = field(default_factory=free_port)
    master: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        return subprocess.Popen(
            [SPARK_CLASS, *args],
            env=cluster_env(self.folder),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(
        self, n_workers: int = 2, timeout: float = 120, cores: int = 1, memory: str = "1g"
    ) -> "StandaloneCluster":
        (self.folder / "work").mkdir(parents=True, exist_ok=True)
        self.master = self._spawn(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        )
        for i in range(n_workers):
            self.workers.append(
                self._spawn(
                    f"worker{i}",
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(cores),
                    "--memory",
                    memory,
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(self.folder / "work"),
                    self.url,
                )
            )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_workers() == n_workers:
                return self
            for proc in [self.master, *self.workers]:
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"a cluster process exited early; see the logs in {self.folder}")
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{n_workers} workers did not register within {timeout}s; see {self.folder}")

    def alive_workers(self) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=2) as r:
                state = json.load(r)
        except OSError:
            return 0
        return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")

    def worker_running(self, pid: int) -> int:
        """The index of the worker that ``pid`` (an executor's Python worker) descends from."""
        workers = {w.pid: i for i, w in enumerate(self.workers)}
        while pid > 1 and pid not in workers:
            pid = _parent(pid)
        return workers[pid]

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i``'s JVM and everything it started (its executor and Python workers), as a host dies.

        PySpark's Python workers run in process groups of their own, so the tree is walked by parent pid.
        """
        doomed = _descendants(self.workers[i].pid)
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.workers[i].wait()

    def stop(self) -> None:
        for proc in [*self.workers, self.master]:
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=20)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait()


@dataclass
class ConnectServer:
    """A real Spark Connect server on 127.0.0.1 (``SparkConnectServer`` from pyspark's own jars), in its own
    process group, stopped by PID. ``master``: the server's own Spark master (local[N] by default)."""

    folder: Path
    master: str = "local[4]"
    port: int = field(default_factory=free_port)
    conf: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> "ConnectServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.ui.enabled": "false",
            **self.conf,
        }
        args = [
            str(Path(sys.executable).parent / "spark-submit"),
            "--master",
            self.master,
            "--class",
            "org.apache.spark.sql.connect.service.SparkConnectServer",
            "--name",
            "nnlib-tests-connect",
        ]
        for key, value in conf.items():
            args += ["--conf", f"{key}={value}"]
        log = open(self.folder / "connect-server.log", "wb")
        self.proc = subprocess.Popen(
            [*args, "spark-internal"],
            env=cluster_env(self.folder),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Spark Connect server exited early; see {self.folder / 'connect-server.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Spark Connect server did not listen within {timeout}s; see {self.folder}")

    def pids(self) -> list[int]:
        """The server's JVM and every process below it (its Python workers)."""
        return [] if self.proc is None else [self.proc.pid, *_descendants(self.proc.pid)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
