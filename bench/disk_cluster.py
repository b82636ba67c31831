"""Disk shards on a standalone cluster: a Parquet dataset four times the executors' Python memory trains from disk.

    python bench/disk_cluster.py           # 1 worker, spark.executor.pyspark.memory=1024m, Parquet of at
                                           # least 4 x 1,024 MB: memory fails, auto chooses disk and trains
    python bench/disk_cluster.py --workers 2 --limit-mb 1024   # 2 workers: at least 4 x 2,048 MB
    python bench/disk_cluster.py --smoke   # the same steps on 40 MB of Parquet (both storages train)

A standalone cluster on 127.0.0.1 (tests/spark_cluster.py: a master and
``--workers`` one-core workers) and a Parquet dataset of 10 separable
Gaussian blobs x 128 float32 features (a ``features`` list column and a
``label``) generated under the temporary folder, file by file until its
files hold ``--factor`` times the sum of the workers' Python memory limits
(``spark.executor.pyspark.memory``, an address-space limit on every Python
worker). One mapper per worker. Two runs of ``nnlib run`` as a user runs
them: ``data.shard_storage=memory``, which must fail in one line (a mapper
cannot hold its shard), then ``auto``, which must say it chose disk and
train. 1% of the rows are the test set, which the driver collects (under
``spark.collect_held_out_mb``): held-out rows kept by the mappers stay in
memory with either storage. Recorded: the dataset's bytes, each run's wall
time, its last stderr line (memory) or its ``shards:`` line (auto), the
mappers' peak resident memory (mapper_times.csv), the test accuracy. The
data, the runs and the cluster are removed at the end.

``--smoke`` keeps the steps on 40 MB of data, which fits: the memory run
trains, and the auto run is given ``data.memory_per_mapper_mb`` just past a
worker's fixed cost so that it takes the disk path.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import ROOT, scratch, write_result  # noqa: E402

# wide enough that what a mapper holds per row (its positions, the epoch's order: 8 bytes each) stays small
# beside the rows; narrow enough that a survey batch (10,000 rows as float64) stays small under the limit
PYSPARK_MEMORY = "spark.executor.pyspark.memory"
N_FEATURES = 128
FILE_ROWS = 120_000  # rows per Parquet file (about 60 MB)
GROUP_ROWS = 8192  # rows per row group (4 MB): a worker reads a row group at a time, under its limit


def blobs_parquet(folder: Path, target_bytes: int) -> tuple[int, int]:
    """Parquet files of blobs x 128 in ``folder`` until they hold ``target_bytes``; ``(rows, bytes)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    centres = np.random.default_rng(0).normal(0, 1, size=(10, N_FEATURES))
    rows = size = i = 0
    while size < target_bytes:
        rng = np.random.default_rng([1, i])
        n = FILE_ROWS if target_bytes - size > 40 * 2**20 else FILE_ROWS // 8
        y = rng.integers(0, 10, n)
        x = (centres[y] + rng.normal(size=(n, N_FEATURES))).astype(np.float32)
        path = folder / f"part-{i:05d}.parquet"
        table = pa.table({"features": pa.FixedSizeListArray.from_arrays(x.ravel(), N_FEATURES), "label": y})
        pq.write_table(table, path, row_group_size=GROUP_ROWS)
        rows, size, i = rows + n, size + path.stat().st_size, i + 1
    return rows, size


def nnlib_run(out: Path, env: dict, sets: list[str], timeout: float) -> dict:
    """One ``nnlib run``: its exit code, wall time, stdout and stderr."""
    cmd = [sys.executable, "-m", "nnlib", "run", "--out", str(out)]
    for item in sets:
        cmd += ["--set", item]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return {
        "returncode": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "stdout": proc.stdout,
        "stderr": proc.stderr,
    }


def mapper_peaks(out: Path) -> list[float]:
    """Each mapper's peak resident memory (MB) over the run, from mapper_times.csv."""
    peaks: dict[str, float] = {}
    with open(out / "mapper_times.csv") as f:
        for row in csv.DictReader(f):
            peaks[row["mapper"]] = max(peaks.get(row["mapper"], 0.0), float(row["peak_rss_mb"]))
    return [peaks[m] for m in sorted(peaks, key=int)]


