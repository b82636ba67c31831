"""Peak memory of the driver and of one mapper against data size, and the driver's against rounds.

    python bench/memory.py            # Spark stage, 2 mappers, synthetic 784 features: 10k, 40k, 160k samples
    python bench/memory.py --smoke    # 2k and 8k samples, and 10 against 100 rounds

Peak resident memory as each process reports it (``ru_maxrss``):
``driver_peak_rss_mb`` in summary.json (the Python driver, not its JVM)
and ``peak_rss_mb`` in mapper_times.csv (a mapper's Python worker).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table, nnlib_run, write_result  # noqa: E402


def peaks(sets: list[str]) -> dict:
    res = nnlib_run(["engine=spark", "mappers=2", "spark.master=local[2]", *sets])
    return {
        "driver_peak_mb": res["summary"]["driver_peak_rss_mb"],
        "mapper_peak_mb": max(r["peak_rss_mb"] for r in res["mappers"]),
        "rounds": res["summary"]["rounds_run"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    sizes = [2000, 8000] if args.smoke else [10_000, 40_000, 160_000]
    by_size = []
    for n in sizes:
        row = {
            "samples": n,
            "data_mb": n * 784 * 4 / 2**20,
            **peaks(
                [
                    "data.source=synthetic",
                    f"data.n_samples={n}",
                    "data.n_features=784",
                    "data.n_classes=10",
                    "model.hidden=[128]",
                    "train.rounds=2",
                    "train.local_steps=10",
                ]
            ),
        }
        by_size.append(row)
        print(
            f"{n:>8,d} samples ({row['data_mb']:.0f} MB float32)  driver {row['driver_peak_mb']:.0f} MB  "
            f"mapper {row['mapper_peak_mb']:.0f} MB",
            flush=True,
        )
    by_rounds = []
    for rounds in (10, 100) if args.smoke else (10, 100, 1000):
        row = peaks(["model.hidden=[64]", f"train.rounds={rounds}", "train.local_steps=1"])
        by_rounds.append(row)
        print(f"{rounds:>5d} rounds on digits  driver {row['driver_peak_mb']:.0f} MB", flush=True)
    print(markdown_table(by_size, ["samples", "data_mb", "driver_peak_mb", "mapper_peak_mb"]))
    print(markdown_table(by_rounds, ["rounds", "driver_peak_mb", "mapper_peak_mb"]))
    write_result("smoke/memory" if args.smoke else "memory", {"by_size": by_size, "by_rounds": by_rounds})


if __name__ == "__main__":
    main()
