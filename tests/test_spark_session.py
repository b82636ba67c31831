"""The session Spark gives: spark-submit's master and settings win, nnlib stops only what it started, and the
stage asks for GPUs by stage-level scheduling (``spark.task_gpus``).

The slow tests share one real standalone cluster on 127.0.0.1 (two one-core workers, each offering one GPU
found by a discovery script, as a GPU node's would be: the tasks get a real GPU address, and torch here has
no CUDA). Where a run went is read from the cluster itself: the worker a mapper's process descends from, and
the master's list of applications.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import needs_torch, wait_for_rounds
from spark_cluster import StandaloneCluster, cluster_env, free_port, spark_lines

from nnlib.config import load_config
from nnlib.errors import ConfigError
from nnlib.engines.spark.session import defaults_file, local_master_with_slots, stage_profile

ROOT = Path(__file__).resolve().parent.parent
SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")
LOG4J = (ROOT / "nnlib/engines/spark/log4j2.properties").as_uri()
QUICK = ["--set", "mappers=2", "--set", "train.rounds=1", "--quiet"]
# rounds of about a second each on two mappers: long enough to look at the mappers' processes mid-run
SLOW_ROUNDS = [
    "mappers=2",
    "data.source=synthetic",
    "data.n_samples=12000",
    "data.n_features=64",
    "data.n_classes=4",
    "model.hidden=[128,128]",
    "train.rounds=4",
    "train.local_epochs=6",
    "seed=5",
]
GPU_SCRIPT = '#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n'


# ---- the fast tier: the rules that need no JVM


@pytest.mark.parametrize(
    "master, slots, widened",
    [
        ("local", 2, "local[2]"),
        ("local[1]", 4, "local[4]"),
        ("local[8]", 4, "local[8]"),
        ("local[2,3]", 4, "local[4,3]"),
        ("spark://h:7077", 4, "spark://h:7077"),
        ("yarn", 9, "yarn"),
        ("local-cluster[2,1,1024]", 4, "local-cluster[2,1,1024]"),
    ],
)
def test_a_local_master_gets_a_slot_per_mapper_and_a_cluster_master_is_never_replaced(master, slots, widened):
    assert local_master_with_slots(master, slots) == widened


def test_spark_defaults_conf_is_read_as_spark_reads_it(tmp_path, monkeypatch):
    (tmp_path / "spark-defaults.conf").write_text(
        textwrap.dedent("""\
        # a comment
        ! another
        spark.master            spark://head:7077
        spark.log.level=INFO
        spark.driver.extraJavaOptions: -Da=1 -Db=2

        spark.app.name
    """)
    )
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert defaults_file() == {
        "spark.master": "spark://head:7077",
        "spark.log.level": "INFO",
        "spark.driver.extraJavaOptions": "-Da=1 -Db=2",
        "spark.app.name": "",
    }
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path / "nowhere"))
    assert defaults_file() == {}


def test_task_gpus_is_checked_as_spark_takes_it():
    assert load_config(None, ["spark.task_gpus=0.25"]).spark.task_gpus == 0.25
    assert load_config(None, ["spark.task_gpus=2"]).spark.task_gpus == 2
    assert load_config(None, []).spark.task_gpus is None
    with pytest.raises(
        ConfigError, match=r"^--set: spark.task_gpus: must be a whole number or a fraction <= 0.5 .*got 0.75$"
    ):
        load_config(None, ["spark.task_gpus=0.75"])
    with pytest.raises(ConfigError, match="'spark.task_gpus': Input should be greater than 0, got 0"):
        load_config(None, ["spark.task_gpus=0"])


def test_no_gpu_profile_unless_asked_and_none_on_a_local_master():
    assert stage_profile(None, "local[4]") is None
    with pytest.raises(
        ConfigError,
        match=r"^spark.task_gpus=1 needs a cluster master \(spark://HOST:PORT, yarn or "
        r"k8s://...\): Spark has no stage-level scheduling on a local one, got "
        r"master local\[4\]$",
    ):
        stage_profile(1.0, "local[4]")


# ---- a real cluster


class GpuCluster(StandaloneCluster):
    """:class:`StandaloneCluster` whose workers each offer one GPU, address "0", found by a discovery script (what
    a GPU node's ``getGpusResources.sh`` prints), and import the tests' own modules (``user_models``)."""

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        script = self.folder / "gpus.sh"
        script.write_text(GPU_SCRIPT)
        script.chmod(0o755)
        env = dict(
            cluster_env(self.folder),
            PYTHONPATH=str(ROOT / "tests"),
            SPARK_WORKER_OPTS=f"-Dspark.worker.resource.gpu.amount=1 "
            f"-Dspark.worker.resource.gpu.discoveryScript={script}",
        )
        log = open(self.folder / f"{name}.log", "wb")
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "spark-class"), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = GpuCluster(tmp_path_factory.mktemp("cluster")).start(n_workers=2)
    yield c
    c.stop()


def applications(cluster) -> dict[str, dict]:
    """The master's applications (running and finished) by name, from its JSON UI."""
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.ui_port}/json/", timeout=5) as r:
        state = json.load(r)
    return {app["name"]: app for app in state.get("activeapps", []) + state.get("completedapps", [])}


