"""Timing is data: a context manager that adds elapsed seconds into a dict."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timed(into: dict, key: str):
    """Add the seconds spent inside the ``with`` block to ``into[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start
