"""The local engine: every shard in this process, mapped one after the other.

It is the reference every other engine is tested against; with one mapper it
is plain sequential training.
"""

from __future__ import annotations

import numpy as np

from nnlib.core.params import DTYPE
from nnlib.engines.base import MapThenReduce
from nnlib.tasks import sync_gradient_round
from nnlib.timing import timed


class InProcessCollective:
    """Averaging across mappers that all live in this process, in mapper order."""

    def mean(self, local):
        return np.mean(local, axis=0, dtype=np.float64).astype(DTYPE)

    def mappers_flagged(self, local_flags):
        return sorted(m for m, flag in local_flags.items() if flag)


class LocalEngine(MapThenReduce):
    name = "local"

    def __init__(self):
        self.shards = []

    def start(self, source):
        self.shards = source.build(list(range(source.mappers)))

    def map(self, fn, payload, timings):
        timings.setdefault("broadcast", 0.0)
        with timed(timings, "wait"):
            return [fn(shard, payload) for shard in self.shards]

    def sync_round(self, payload, timings):
        """Synchronous gradient averaging, the sequential equivalent: each step visits every shard in turn."""
        timings.setdefault("broadcast", 0.0)
        with timed(timings, "wait"):
            return sync_gradient_round(self.shards, payload, InProcessCollective())

    def stop(self):
        self.shards = []
