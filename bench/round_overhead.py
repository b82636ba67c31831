"""Per-round overhead against model size: what each engine spends per round beyond the slowest mapper.

    python bench/round_overhead.py            # 1e4..1e7 parameters; every engine and mode; 2 mappers
    python bench/round_overhead.py --smoke    # 1e4 and 1e5 parameters, three engines, seconds

Overhead is ``overhead_seconds`` in rounds.csv: the wait for the mappers'
results less the slowest mapper's training (launching, shipping, scheduling).
Each run takes one mini-batch step of 8 samples per mapper per round, so
training is small beside the exchange; the median is over the rounds after
the first. The standalone cluster is the tests' one (a master and two
one-core workers on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, markdown_table, median, mpi_launcher, nnlib_run, write_result  # noqa: E402

N_FEATURES = 1000


def hidden_for(params: int) -> int:
    """The hidden width that gives about ``params`` parameters for 1000 inputs and 10 classes."""
    return max(1, round((params - 10) / (N_FEATURES + 11)))


def measure(engine_sets: list[str], params: int, rounds: int, launcher=()) -> dict:
    sets = [
        *engine_sets,
        "mappers=2",
        "data.source=synthetic",
        "data.n_samples=400",
        f"data.n_features={N_FEATURES}",
        "data.n_classes=10",
        f"model.hidden=[{hidden_for(params)}]",
        "train.local_steps=1",
        "train.batch_size=8",
        f"train.rounds={rounds}",
        "mpi.args=[--oversubscribe]",
    ]
    res = nnlib_run(sets, launcher)
    later = res["rounds"][1:]
    return {
        "params": res["summary"]["n_params"],
        "overhead_ms": 1000 * median(r["overhead_seconds"] for r in later),
        "round_ms": 1000 * median(r["seconds"] for r in later),
        "broadcast_ms": 1000 * median(r["broadcast_seconds"] for r in later),
        "combine_ms": 1000 * median(r["combine_seconds"] for r in later),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no-cluster", action="store_true", help="leave out the standalone cluster")
    parser.add_argument("--engines", nargs="*", help="only the engines whose name starts so (e.g. 'spark stage')")
    args = parser.parse_args(argv)
    mpiexec = mpi_launcher(2)
    engines = {
        "local": (["engine=local"], ()),
        "spark stage, local[2]": (["engine=spark", "spark.master=local[2]"], ()),
        "spark jobs, local[2]": (["engine=spark", "spark.master=local[2]", "spark.mode=jobs"], ()),
        "mpi, 2 ranks": (["engine=mpi"], mpiexec),
        "mrjob, local runner": (["engine=mrjob"], ()),
    }
    sizes = [10_000, 100_000] if args.smoke else [10_000, 100_000, 1_000_000, 10_000_000]
    if args.smoke:
        engines = {k: v for k, v in engines.items() if k in ("local", "spark stage, local[2]", "mpi, 2 ranks")}
    if args.engines:
        engines = {k: v for k, v in engines.items() if any(k.startswith(e) for e in args.engines)}
    rows = []
    cluster = None
    if not args.smoke and not args.no_cluster:
        sys.path.insert(0, str(ROOT / "tests"))
        from spark_cluster import StandaloneCluster

        cluster = StandaloneCluster(Path(tempfile.mkdtemp(prefix="nnlib-bench-cluster-"))).start(n_workers=2)
        engines["spark stage, standalone cluster"] = (["engine=spark", f"spark.master={cluster.url}"], ())
        engines["spark jobs, standalone cluster"] = (
            ["engine=spark", f"spark.master={cluster.url}", "spark.mode=jobs"],
            (),
        )
    try:
        for name, (sets, launcher) in engines.items():
            for params in sizes:
                rounds = 4 if "mrjob" in name else (6 if args.smoke else 21)
                row = {"engine": name, **measure(sets, params, rounds, launcher)}
                rows.append(row)
                print(
                    f"{name:34s} {row['params']:>10,d} params  overhead {row['overhead_ms']:8.1f} ms  "
                    f"round {row['round_ms']:8.1f} ms",
                    flush=True,
                )
    finally:
        if cluster is not None:
            cluster.stop()
    print(markdown_table(rows, ["engine", "params", "overhead_ms", "round_ms", "broadcast_ms", "combine_ms"]))
    write_result("smoke/round_overhead" if args.smoke or args.engines else "round_overhead", rows)


if __name__ == "__main__":
    main()
