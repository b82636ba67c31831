"""Model averaging on Spark: the nnlib driver loop with the Spark engine.

Launch (the same arguments as ``nnlib run``)::

    spark-submit jobs/model_avg.py [CONF] [--set key=value ...] [--out DIR]

Without CONF, ``conf/default.yaml``. On a cluster use ``./submit.sh``, which
ships the nnlib package to the executors and sets the master.
"""

import sys
from pathlib import Path

# Run from a source checkout without installing: put the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nnlib.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", "--set", "engine=spark", *sys.argv[1:]], prog="model_avg.py"))
