"""Memory against data size for a Parquet dataset read by Spark's executors: the driver and one mapper.

    python bench/data_scale.py           # 250k x 64 and 2M x 64, 16 files each; 4 mappers, Spark local[4]
    python bench/data_scale.py --smoke   # 20k x 64 and 80k x 64

Each size runs ``nnlib run`` with ``engine=spark`` (``spark.mode=stage``) on
a Parquet dataset of 16 float32 files (20% test rows, the default), 2 rounds
of 5 local steps, and a baseline run on a 4k-row dataset of the same width
(the fixed cost of a Python mapper: interpreter, numpy, pyarrow, nnlib).
Figures are each process's peak resident memory (``ru_maxrss``):
``driver_peak_rss_mb`` from summary.json and the largest ``peak_rss_mb`` of
mapper_times.csv.

The target runs keep the test rows with the mappers, which score them
(``spark.collect_held_out_mb=0``); one more run of the largest size collects
them to the driver instead, to show what that costs. By default a run
collects them up to 64 MB.

Targets: the driver's peak grows by at most 15% from the smallest to the
largest dataset; a mapper's peak is at most twice what it keeps (its shard
and its part of the test rows, float32) plus the fixed cost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, markdown_table, nnlib_run, write_result  # noqa: E402

N_FEATURES, N_FILES, MAPPERS = 64, 16, 4


def parquet_dataset(n_rows: int) -> Path:
    """``n_rows`` x 64 float32 Gaussian blobs of 10 classes in 16 Parquet files, written by a child process.

    Not in this process: on Linux a child's ``ru_maxrss`` starts from its
    parent's resident memory at fork, so a bench process that had written
    the data would inflate every measured driver.
    """
    folder = DATA / f"blobs-{n_rows}x{N_FEATURES}"
    if not (folder / "_SUCCESS").exists():
        subprocess.run([sys.executable, __file__, "--write", str(n_rows)], check=True)
    return folder


def write_dataset(n_rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = DATA / f"blobs-{n_rows}x{N_FEATURES}"
    folder.mkdir(parents=True, exist_ok=True)
    centres = np.random.default_rng(0).normal(0, 2 / np.sqrt(N_FEATURES), size=(10, N_FEATURES))
    for i, rows in enumerate(np.array_split(np.arange(n_rows), N_FILES)):
        rng = np.random.default_rng([1, i])
        y = rng.integers(0, 10, len(rows))
        x = (centres[y] + rng.normal(size=(len(rows), N_FEATURES))).astype(np.float32)
        pq.write_table(
            pa.table({"features": pa.FixedSizeListArray.from_arrays(x.ravel(), N_FEATURES), "label": y}),
            folder / f"part-{i:05d}.parquet",
            row_group_size=65536,
        )
    (folder / "_SUCCESS").write_text("")


def measure(n_rows: int, collect_mb: float = 0) -> dict:
    res = nnlib_run(
        [
            "engine=spark",
            f"mappers={MAPPERS}",
            f"spark.master=local[{MAPPERS}]",
            f"data.source={parquet_dataset(n_rows)}",
            "data.features_column=features",
            f"spark.collect_held_out_mb={collect_mb}",
            "model.hidden=[32]",
            "train.rounds=2",
            "train.local_steps=5",
        ]
    )
    kept_rows = max(int(r["n_samples"]) for r in res["mappers"])
    if collect_mb == 0:  # each mapper also keeps about a quarter of the test rows
        kept_rows += -(-res["summary"]["n_test"] // MAPPERS)
    return {
        "rows": n_rows,
        "test_rows_on": "driver" if collect_mb else "mappers",
        "data_mb": n_rows * N_FEATURES * 4 / 2**20,
        "kept_mb": kept_rows * N_FEATURES * 4 / 2**20,
        "driver_peak_mb": res["summary"]["driver_peak_rss_mb"],
        "mapper_peak_mb": max(float(r["peak_rss_mb"]) for r in res["mappers"]),
        "test_accuracy": res["summary"]["final_test_accuracy"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--write", type=int, help=argparse.SUPPRESS)  # the child that writes a dataset
    args = parser.parse_args(argv)
    if args.write:
        return write_dataset(args.write)
    sizes = [20_000, 80_000] if args.smoke else [250_000, 2_000_000]
    base = measure(4_000)
    fixed = base["mapper_peak_mb"]
    print(
        f"baseline 4k rows: driver {base['driver_peak_mb']:.0f} MB, mapper {fixed:.0f} MB (the fixed cost)", flush=True
    )
    rows = [measure(n) for n in sizes] + [measure(sizes[-1], collect_mb=100_000)]
    for row in rows:
        row["mapper_limit_mb"] = 2 * row["kept_mb"] + fixed
        print(
            f"{row['rows']:>9,d} rows ({row['data_mb']:.0f} MB), test rows on the {row['test_rows_on']}: driver "
            f"{row['driver_peak_mb']:.0f} MB, mapper {row['mapper_peak_mb']:.0f} MB (keeps {row['kept_mb']:.0f} MB, "
            f"limit {row['mapper_limit_mb']:.0f})",
            flush=True,
        )
    growth = rows[1]["driver_peak_mb"] / rows[0]["driver_peak_mb"] - 1
    print(
        markdown_table(
            rows, ["rows", "test_rows_on", "data_mb", "kept_mb", "driver_peak_mb", "mapper_peak_mb", "mapper_limit_mb"]
        )
    )
    print(
        f"driver growth {100 * growth:.1f}% (target <= 15%); every mapper under its limit: "
        f"{all(r['mapper_peak_mb'] <= r['mapper_limit_mb'] for r in rows)}"
    )
    write_result(
        "smoke/data_scale" if args.smoke else "data_scale",
        {"baseline": base, "sizes": rows, "driver_growth": growth, "fixed_mapper_mb": fixed},
    )


if __name__ == "__main__":
    main()
