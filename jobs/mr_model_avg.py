"""One round of model averaging as a Hadoop streaming job (mrjob).

Each input line is a shard index. The mapper builds that shard from the
config's data source, trains it from the round's weights, and emits the new
weights; the single reducer combines them with nnlib's combine rules.

    key/value shapes
      mapper_train_shard: (None, "3")          -> ("round", result dict, weights in base64)
      reducer_combine:    ("round", [results]) -> ("combined", {params, velocity, combine_seconds})
                                                  ("mapper", {mapper, host, pid, n_samples, ...}) per mapper

The round's weights reach every task as an uploaded file (``--payload``, an
``.npz``), never inside the input lines. ``nnlib run --set engine=mrjob`` runs
one such job per round; this file also runs on its own, for one round:

    printf '0\\n1\\n2\\n' > shards.txt
    python jobs/mr_model_avg.py -r local --nnlib-conf conf/default.yaml --set mappers=3 shards.txt

Without ``--payload`` the round starts from the config's initial weights
(round 0). ``-r inline``, ``-r local``, ``-r hadoop`` and ``-r emr`` all work;
on Hadoop the tasks need nnlib and its dependencies (see the README).
"""

import sys
import time
from pathlib import Path

from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, RawValueProtocol
from mrjob.step import MRStep

if __name__ == "__main__" and not any(p.endswith(".zip") for p in sys.path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a source checkout

from nnlib.config import load_config  # noqa: E402
from nnlib.data.dataset import ShardSource  # noqa: E402
from nnlib.tasks import RoundReducer, train_shard  # noqa: E402
from nnlib.wire import decode_result, encode_array, encode_result, payload_from_file  # noqa: E402


class MRModelAvg(MRJob):
    INPUT_PROTOCOL = RawValueProtocol
    INTERNAL_PROTOCOL = JSONProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def configure_args(self):
        super().configure_args()
        self.add_file_arg("--nnlib-conf", required=True, help="nnlib conf file (fully resolved, no 'extends')")
        self.add_file_arg("--payload", help="the round's weights (.npz); default: initial weights, round 0")
        self.add_passthru_arg("--set", dest="overrides", action="append", default=[],
                              help="override a config key, as in nnlib run")

    def steps(self):
        return [MRStep(mapper_init=self.mapper_init, mapper=self.mapper_train_shard,
                       reducer=self.reducer_combine)]

    def _load(self):
        """Config and payload, read once per task from the uploaded files."""
        if not hasattr(self, "_config"):
            self._config = load_config(self.options.nnlib_conf, self.options.overrides)
            if self.options.payload:
                self._payload = payload_from_file(self.options.payload)
            else:
                from nnlib.driver import initial_payload

                self._payload = initial_payload(self._config)
        return self._config, self._payload

    def mapper_init(self):
        self.increment_counter("nnlib", "map_tasks")

    def mapper_train_shard(self, _, line):
        config, payload = self._load()
        index = int(line.strip())
        shard = ShardSource(config.data, config.seed, config.mappers).build([index])[0]
        yield "round", encode_result(train_shard(shard, payload))

    def reducer_combine(self, _, values):
        config, payload = self._load()
        results = [decode_result(v) for v in values]
        start = time.perf_counter()
        combined = RoundReducer(config.combine, config.train.skip_bad_mappers)(results, payload)
        yield "combined", {"params": encode_array(combined.params), "velocity": encode_array(combined.velocity),
                           "skipped": combined.skipped, "combine_seconds": time.perf_counter() - start}
        for res in sorted(results, key=lambda r: r.mapper):
            meta = encode_result(res)
            del meta["params"], meta["velocity"]
            yield "mapper", meta


if __name__ == "__main__":
    MRModelAvg.run()
