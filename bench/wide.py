"""A wide Parquet table on Spark against the local engine: ``nnlib run`` and ``nnlib predict``, wall time.

    python bench/wide.py             # 600 rows x 12,000 float32 columns (and x 10), 3 repeats
    python bench/wide.py --smoke     # 100 rows x 2,000 columns, 1 repeat

Each repeat runs, in fresh processes as a user does, side by side:

    nnlib run --set data.source=wide.parquet --set engine=local --set mappers=2 ...
    nnlib run --set data.source=wide.parquet --set engine=spark --set spark.master=local[2] --set mappers=2 ...
    nnlib predict RUN wide.parquet --set engine=local --out predictions.parquet
    nnlib predict RUN wide.parquet --set engine=spark --set spark.master=local[2] --out predictions.parquet

(2 rounds of one local epoch, an MLP of 64 hidden units) and records each
process's wall time; the figures are medians over the repeats. The Spark
run's model.npz must equal the local run's, bit for bit (``same_weights``).
The same two Spark commands on a file of the same rows and 10 columns give
Spark's fixed cost on the machine at that moment (its JVM, its first Python
worker, the stage): what the wide file costs beyond it is the reader's part
(``over_narrow_s``), which should not grow with the columns faster than the
data does.

Target (after sparklyr#1149's report: Spark took 202 s where the local
engine took 2.2 s, all of it before round 1): each Spark command within
5x the local engine's wall time plus 30 s for Spark's start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA, ROOT, bench_env, markdown_table, median, scratch, write_result  # noqa: E402

TRAIN = ["mappers=2", "train.rounds=2", "train.local_epochs=1", "model.hidden=[64]", "seed=1"]
SPARK = ["engine=spark", "spark.master=local[2]"]
START_ALLOWANCE_S, FACTOR = 30.0, 5.0


def wide_file(rows: int, columns: int) -> Path:
    """``rows`` x ``columns`` float32 columns ``f0, f1, ...`` (10 Gaussian blobs) and an int64 ``label``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = DATA / f"wide-{rows}x{columns}.parquet"
    if not path.exists():
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, rows)
        x = (rng.normal(0, 1, (10, columns))[y] + rng.normal(0, 1, (rows, columns))).astype(np.float32)
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(columns)}, "label": y}), tmp)
        tmp.rename(path)
    return path


def timed(args: list[str], tmp: Path) -> float:
    """``python -m nnlib ARGS`` in a fresh process; its wall time in seconds."""
    cmd = [sys.executable, "-m", "nnlib", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=bench_env(tmp), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


ENGINES = (("local", ["engine=local"]), ("spark", SPARK))


def repeat(data: Path, narrow: Path) -> tuple[dict, bool]:
    """One repeat: each command's wall time, and whether Spark's weights equal the local engine's."""
    from nnlib.outputs import load_model

    seconds = {}
    with scratch() as folder:
        tmp = Path(folder)
        for engine, extra in ENGINES:
            seconds[("run", engine)] = timed(
                ["run", "--quiet", "--out", str(tmp / engine), *sets([f"data.source={data}", *TRAIN, *extra])], tmp
            )
        seconds[("run", "spark, 10 columns")] = timed(
            ["run", "--quiet", "--out", str(tmp / "narrow"), *sets([f"data.source={narrow}", *TRAIN, *SPARK])], tmp
        )
        for engine, extra in ENGINES:
            seconds[("predict", engine)] = timed(
                [
                    "predict",
                    str(tmp / "local"),
                    str(data),
                    *sets(extra),
                    "--out",
                    str(tmp / f"predictions-{engine}.parquet"),
                ],
                tmp,
            )
        seconds[("predict", "spark, 10 columns")] = timed(
            [
                "predict",
                str(tmp / "narrow"),
                str(narrow),
                *sets(SPARK),
                "--out",
                str(tmp / "predictions-narrow.parquet"),
            ],
            tmp,
        )
        local, spark = (load_model(tmp / e / "model.npz") for e in ("local", "spark"))
        same = local.keys() == spark.keys() and all(np.array_equal(local[k], spark[k]) for k in local)
    return seconds, same


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    rows, columns = (100, 2_000) if args.smoke else (600, 12_000)
    repeats = args.repeats or (1 if args.smoke else 3)
    data, narrow = wide_file(rows, columns), wide_file(rows, 10)
    runs, same = [], []
    for r in range(repeats):
        seconds, equal = repeat(data, narrow)
        runs.append(seconds)
        same.append(equal)
        print(
            f"repeat {r + 1}/{repeats}: "
            + ", ".join(f"{w} {e} {s:.1f} s" for (w, e), s in seconds.items())
            + f"; same weights: {equal}",
            flush=True,
        )
    table = []
    for what in ("run", "predict"):
        local = median(s[(what, "local")] for s in runs)
        fixed = median(s[(what, "spark, 10 columns")] for s in runs)
        for engine in ("local", "spark", "spark, 10 columns"):
            times = [s[(what, engine)] for s in runs]
            row = {"command": f"nnlib {what}", "engine": engine, "repeats_s": times, "median_s": median(times)}
            if engine == "spark":
                row["target_s"] = FACTOR * local + START_ALLOWANCE_S
                row["ratio_to_local"] = row["median_s"] / local
                row["met"] = row["median_s"] <= row["target_s"]
                row["over_narrow_s"] = row["median_s"] - fixed
            table.append(row)
    print(
        markdown_table(table, ["command", "engine", "median_s", "ratio_to_local", "target_s", "met", "over_narrow_s"])
    )
    print(f"Spark's weights equal the local engine's in every repeat: {all(same)}")
    write_result(
        "smoke/wide" if args.smoke else "wide",
        {
            "rows": rows,
            "columns": columns,
            "repeats": repeats,
            "train": TRAIN,
            "spark": SPARK,
            "same_weights": all(same),
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
