"""Time to a target test accuracy: nnlib's engines against a plain torch loop, Spark MLlib's MLP and DDP.

    python bench/time_to_target.py                  # digits (target 0.95) and 60000x784 synthetic (0.85)
    python bench/time_to_target.py --data digits    # one data set
    python bench/time_to_target.py --smoke          # digits to 0.8, one system of each kind (about a minute)

Every system trains the same MLP (hidden 128, ReLU, softmax cross-entropy)
with SGD (lr 0.1, batch 32 per process), on the same standardised split
(nnlib's loader), evaluating on the test set after every epoch (nnlib: every
round of one local epoch). Training time counts from the first step to the
evaluation that first reaches the target; one-off costs (process and session
start, data load, building shards) are reported apart. Spark MLlib's MLP
(L-BFGS, its default) reports no progress while it fits, so it is fitted
with maxIter 5, 10, 20, ... and its time is the fit that first reaches the
target. Each system runs in a process of its own, one after another.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py beside this script

from common import ROOT, bench_env, markdown_table, mpi_launcher, nnlib_run, scratch, synthetic_npz, write_result  # noqa: E402

HIDDEN, BATCH, LR = 128, 32, 0.1


def nnlib_system(engine: str, mappers: int, **extra) -> dict:
    return {"kind": "nnlib", "engine": engine, "mappers": mappers, **extra}


SYSTEMS = {
    "nnlib local, 1 mapper": nnlib_system("local", 1),
    "nnlib Spark stage, 1 mapper": nnlib_system("spark", 1),
    "nnlib Spark stage, 2 mappers": nnlib_system("spark", 2),
    "nnlib Spark stage, 4 mappers": nnlib_system("spark", 4),
    "nnlib Spark jobs, 1 mapper": nnlib_system("spark", 1, mode="jobs"),
    "nnlib Spark jobs, 2 mappers": nnlib_system("spark", 2, mode="jobs"),
    "nnlib Spark jobs, 4 mappers": nnlib_system("spark", 4, mode="jobs"),
    "nnlib MPI, 2 ranks": nnlib_system("mpi", 2),
    "nnlib mrjob local runner, 2 mappers": nnlib_system("mrjob", 2),
    "plain torch loop": {"kind": "torch"},
    "Spark MLlib MLP (L-BFGS)": {"kind": "mllib"},
    "TorchDistributor DDP, 2 processes": {"kind": "ddp"},
}
SMOKE_SYSTEMS = [
    "nnlib local, 1 mapper",
    "nnlib Spark stage, 2 mappers",
    "nnlib MPI, 2 ranks",
    "plain torch loop",
    "Spark MLlib MLP (L-BFGS)",
    "TorchDistributor DDP, 2 processes",
]


def load(source: str):
    from nnlib.config import DataConfig
    from nnlib.data.dataset import load_dataset

    return load_dataset(DataConfig(source=source), seed=0)


def run_nnlib(system: dict, source: str, target: float, max_epochs: int) -> dict:
    sets = [
        f"engine={system['engine']}",
        f"mappers={system['mappers']}",
        f"data.source={source}",
        f"model.hidden=[{HIDDEN}]",
        f"train.batch_size={BATCH}",
        f"train.lr={LR}",
        "train.local_epochs=1",
        f"train.rounds={max_epochs}",
        f"train.target_accuracy={target}",
        "spark.master=local[*]",
        f"spark.mode={system.get('mode', 'stage')}",
        "mpi.args=[--oversubscribe]",
    ]
    launcher = []
    if system["engine"] == "mpi":
        launcher = mpi_launcher(system["mappers"])
    res = nnlib_run(sets, launcher)
    s = res["summary"]
    reached = s["final_test_accuracy"] >= target
    return {
        "train_seconds": s["train_seconds"] if reached else None,
        "epochs": s["rounds_run"],
        "final_accuracy": s["final_test_accuracy"],
        "one_off_seconds": res["process_seconds"] - s["train_seconds"],
        "seconds_per_epoch": s["train_seconds"] / s["rounds_run"],
    }


def run_torch(source: str, target: float, max_epochs: int) -> dict:
    import torch
    import torch.nn.functional as F

    start = time.perf_counter()
    data = load(source)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, data.n_classes)
    )
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    one_off = time.perf_counter() - start
    train, acc = 0.0, 0.0
    for epoch in range(1, max_epochs + 1):
        t = time.perf_counter()
        for idx in torch.randperm(len(y)).split(BATCH):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            acc = float((model(xt).argmax(1) == yt).double().mean())
        train += time.perf_counter() - t
        if acc >= target:
            return {
                "train_seconds": train,
                "epochs": epoch,
                "final_accuracy": acc,
                "one_off_seconds": one_off,
                "seconds_per_epoch": train / epoch,
                "threads": torch.get_num_threads(),
            }
    return {
        "train_seconds": None,
        "epochs": max_epochs,
        "final_accuracy": acc,
        "one_off_seconds": one_off,
        "seconds_per_epoch": train / max_epochs,
        "threads": torch.get_num_threads(),
    }


def run_mllib(source: str, target: float, max_iter: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import SparkSession

    start = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.level", "ERROR")
        .config("spark.driver.memory", "6g")
        .getOrCreate()
    )
    data = load(source)
    frames = []
    with scratch() as tmp:
        for name, xs, ys in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
            path = f"{tmp}/{name}.parquet"
            pq.write_table(pa.table({"label": ys.astype(float), "f": list(xs.astype(float))}), path)
            frames.append(spark.read.parquet(path).select("label", array_to_vector("f").alias("features")).cache())
        train_df, test_df = frames
        train_df.count(), test_df.count()
        one_off = time.perf_counter() - start
        evaluator = MulticlassClassificationEvaluator(metricName="accuracy")
        out = {"one_off_seconds": one_off, "fits": []}
        iters = 5
        while iters <= max_iter:
            clf = MultilayerPerceptronClassifier(
                layers=[data.n_features, HIDDEN, data.n_classes], maxIter=iters, blockSize=128, seed=0
            )
            t = time.perf_counter()
            model = clf.fit(train_df)
            fit = time.perf_counter() - t
            acc = evaluator.evaluate(model.transform(test_df))
            out["fits"].append({"max_iter": iters, "seconds": fit, "accuracy": acc})
            if acc >= target:
                out.update(train_seconds=fit, epochs=iters, final_accuracy=acc, seconds_per_epoch=fit / iters)
                break
            iters *= 2
        else:
            out.update(
                train_seconds=None,
                epochs=out["fits"][-1]["max_iter"],
                final_accuracy=acc,
                seconds_per_epoch=out["fits"][-1]["seconds"] / out["fits"][-1]["max_iter"],
            )
    spark.stop()
    return out


def ddp_train(source: str, target: float, max_epochs: int):
    """One DDP process (TorchDistributor starts two): per-process batch 32, evaluation after every epoch."""
    import time

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    start = time.perf_counter()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from nnlib.config import DataConfig
    from nnlib.data.dataset import load_dataset

    data = load_dataset(DataConfig(source=source), seed=0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xt, yt = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, data.n_classes))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dist.barrier()
    one_off = time.perf_counter() - start
    train, acc = 0.0, 0.0
    for epoch in range(1, max_epochs + 1):
        t = time.perf_counter()
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(y), generator=g)[rank::world]
        for idx in order.split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        with torch.no_grad():
            acc = float((model.module(xt).argmax(1) == yt).double().mean())
        train += time.perf_counter() - t
        if acc >= target:
            break
    dist.destroy_process_group()
    # every process returns (TorchDistributor keeps the last file written); DDP keeps their models equal
    return {
        "train_seconds": train if acc >= target else None,
        "epochs": epoch,
        "final_accuracy": acc,
        "seconds_per_epoch": train / epoch,
        "process_one_off_seconds": one_off,
    }


def run_ddp(source: str, target: float, max_epochs: int) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import SparkSession

    start = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.log.level", "ERROR")
        .getOrCreate()
    )
    out = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(ddp_train, source, target, max_epochs)
    total = time.perf_counter() - start
    spark.stop()
    out["one_off_seconds"] = total - out["train_seconds"] if out["train_seconds"] else total
    return out


def run_one(name: str, source: str, target: float, max_epochs: int) -> dict:
    system = SYSTEMS[name]
    if system["kind"] == "nnlib":
        return run_nnlib(system, source, target, max_epochs)
    if system["kind"] == "torch":
        return run_torch(source, target, max_epochs)
    if system["kind"] == "mllib":
        return run_mllib(source, target, max_iter=10 * max_epochs)
    return run_ddp(source, target, max_epochs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "synthetic", "both"], default="both")
    parser.add_argument("--systems", nargs="*", choices=sorted(SYSTEMS), help="default: all")
    parser.add_argument("--smoke", action="store_true", help="digits to 0.8, one system of each kind")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one system in this process (used internally)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--max-epochs", type=int, default=40, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.source, args.target, args.max_epochs)))
        return
    if args.smoke:
        sets = [("digits", "digits", 0.8, 3)]
        names = args.systems or SMOKE_SYSTEMS
    else:
        sets = [("digits", "digits", 0.95, 40), ("synthetic", str(synthetic_npz()), 0.85, 40)]
        sets = [s for s in sets if args.data in ("both", s[0])]
        names = args.systems or list(SYSTEMS)
    results = {}
    for data_name, source, target, max_epochs in sets:
        rows = []
        for name in names:
            if data_name == "synthetic" and "mrjob" in name:
                max_epochs_here = 12  # every mrjob task reloads the 188 MB set each round
            else:
                max_epochs_here = max_epochs
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    name,
                    "--source",
                    source,
                    "--target",
                    str(target),
                    "--max-epochs",
                    str(max_epochs_here),
                ],
                cwd=ROOT,
                env=bench_env(),
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if proc.returncode != 0:
                raise SystemExit(f"{name} on {data_name} failed:\n{proc.stderr[-3000:]}")
            row = {"system": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(
                f"{data_name:10s} {name:38s} train {row['train_seconds'] or float('nan'):8.2f}s  "
                f"epochs {row['epochs']:3d}  acc {row['final_accuracy']:.4f}  one-off {row['one_off_seconds']:.1f}s",
                flush=True,
            )
        base = next((r["train_seconds"] for r in rows if r["system"].startswith("nnlib Spark stage, 2")), None)
        for r in rows:
            r["ratio_to_nnlib_spark_2"] = r["train_seconds"] / base if base and r["train_seconds"] else None
        results[data_name] = {"target": target, "rows": rows}
        print(
            markdown_table(
                rows,
                [
                    "system",
                    "train_seconds",
                    "epochs",
                    "final_accuracy",
                    "one_off_seconds",
                    "seconds_per_epoch",
                    "ratio_to_nnlib_spark_2",
                ],
            ),
            flush=True,
        )
    write_result("smoke/time_to_target" if args.smoke else "time_to_target", results)


if __name__ == "__main__":
    main()
