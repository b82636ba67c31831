"""Trainer throughput against the measured matmul rate: samples per second of nnlib's training loop.

    python bench/throughput.py                 # 784-128-10, batch 32..1024, numpy and torch, 1 and 2 threads
    python bench/throughput.py --smoke         # a few seconds, for CI

The roofline is the one-thread (or two-thread) float32 matmul rate measured
here, divided by 4 x params FLOP per sample (forward and weight gradients).
The loop timed is the real one (:func:`nnlib.core.train.local_sgd`: batch
gather, loss and gradient, SGD update), on random data of MNIST's shape.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from nnlib.core.backends import get_backend
from nnlib.core.mlp import ModelSpec
from nnlib.core.optim import SGD
from nnlib.core.params import LayerSpec, init_params
from nnlib.core.train import LocalSchedule, local_sgd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Median float32 matmul rate (GFLOP/s) of an n x n x n product on ``threads`` BLAS threads."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)).astype(np.float32), rng.normal(size=(n, n)).astype(np.float32)
    times = []
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def samples_per_second(
    backend_name: str, sizes: tuple[int, ...], batch: int, threads: int, n: int, repeats: int
) -> float:
    """Median samples/s of one local epoch over ``n`` random samples."""
    layers = LayerSpec(sizes)
    backend = get_backend(backend_name, ModelSpec(layers))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    params = init_params(layers, 0)
    torch = sys.modules.get("torch")
    times = []
    with threadpool_limits(threads, user_api="blas"):
        if torch is not None:
            torch.set_num_threads(threads)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            local_sgd(backend, params, None, SGD(), x, y, LocalSchedule(batch), 0.01, np.random.default_rng(1))
            times.append(time.perf_counter() - start)
    return n / float(np.median(times[1:]))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, for CI")
    args = parser.parse_args(argv)
    sizes = (784, 128, 10)
    params = LayerSpec(sizes).n_params
    batches = [32, 256] if args.smoke else [32, 64, 128, 256, 512, 1024]
    n, repeats = (4096, 1) if args.smoke else (20000, 5)
    rows = []
    for threads in (1, 2):
        gflops = matmul_gflops(threads, 512 if args.smoke else 1024)
        roofline = gflops * 1e9 / (4 * params)
        for backend in ("numpy", "torch"):
            for batch in batches:
                rate = samples_per_second(backend, sizes, batch, threads, n, repeats)
                rows.append(
                    {
                        "threads": threads,
                        "backend": backend,
                        "batch": batch,
                        "samples_per_s": rate,
                        "matmul_gflops": gflops,
                        "roofline_samples_per_s": roofline,
                        "share_of_roofline": rate / roofline,
                    }
                )
                print(
                    f"threads {threads}  {backend:5s}  batch {batch:5d}  {rate:9.0f} samples/s  "
                    f"{100 * rate / roofline:5.1f}% of {roofline:9.0f} (matmul {gflops:.0f} GFLOP/s)",
                    flush=True,
                )
    result = {"model": list(sizes), "params": params, "rows": rows}
    write_result("smoke/throughput" if args.smoke else "throughput", result)
    return result


if __name__ == "__main__":
    main()
