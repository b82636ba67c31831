"""Disk shards (``data.shard_storage=disk``) against memory: time per epoch side by side, and a mapper's memory.

    python bench/disk_shards.py           # epochs: 20,000 x 784, 10 epochs of each storage, alternated;
                                          # memory: 250k, 1M and 4M rows x 64, each storage
    python bench/disk_shards.py --smoke   # epochs: 2,000 x 784, 2 of each; memory: 20k and 80k rows x 64
    python bench/disk_shards.py --build   # building a Parquet shard: 500k and 2M rows x 64, each storage
    python bench/disk_shards.py --build --smoke   # the same at 20k and 80k rows

**Time per epoch.** A mapper's epoch (:func:`nnlib.core.train.local_sgd`,
as ``train_shard`` runs it, on one BLAS thread) of an MLP 784-128-10 with
batch 32 on a shard of float32 Gaussian blobs (10 classes), from memory
and from a disk shard (just written, so in the page cache), alternated
epoch by epoch with the same batches; wall and CPU time of each. Then a
2-round run of each storage on the local engine (``mappers=1``, the
shard from an .npz) must give the same weights, bit for bit.

**A mapper's memory.** A child process per size and storage builds a
shard of ``rows`` x 64 float32 blobs in memory (as a mapper builds its
shard today), keeps it with the storage under test (disk: written to the
scratch folder and the arrays let go), then trains 300 steps (MLP 64-128-10,
batch 32) through :func:`nnlib.core.train.local_sgd`. It reports its peak
resident memory while building (``VmHWM`` after the build) and while
training (``VmHWM`` reset through ``/proc/self/clear_refs`` after the
build); the training figure is what a mapper holds for the rounds.

**Building a Parquet shard** (``--build``). The parent writes a Parquet
file of ``rows`` x 64 float32 blobs (row groups of 50,000 rows); a child
process per size and storage surveys it (``load_dataset``, ``mappers=1``),
resets its ``VmHWM`` and builds its one shard with
:meth:`nnlib.data.dataset.ShardSource.build` (memory: the arrays filled in
memory; disk: the rows written to the scratch folder as each block
arrives). It reports its resident memory before the build (the fixed
cost: the interpreter, pyarrow, the survey's results) and its peak during
it.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, markdown_table, median, scratch, write_result  # noqa: E402

N_FEATURES, WIDE = 64, 784


def blobs(n_rows: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_rows`` x ``n_features`` float32 Gaussian blobs around 10 class centres, and their int64 labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2 / np.sqrt(n_features), size=(10, n_features))
    y = rng.integers(0, 10, n_rows)
    x = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    x += centres[y].astype(np.float32)
    return x, y


# ----------------------------------------------------------------------------------- time per epoch


def small_mlp(n_features: int):
    """The numpy backend of an MLP ``n_features``-128-10 and its initial weights."""
    from nnlib.core.backends import get_backend
    from nnlib.core.mlp import ModelSpec
    from nnlib.core.params import LayerSpec, init_params

    spec = ModelSpec(LayerSpec((n_features, 128, 10)), "relu", "cross_entropy", 0.0)
    return get_backend("numpy", spec), init_params(spec.layers, 0)


def epochs(n_rows: int, epochs_each: int) -> dict:
    """Epochs of one mapper (:func:`nnlib.core.train.local_sgd`, as ``train_shard`` runs it), memory and disk
    alternated epoch by epoch with the same batches; then a 2-round run of each storage on the local engine."""
    from nnlib.config import DataConfig, load_config
    from nnlib.core.optim import SGD
    from nnlib.core.train import LocalSchedule, local_sgd
    from nnlib.data.dataset import Shard
    from nnlib.data.disk import shard_store
    from nnlib.driver import run
    from nnlib.util.threads import one_blas_thread

    wall: dict[str, list[float]] = {"memory": [], "disk": [], "block": []}
    cpu: dict[str, list[float]] = {"memory": [], "disk": [], "block": []}
    with scratch() as tmp:
        x, y = blobs(n_rows + 1000, WIDE, 0)
        store = shard_store(DataConfig(shard_storage="disk", scratch_dir=tmp))
        (disk,) = store.keep([Shard(0, x[:n_rows], y[:n_rows])])
        backend, params = small_mlp(WIDE)
        for epoch in range(epochs_each):
            for storage, (xs, ys) in (
                ("memory", (x[:n_rows], y[:n_rows])),
                ("disk", (disk.x, disk.y)),
                ("block", (disk.x, disk.y)),  # disk, data.shuffle=block
            ):
                shuffle = "block" if storage == "block" else "exact"
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                with one_blas_thread():
                    local_sgd(
                        backend,
                        params,
                        None,
                        SGD(),
                        xs,
                        ys,
                        LocalSchedule(32, shuffle=shuffle),
                        0.05,
                        np.random.default_rng(epoch),
                    )
                wall[storage].append(time.perf_counter() - start_wall)
                cpu[storage].append(time.process_time() - start_cpu)
        store.remove()
        source = Path(tmp) / "wide.npz"
        np.savez(source, x=x[:n_rows], y=y[:n_rows], x_test=x[n_rows:], y_test=y[n_rows:])
        del x, y
        sets = [
            "engine=local",
            "mappers=1",
            f"data.source={source}",
            "model.hidden=[128]",
            "train.batch_size=32",
            "train.rounds=2",
            "train.local_epochs=1",
            "train.lr=0.05",
            "seed=1",
            f"data.scratch_dir={tmp}",
        ]
        params = [
            run(
                load_config(None, sets + [f"data.shard_storage={storage}"]), log=lambda _m: None, warn=lambda _m: None
            ).params
            for storage in ("memory", "disk")
        ]
    memory, on_disk = median(wall["memory"]), median(wall["disk"])
    return {
        "rows": n_rows,
        "features": WIDE,
        "epochs_each": epochs_each,
        "memory_epoch_s": memory,
        "disk_epoch_s": on_disk,
        "block_epoch_s": median(wall["block"]),
        "block_ratio": median(wall["block"]) / memory,
        "ratio": on_disk / memory,
        "best_ratio": min(wall["disk"]) / min(wall["memory"]),
        "cpu_ratio": median(cpu["disk"]) / median(cpu["memory"]),
        "same_weights": bool(np.array_equal(params[0], params[1])),
        "memory_epochs_s": wall["memory"],
        "disk_epochs_s": wall["disk"],
        "memory_cpu_s": cpu["memory"],
        "disk_cpu_s": cpu["disk"],
        "block_epochs_s": wall["block"],
        "block_cpu_s": cpu["block"],
    }


# ----------------------------------------------------------------------------------- exact against block


def measure_sampling(smoke: bool) -> list[dict]:
    """Accuracy and time per epoch of one mapper trained from a disk shard with each ``data.shuffle``.

    Two data sets of :func:`blobs` (10 classes): 10,000 x 784 (8,000 training rows, MNIST-10k's size; 5
    epochs) and 2,000,000 x 64 (1,600,000 training rows; 1 epoch); each with its training rows in random
    order and sorted by label (the worst order for a block shuffle: a block holds one class). MLP n-128-10,
    batch 32, lr 0.05, one BLAS thread; 3 seeds (the weights' and the batches'), the test rows the last 20%.
    """
    from nnlib.config import DataConfig
    from nnlib.core.backends import get_backend
    from nnlib.core.mlp import ModelSpec
    from nnlib.core.optim import SGD
    from nnlib.core.params import LayerSpec, init_params
    from nnlib.core.train import LocalSchedule, local_sgd
    from nnlib.data.dataset import Shard
    from nnlib.data.disk import shard_store
    from nnlib.util.threads import one_blas_thread

    sets = [("10k x 784", 10_000, WIDE, 5), ("2M x 64", 2_000_000, N_FEATURES, 1)]
    if smoke:
        sets = [("2k x 784", 2_000, WIDE, 2), ("20k x 64", 20_000, N_FEATURES, 1)]
    seeds = [0, 1] if smoke else [0, 1, 2]
    out = []
    with scratch() as tmp:
        for name, n, d, epochs_ in sets:
            x, y = blobs_in_pieces(n, d, 7)
            n_train = n - n // 5
            x_test, y_test = x[n_train:], y[n_train:]
            for order in ("random", "sorted by label"):
                keep = np.arange(n_train) if order == "random" else np.argsort(y[:n_train], kind="stable")
                store = shard_store(DataConfig(shard_storage="disk", scratch_dir=tmp))
                (disk,) = store.keep([Shard(0, x[keep], y[keep])])
                spec = ModelSpec(LayerSpec((d, 128, 10)), "relu", "cross_entropy", 0.0)
                backend = get_backend("numpy", spec)
                for shuffle in ("exact", "block"):
                    accuracies, seconds = [], []
                    for seed in seeds:
                        params = init_params(spec.layers, seed)
                        start = time.perf_counter()
                        with one_blas_thread():
                            update = local_sgd(
                                backend,
                                params,
                                None,
                                SGD(),
                                disk.x,
                                disk.y,
                                LocalSchedule(32, epochs_, shuffle=shuffle),
                                0.05,
                                np.random.default_rng(seed),
                            )
                        seconds.append((time.perf_counter() - start) / epochs_)
                        accuracies.append(float(backend.evaluate(update.params, x_test, y_test)[1]))
                    row = {
                        "data": name,
                        "order": order,
                        "shuffle": shuffle,
                        "epochs": epochs_,
                        "accuracy": median(accuracies),
                        "epoch_s": median(seconds),
                        "accuracies": accuracies,
                        "epochs_s": seconds,
                    }
                    out.append(row)
                    print(
                        f"{name}, rows {order}, {shuffle:>5}: accuracy {row['accuracy']:.4f} "
                        f"(median of {len(seeds)}: {' '.join(f'{a:.4f}' for a in accuracies)}), "
                        f"{row['epoch_s']:.2f} s an epoch",
                        flush=True,
                    )
                store.remove()
            del x, y, x_test, y_test
    print(markdown_table(out, ["data", "order", "shuffle", "accuracy", "epoch_s"]))
    return out


# ----------------------------------------------------------------------------------- a mapper's memory


def high_water_mb() -> float:
    """This process's peak resident memory (``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def blobs_in_pieces(n_rows: int, n_features: int, seed: int, piece: int = 250_000):
    """:func:`blobs`' kind of data drawn ``piece`` rows at a time into one float32 array (8M rows x 64 would
    peak near 8 GB drawn at once in float64)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2 / np.sqrt(n_features), size=(10, n_features))
    x, y = np.empty((n_rows, n_features), np.float32), rng.integers(0, 10, n_rows)
    for lo in range(0, n_rows, piece):
        hi = min(lo + piece, n_rows)
        x[lo:hi] = rng.normal(size=(hi - lo, n_features)) + centres[y[lo:hi]]
    return x, y


def mapper(n_rows: int, storage: str, folder: str, steps: int, shuffle: str = "exact") -> dict:
    """One mapper's life in this process (a child): build, keep, train; its memory at each stage."""
    from nnlib.config import DataConfig
    from nnlib.core.optim import SGD
    from nnlib.core.train import LocalSchedule, local_sgd
    from nnlib.data.dataset import Shard
    from nnlib.data.disk import shard_store
    from nnlib.util.threads import one_blas_thread

    backend, params = small_mlp(N_FEATURES)
    with one_blas_thread():  # warm the code paths before any figure is taken
        local_sgd(
            backend,
            params,
            None,
            SGD(),
            *blobs(64, N_FEATURES, 1),
            LocalSchedule(32, local_steps=2),
            0.05,
            np.random.default_rng(0),
        )
    fixed = high_water_mb()
    store = shard_store(DataConfig(shard_storage=storage, scratch_dir=folder))
    (shard,) = store.keep([Shard(0, *blobs_in_pieces(n_rows, N_FEATURES, 2))])
    build = high_water_mb()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the training's own peak from here
    with one_blas_thread():
        update = local_sgd(
            backend,
            params,
            None,
            SGD(),
            shard.x,
            shard.y,
            LocalSchedule(32, local_steps=steps, shuffle=shuffle),
            0.05,
            np.random.default_rng(3),
        )
    train = high_water_mb()
    store.remove()
    return {
        "rows": n_rows,
        "storage": storage,
        "shuffle": shuffle,
        "shard_mb": n_rows * N_FEATURES * 4 / 2**20,
        "fixed_mb": fixed,
        "build_peak_mb": build,
        "train_peak_mb": train,
        "loss": update.train_loss,
    }


