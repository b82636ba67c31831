"""The local engine: every shard in this process, mapped one after the other.

It is the reference every other engine is tested against; with one mapper it
is plain sequential training.
"""

from __future__ import annotations

from nnlib.engines.base import MapThenReduce
from nnlib.timing import timed


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

    def stop(self):
        self.shards = []
