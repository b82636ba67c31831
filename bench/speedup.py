"""Seconds per epoch against the number of mappers on the 60000x784 set, with the ideal line (a PNG).

    python bench/speedup.py           # Spark stage 1, 2, 4 mappers (local[*], and 2, 4 on a standalone cluster
                                      # of 4 one-core workers on 127.0.0.1); MPI 1, 2 ranks; the one-thread local run
    python bench/speedup.py --smoke   # a 6000x784 set, seconds

    python bench/speedup.py --repeats 5   # more passes (default 3)

Every run trains hidden 128, batch 32, lr 0.1, one local epoch per round, 6
rounds; seconds per epoch is the median round time after the first (training,
exchange, combine and evaluation). The baseline is the in-process local
engine with one mapper, which trains with one BLAS thread, as every nnlib
mapper does; the ideal line is that time divided by the number of mappers
that can run at once (no more than the cores).

This machine's speed drifts by a third or more from one minute to the next,
so the runs on this machine's own cores are made in passes: each pass runs
the baseline and then every engine once, and a row's speedup is the median
over the passes of the pass's baseline over the row's time (a paired ratio);
its seconds per epoch is the median over the passes. The standalone rows
(a cluster started once) are run once, against the median baseline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import RESULTS, markdown_table, median, mpi_launcher, nnlib_run, scratch, synthetic_npz, write_result  # noqa: E402

CLUSTER = "spark standalone, 4 one-core workers"


def run_sets(source: str, engine_sets: list[str], mappers: int, rounds: int = 6) -> list[str]:
    """The ``--set`` items of one run: hidden 128, batch 32, lr 0.1, one local epoch a round (bench/cores.py too)."""
    return [
        *engine_sets,
        f"mappers={mappers}",
        f"data.source={source}",
        "model.hidden=[128]",
        "train.batch_size=32",
        "train.lr=0.1",
        "train.local_epochs=1",
        f"train.rounds={rounds}",
    ]


def seconds_per_epoch(source: str, engine_sets: list[str], mappers: int, launcher=(), rounds: int = 6) -> float:
    res = nnlib_run(run_sets(source, engine_sets, mappers, rounds), launcher)
    return median(r["seconds"] for r in res["rounds"][1:])


def plot(rows: list[dict], baseline: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ks = sorted({r["mappers"] for r in rows})
    cores = os.cpu_count() or 1
    ax.plot(
        ks,
        [baseline / min(k, cores) for k in ks],
        "k--",
        label=f"ideal: one-thread local run / min(mappers, {cores} cores)",
    )
    for engine in dict.fromkeys(r["engine"] for r in rows):
        mine = [r for r in rows if r["engine"] == engine]
        ax.plot([r["mappers"] for r in mine], [r["seconds_per_epoch"] for r in mine], "o-", label=engine)
    ax.set_xlabel("mappers")
    ax.set_ylabel("seconds per epoch")
    ax.set_xticks(ks)
    ax.set_ylim(bottom=0)
    ax.set_title(f"60000x784, hidden 128, batch 32, {os.cpu_count()} cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the engines on this machine's cores")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from results/speedup.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        import json

        rows = json.loads((RESULTS / "speedup.json").read_text())
        plot(rows[1:], rows[0]["seconds_per_epoch"], RESULTS / "speedup.png")
        return
    if args.smoke:
        print("smoke size: a few short rounds, so these figures show only that the script works")
    source = str(synthetic_npz(6000, 1000) if args.smoke else synthetic_npz())
    systems = [("local (in-process, 1 thread)", 1, ["engine=local"], ())]
    systems += [("spark stage", k, ["engine=spark"], ()) for k in ((1, 2) if args.smoke else (1, 2, 4))]
    systems += [("mpi", k, ["engine=mpi"], mpi_launcher(k)) for k in (1, 2)]
    repeats = 1 if args.smoke else args.repeats
    times = {(engine, k): [] for engine, k, _, _ in systems}
    for p in range(repeats):
        for engine, k, sets, launcher in systems:
            times[engine, k].append(seconds_per_epoch(source, sets, k, launcher))
        print(
            f"pass {p + 1}/{repeats}: " + ", ".join(f"{e} {k}: {v[-1]:.3f} s" for (e, k), v in times.items()),
            flush=True,
        )
    base_times = times[systems[0][0], 1]
    baseline = median(base_times)
    rows = [
        {
            "engine": engine,
            "mappers": k,
            "seconds_per_epoch": median(times[engine, k]),
            "repeats_s": times[engine, k],
            "speedup": median(b / t for b, t in zip(base_times, times[engine, k], strict=True)),
        }
        for engine, k, _, _ in systems
    ]
    if not args.smoke:
        from spark_cluster import StandaloneCluster

        with scratch() as tmp:
            cluster = StandaloneCluster(Path(tmp)).start(n_workers=4)
            try:
                for k in (2, 4):
                    t = seconds_per_epoch(source, ["engine=spark", f"spark.master={cluster.url}"], k)
                    rows.append(
                        {
                            "engine": CLUSTER,
                            "mappers": k,
                            "seconds_per_epoch": t,
                            "repeats_s": [t],
                            "speedup": baseline / t,
                        }
                    )
            finally:
                cluster.stop()
    for r in rows:
        print(
            f"{r['engine']:30s} mappers {r['mappers']}  {r['seconds_per_epoch']:.3f} s/epoch  "
            f"speedup {r['speedup']:.2f}x",
            flush=True,
        )
    print(markdown_table(rows, ["engine", "mappers", "seconds_per_epoch", "speedup"]))
    out = RESULTS / ("smoke/speedup.png" if args.smoke else "speedup.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot([r for r in rows if r["engine"] != "local (in-process, 1 thread)"], baseline, out)
    write_result("smoke/speedup" if args.smoke else "speedup", rows)


if __name__ == "__main__":
    main()
