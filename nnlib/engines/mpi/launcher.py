"""Processes started by a launcher (``mpiexec``): is this one of them, which rank, and how to start them.

An SPMD run starts the same ``nnlib run`` in every rank; rank 0 is the main
process (it writes the run directory and prints). This module reads the
rank from the launcher's environment, so the command line knows which
process speaks before any MPI library is loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys

from nnlib.errors import EngineError

# the variables Open MPI, MPICH and any PMI/PMIx launcher set in each rank
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
_LAUNCHER_VARIABLES = (*_RANK_VARIABLES, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def inside_launcher() -> bool:
    """True in a process started by mpiexec."""
    return any(k in os.environ for k in _LAUNCHER_VARIABLES)


def launcher_rank() -> int:
    """This process's rank under mpiexec (0 outside one)."""
    for key in _RANK_VARIABLES:
        if key in os.environ:
            return int(os.environ[key])
    return 0


def launch(launcher: list[str], ranks: int, launcher_args: list[str], nnlib_args: list[str]) -> int:
    """Start ``ranks`` copies of ``python -m nnlib run NNLIB_ARGS`` under ``launcher``; return its exit status."""
    cmd = [*launcher, "-n", str(ranks), *launcher_args, sys.executable, "-m", "nnlib", "run", *nnlib_args]
    try:
        return subprocess.run(cmd).returncode
    except FileNotFoundError:
        raise EngineError(f"mpi.launcher: {launcher[0]!r} not found on PATH "
                          "(pip install '.[mpi]' provides mpiexec)") from None
