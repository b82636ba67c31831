"""data.shard_storage=auto: memory or disk by the largest shard against a memory budget per mapper, said in one
line; the run then trains as the chosen storage does, bit for bit."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_mrjob, saved_params, small_config

from nnlib.config import load_config
from nnlib.data.storage import FIXED_MB, Budget, budget, choose, shard_bytes, size_mb
from nnlib.driver import run

ROOT = Path(__file__).resolve().parent.parent


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("nnlib-shards-"))


def with_data(config, **update):
    return config.model_copy(update={"data": config.data.model_copy(update=update)})


@pytest.mark.parametrize(
    "text,mb", [("640m", 640), ("640", 640), ("2g", 2048), ("1.5G", 1536), ("300mb", 300), ("512k", 0.5)]
)
def test_a_spark_size_reads_as_spark_reads_it(text, mb):
    assert size_mb(text) == mb


@pytest.mark.parametrize("text", ["lots", "", "-1m", "1x"])
def test_what_is_not_a_size_is_none(text):
    assert size_mb(text) is None


def test_the_budget_comes_from_the_data_key_then_spark_conf_then_the_session():
    session = lambda: "900m"  # noqa: E731  - what a session would hold
    own = load_config(
        None, ["engine=spark", "data.memory_per_mapper_mb=700", "spark.conf={spark.executor.pyspark.memory: 1g}"]
    )
    assert budget(own, session) == Budget(700.0, "data.memory_per_mapper_mb=700")
    conf = load_config(None, ["engine=spark", "spark.conf={spark.executor.pyspark.memory: 1g}"])
    assert budget(conf, session) == Budget(1024.0, "spark.executor.pyspark.memory=1g")
    assert budget(load_config(None, ["engine=spark"]), session) == Budget(900.0, "spark.executor.pyspark.memory=900m")
    assert budget(load_config(None, ["engine=spark"]), lambda: None) is None
    assert budget(load_config(None, ["engine=local"]), session) is None  # Spark's setting is Spark's


def nnlib_cli(tmp_path, *sets):
    cmd = [sys.executable, "-m", "nnlib", "run", "--out", str(tmp_path / "out"), "--set", "train.rounds=1"]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_spark_setting_that_is_not_a_size_is_one_line(tmp_path):
    proc = nnlib_cli(
        tmp_path, "engine=spark", "data.shard_storage=auto", "spark.conf={spark.executor.pyspark.memory: lots}"
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "nnlib: error: data.shard_storage=auto reads the memory budget per mapper from "
        "spark.executor.pyspark.memory, which holds 'lots': set a size (640m, 2g) there, or "
        "data.memory_per_mapper_mb"
    ]
    assert not (tmp_path / "out").exists()


def test_disk_past_half_of_what_the_budget_leaves_past_the_fixed_cost():
    config = load_config(None, ["data.shard_storage=auto"])
    b = Budget(640.0, "spark.executor.pyspark.memory=640m")
    limit = (640 - FIXED_MB["numpy"]) / 2 * 2**20  # 160 MB
    per_row = shard_bytes(1, 64, 10, False, False)
    assert per_row == 64 * 4 + 8
    under = int(limit // per_row)
    assert choose(config, [10, under], 64, 10, False, False, b).storage == "memory"
    over = choose(config, [under + 1, 10], 64, 10, False, False, b)
    assert over.storage == "disk"
    assert over.line == (
        "shards: disk (the largest shard is ~160 MB; spark.executor.pyspark.memory=640m keeps shards up to "
        "160 MB in memory: half of what is left past a numpy worker's ~320 MB)"
    )
    # weights and regression targets count
    assert shard_bytes(10, 64, 3, True, True) == 10 * (64 * 4 + 3 * 8 + 8)
    none = choose(config, [under + 1], 64, 10, False, False, None)
    assert none.storage == "memory" and "no memory budget per mapper" in none.line


def test_local_auto_picks_disk_over_the_budget_says_so_and_trains_as_disk(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    base = small_config()
    lines, seen = [], []
    auto = with_data(
        base, shard_storage="auto", memory_per_mapper_mb=FIXED_MB["numpy"] + 0.05, scratch_dir=str(scratch)
    )
    result = run(auto, log=lines.append, warn=lambda _m: None, on_round=lambda _row: seen.append(leftovers(scratch)))
    chosen = [line for line in lines if line.startswith("shards: ")]
    assert len(chosen) == 1 and chosen[0].startswith("shards: disk (the largest shard is ~0.1 MB; ")
    assert all(len(names) == 1 for names in seen) and len(seen) == 2  # the shards were on disk each round
    assert leftovers(scratch) == []
    disk = run(with_data(base, shard_storage="disk", scratch_dir=str(scratch)), log=lambda _m: None)
    np.testing.assert_array_equal(result.params, disk.params)


def test_local_auto_picks_memory_under_the_budget_says_so_and_writes_nothing(tmp_path):
    base = small_config()
    lines, seen = [], []
    auto = with_data(base, shard_storage="auto", memory_per_mapper_mb=1024.0, scratch_dir=str(tmp_path))
    result = run(auto, log=lines.append, warn=lambda _m: None, on_round=lambda _row: seen.append(leftovers(tmp_path)))
    assert [line for line in lines if line.startswith("shards: ")] == [
        "shards: memory (the largest shard is ~0.1 MB; data.memory_per_mapper_mb=1024 keeps shards up to "
        "352 MB in memory: half of what is left past a numpy worker's ~320 MB)"
    ]
    assert seen == [[], []]
    np.testing.assert_array_equal(result.params, run(base, log=lambda _m: None).params)


def test_auto_without_a_budget_keeps_memory_and_says_why():
    lines = []
    run(with_data(small_config("train.rounds=1"), shard_storage="auto"), log=lines.append)
    assert [line for line in lines if line.startswith("shards: ")] == [
        "shards: memory (the largest shard is ~0.1 MB; no memory budget per mapper to weigh it against: set "
        "data.memory_per_mapper_mb, or spark.executor.pyspark.memory on Spark)"
    ]


def test_auto_weighs_a_torch_worker_and_trains_from_disk_as_disk_does(tmp_path):
    """model.backend=torch: the budget is weighed against a torch worker's fixed cost, not a numpy one's: the
    same budget keeps a numpy run's shards in memory and puts a torch run's on disk, which trains the weights
    data.shard_storage=disk trains."""
    pytest.importorskip("torch")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mb = FIXED_MB["torch"] + 0.05
    said = {}
    for backend in ("numpy", "torch"):
        lines = []
        auto = with_data(
            small_config(f"model.backend={backend}"),
            shard_storage="auto",
            memory_per_mapper_mb=mb,
            scratch_dir=str(scratch),
        )
        result = run(auto, log=lines.append, warn=lambda _m: None)
        said[backend] = [line for line in lines if line.startswith("shards: ")]
    assert len(said["numpy"]) == 1 and said["numpy"][0].startswith("shards: memory (")
    assert len(said["torch"]) == 1 and said["torch"][0].startswith("shards: disk (the largest shard is ~0.1 MB; ")
    assert said["torch"][0].endswith("past a torch worker's ~640 MB)")
    assert leftovers(scratch) == []
    disk = run(
        with_data(small_config("model.backend=torch"), shard_storage="disk", scratch_dir=str(scratch)),
        log=lambda _m: None,
    )
    np.testing.assert_array_equal(result.params, disk.params)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stage", "jobs"])
def test_spark_auto_picks_disk_over_the_budget_and_trains_as_disk(spark, tmp_path, mode):
    from test_engines import spark_engine

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    base = small_config("mappers=2").model_copy(update={"engine": "spark"})
    lines, seen = [], []
    auto = with_data(
        base, shard_storage="auto", memory_per_mapper_mb=FIXED_MB["numpy"] + 0.05, scratch_dir=str(scratch)
    )
    result = run(
        auto,
        engine=spark_engine(mode),
        log=lines.append,
        warn=lambda _m: None,
        on_round=lambda _row: seen.append(leftovers(scratch)),
    )
    assert [line.split(" (")[0] for line in lines if line.startswith("shards: ")] == ["shards: disk"]
    assert all(names for names in seen) and len(seen) == 2  # the executors' shard folders, each round
    assert leftovers(scratch) == []
    memory = run(base.model_copy(update={"engine": "local"}), log=lambda _m: None)
    np.testing.assert_array_equal(result.params, memory.params)


@pytest.mark.slow
def test_spark_reads_the_budget_from_the_sessions_own_settings(tmp_path):
    """spark-defaults.conf (as spark-submit's --conf, a cluster's defaults) gives spark.executor.pyspark.memory
    to the session nnlib opens; auto weighs the shards against it."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text("spark.executor.pyspark.memory 2g\n")
    env = dict(os.environ, SPARK_CONF_DIR=str(conf_dir))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "nnlib", "run", "--out", str(out)]
        + [
            arg
            for item in [
                "engine=spark",
                "spark.master=local[2]",
                "mappers=2",
                "train.rounds=1",
                "data.shard_storage=auto",
            ]
            for arg in ("--set", item)
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.startswith("shards: ")] == [
        "shards: memory (the largest shard is ~0.2 MB; spark.executor.pyspark.memory=2g keeps shards up to "
        "864 MB in memory: half of what is left past a numpy worker's ~320 MB)"
    ]
    assert saved_params(out).size > 0


