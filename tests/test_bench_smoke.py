"""Every benchmark script runs end to end in its smoke size (the full runs are bench/README.md's).

Each writes its JSON (and its data sets) under the test's own folder, never into the checkout, and the
JSON holds the rows the script's smoke size asks for, consistent with each other.
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def smoke(script: str, tmp_path: Path):
    """``bench/<script>.py --smoke`` with its results and data under ``tmp_path``; the JSON it wrote."""
    results = tmp_path / "results"
    env = dict(
        os.environ, NNLIB_BENCH_RESULTS=str(results), NNLIB_BENCH_DATA=str(tmp_path / "data"), TMPDIR=str(tmp_path)
    )
    proc = subprocess.run(
        [sys.executable, f"bench/{script}.py", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (results / "smoke").iterdir()) == sorted(
        [f"{script}.json"] + ([f"{script}.png"] if script in ("speedup", "scaling") else [])
    )
    return json.loads((results / "smoke" / f"{script}.json").read_text())


@needs_torch
def test_throughput(tmp_path):
    result = smoke("throughput", tmp_path)
    assert result["model"] == [784, 128, 10] and result["params"] == 784 * 128 + 128 + 128 * 10 + 10
    rows = result["rows"]
    assert [(r["threads"], r["backend"], r["batch"]) for r in rows] == [
        (t, b, n) for t in (1, 2) for b in ("numpy", "torch") for n in (32, 256)
    ]
    for r in rows:  # the roofline: the matmul rate over 4 x params FLOP per sample
        assert r["roofline_samples_per_s"] == pytest.approx(r["matmul_gflops"] * 1e9 / (4 * result["params"]))
        assert r["share_of_roofline"] == pytest.approx(r["samples_per_s"] / r["roofline_samples_per_s"])


@needs_torch
def test_torch_speed(tmp_path):
    result = smoke("torch_speed", tmp_path)
    rows = result["rows"]
    assert [(r["model"], r["batch"], r["params"]) for r in rows] == [
        ("mlp 784-128-10", 32, 101_770),
        ("mlp 784-128-10", 256, 101_770),
        ("cnn (16, 32) k5", 32, 28_938),
    ]
    for r in rows:  # each system's median over the same repeats; the ratios are theirs
        assert r["torch_ratio"] == pytest.approx(r["nnlib_torch_s"] / r["plain_torch_s"])
        assert r["numpy_ratio"] == pytest.approx(r["nnlib_numpy_s"] / r["plain_torch_s"])


def test_round_overhead(tmp_path):
    rows = smoke("round_overhead", tmp_path)
    # about 1e4 and 1e5 parameters: 1000 inputs, 10 and 99 hidden units, 10 classes
    assert [(r["engine"], r["params"]) for r in rows] == [
        (e, p) for e in ("local", "spark stage, local[2]", "mpi, 2 ranks") for p in (10_120, 100_099)
    ]
    for r in rows:  # medians over the same rounds: the overhead and each phase are parts of every round
        assert 0 <= r["overhead_ms"] <= r["round_ms"]
        assert r["broadcast_ms"] <= r["round_ms"] and r["combine_ms"] <= r["round_ms"]
    assert all(r["broadcast_ms"] == 0 for r in rows if r["engine"] == "local")  # nothing is sent in-process


def test_speedup(tmp_path):
    from matplotlib.image import imread

    rows = smoke("speedup", tmp_path)
    assert [(r["engine"], r["mappers"]) for r in rows] == [
        ("local (in-process, 1 thread)", 1),
        ("spark stage", 1),
        ("spark stage", 2),
        ("mpi", 1),
        ("mpi", 2),
    ]
    base = rows[0]["repeats_s"]
    for r in rows:  # each pass's baseline over the row's time in that pass, the median over the passes
        assert len(r["repeats_s"]) == len(base) == 1
        assert r["speedup"] == pytest.approx(statistics.median(b / t for b, t in zip(base, r["repeats_s"])))
        assert r["seconds_per_epoch"] == pytest.approx(statistics.median(r["repeats_s"]))
    pixels = imread(tmp_path / "results/smoke/speedup.png")
    assert pixels.shape == (480, 720, 4)  # 6 x 4 in at 120 dpi


def test_two_cores(tmp_path):
    result = smoke("two_cores", tmp_path)
    rows = {r["kernel"]: r for r in result["rows"]}
    assert list(rows) == [
        "epoch",
        "matmul",
        "epoch pair",
        "epoch pair beside a scorer on 1 BLAS thread(s)",
        "epoch pair beside a scorer on 2 BLAS thread(s)",
    ]
    for kernel in ("epoch", "matmul"):  # the slowdown is the pair's median over the median alone
        r = rows[kernel]
        assert r["slowdown"] == pytest.approx(statistics.median(r["pair_s"]) / statistics.median(r["alone_s"]))
        assert r["two_mapper_ceiling"] == pytest.approx(2 / r["slowdown"])
    assert all(t > 0 for r in rows.values() for t in r["pair_s"])
    assert set(result["spin_cpu_ms"]) == {"1", "2"} and all(v > 0 for v in result["spin_cpu_ms"].values())


def test_cores(tmp_path):
    rows = smoke("cores", tmp_path)
    assert [(r["engine"], r["mappers"]) for r in rows] == [("spark", 2), ("mpi", 2), ("local", 1)]
    roles = [set(r["cpu_ms_per_round"]) for r in rows]
    assert {"driver", "spark worker"} <= roles[0] and {"driver", "rank 1"} <= roles[1] and "driver" in roles[2]
    assert len(rows[0]["cpu_ms_per_round"]["spark worker"]) >= 2  # one Python worker a mapper (and the daemon)
    for r in rows:
        assert r["rounds_measured"] == 2 and r["wall_s_per_round"] > 0
        total = sum(sum(v) for k, v in r["cpu_ms_per_round"].items() if k != "other") / 1000  # the run's own
        assert r["cores_busy"] == pytest.approx(total / r["wall_s_per_round"])
        assert 0 < r["cores_busy"] <= (os.cpu_count() or 1) * 1.25  # /proc's ticks are 10 ms: a little slack


def test_scaling(tmp_path):
    from matplotlib.image import imread

    rows = smoke("scaling", tmp_path)
    modes = ["averaging", "sync hub", "sync tasks"]
    assert [(r["sweep"], r["mode"], r["mappers"]) for r in rows] == (
        [("mappers", m, k) for k in (2, 3) for m in modes] + [("params", m, 2) for m in modes] * 2
    )
    assert sorted({r["params"] for r in rows if r["sweep"] == "params"}) == [10000, 100021]
    by = {(r["mode"], r["mappers"]): r for r in rows if r["sweep"] == "mappers"}
    vector = by["averaging", 2]["vector_bytes"]
    for k in (2, 3):
        # averaging: every mapper's weights come to the driver; through the hub, a gradient a mapper a step
        assert by["averaging", k]["driver_received_bytes_per_round"] >= k * vector
        hub = by["sync hub", k]
        assert hub["driver_received_bytes_per_round"] >= k * hub["steps_per_round"] * vector
        # among the tasks: the round's weights once, and a small record per mapper, whatever k
        assert vector <= by["sync tasks", k]["driver_received_bytes_per_round"] < vector + k * 2048
    for r in rows:
        assert r["overhead_ms_per_step"] == pytest.approx(1000 * r["overhead_seconds"] / r["steps_per_round"])
    assert imread(tmp_path / "results/smoke/scaling.png").shape == (450, 1500, 4)  # 15 x 4.5 in at 100 dpi


def test_memory(tmp_path):
    result = smoke("memory", tmp_path)
    by_size, by_rounds = result["by_size"], result["by_rounds"]
    assert [(r["samples"], r["rounds"]) for r in by_size] == [(2000, 2), (8000, 2)]
    assert [r["data_mb"] for r in by_size] == [n * 784 * 4 / 2**20 for n in (2000, 8000)]
    assert by_size[1]["mapper_peak_mb"] > by_size[0]["mapper_peak_mb"]  # a mapper holds its shard
    assert [r["rounds"] for r in by_rounds] == [10, 100]  # the runs ran every round asked for


def test_sync_rounds(tmp_path):
    rows = smoke("sync_rounds", tmp_path)
    assert [r["engine"] for r in rows] == ["local", "spark tasks", "spark hub", "mpi"]
    assert [r["vs_mpi"] for r in rows] == [r["seconds_per_round"] / rows[-1]["seconds_per_round"] for r in rows]
    # every engine averages the same gradients in the same order: the same steps and the same model
    assert len({r["steps_per_round"] for r in rows}) == 1
    assert len({r["final_accuracy"] for r in rows}) == 1


@needs_torch
def test_time_to_target(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from time_to_target import SMOKE_SYSTEMS
    finally:
        sys.path.remove(str(ROOT / "bench"))

    result = smoke("time_to_target", tmp_path)
    assert list(result) == ["digits"] and result["digits"]["target"] == 0.8
    rows = result["digits"]["rows"]
    assert [r["system"] for r in rows] == SMOKE_SYSTEMS
    for r in rows:  # a time only where the target was reached
        assert (r["train_seconds"] is None) == (r["final_accuracy"] < 0.8), r
        if "MLlib" not in r["system"]:  # MLlib counts L-BFGS iterations, the others epochs (at most 3)
            assert 1 <= r["epochs"] <= 3, r
    spark_2 = next(r for r in rows if r["system"] == "nnlib Spark stage, 2 mappers")
    assert spark_2["ratio_to_nnlib_spark_2"] in (None, 1.0)
    mpi_2 = next(r for r in rows if r["system"] == "nnlib MPI, 2 ranks")  # the same two shards, the same model
    assert (mpi_2["epochs"], mpi_2["final_accuracy"]) == (spark_2["epochs"], spark_2["final_accuracy"])


def test_reference_accuracy(tmp_path):
    from nnlib.config import load_config
    from nnlib.driver import run

    result = smoke("reference_accuracy", tmp_path)
    (row,) = result["rows"]
    assert row["seed"] == 0
    assert (result["median_sklearn_mlp"], result["median_nnlib_1_mapper"]) == (
        row["sklearn_mlp"],
        row["nnlib_1_mapper"],
    )
    # the number is the recipe's run itself (same seed, same weights)
    recipe = run(
        load_config(
            None,
            [
                "seed=0",
                "mappers=1",
                "train.rounds=30",
                "model.hidden=[128]",
                "train.lr=0.3",
                "train.lr_schedule=cosine",
            ],
        ),
        log=lambda _m: None,
    )
    assert row["nnlib_1_mapper"] == recipe.summary["final_test_accuracy"]


def test_data_scale(tmp_path):
    result = smoke("data_scale", tmp_path)
    rows = result["sizes"]
    assert result["baseline"]["rows"] == 4000
    assert [(r["rows"], r["test_rows_on"]) for r in rows] == [
        (20_000, "mappers"),
        (80_000, "mappers"),
        (80_000, "driver"),
    ]
    assert result["driver_growth"] == pytest.approx(rows[1]["driver_peak_mb"] / rows[0]["driver_peak_mb"] - 1)
    assert rows[1]["test_accuracy"] == rows[2]["test_accuracy"]  # the test rows scored where they are kept or not
    for r in rows:
        assert r["data_mb"] == r["rows"] * 64 * 4 / 2**20
        assert r["mapper_limit_mb"] == pytest.approx(2 * r["kept_mb"] + result["fixed_mapper_mb"])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "blobs-20000x64",
        "blobs-4000x64",
        "blobs-80000x64",
    ]


def test_predict_scale(tmp_path):
    result = smoke("predict_scale", tmp_path)
    rows = result["sizes"]
    assert [r["rows"] for r in rows] == [20_000, 80_000] and result["slots"] == 4
    assert result["baseline"]["rows"] == result["model_rows"] == 4000
    assert result["driver_growth"] == pytest.approx(rows[1]["driver_peak_mb"] / rows[0]["driver_peak_mb"] - 1)
    for r in [result["baseline"], *rows]:
        assert r["data_mb"] == r["rows"] * 64 * 4 / 2**20
        assert r["rows_per_s"] == pytest.approx(r["rows"] / r["seconds"])
        assert 0.1 < r["accuracy"] <= 1  # ten classes: a trained model beats 0.1
    # every row is written: 4k, 20k then 80k rows of predictions
    assert result["baseline"]["output_mb"] < rows[0]["output_mb"] < rows[1]["output_mb"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "blobs-20000x64",
        "blobs-4000x64",
        "blobs-80000x64",
    ]


def test_connect(tmp_path):
    result = smoke("connect", tmp_path)
    assert [r["system"] for r in result["rounds"]] == [
        "classic stage, local[2]",
        "classic jobs, local[2]",
        "connect (jobs), local[2] server",
    ]
    assert all(r["round_s"] >= r["max_mapper_s"] > 0 for r in result["rounds"])
    assert [r["mappers"] for r in result["bytes"]] == [2, 4]
    # the client's traffic a round does not grow with the mappers beyond their stats (a few hundred bytes each)
    small, large = (r["collected_bytes"] for r in result["bytes"])
    assert small > 4 * 10**6 * 0.9 and large - small < 4096


def test_wide(tmp_path):
    result = smoke("wide", tmp_path)
    assert (result["rows"], result["columns"], result["repeats"]) == (100, 2000, 1)
    assert result["same_weights"] is True  # the Spark run's model.npz equals the local run's, bit for bit
    table = result["table"]
    assert [(r["command"], r["engine"]) for r in table] == [
        (c, e) for c in ("nnlib run", "nnlib predict") for e in ("local", "spark", "spark, 10 columns")
    ]
    for r in table:
        assert len(r["repeats_s"]) == 1 and r["median_s"] == pytest.approx(statistics.median(r["repeats_s"]))
    for local, spark, narrow in zip(table[::3], table[1::3], table[2::3]):  # against the same command's medians
        assert spark["ratio_to_local"] == pytest.approx(spark["median_s"] / local["median_s"])
        assert spark["target_s"] == pytest.approx(5 * local["median_s"] + 30)
        assert spark["met"] == (spark["median_s"] <= spark["target_s"])
        assert spark["over_narrow_s"] == pytest.approx(spark["median_s"] - narrow["median_s"])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["wide-100x10.parquet", "wide-100x2000.parquet"]


@needs_torch
def test_regression(tmp_path):
    from sklearn.datasets import load_diabetes, make_friedman1

    from nnlib.api import train

    result = smoke("regression", tmp_path)
    systems = ["nnlib, 1 mapper", "nnlib, 4 mappers", "scikit-learn MLPRegressor", "plain torch loop"]
    rows = result["rows"]
    assert [(r["data"], r["system"]) for r in rows] == [(d, s) for d in ("diabetes", "friedman") for s in systems]
    for r in rows:  # one seed: its figure is the median
        assert r["seeds"] == [0] and len(r["r2"]) == len(r["seconds"]) == 1
        assert (r["median_r2"], r["median_seconds"]) == (r["r2"][0], r["seconds"][0])
        assert r["r2"][0] <= 1 and r["seconds"][0] > 0
    by = {(r["data"], r["system"]): r for r in rows}
    gap = by["friedman", systems[1]]["median_r2"] - by["friedman", systems[3]]["median_r2"]
    assert result["friedman_4_mappers_minus_torch"] == pytest.approx(gap)
    assert result["met"] == (gap >= -result["margin"])
    # each set's own test set is its last 20% (rounded up), the same rows for every system
    data = tmp_path / "data"
    for name, (x, y), rows_ in (
        ("diabetes", load_diabetes(return_X_y=True), 442),
        ("friedman", make_friedman1(n_samples=2000, noise=1.0, random_state=0), 2000),
    ):
        shape = result["data"][name]
        n_test = -(-rows_ // 5)
        assert (shape["train_rows"], shape["test_rows"]) == (rows_ - n_test, n_test)
        assert shape["epochs"] == shape["rounds"] * shape["local_epochs"]
        with np.load(data / ("diabetes.npz" if name == "diabetes" else "friedman1-2000.npz")) as f:
            np.testing.assert_array_equal(f["x_test"], x[-n_test:])
            np.testing.assert_array_equal(f["y"], y[:-n_test])
        # nnlib's figure is the run its settings make (4 mappers, seed 0), read from the same file
        sets = [s.replace("data.source=", f"data.source={data}/") for s in shape["nnlib_sets"]]
        run = train(None, sets, write=False)
        assert run.summary["final_test_r2"] == by[name, systems[1]]["r2"][0]


def test_disk_shards(tmp_path):
    result = smoke("disk_shards", tmp_path)
    epoch = result["epoch"]
    assert (epoch["rows"], epoch["features"], epoch["epochs_each"]) == (2000, 784, 2)
    assert epoch["same_weights"] is True  # exact sampling: the disk runs' weights are the memory runs', bit for bit
    assert epoch["memory_epoch_s"] == statistics.median(epoch["memory_epochs_s"])
    assert epoch["disk_epoch_s"] == statistics.median(epoch["disk_epochs_s"])
    assert epoch["ratio"] == pytest.approx(epoch["disk_epoch_s"] / epoch["memory_epoch_s"])
    assert epoch["best_ratio"] == pytest.approx(min(epoch["disk_epochs_s"]) / min(epoch["memory_epochs_s"]))
    assert epoch["cpu_ratio"] == pytest.approx(
        statistics.median(epoch["disk_cpu_s"]) / statistics.median(epoch["memory_cpu_s"])
    )
    assert len(epoch["memory_cpu_s"]) == len(epoch["disk_cpu_s"]) == len(epoch["disk_epochs_s"]) == 2
    rows = result["memory"]
    assert [(r["rows"], r["storage"]) for r in rows] == [(n, s) for n in (20_000, 80_000) for s in ("memory", "disk")]
    for r in rows:
        assert r["shard_mb"] == r["rows"] * 64 * 4 / 2**20
        assert r["build_peak_mb"] >= r["fixed_mb"]  # the shard is built in memory with either storage
    for memory, disk in zip(rows[::2], rows[1::2]):
        assert memory["loss"] == disk["loss"]  # the same steps on the same rows
    assert rows[3]["train_peak_mb"] < rows[2]["train_peak_mb"]  # the disk mapper does not hold its shard
    disk = [r for r in rows if r["storage"] == "disk"]
    assert result["disk_train_growth"] == pytest.approx(disk[-1]["train_peak_mb"] / disk[0]["train_peak_mb"] - 1)


def test_disk_cluster(tmp_path):
    result = smoke("disk_cluster", tmp_path)
    assert (result["workers"], result["limit_mb"]) == (2, 1024)
    assert result["limit_seen_by_workers"] is True  # the workers' Python ran under spark.executor.pyspark.memory
    assert result["parquet_mb"] >= 40 and result["data_removed"] is True
    memory, auto = result["memory"], result["auto"]
    assert memory["returncode"] == 0 and auto["returncode"] == 0  # the smoke's 40 MB fit either way
    assert memory["shards_line"] is None  # said only by auto
    assert auto["shards_line"].startswith("shards: disk (the largest shard is ~")
    for run in (memory, auto):
        assert run["n_train"] + run["n_test"] == result["rows"]
        assert len(run["mapper_peak_mb"]) == 2 and run["test_accuracy"] > 0.5  # chance is 0.1
        assert run["scratch_left"] == []
