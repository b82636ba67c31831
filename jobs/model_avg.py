"""Model averaging on Spark: ``nnlib run`` with the Spark engine.

Launch (the same arguments as ``nnlib run``; nnlib must be installed, e.g.
``pip install .``)::

    spark-submit jobs/model_avg.py [CONF] [--set key=value ...] [--out DIR]

Without CONF, the built-in defaults (digits, 4 mappers). On a cluster use
``./submit.sh``, which ships the nnlib package to the executors and sets the
master.
"""

import sys

from nnlib.__main__ import main

if __name__ == "__main__":
    main(["run", "--set", "engine=spark", *sys.argv[1:]])  # errors read "nnlib: error: ..."
