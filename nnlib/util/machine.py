"""The machine a run ran on: host, cores, memory, Python and library versions (for reports)."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata

LIBRARIES = ("numpy", "torch", "pyspark", "mrjob", "mpi4py", "pyarrow", "scikit-learn", "matplotlib")


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def describe() -> dict:
    """Facts about this machine; a library that is not installed is left out. Nothing is imported."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "libraries": versions,
    }
