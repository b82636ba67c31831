"""One round of model averaging as a Hadoop streaming job (mrjob).

Each input line is a shard index. The mapper builds that shard from the
config's data source, trains it from the round's weights, and emits the new
weights; the single reducer combines them with nnlib's combine rules.

    key/value shapes
      mapper_train_shard: (None, "3")          -> ("round", {stats, params, opt_state}, arrays in base64)
      reducer_combine:    ("round", [results]) -> ("combined", {params, opt_state, skipped, combine_seconds})
                                                  ("mapper", {mapper, host, pid, n_samples, ...}) per mapper

The round's weights reach every task as an uploaded file (``--payload``, an
``.npz``), never inside the input lines; the reduce step is named by
``--combine`` and ``--skip-bad-mappers`` (default: the conf's). The engine
(``nnlib run --set engine=mrjob``) runs one such job per round; mrjob runs
this file as the task script, so it lives in the package and is found by
import. ``jobs/mr_model_avg.py`` runs it on its own, for one round.
"""

from __future__ import annotations

import pickle
import time

from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, RawValueProtocol
from mrjob.step import MRStep

from nnlib.config import load_config
from nnlib.data.dataset import ShardSource, run_dataset
from nnlib.data.disk import kept, shard_store
from nnlib.engines.mrjob.partition import read_shard
from nnlib.engines.mrjob.wire import decode_result, encode_array, encode_result, encode_stats, payload_from_file
from nnlib.rounds.mapper import train_shard
from nnlib.rounds.payload import first_payload
from nnlib.rounds.reduce import RoundReducer


class MRModelAvg(MRJob):
    INPUT_PROTOCOL = RawValueProtocol
    INTERNAL_PROTOCOL = JSONProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def configure_args(self):
        super().configure_args()
        self.add_file_arg("--nnlib-conf", required=True, help="nnlib conf file (fully resolved, no 'extends')")
        self.add_file_arg("--payload", help="the round's weights (.npz); default: initial weights, round 0")
        self.add_file_arg("--rows", help="a Parquet source's row plan and statistics (pickled by the engine)")
        self.add_passthru_arg("--scratch", help="where the partition job wrote a Parquet source's shards")
        self.add_passthru_arg(
            "--set", dest="overrides", action="append", default=[], help="override a config key, as in nnlib run"
        )
        self.add_passthru_arg("--combine", help="the reduce step's combine rule (default: the conf's)")
        self.add_passthru_arg(
            "--skip-bad-mappers",
            choices=["true", "false"],
            help="leave out mappers whose weights are NaN/inf (default: the conf's)",
        )

    def steps(self):
        return [
            MRStep(
                mapper_init=self.mapper_init,
                mapper=self.mapper_train_shard,
                reducer_init=self.reducer_init,
                reducer=self.reducer_combine,
            )
        ]

    def _load(self):
        """Config and payload, read once per task from the uploaded files."""
        self.config = load_config(self.options.nnlib_conf, self.options.overrides)
        if self.options.payload:
            self.payload = payload_from_file(self.options.payload)
        else:
            data = run_dataset(self.config)
            self.payload = first_payload(self.config, data)

    def mapper_init(self):
        self._load()
        self.increment_counter("nnlib", "map_tasks")

    def mapper_train_shard(self, _, line):
        index = int(line.strip())
        rows = None
        if self.options.rows:  # a Parquet source: this shard's rows, as the partition job wrote them
            with open(self.options.rows, "rb") as f:
                rows = pickle.load(f)
        store = shard_store(self.config.data)  # data.shard_storage: disk keeps the shard in a scratch folder
        try:
            if rows is not None and self.options.scratch:
                shard = read_shard(rows, index, self.options.scratch)
            else:
                shard = ShardSource.of_run(self.config, rows).build([index])[0]
            result = train_shard(kept([shard], store)[0], self.payload)
        finally:
            store.remove()
        yield "round", encode_result(result)

    def reducer_init(self):
        self._load()
        rule = self.options.combine or self.config.combine
        skip = self.options.skip_bad_mappers
        self.reducer = RoundReducer(rule, self.config.train.skip_bad_mappers if skip is None else skip == "true")

    def reducer_combine(self, _, values):
        results = [decode_result(v) for v in values]
        start = time.perf_counter()
        combined = self.reducer(results, self.payload)
        yield (
            "combined",
            {
                "params": encode_array(combined.params),
                "opt_state": encode_array(combined.opt_state),
                "skipped": combined.skipped,
                "combine_seconds": time.perf_counter() - start,
            },
        )
        for res in sorted(results, key=lambda r: r.stats.mapper):
            yield "mapper", encode_stats(res.stats)


if __name__ == "__main__":
    MRModelAvg.run()