@needs_mrjob
def test_mrjob_auto_picks_disk_over_the_budget_and_trains_as_memory_does(tmp_path):
    from nnlib.engines.mrjob.engine import MrjobEngine

    base = small_config("mappers=2").model_copy(update={"engine": "mrjob"})
    auto = with_data(
        base, shard_storage="auto", memory_per_mapper_mb=FIXED_MB["numpy"] + 0.05, scratch_dir=str(tmp_path)
    )
    lines = []
    result = run(auto, engine=MrjobEngine(auto, "inline"), log=lines.append, warn=lambda _m: None)
    assert [line.split(" (")[0] for line in lines if line.startswith("shards: ")] == ["shards: disk"]
    assert leftovers(tmp_path) == []
    memory = run(base.model_copy(update={"engine": "local"}), log=lambda _m: None)
    np.testing.assert_array_equal(result.params, memory.params)


@pytest.mark.slow
def test_mpi_says_the_choice_once_and_trains_as_memory_does(tmp_path):
    """Every rank runs the driver and chooses alike; rank 0 alone says it."""
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        TMPDIR=str(tmp_path),
    )
    outs, stdouts = {}, {}
    for storage in ("memory", "auto"):
        out = tmp_path / storage
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2", "--oversubscribe", sys.executable]
        cmd += ["jobs/mpi_model_avg.py", "conf/default.yaml", "--out", str(out)]
        for item in (
            "mappers=2",
            "train.rounds=2",
            "model.hidden=[16]",
            f"data.shard_storage={storage}",
            f"data.memory_per_mapper_mb={FIXED_MB['numpy'] + 0.05}",
            f"data.scratch_dir={tmp_path}",
        ):
            cmd += ["--set", item]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[storage], stdouts[storage] = saved_params(out), proc.stdout
    assert [line.split(" (")[0] for line in stdouts["auto"].splitlines() if line.startswith("shards: ")] == [
        "shards: disk"
    ]
    assert "shards: " not in stdouts["memory"]
    np.testing.assert_array_equal(outs["auto"], outs["memory"])
    assert leftovers(tmp_path) == []