def measure(workers: int, limit_mb: int, factor: float, smoke: bool, conf: dict | None = None) -> dict:
    from spark_cluster import StandaloneCluster, cluster_env

    budget = workers * limit_mb * 2**20
    target = 40 * 2**20 if smoke else int(factor * budget)
    with scratch() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        rows, size = blobs_parquet(tmp / "blobs", target)
        generated_s = time.perf_counter() - started
        print(f"{rows:,d} rows x {N_FEATURES} in {size / 2**20:,.0f} MB of Parquet ({generated_s:.0f} s)", flush=True)
        shards = tmp / "scratch"
        shards.mkdir()
        cluster = StandaloneCluster(tmp / "cluster").start(n_workers=workers)
        try:
            env = dict(cluster_env(cluster.folder), TMPDIR=str(tmp))
            common = [
                "engine=spark",
                f"mappers={workers}",
                f"spark.master={cluster.url}",
                f"data.source={tmp / 'blobs'}",
                "data.features_column=features",
                "data.test_fraction=0.01",
                f"data.scratch_dir={shards}",
                "model.hidden=[32]",
                "train.rounds=2",
                "train.local_steps=50",
                "train.lr=0.05",
                "spark.conf={"
                + ", ".join(f"{k}: {v!r}" for k, v in {PYSPARK_MEMORY: f"{limit_mb}m", **(conf or {})}.items())
                + "}",
            ]
            runs = {}
            for storage in ("memory", "auto"):
                extra = [f"data.shard_storage={storage}"]
                if smoke and storage == "auto":  # the smoke's data fits: a budget just past the fixed cost
                    extra.append("data.memory_per_mapper_mb=321")
                out = tmp / storage
                got = nnlib_run(out, env, common + extra, timeout=600 if smoke else 3600)
                run = {"storage": storage, "returncode": got["returncode"], "wall_s": got["wall_s"]}
                if got["returncode"] == 0:
                    summary = json.loads((out / "summary.json").read_text())
                    run.update(
                        n_train=summary["n_train"],
                        n_test=summary["n_test"],
                        test_accuracy=summary["final_test_accuracy"],
                        mapper_peak_mb=mapper_peaks(out),
                        shards_line=next(
                            (line for line in got["stdout"].splitlines() if line.startswith("shards: ")), None
                        ),
                    )
                else:
                    run["error"] = (got["stderr"].strip().splitlines() or [""])[-1]
                run["scratch_left"] = sorted(p.name for p in shards.iterdir())
                runs[storage] = run
                print(json.dumps(run), flush=True)
                shutil.rmtree(out, ignore_errors=True)
            logs = "".join(p.read_text(errors="replace") for p in (tmp / "cluster/work").glob("*/*/stderr"))
            limit_set = f"Setting mem limits to {limit_mb * 2**20}" in logs
        finally:
            cluster.stop()
    return {
        "workers": workers,
        "limit_mb": limit_mb,
        "limits_sum_mb": workers * limit_mb,
        "conf": conf or {},
        "rows": rows,
        "parquet_mb": round(size / 2**20, 1),
        "times_limits": round(size / budget, 2),
        "features_mb": round(rows * N_FEATURES * 4 / 2**20, 1),
        "generate_s": round(generated_s, 1),
        "limit_seen_by_workers": limit_set,
        "memory": runs["memory"],
        "auto": runs["auto"],
        "data_removed": not tmp.exists(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--workers", type=int, default=1)
    # a Spark Python worker maps 500-600 MB before it holds a row: at 400m it cannot survey Parquet at all
    # (pyarrow's malloc fails), and at 640m a survey of 256-wide rows fails on a 20 MB array
    parser.add_argument("--limit-mb", type=int, default=1024, help="spark.executor.pyspark.memory of each worker")
    parser.add_argument("--factor", type=float, default=4.0, help="the Parquet bytes over the limits' sum")
    parser.add_argument("--conf", action="append", default=[], help="KEY=VALUE: another Spark setting")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.limit_mb = 2, 1024
    free = shutil.disk_usage(os.environ.get("TMPDIR") or "/tmp").free
    need = (
        40 * 2**20 if args.smoke else args.factor * args.workers * args.limit_mb * 2**20
    ) * 3  # data, shuffle, shards
    if free < need:
        sys.exit(f"bench/disk_cluster.py needs about {need / 2**30:.1f} GB free in TMPDIR, has {free / 2**30:.1f}")
    conf = dict(item.split("=", 1) for item in args.conf)
    result = measure(args.workers, args.limit_mb, args.factor, args.smoke, conf)
    print(json.dumps({k: v for k, v in result.items() if k not in ("memory", "auto")}))
    write_result("smoke/disk_cluster" if args.smoke else "disk_cluster", result)


if __name__ == "__main__":
    main()
