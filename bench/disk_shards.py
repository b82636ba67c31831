"""Disk shards (``data.shard_storage=disk``) against memory: time per epoch side by side, and a mapper's memory.

    python bench/disk_shards.py           # epochs: 20,000 x 784, 6 epochs of each storage, alternated;
                                          # memory: 250k, 1M and 4M rows x 64, each storage
    python bench/disk_shards.py --smoke   # epochs: 2,000 x 784, 2 of each; memory: 20k and 80k rows x 64

**Time per epoch.** One mapper (the local engine, ``mappers=1``) trains an
MLP 784-128-10 with batch 32, one local epoch a round, on a shard of
float32 Gaussian blobs (10 classes) from an .npz; runs alternate memory,
disk, memory, disk in this process, and an epoch's time is the mapper's
``train_seconds`` of a round (mapper_times.csv). The disk shard was just
written, so it is in the page cache. The weights of each disk run must
equal its memory run's bit for bit.

**A mapper's memory.** A child process per size and storage builds a
shard of ``rows`` x 64 float32 blobs in memory (as a mapper builds its
shard today), keeps it with the storage under test (disk: written to the
scratch folder and the arrays let go), then trains 300 steps (MLP 64-128-10,
batch 32) through :func:`nnlib.core.train.local_sgd`. It reports its peak
resident memory while building (``VmHWM`` after the build) and while
training (``VmHWM`` reset through ``/proc/self/clear_refs`` after the
build); the training figure is what a mapper holds for the rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
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


def epochs(n_rows: int, rounds: int, repeats: int) -> dict:
    from nnlib.config import load_config
    from nnlib.driver import run

    with scratch() as tmp:
        x, y = blobs(n_rows + 1000, WIDE, 0)
        source = Path(tmp) / "wide.npz"
        np.savez(source, x=x[:n_rows], y=y[:n_rows], x_test=x[n_rows:], y_test=y[n_rows:])
        del x, y
        sets = ["engine=local", "mappers=1", f"data.source={source}", "model.hidden=[128]", "train.batch_size=32",
                f"train.rounds={rounds}", "train.local_epochs=1", "train.lr=0.05", "seed=1",
                f"data.scratch_dir={tmp}"]
        seconds: dict[str, list[float]] = {"memory": [], "disk": []}
        params = {}
        for rep in range(repeats):
            for storage in ("memory", "disk"):
                result = run(load_config(None, sets + [f"data.shard_storage={storage}"]), log=lambda _m: None,
                             warn=lambda _m: None)
                seconds[storage] += [float(r["train_seconds"]) for r in result.mapper_rows]
                params[storage, rep] = result.params
        same = all(np.array_equal(params["disk", r], params["memory", r]) for r in range(repeats))
    memory, disk = median(seconds["memory"]), median(seconds["disk"])
    return {"rows": n_rows, "features": WIDE, "epochs_each": len(seconds["disk"]), "memory_epoch_s": memory,
            "disk_epoch_s": disk, "ratio": disk / memory, "best_ratio": min(seconds["disk"]) / min(seconds["memory"]),
            "same_weights": same, "memory_epochs_s": seconds["memory"], "disk_epochs_s": seconds["disk"]}


# ----------------------------------------------------------------------------------- a mapper's memory


def high_water_mb() -> float:
    """This process's peak resident memory (``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def mapper(n_rows: int, storage: str, folder: str, steps: int) -> dict:
    """One mapper's life in this process (a child): build, keep, train; its memory at each stage."""
    from nnlib.config import DataConfig
    from nnlib.core.backends import get_backend
    from nnlib.core.mlp import ModelSpec
    from nnlib.core.optim import SGD
    from nnlib.core.params import LayerSpec, init_params
    from nnlib.core.train import LocalSchedule, local_sgd
    from nnlib.data.dataset import Shard
    from nnlib.data.disk import shard_store
    from nnlib.util.threads import one_blas_thread

    spec = ModelSpec(LayerSpec((N_FEATURES, 128, 10)), "relu", "cross_entropy", 0.0)
    backend = get_backend("numpy", spec)
    params = init_params(spec.layers, 0)
    with one_blas_thread():  # warm the code paths before any figure is taken
        local_sgd(backend, params, None, SGD(), *blobs(64, N_FEATURES, 1), LocalSchedule(32, local_steps=2), 0.05,
                  np.random.default_rng(0))
    fixed = high_water_mb()
    store = shard_store(DataConfig(shard_storage=storage, scratch_dir=folder))
    shard, = store.keep([Shard(0, *blobs(n_rows, N_FEATURES, 2))])
    build = high_water_mb()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the training's own peak from here
    with one_blas_thread():
        update = local_sgd(backend, params, None, SGD(), shard.x, shard.y, LocalSchedule(32, local_steps=steps),
                           0.05, np.random.default_rng(3))
    train = high_water_mb()
    store.remove()
    return {"rows": n_rows, "storage": storage, "shard_mb": n_rows * N_FEATURES * 4 / 2 ** 20,
            "fixed_mb": fixed, "build_peak_mb": build, "train_peak_mb": train,
            "loss": update.train_loss}


def measure_mapper(n_rows: int, storage: str, steps: int) -> dict:
    with scratch() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--mapper", str(n_rows), storage, tmp, str(steps)],
                              cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--mapper", nargs=4, help=argparse.SUPPRESS)  # the child: rows storage folder steps
    args = parser.parse_args(argv)
    if args.mapper:
        rows, storage, folder, steps = args.mapper
        print(json.dumps(mapper(int(rows), storage, folder, int(steps))))
        return
    if args.smoke:
        wide_rows, rounds, repeats, sizes, steps = 2_000, 1, 2, [20_000, 80_000], 50
    else:
        wide_rows, rounds, repeats, sizes, steps = 20_000, 2, 3, [250_000, 1_000_000, 4_000_000], 300
    timing = epochs(wide_rows, rounds, repeats)
    print(f"{timing['rows']:,d} x {WIDE}, MLP {WIDE}-128-10, batch 32: an epoch takes {timing['memory_epoch_s']:.3f} s "
          f"from memory and {timing['disk_epoch_s']:.3f} s from disk ({timing['ratio']:.2f}x; median of "
          f"{timing['epochs_each']} each; {timing['best_ratio']:.2f}x best against best); the same weights: "
          f"{timing['same_weights']}", flush=True)
    memory = []
    for n in sizes:
        for storage in ("memory", "disk"):
            row = measure_mapper(n, storage, steps)
            memory.append(row)
            print(f"{n:>9,d} rows x {N_FEATURES} ({row['shard_mb']:.0f} MB), {storage:>6}: "
                  f"fixed {row['fixed_mb']:.0f} MB, build peak {row['build_peak_mb']:.0f} MB, "
                  f"training peak {row['train_peak_mb']:.0f} MB", flush=True)
    print(markdown_table(memory, ["rows", "storage", "shard_mb", "fixed_mb", "build_peak_mb", "train_peak_mb"]))
    disk = [r for r in memory if r["storage"] == "disk"]
    growth = disk[-1]["train_peak_mb"] / disk[0]["train_peak_mb"] - 1
    print(f"disk storage: the training peak grows {100 * growth:.1f}% from {disk[0]['rows']:,d} to "
          f"{disk[-1]['rows']:,d} rows")
    write_result("smoke/disk_shards" if args.smoke else "disk_shards",
                 {"epoch": timing, "memory": memory, "disk_train_growth": growth})


if __name__ == "__main__":
    main()
