"""Model averaging (or synchronous gradient averaging) with MPI: ``nnlib run`` on every rank.

Launch (the same arguments as ``nnlib run``; rank 0 prints and writes the run directory)::

    mpiexec -n K python jobs/mpi_model_avg.py [CONF] [--set key=value ...] [--out DIR]

``mappers`` is the number of ranks K. As root, Open MPI also wants
``--allow-run-as-root``; more ranks than cores need ``--oversubscribe``.
Started without mpiexec, it starts ``mpiexec -n mappers`` itself.
"""

import sys

from nnlib.__main__ import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:], "--set", "engine=mpi"])  # errors read "nnlib: error: ..."
