"""Synchronous gradient averaging (combine: gradient): what one step's exchange costs on each engine.

    python bench/sync_rounds.py           # 60000x784, hidden 128, batch 32 per mapper, 2 mappers
    python bench/sync_rounds.py --smoke   # a 6000x784 set

On Spark the stage's tasks average among themselves (``spark.collective:
tasks``: a reduce-scatter by slices, summed in mapper order, then an
allgather, over their own sockets), or every step each mapper sends its
gradient to the driver, which averages them in mapper order and sends the
mean back (``spark.collective: driver``, the hub); MPI averages with one
Allreduce per step; the local engine visits both shards in turn in one
process. All four run side by side in one invocation. Reported: seconds per
synchronous round (one epoch of the smallest shard; median of rounds 2-3),
steps per round, and the time in gradient averaging per step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table, median, mpi_launcher, nnlib_run, synthetic_npz, write_result  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    source = str(synthetic_npz(6000, 1000) if args.smoke else synthetic_npz())
    mpiexec = mpi_launcher(2)
    rows = []
    for name, sets, launcher in [
        ("local", ["engine=local"], ()),
        ("spark tasks", ["engine=spark", "spark.collective=tasks"], ()),
        ("spark hub", ["engine=spark", "spark.collective=driver"], ()),
        ("mpi", ["engine=mpi"], mpiexec),
    ]:
        res = nnlib_run(
            [
                *sets,
                "mappers=2",
                f"data.source={source}",
                "model.hidden=[128]",
                "combine=gradient",
                "train.batch_size=32",
                "train.local_epochs=1",
                "train.rounds=3",
            ],
            launcher,
        )
        later = res["rounds"][1:]
        steps = res["mappers"][0]["steps"]
        rows.append(
            {
                "engine": name,
                "steps_per_round": steps,
                "seconds_per_round": median(r["seconds"] for r in later),
                "averaging_ms_per_step": 1000 * median(r["combine_seconds"] for r in later) / steps,
                "final_accuracy": res["summary"]["final_test_accuracy"],
            }
        )
        print(rows[-1], flush=True)
    mpi = next(r["seconds_per_round"] for r in rows if r["engine"] == "mpi")
    for r in rows:
        r["vs_mpi"] = r["seconds_per_round"] / mpi
    print(
        markdown_table(
            rows,
            ["engine", "steps_per_round", "seconds_per_round", "vs_mpi", "averaging_ms_per_step", "final_accuracy"],
        )
    )
    write_result("smoke/sync_rounds" if args.smoke else "sync_rounds", rows)


if __name__ == "__main__":
    main()
