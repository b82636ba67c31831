"""The local engine: every shard in this process, mapped one after the other.

It is the reference every other engine is tested against; with one mapper it
is plain sequential training.
"""

from __future__ import annotations

import numpy as np

from nnlib.data.disk import MemoryStore, ShardStore, kept, shard_store
from nnlib.engines.base import ReduceOnDriver
from nnlib.rounds.mapper import sync_shards, train_shard
from nnlib.rounds.payload import Combined, MapperResult, MapperStats, RoundPayload
from nnlib.rounds.reduce import mean_gradient
from nnlib.util.timing import timed


class InProcessCollective:
    """Averaging across mappers that all live in this process, in mapper order."""

    def mean(self, local: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
        return mean_gradient(local, coefficients)

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        return sorted(m for m, flag in local_flags.items() if flag)


class LocalEngine(ReduceOnDriver):
    def __init__(self):
        self.shards = []
        self.store: ShardStore | MemoryStore = MemoryStore()

    def start(self, source):
        self.store = shard_store(source.data)  # data.shard_storage: disk keeps them in a scratch folder
        self.shards = kept(source.build(list(range(source.mappers))), self.store)

    def map(self, payload: RoundPayload, timings: dict) -> list[MapperResult]:
        timings.setdefault("broadcast", 0.0)
        with timed(timings, "wait"):
            return [train_shard(shard, payload) for shard in self.shards]

    def sync_round(self, payload: RoundPayload, timings: dict) -> tuple[Combined, list[MapperStats]]:
        """The sequential equivalent of synchronous averaging: each step visits every shard in turn."""
        timings.setdefault("broadcast", 0.0)
        with timed(timings, "wait"):
            combined, stats = sync_shards(self.shards, payload, InProcessCollective())
        timings["combine"] = sum(s.comm_seconds for s in stats)
        timings["wait"] -= timings["combine"]
        return combined, stats

    def stop(self):
        self.shards = []
        self.store.remove()
