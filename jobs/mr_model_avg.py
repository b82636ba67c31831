"""One round of model averaging as a Hadoop streaming job, run on its own.

``nnlib run --set engine=mrjob`` runs one such job per round; this script
runs one round by hand (the job class is :mod:`nnlib.engines.mrjob.model_avg`)::

    printf '0\\n1\\n2\\n' > shards.txt
    python jobs/mr_model_avg.py -r local --nnlib-conf conf/default.yaml --set mappers=3 shards.txt

Without ``--payload WEIGHTS.npz`` the round starts from the config's initial
weights (round 0). ``-r inline``, ``-r local``, ``-r hadoop`` and ``-r emr``
all work; on Hadoop the tasks need nnlib and its dependencies (docs/pages/guide/mrjob.md).
"""

from nnlib.engines.mrjob.engine import load_job_class

if __name__ == "__main__":
    load_job_class().run()
