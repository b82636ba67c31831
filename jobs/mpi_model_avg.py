"""Model averaging (or synchronous gradient averaging) with MPI: one rank per mapper.

Launch (the same arguments as ``nnlib run``; rank 0 prints and writes the run directory)::

    mpiexec -n K python jobs/mpi_model_avg.py [CONF] [--set key=value ...] [--out DIR]

``mappers`` is the number of ranks K. As root, Open MPI also wants
``--allow-run-as-root``; more ranks than cores need ``--oversubscribe``.
"""

import sys
from pathlib import Path

# Run from a source checkout without installing: put the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnlib.engines.mpi import run_mpi  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_mpi(sys.argv[1:]))
