"""Spark Connect against a classic session: time per round, per-round overhead by model size, the client's bytes.

    python bench/connect.py            # about 10 minutes: 60000x784, 1e4..1e7 parameters, 2/4/8 mappers
    python bench/connect.py --smoke    # about a minute: small data, 1e4 parameters, 2 and 4 mappers
    python bench/connect.py --part rounds   # part 1 only (about 3 minutes), written to results/connect-rounds.json

Every system runs on this machine with two task slots: the classic session
``spark.master=local[2]`` (``spark.mode`` stage, the default there, and
jobs) and a Spark Connect server of pyspark's own jars started here with
``--master local[2]`` (``spark.remote=sc://127.0.0.1:PORT``: ``spark.mode``
auto is jobs). Runs are ``nnlib run`` as a user starts it, one after the
other in the same script run.

1. Time per round: 60000x784 synthetic rows, ``model.hidden=[128]``, 2
   mappers, 5 local epochs a round; the median of the rounds after the
   first.
2. Overhead per round (``overhead_seconds``: the wait less the slowest
   mapper's training) for 1e4 to 1e7 parameters, one mini-batch step a
   round (the model of ``round_overhead.py``).
3. The client's bytes per round on Connect for 2, 4 and 8 mappers
   (1e6 parameters, one step a round): the bytes the kernel counts on the
   client's TCP connections to the server (``ss -tinp``'s ``bytes_sent`` and
   ``bytes_received`` of the sockets this process holds), from the end of
   one round to the end of the next: all the gRPC traffic, the plan with
   the payload in its closure out, the ``Combined`` state and the stats
   back. Also the engine's own counts: the pickled payload and the bytes of
   the rows collected. (``/proc/PID/io`` does not see them: gRPC's
   ``sendmsg``/``recvmsg`` bypass its counters.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, bench_env, markdown_table, median, nnlib_run, synthetic_npz, write_result  # noqa: E402
from round_overhead import measure  # noqa: E402

CLASSIC_STAGE = ["engine=spark", "spark.master=local[2]", "spark.mode=stage"]
CLASSIC_JOBS = ["engine=spark", "spark.master=local[2]", "spark.mode=jobs"]


def time_per_round(sets: list[str], source: str, rounds: int, epochs: int) -> dict:
    load = os.getloadavg()[0]
    res = nnlib_run(
        [
            *sets,
            "mappers=2",
            f"data.source={source}",
            "model.hidden=[128]",
            "train.batch_size=32",
            f"train.local_epochs={epochs}",
            f"train.rounds={rounds}",
            "train.lr=0.05",
        ]
    )
    later = res["rounds"][1:]
    return {
        "round_s": median(r["seconds"] for r in later),
        "max_mapper_s": median(r["max_mapper_seconds"] for r in later),
        "overhead_s": median(r["overhead_seconds"] for r in later),
        "load_1min": round((load + os.getloadavg()[0]) / 2, 1),
    }  # the machine's load, before and after


def client_bytes(remote: str, mappers: int, rounds: int) -> dict:
    """This script again as the client (``--client``), in its own process; its JSON answer."""
    proc = subprocess.run(
        [sys.executable, __file__, "--client", remote, str(mappers), str(rounds)],
        cwd=ROOT,
        env=bench_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def socket_bytes(port: int) -> tuple[int, int]:
    """``(sent, received)`` bytes over this process's TCP connections to ``port``, as the kernel counts them."""
    import re

    out = subprocess.run(["ss", "-tinpH", "dst", f"127.0.0.1:{port}"], capture_output=True, text=True).stdout
    sent = received = 0
    for entry in re.split(r"\n(?=\S)", out):
        if f"pid={os.getpid()}," in entry:
            sent += int(m.group(1)) if (m := re.search(r"bytes_sent:(\d+)", entry)) else 0
            received += int(m.group(1)) if (m := re.search(r"bytes_received:(\d+)", entry)) else 0
    return sent, received


