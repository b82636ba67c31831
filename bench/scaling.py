"""Spark's per-round overhead and the driver's bytes per round against the mappers and the parameter count.

    python bench/scaling.py           # a standalone cluster on 127.0.0.1: mappers 2..32, parameters 1e4..1e7
    python bench/scaling.py --smoke   # local[4]: mappers 2 and 3, parameters 1e4 and 1e5

Three ways a round exchanges, all in the long-lived stage (``spark.mode:
stage``): model averaging (one local step a round, the driver averages the
mappers' weights), synchronous rounds through the driver (``spark.collective:
driver``: every step each mapper sends its gradient to the driver and waits
for the mean) and synchronous rounds among the tasks (``spark.collective:
tasks``: a reduce-scatter by slices and an allgather among the tasks). The
compute is tiny (an MLP 100-h-10, batches of 4 rows, a few steps a round), so
what is measured is the exchange: a round's overhead is the engine's time for
the round (broadcast, wait, combine) less the slowest mapper's compute,
median over the rounds after the first; the driver's bytes are counted on its
sockets (every message, both ways). ``h`` sets the parameter count
(``110 h + 10``).

The full run starts its own cluster (tests/spark_cluster.py): 4 workers of 8
cores each on this machine's 2 cores, one executor per worker, so up to 32
tasks run at once, each in its own Python process (32 one-core worker JVMs do
not fit here). Writes results/scaling.json, results/scaling.png and a
Markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import RESULTS, markdown_table, median, scratch, write_result  # noqa: E402

FEATURES, CLASSES, BATCH = 100, 10, 4
MODES = {  # name: (config overrides, spark.collective)
    "averaging": (["combine=average", "train.local_steps=1"], "tasks"),
    "sync hub": (["combine=gradient"], "driver"),
    "sync tasks": (["combine=gradient"], "tasks"),
}


def recording_engine(master: str, collective: str):
    """The stage engine, recording the driver's bytes received and sent in each round."""
    from nnlib.engines.spark.engine import SparkStageEngine
    from nnlib.engines.spark.session import SessionSettings

    class Recording(SparkStageEngine):
        def _counted(self, call, payload, timings):
            received, sent = self.hub.bytes_received, self.hub.bytes_sent
            out = call(payload, timings)
            self.bytes.append((self.hub.bytes_received - received, self.hub.bytes_sent - sent))
            return out

        def map(self, payload, timings):
            return self._counted(super().map, payload, timings)

        def sync_round(self, payload, timings):
            return self._counted(super().sync_round, payload, timings)

    engine = Recording(SessionSettings(master), collective=collective)
    engine.bytes = []
    return engine


