"""What an engine is: a way to place shards and map a function over them.

The driver loop (:mod:`nnlib.driver`) is the same for every engine. An engine
only decides *where* shards live and *how* ``fn(shard, payload)`` runs on each
of them; the results always come back as a list in shard order.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from nnlib.data.dataset import Shard, ShardSource
from nnlib.timing import timed


class Engine(Protocol):
    name: str

    def start(self, source: ShardSource) -> None:
        """Build and place the ``source.mappers`` shards once, before the first round."""

    def round(self, fn: Callable[[Shard, Any], Any], payload: Any, reduce: Callable[[list, Any], Any],
              timings: dict) -> tuple[Any, list]:
        """Map ``fn(shard, payload)`` over the shards and reduce the results with ``reduce(results, payload)``.

        Returns ``(Combined, results)``; adds 'broadcast', 'wait' and 'combine'
        seconds to ``timings``. An engine whose reduce runs elsewhere (a Hadoop
        reducer, an MPI collective) may return results without their weights.
        """

    def stop(self) -> None:
        """Release what :meth:`start` acquired."""


class SyncEngine(Engine, Protocol):
    """An engine that can also average gradients every mini-batch (local, MPI)."""

    def sync_round(self, payload: Any, timings: dict) -> tuple[Any, list]:
        """One round of synchronous gradient averaging; returns ``(Combined, results)``."""


class MapThenReduce:
    """For engines that collect every result to the driver and reduce there."""

    def map(self, fn, payload, timings) -> list:
        raise NotImplementedError

    def round(self, fn, payload, reduce, timings):
        results = self.map(fn, payload, timings)
        with timed(timings, "combine"):
            return reduce(results, payload), results