def submit_env(cluster, **extra) -> dict:
    return dict(cluster_env(cluster.folder), PYTHONPATH=str(ROOT / "tests"), **extra)


def master_used(out: Path) -> str:
    return yaml.safe_load((out / "config.yaml").read_text())["spark"]["master"]


def mapper_workers(cluster, out: Path) -> set[int]:
    """The cluster workers whose executors run the mappers of the run in ``out`` (the run must be going on)."""
    rows = [line.split(",") for line in (out / "mapper_times.csv").read_text().splitlines()[1:]]
    return {cluster.worker_running(int(row[3])) for row in rows}


@pytest.mark.slow
def test_spark_submits_master_wins_and_the_run_trains_on_the_clusters_executors(cluster, tmp_path):
    out, name = tmp_path / "run", f"nnlib-test-{uuid.uuid4().hex[:8]}"
    cmd = [SPARK_SUBMIT, "--master", cluster.url, "--name", name, "jobs/model_avg.py", "--out", str(out)]
    for item in [*SLOW_ROUNDS, "spark.master=local[2]"]:
        cmd += ["--set", item]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=submit_env(cluster), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_for_rounds(proc, out, 1)
    # the mappers are Python workers below the cluster's worker processes, one on each worker
    assert mapper_workers(cluster, out) == {0, 1}
    printed, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    app = applications(cluster)[name]
    assert app["state"] == "FINISHED" and app["cores"] == 2
    assert master_used(out) == cluster.url
    warnings = [line for line in (printed + err).splitlines() if line.startswith("nnlib: warning: spark.master")]
    assert warnings == [
        f"nnlib: warning: spark.master local[2] is not used: spark-submit's master {cluster.url} is "
        "(its --master, --conf spark.master or spark-defaults.conf, else its default local[*]; "
        "spark-submit's wins)"
    ]
    # nnlib quiets Spark once its session starts (spark.log.level ERROR): no scheduler lines during the run
    assert " INFO DAGScheduler" not in err