def measure(master: str, mode: str, mappers: int, params: float, rounds: int, steps: int) -> dict:
    from nnlib.config import load_config
    from nnlib.driver import run

    hidden = max(1, round((params - CLASSES) / (FEATURES + 1 + CLASSES)))
    overrides, collective = MODES[mode]
    n_samples = math.ceil(mappers * steps * BATCH / 0.8)  # the default test_fraction holds out a fifth
    config = load_config(
        None,
        [
            "engine=spark",
            f"mappers={mappers}",
            "data.source=synthetic",
            f"data.n_samples={n_samples}",
            f"data.n_features={FEATURES}",
            f"data.n_classes={CLASSES}",
            f"model.hidden=[{hidden}]",
            f"train.batch_size={BATCH}",
            "train.lr=0.01",
            f"train.rounds={rounds}",
            *overrides,
        ],
    )
    engine = recording_engine(master, collective)
    result = run(config, engine=engine, log=lambda _m: None, warn=lambda _m: None)
    later = result.rounds[1:]
    engine_seconds = [r["broadcast_seconds"] + r["wait_seconds"] + r["combine_seconds"] for r in later]
    overhead = median(s - r["max_mapper_seconds"] for s, r in zip(engine_seconds, later, strict=True))
    steps_done = max(r["steps"] for r in result.mapper_rows if r["round"] == rounds)
    received = median(b[0] for b in engine.bytes[1:])
    return {
        "mode": mode,
        "mappers": mappers,
        "params": int(result.params.size),
        "steps_per_round": steps_done,
        "round_seconds": median(engine_seconds),
        "overhead_seconds": overhead,
        "overhead_ms_per_step": 1000 * overhead / steps_done,
        "driver_received_bytes_per_round": received,
        "driver_received_bytes_per_step": received / steps_done,
        "driver_sent_bytes_per_round": median(b[1] for b in engine.bytes[1:]),
        "vector_bytes": 4 * int(result.params.size),
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    by_mappers = [r for r in rows if r["sweep"] == "mappers"]
    by_params = [r for r in rows if r["sweep"] == "params"]
    for mode in MODES:
        mine = [r for r in by_mappers if r["mode"] == mode]
        ks = [r["mappers"] for r in mine]
        axes[0].plot(ks, [1000 * r["overhead_seconds"] for r in mine], "o-", label=mode)
        axes[1].plot(ks, [r["driver_received_bytes_per_round"] for r in mine], "o-", label=mode)
        # up to three mapper counts, one line style each
        for k, style in zip(sorted({r["mappers"] for r in by_params}), ("o-", "s--", "^:"), strict=False):
            theirs = [r for r in by_params if r["mode"] == mode and r["mappers"] == k]
            axes[2].plot(
                [r["params"] for r in theirs],
                [1000 * r["overhead_seconds"] for r in theirs],
                style,
                label=f"{mode}, {k} mappers",
            )
    params = by_mappers[0]["params"] if by_mappers else 0
    for ax, ylabel in zip(axes[:2], ("overhead per round (ms)", "driver's bytes received per round"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("mappers")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{params:,} parameters")
        ax.legend(fontsize=8)
    axes[2].set_xscale("log")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("parameters")
    axes[2].set_ylabel("overhead per round (ms)")
    axes[2].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        mapper_counts, param_counts, param_mappers, rounds, steps = (2, 3), (1e4, 1e5), (2,), 3, 3
    else:
        mapper_counts, param_counts, param_mappers = (2, 4, 8, 16, 32), (1e4, 1e5, 1e6, 1e7), (2, 8)
        rounds, steps = 3, 5
    from nnlib.engines.spark.session import SessionSettings, open_session

    with scratch() as tmp:
        cluster = None
        if args.smoke:
            master = "local[4]"
            conf = {}
        else:
            from spark_cluster import StandaloneCluster

            cluster = StandaloneCluster(Path(tmp)).start(n_workers=4, cores=8, memory="2g")
            master = cluster.url
            conf = {"spark.executor.cores": "8", "spark.executor.memory": "1g", "spark.cores.max": "32"}
        session = open_session(SessionSettings(master, app_name="nnlib-scaling", conf=conf), max(mapper_counts)).session
        rows = []
        try:
            for sweep, cases in (
                ("mappers", [(k, 1e5) for k in mapper_counts]),
                ("params", [(k, p) for k in param_mappers for p in param_counts if p != 1e5]),
            ):
                for k, p in cases:
                    for mode in MODES:
                        rows.append({"sweep": sweep, **measure(master, mode, k, p, rounds, steps)})
                        print(
                            {
                                key: rows[-1][key]
                                for key in (
                                    "mode",
                                    "mappers",
                                    "params",
                                    "overhead_seconds",
                                    "driver_received_bytes_per_round",
                                )
                            },
                            flush=True,
                        )
        finally:
            session.stop()
            if cluster is not None:
                cluster.stop()
    # the parameter sweep holds the mapper sweep's 1e5 runs too
    rows += [{**r, "sweep": "params"} for r in rows if r["sweep"] == "mappers" and r["mappers"] in param_mappers]
    columns = [
        "sweep",
        "mode",
        "mappers",
        "params",
        "steps_per_round",
        "overhead_seconds",
        "overhead_ms_per_step",
        "driver_received_bytes_per_round",
        "driver_received_bytes_per_step",
        "driver_sent_bytes_per_round",
    ]
    print(markdown_table(rows, columns))
    out = RESULTS / ("smoke/scaling.png" if args.smoke else "scaling.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, out, f"Spark stage on {master.split('//')[0].rstrip(':') or master}: exchange cost, tiny compute")
    write_result("smoke/scaling" if args.smoke else "scaling", rows)


if __name__ == "__main__":
    main()
