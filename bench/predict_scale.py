"""Driver memory against data size for ``nnlib predict --set engine=spark`` on a Parquet dataset.

    python bench/predict_scale.py           # 250k x 64 and 2M x 64, 16 files each; Spark local[4]
    python bench/predict_scale.py --smoke   # 20k x 64 and 80k x 64

The model is an MLP (64-32-10) trained once with ``engine=local`` on the
4k-row dataset of bench/data_scale.py (the same 16-file Gaussian blobs).
Each size runs, in a fresh process as a user does,

    nnlib predict RUN DATA --set engine=spark --set spark.master=local[4] --out predictions.parquet

(and once on the 4k rows themselves: the fixed cost, Spark's start-up)
and records the driver's peak resident memory (``ru_maxrss`` of the
Python process that runs ``nnlib predict``: the rows are read, scored and
written by Spark's executors, so it should not grow with the data), the
wall time, and the accuracy ``nnlib predict`` prints (every row is
labelled). Each process is started from this small one, not from the
process that wrote the data (a child's ``ru_maxrss`` starts from its
parent's resident memory at fork).

Target: the driver's peak grows by at most 15% from the smallest to the
largest dataset.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, bench_env, markdown_table, scratch, write_result  # noqa: E402
from data_scale import N_FEATURES, parquet_dataset  # noqa: E402

MODEL_ROWS, SLOTS = 4_000, 4
# the predicting process: nnlib's own command line, then its peak RSS (MiB) as the last line of stdout
PREDICT = (
    "import json, sys, resource; from nnlib.cli import main; status = main(sys.argv[1:]); "
    "print(json.dumps({'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})); "
    "sys.exit(status)"
)


def train_model(out: Path, tmp: Path) -> None:
    """``nnlib run`` on the 4k-row blobs (engine=local): the model every size is predicted with."""
    cmd = [sys.executable, "-m", "nnlib", "run", "--out", str(out), "--quiet"]
    for item in (
        "engine=local",
        f"data.source={parquet_dataset(MODEL_ROWS)}",
        "data.features_column=features",
        "model.hidden=[32]",
        "mappers=2",
        "train.rounds=3",
    ):
        cmd += ["--set", item]
    proc = subprocess.run(cmd, cwd=ROOT, env=bench_env(tmp), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def measure(run_dir: Path, n_rows: int, tmp: Path) -> dict:
    data = parquet_dataset(n_rows)
    out = tmp / f"predictions-{n_rows}.parquet"
    cmd = [
        sys.executable,
        "-c",
        PREDICT,
        "predict",
        str(run_dir),
        str(data),
        "--set",
        "engine=spark",
        "--set",
        f"spark.master=local[{SLOTS}]",
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=bench_env(tmp), capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    said, peak = proc.stdout.strip().splitlines()[-2:]
    rows = int(said.split("predict: ", 1)[1].split(" rows", 1)[0])
    accuracy = float(said.split("accuracy ", 1)[1].split(",", 1)[0])
    if rows != n_rows:
        raise RuntimeError(f"nnlib predict reported {rows} rows of {n_rows}: {said}")
    written = sum(f.stat().st_size for f in out.glob("part-*.parquet"))
    return {
        "rows": n_rows,
        "data_mb": n_rows * N_FEATURES * 4 / 2**20,
        "driver_peak_mb": json.loads(peak)["peak_mb"],
        "seconds": seconds,
        "rows_per_s": n_rows / seconds,
        "accuracy": accuracy,
        "output_mb": written / 2**20,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    sizes = [20_000, 80_000] if args.smoke else [250_000, 2_000_000]
    with scratch() as tmp:
        tmp = Path(tmp)
        run_dir = tmp / "model"
        train_model(run_dir, tmp)
        base = measure(run_dir, MODEL_ROWS, tmp)  # the fixed cost: Spark's start, the listing job
        print(
            f"baseline {MODEL_ROWS:,d} rows: driver {base['driver_peak_mb']:.1f} MB, {base['seconds']:.0f} s",
            flush=True,
        )
        rows = []
        for n in sizes:
            rows.append(measure(run_dir, n, tmp))
            r = rows[-1]
            print(
                f"{n:>9,d} rows ({r['data_mb']:.0f} MB): driver {r['driver_peak_mb']:.1f} MB, {r['seconds']:.0f} s "
                f"({r['rows_per_s']:,.0f} rows/s), accuracy {r['accuracy']:.4f}",
                flush=True,
            )
    growth = rows[-1]["driver_peak_mb"] / rows[0]["driver_peak_mb"] - 1
    print(markdown_table(rows, ["rows", "data_mb", "driver_peak_mb", "seconds", "rows_per_s", "accuracy", "output_mb"]))
    print(f"driver growth {100 * growth:.1f}% (target <= 15%)")
    write_result(
        "smoke/predict_scale" if args.smoke else "predict_scale",
        {"model_rows": MODEL_ROWS, "slots": SLOTS, "baseline": base, "sizes": rows, "driver_growth": growth},
    )


if __name__ == "__main__":
    main()