@pytest.mark.slow
def test_spark_defaults_conf_names_the_master_and_the_users_conf_is_kept(cluster, tmp_path):
    conf_dir, out, name = tmp_path / "conf", tmp_path / "run", f"nnlib-test-{uuid.uuid4().hex[:8]}"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(f"spark.master {cluster.url}\nspark.app.name {name}\n")
    # the user's own log level, given to spark-submit; nnlib's log4j2 configuration as the README says
    cmd = [
        SPARK_SUBMIT,
        "--conf",
        "spark.log.level=INFO",
        "--conf",
        f"spark.driver.defaultJavaOptions=-Dlog4j2.configurationFile={LOG4J}",
        "jobs/model_avg.py",
        "--out",
        str(out),
        *QUICK,
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=submit_env(cluster, SPARK_CONF_DIR=str(conf_dir)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert applications(cluster)[name]["state"] == "FINISHED"
    assert master_used(out) == cluster.url
    assert " INFO DAGScheduler: " in proc.stderr  # spark.log.level=INFO held: nnlib did not lower it


@pytest.mark.slow
def test_submit_sh_runs_on_the_cluster_and_prints_none_of_sparks_lines(cluster, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        ["./submit.sh", "--master", cluster.url, "--", "--out", str(out), *QUICK],
        cwd=ROOT,
        env=submit_env(cluster),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert master_used(out) == cluster.url
    assert len(applications(cluster)) >= 1
    # the JVM's own notices come before any logging starts; nothing else
    assert spark_lines(proc.stderr) == [], proc.stderr


@pytest.mark.slow
def test_a_local_master_with_fewer_slots_than_mappers_is_widened_under_spark_submit(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [SPARK_SUBMIT, "--master", "local[1]", "jobs/model_avg.py", "--out", str(out), *QUICK],
        cwd=ROOT,
        env=cluster_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert master_used(out) == "local[2]"
    assert not [line for line in proc.stderr.splitlines() if line.startswith("nnlib: warning")]


@pytest.mark.slow
def test_a_dead_master_given_to_spark_submit_is_one_line_within_seconds(tmp_path):
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    start = time.monotonic()
    proc = subprocess.run(
        [
            SPARK_SUBMIT,
            "--master",
            url,
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
        timeout=120,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 2
    # spark-submit hands Python's stderr to its own stdout; its stderr has only the JVM's own notices
    assert spark_lines(proc.stderr) == [], proc.stderr
    assert (
        [line for line in proc.stdout.splitlines() if line.startswith("nnlib: error")]
        == proc.stdout.splitlines()[-1:]
        == [
            f"nnlib: error: spark-submit's master {url}: nothing accepts a connection at 127.0.0.1:{port} (Connection "
            "refused): no Spark master listens there; start the master, or check the host and port"
        ]
    )
    assert seconds < 30  # the JVM's start; Spark's own attempts would take a minute
    assert not (tmp_path / "run").exists()


# ---- GPUs by stage-level scheduling


def gpu_run(cluster, out: Path, *sets: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nnlib", "run", "--out", str(out), *QUICK]
    for item in [
        "engine=spark",
        f"spark.master={cluster.url}",
        "model.type=module",
        "model.module=user_models.tiny:make",
        "train.local_epochs=1",
        "spark.conf={spark.executor.resource.gpu.amount: '1'}",
        *sets,
    ]:
        cmd += ["--set", item]
    return subprocess.run(cmd, cwd=ROOT, env=submit_env(cluster), capture_output=True, text=True, timeout=300)


@needs_torch
@pytest.mark.slow
def test_task_gpus_gives_each_task_a_gpu_and_cuda_uses_it_only_where_torch_sees_one(cluster, tmp_path):
    import torch

    assert not torch.cuda.is_available()  # this machine: the task's GPU address is real, torch has no CUDA
    given = gpu_run(cluster, tmp_path / "cuda", "spark.task_gpus=1", "train.device=cuda")
    assert given.returncode == 2
    assert re.match(
        r"nnlib: error: mapper [01]: train.device=cuda: Spark gave this task GPU 0, but this process "
        r"sees no CUDA GPU \(torch ",
        given.stderr.splitlines()[-1],
    ), given.stderr[-2000:]
    # the same without spark.task_gpus: Spark's default profile gives the tasks no GPU
    none = gpu_run(cluster, tmp_path / "none", "train.device=cuda")
    assert none.returncode == 2
    assert re.match(
        r"nnlib: error: mapper [01]: train.device=cuda: this process sees no CUDA GPU \(torch ",
        none.stderr.splitlines()[-1],
    ), none.stderr[-2000:]
    # auto: the CPU where torch sees no GPU, and the run trains
    auto = gpu_run(cluster, tmp_path / "auto", "spark.task_gpus=1", "train.device=auto")
    assert auto.returncode == 0, auto.stderr[-3000:]
    assert json.loads((tmp_path / "auto/summary.json").read_text())["final_test_accuracy"] > 0.5


@pytest.mark.slow
def test_task_gpus_on_a_local_master_is_one_line(spark, tmp_path):
    import nnlib

    with pytest.raises(ConfigError, match=r"^spark.task_gpus=0.5 needs a cluster master .* got master local\[4\]$"):
        nnlib.train(
            None,
            {"mappers": 2, "train.rounds": 1, "spark.task_gpus": 0.5},
            engine="spark",
            write=False,
            log=lambda _m: None,
        )
    assert spark.range(3).count() == 3


# ---- ownership


@pytest.mark.slow
def test_a_run_in_a_thread_uses_the_callers_session_and_leaves_it_running(spark):
    import nnlib

    results, warnings = [], []

    def train():
        results.append(
            nnlib.train(
                None,
                {"mappers": 2, "train.rounds": 1, "spark.master": "local[2]"},
                engine="spark",
                write=False,
                log=lambda _m: None,
                warn=warnings.append,
            )
        )

    worker = threading.Thread(target=train)
    worker.start()
    worker.join(timeout=300)
    assert len(results) == 1
    assert spark.range(3).count() == 3  # the caller's session still answers
    assert spark.sparkContext._jsc is not None
    assert warnings == [
        f"spark.master local[2] is not used: the run uses the SparkSession already running, on "
        f"master {spark.sparkContext.master} (nnlib changes nothing on a session it did not start)"
    ]


OWNERSHIP = """
import threading
from pyspark import SparkContext
from pyspark.sql import SparkSession
import nnlib

def train_in_threads(n):
    runs = []
    threads = [threading.Thread(target=lambda: runs.append(nnlib.train(
        None, {"mappers": 2, "train.rounds": 1}, engine="spark", write=False, log=lambda _m: None)))
        for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(runs)

# the caller's own session, built with Spark's builder: a run in a thread uses it and leaves it running
spark = SparkSession.builder.master("local[2]").getOrCreate()
assert train_in_threads(1) == 1
print("caller's session alive:", spark.range(3).count() == 3)
spark.stop()
# a bare SparkContext the caller made (no SparkSession): the same
sc = SparkContext("local[2]", "caller")
assert train_in_threads(1) == 1
print("bare context alive:", sc.parallelize(range(3)).count() == 3)
sc.stop()
# no session: two runs in two threads at once share the one nnlib builds; the last to end stops it
print("runs:", train_in_threads(2))
print("stopped after:", SparkContext._active_spark_context is None)
"""


@pytest.mark.slow
def test_nnlib_stops_only_the_session_it_built_whatever_thread(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", OWNERSHIP],
        cwd=tmp_path,
        env=cluster_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [
        "caller's session alive: True",
        "bare context alive: True",
        "runs: 2",
        "stopped after: True",
    ]


LOCAL_CONNECT = """
import threading
from pyspark.sql import SparkSession
from nnlib.engines.spark.session import existing_session, is_connect

# remote("local[N]") runs the Connect server inside this process, beside its own classic session
spark = SparkSession.builder.remote("local[2]").getOrCreate()
found = []
worker = threading.Thread(target=lambda: found.append(existing_session()))
worker.start()
worker.join()
print("the caller's Connect session:", existing_session() is spark, found[0] is spark, is_connect(found[0]))
spark.stop()
"""


@pytest.mark.slow
def test_the_callers_local_connect_session_is_found_not_its_servers_classic_one(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", LOCAL_CONNECT],
        cwd=tmp_path,
        env=cluster_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "the caller's Connect session: True True True"