def write_parquet(path: Path, n_rows: int, group: int = 50_000) -> None:
    """``n_rows`` x 64 float32 blobs and an int64 ``label`` as one Parquet file, written a row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for k, lo in enumerate(range(0, n_rows, group)):
        x, y = blobs(min(group, n_rows - lo), N_FEATURES, 100 + k)
        table = pa.table({**{f"f{i}": x[:, i] for i in range(N_FEATURES)}, "label": y})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def builder(source: str, storage: str, folder: str) -> dict:
    """One mapper building its shard of a Parquet source in this process (a child): its memory before and during."""
    from nnlib.config import DataConfig
    from nnlib.data.dataset import ShardSource, load_dataset

    data = DataConfig(source=source, shard_storage=storage, scratch_dir=folder)
    rows = load_dataset(data, 0, mappers=1).rows
    assert rows is not None  # a Parquet source is row-keyed
    gc.collect()
    before = resident_mb()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the build's own peak from here
    (shard,) = ShardSource(data, 0, 1, rows).build([0])
    peak = high_water_mb()
    kind = type(shard.x).__name__
    return {
        "rows": rows.shard_sizes[0],
        "storage": storage,
        "shard_mb": rows.shard_sizes[0] * N_FEATURES * 4 / 2**20,
        "fixed_mb": before,
        "build_peak_mb": peak,
        "above_fixed_mb": peak - before,
        "x": kind,
    }


def resident_mb() -> float:
    """This process's resident memory (``VmRSS``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_build(sizes: list[int]) -> list[dict]:
    out = []
    with scratch() as tmp:
        for n in sizes:
            source = Path(tmp) / f"blobs-{n}.parquet"
            write_parquet(source, n)
            for storage in ("memory", "disk"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--builder", str(source), storage, tmp],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(proc.stdout)
                out.append(row)
                print(
                    f"{row['rows']:>9,d} training rows x {N_FEATURES} ({row['shard_mb']:.0f} MB), {storage:>6}: "
                    f"fixed {row['fixed_mb']:.0f} MB, build peak {row['build_peak_mb']:.0f} MB "
                    f"(+{row['above_fixed_mb']:.0f} MB; the shard's x a {row['x']})",
                    flush=True,
                )
            source.unlink()
    return out


def measure_mapper(n_rows: int, storage: str, steps: int, shuffle: str = "exact") -> dict:
    with scratch() as tmp:
        proc = subprocess.run(
            [sys.executable, __file__, "--mapper", str(n_rows), storage, tmp, str(steps), shuffle],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(proc.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--build", action="store_true", help="the peak while building a Parquet shard")
    parser.add_argument("--mapper", nargs=5, help=argparse.SUPPRESS)  # the child: rows storage folder steps shuffle
    parser.add_argument("--sampling", action="store_true", help="exact against block: accuracy and epoch time")
    parser.add_argument("--builder", nargs=3, help=argparse.SUPPRESS)  # the child: source storage folder
    args = parser.parse_args(argv)
    if args.mapper:
        rows, storage, folder, steps, shuffle = args.mapper
        print(json.dumps(mapper(int(rows), storage, folder, int(steps), shuffle)))
        return
    if args.builder:
        print(json.dumps(builder(*args.builder)))
        return
    if args.build:
        built = measure_build([20_000, 80_000] if args.smoke else [500_000, 2_000_000])
        print(markdown_table(built, ["rows", "storage", "shard_mb", "fixed_mb", "build_peak_mb", "above_fixed_mb"]))
        write_result("smoke/disk_shards_build" if args.smoke else "disk_shards_build", {"build": built})
        return
    if args.sampling:
        sampled = measure_sampling(args.smoke)
        write_result("smoke/disk_sampling" if args.smoke else "disk_sampling", {"sampling": sampled})
        return
    if args.smoke:
        wide_rows, epochs_each, sizes, steps = 2_000, 2, [20_000, 80_000], 50
        block_sizes = sizes
    else:
        wide_rows, epochs_each, sizes, steps = 20_000, 10, [250_000, 1_000_000, 4_000_000], 3000
        block_sizes = [250_000, 1_000_000, 4_000_000, 8_000_000]
    timing = epochs(wide_rows, epochs_each)
    print(
        f"{timing['rows']:,d} x {WIDE}, MLP {WIDE}-128-10, batch 32: an epoch takes {timing['memory_epoch_s']:.3f} s "
        f"from memory and {timing['disk_epoch_s']:.3f} s from disk ({timing['ratio']:.2f}x; median of "
        f"{timing['epochs_each']} each; {timing['best_ratio']:.2f}x best against best; CPU time "
        f"{timing['cpu_ratio']:.2f}x); the same weights on the local engine: {timing['same_weights']}; "
        f"block shuffle from disk {timing['block_epoch_s']:.3f} s ({timing['block_ratio']:.2f}x)",
        flush=True,
    )
    memory = []
    for n in sizes:
        for storage in ("memory", "disk"):
            row = measure_mapper(n, storage, steps)
            memory.append(row)
            print(
                f"{n:>9,d} rows x {N_FEATURES} ({row['shard_mb']:.0f} MB), {storage:>6}: "
                f"fixed {row['fixed_mb']:.0f} MB, build peak {row['build_peak_mb']:.0f} MB, "
                f"training peak {row['train_peak_mb']:.0f} MB",
                flush=True,
            )
    print(markdown_table(memory, ["rows", "storage", "shard_mb", "fixed_mb", "build_peak_mb", "train_peak_mb"]))
    disk = [r for r in memory if r["storage"] == "disk"]
    growth = disk[-1]["train_peak_mb"] / disk[0]["train_peak_mb"] - 1
    print(
        f"disk storage: the training peak grows {100 * growth:.1f}% from {disk[0]['rows']:,d} to "
        f"{disk[-1]['rows']:,d} rows"
    )
    block = []
    for n in block_sizes:
        for shuffle in ("exact", "block"):
            row = measure_mapper(n, "disk", steps, shuffle)
            block.append(row)
            print(
                f"{n:>9,d} rows x {N_FEATURES} ({row['shard_mb']:.0f} MB), disk, {shuffle:>5}: "
                f"training peak {row['train_peak_mb']:.0f} MB (fixed {row['fixed_mb']:.0f} MB)",
                flush=True,
            )
    print(markdown_table(block, ["rows", "shuffle", "shard_mb", "fixed_mb", "train_peak_mb"]))
    growths = {}
    for shuffle in ("exact", "block"):
        rows = [r for r in block if r["shuffle"] == shuffle]
        growths[shuffle] = rows[-1]["train_peak_mb"] / rows[0]["train_peak_mb"] - 1
        print(
            f"disk storage, {shuffle}: the training peak grows {100 * growths[shuffle]:.1f}% from "
            f"{rows[0]['rows']:,d} to {rows[-1]['rows']:,d} rows"
        )
    write_result(
        "smoke/disk_shards" if args.smoke else "disk_shards",
        {
            "epoch": timing,
            "memory": memory,
            "disk_train_growth": growth,
            "shuffles": block,
            "shuffle_train_growth": growths,
        },
    )


if __name__ == "__main__":
    main()
