"""The machine's own ceiling for two one-thread mappers: one process alone against two at once.

    python bench/two_cores.py           # 9 trials of each, about 2 minutes
    python bench/two_cores.py --smoke   # seconds, for CI

Two kernels, each in fresh processes with one BLAS thread (as every nnlib
mapper trains):

- ``epoch``: one local epoch of nnlib's own training loop
  (:func:`nnlib.core.train.local_sgd`, 784-128-10, batch 32, SGD) over 30000
  random rows of the 60000x784 shape, the work of one of two mappers;
- ``matmul``: float32 1024x1024 products, compute-bound, a cache-resident check.

Each trial times the kernel in one process alone, then in two processes
started at the same moment (a barrier) on the machine's cores. ``slowdown``
is the median of the pair's slower time over the median alone; the ceiling
on two mappers' speedup per epoch over one mapper doing both halves is
``2 / slowdown`` before any exchange, evaluation or engine cost. Trials
alternate alone and pair so that a drift in the machine's speed hits both.

The ``epoch`` pair is also timed beside a third process that scores a
10000x784 test set every 0.25 s, as a driver does each round, with two BLAS
threads and with one. After a call on two threads OpenBLAS's idle worker
thread spins (about 0.1 s of a core per call, ``spin_cpu_ms``), and on a
machine whose cores the mappers fill that spin is taken from a mapper.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def _epoch_kernel(n: int):
    from nnlib.core.backends import get_backend
    from nnlib.core.mlp import ModelSpec
    from nnlib.core.optim import SGD
    from nnlib.core.params import LayerSpec, init_params
    from nnlib.core.train import LocalSchedule, local_sgd

    layers = LayerSpec((784, 128, 10))
    backend = get_backend("numpy", ModelSpec(layers))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 784)).astype(np.float32)
    y = rng.integers(0, 10, n)
    params = init_params(layers, 0)

    def run():
        local_sgd(backend, params, None, SGD(), x, y, LocalSchedule(32), 0.01, np.random.default_rng(1))

    return run


def _matmul_kernel(n: int):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)).astype(np.float32), rng.normal(size=(n, n)).astype(np.float32)

    def run():
        for _ in range(8):
            a @ b

    return run


KERNELS = {"epoch": _epoch_kernel, "matmul": _matmul_kernel}


def _worker(kernel: str, size: int, barrier, out) -> None:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        run = KERNELS[kernel](size)
        run()  # warm: pages, caches, BLAS buffers
        barrier.wait()
        start = time.perf_counter()
        run()
        out.put(time.perf_counter() - start)


def _scoring_operands() -> tuple[np.ndarray, np.ndarray]:
    """A driver's scoring product: a 10000x784 test set by the first layer's 784x128 weights, float32."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(10000, 784)).astype(np.float32), rng.normal(size=(784, 128)).astype(np.float32)


def _scorer(threads: int, done, ready) -> None:
    """A driver's scoring: the scoring product every 0.25 s on ``threads`` BLAS threads."""
    from threadpoolctl import threadpool_limits

    x, w = _scoring_operands()
    with threadpool_limits(threads, user_api="blas"):
        x @ w
        ready.set()
        while not done.wait(0.25):
            x @ w


def spin_cpu_ms(threads: int, calls: int = 8) -> float:
    """Process CPU milliseconds per scoring call followed by 0.2 s idle, on ``threads`` BLAS threads (this process)."""
    from threadpoolctl import threadpool_limits

    x, w = _scoring_operands()
    with threadpool_limits(threads, user_api="blas"):
        x @ w
        time.sleep(0.5)
        start = time.process_time()
        for _ in range(calls):
            x @ w
            time.sleep(0.2)
        return (time.process_time() - start) / calls * 1000


def timed(kernel: str, size: int, processes: int, ctx, scorer_threads: int = 0) -> float:
    """The slowest of ``processes`` processes' time for one run of the kernel, all started at one barrier
    (beside a scoring process on ``scorer_threads`` BLAS threads, if not 0)."""
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(kernel, size, barrier, out)) for _ in range(processes)]
    scorer = done = None
    if scorer_threads:
        done, ready = ctx.Event(), ctx.Event()
        scorer = ctx.Process(target=_scorer, args=(scorer_threads, done, ready))
        scorer.start()
        ready.wait(60)
    for p in procs:
        p.start()
    times = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    if scorer is not None:
        done.set()
        scorer.join()
    return max(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--trials", type=int, default=9)
    args = parser.parse_args(argv)
    trials = 1 if args.smoke else args.trials
    sizes = {"epoch": 3000 if args.smoke else 30000, "matmul": 256 if args.smoke else 1024}
    if args.smoke:
        print("smoke size: the runs are milliseconds long, so these figures show only that the script works")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.get_context("spawn")
    rows = []
    for kernel, size in sizes.items():
        alone, pair = [], []
        for _ in range(trials):
            alone.append(timed(kernel, size, 1, ctx))
            pair.append(timed(kernel, size, 2, ctx))
        slowdown = float(np.median(pair) / np.median(alone))
        rows.append(
            {
                "kernel": kernel,
                "size": size,
                "alone_s": alone,
                "pair_s": pair,
                "alone_median_s": float(np.median(alone)),
                "pair_median_s": float(np.median(pair)),
                "slowdown": slowdown,
                "two_mapper_ceiling": 2 / slowdown,
            }
        )
        print(
            f"{kernel:6s}  alone {np.median(alone):.3f} s  two at once {np.median(pair):.3f} s  "
            f"slowdown {slowdown:.2f}  ceiling for 2 mappers {2 / slowdown:.2f}x "
            f"(alone {min(alone):.3f}-{max(alone):.3f}, pair {min(pair):.3f}-{max(pair):.3f})",
            flush=True,
        )
    # a second series: the epoch pair bare and beside a scoring driver on one and on two BLAS threads, interleaved
    size = sizes["epoch"]
    beside = {0: [], 1: [], 2: []}
    for _ in range(trials):
        for threads in beside:
            beside[threads].append(timed("epoch", size, 2, ctx, threads))
    for threads, times in beside.items():
        rows.append(
            {
                "kernel": "epoch pair" + (f" beside a scorer on {threads} BLAS thread(s)" if threads else ""),
                "size": size,
                "pair_s": times,
                "pair_median_s": float(np.median(times)),
            }
        )
    spin = {threads: spin_cpu_ms(threads) for threads in (1, 2)}
    bare = float(np.median(beside[0]))
    for threads in (1, 2):
        print(
            f"epoch pair beside a scorer on {threads} BLAS thread(s): {np.median(beside[threads]):.3f} s "
            f"({np.median(beside[threads]) / bare:.2f}x the bare pair's {bare:.3f} s in the same series); "
            f"the scorer's CPU per call {spin[threads]:.0f} ms",
            flush=True,
        )
    result = {"cores": os.cpu_count(), "trials": trials, "rows": rows, "spin_cpu_ms": spin}
    write_result("smoke/two_cores" if args.smoke else "two_cores", result)
    return result


if __name__ == "__main__":
    main()