def client(remote: str, mappers: int, rounds: int) -> None:
    """A Connect run in this process without a run directory: bytes per round of /proc/self/io, and the
    engine's counts. Prints one JSON line."""
    from nnlib.config import load_config
    from nnlib.driver import run
    from nnlib.engines import make_engine

    config = load_config(
        None,
        [
            "engine=spark",
            f"spark.remote={remote}",
            f"mappers={mappers}",
            "data.source=synthetic",
            "data.n_samples=2000",
            "data.n_features=1000",
            "data.n_classes=10",
            "model.hidden=[990]",
            "train.local_steps=1",
            "train.batch_size=8",
            f"train.rounds={rounds}",
        ],
    )
    engine = make_engine(config)
    port = int(remote.rsplit(":", 1)[1])
    marks = []
    result = run(
        config,
        engine=engine,
        log=lambda _m: None,
        warn=lambda _m: None,
        on_round=lambda _row: marks.append((*socket_bytes(port), engine.bytes_sent, engine.bytes_collected)),
    )
    deltas = [[b - a for a, b in zip(first, then, strict=True)] for first, then in itertools.pairwise(marks)]
    print(
        json.dumps(
            {
                "mappers": mappers,
                "params": int(result.params.size),
                **{
                    name: median(d[i] for d in deltas)
                    for i, name in enumerate(["sent_bytes", "received_bytes", "payload_bytes", "collected_bytes"])
                },
            }
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--part", choices=["all", "rounds"], default="all", help="rounds: only the time per round (part 1)"
    )
    parser.add_argument("--client", nargs=3, metavar=("REMOTE", "MAPPERS", "ROUNDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client(args.client[0], int(args.client[1]), int(args.client[2]))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from spark_cluster import ConnectServer

    # the server keeps recent plans, each holding a round's weights in its closure: a 10M-parameter model needs
    # more than the default 1 GiB of driver memory (docs/pages/guide/spark.md, "Spark Connect")
    server = ConnectServer(
        Path(tempfile.mkdtemp(prefix="nnlib-bench-connect-")), master="local[2]", conf={"spark.driver.memory": "4g"}
    ).start()
    connect = ["engine=spark", f"spark.remote={server.url}"]
    systems = {
        "classic stage, local[2]": CLASSIC_STAGE,
        "classic jobs, local[2]": CLASSIC_JOBS,
        "connect (jobs), local[2] server": connect,
    }
    result: dict = {"rounds": [], "overhead": [], "bytes": []}
    try:
        if args.smoke:
            source, rounds, epochs = str(synthetic_npz(4000, 1000)), 3, 1
        else:
            source, rounds, epochs = str(synthetic_npz()), 6, 5
        for name, sets in systems.items():
            row = {"system": name, **time_per_round(sets, source, rounds, epochs)}
            result["rounds"].append(row)
            print(
                f"{name:34s} round {row['round_s']:.3f} s  slowest mapper {row['max_mapper_s']:.3f} s  "
                f"load {row['load_1min']}",
                flush=True,
            )
        stage = result["rounds"][0]["round_s"]
        for row in result["rounds"]:
            row["vs_classic_stage"] = row["round_s"] / stage

        rounds_only = args.part == "rounds"
        sizes = [] if rounds_only else [10_000] if args.smoke else [10_000, 100_000, 1_000_000, 10_000_000]
        for name, sets in systems.items():
            for params in sizes:
                row = {"system": name, **measure(sets, params, 4 if args.smoke else 11)}
                result["overhead"].append(row)
                print(
                    f"{name:34s} {row['params']:>10,d} params  overhead {row['overhead_ms']:8.1f} ms  "
                    f"round {row['round_ms']:8.1f} ms",
                    flush=True,
                )

        for mappers in [] if rounds_only else [2, 4] if args.smoke else [2, 4, 8]:
            row = client_bytes(server.url, mappers, 4 if args.smoke else 8)
            result["bytes"].append(row)
            print(
                f"connect, {mappers} mappers: a round's client sockets sent {row['sent_bytes']:,.0f} and received "
                f"{row['received_bytes']:,.0f} bytes (payload {row['payload_bytes']:,.0f}, collected "
                f"{row['collected_bytes']:,.0f})",
                flush=True,
            )
    finally:
        server.stop()
    print(
        markdown_table(
            result["rounds"], ["system", "round_s", "max_mapper_s", "overhead_s", "vs_classic_stage", "load_1min"]
        )
    )
    print(
        markdown_table(
            result["overhead"], ["system", "params", "overhead_ms", "round_ms", "broadcast_ms", "combine_ms"]
        )
    )
    print(
        markdown_table(
            result["bytes"], ["mappers", "params", "sent_bytes", "received_bytes", "payload_bytes", "collected_bytes"]
        )
    )
    name = "connect" if args.part == "all" else "connect-rounds"
    write_result(f"smoke/{name}" if args.smoke else name, result)


if __name__ == "__main__":
    main()
