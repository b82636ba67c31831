"""One BLAS thread per mapper, on every engine.

A matrix product summed by two threads can differ in its last bits from the
same product summed by one, and over many SGD steps such bits grow into
visible differences. Spark already gives each task's Python worker one BLAS
thread (``OMP_NUM_THREADS`` = ``spark.task.cpus``); training under
:func:`one_blas_thread` does the same everywhere, so every engine (local,
Spark, mrjob, MPI) computes the same weights for the same seed, and
parallelism comes from the mappers, one core each.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache


@lru_cache(maxsize=1)
def _controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def one_blas_thread():
    """Run the block with numpy's BLAS (and torch's intra-op pool, if loaded) on one thread."""
    import sys

    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    with _controller().limit(limits=1, user_api="blas"):
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(torch_threads)
