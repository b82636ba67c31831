"""What an engine is: a way to place shards and map a function over them.

The driver loop (:mod:`nnlib.driver`) is the same for every engine. An engine
only decides *where* shards live and *how* ``fn(shard, payload)`` runs on each
of them; the results always come back as a list in shard order.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from nnlib.data.dataset import Shard

# Builds the shards with the given indices; runs wherever the engine keeps its data.
ShardBuilder = Callable[[list[int]], list[Shard]]


class Engine(Protocol):
    name: str

    def start(self, build_shards: ShardBuilder, n_shards: int) -> None:
        """Build and place the shards once, before the first round."""

    def map(self, fn: Callable[[Shard, Any], Any], payload: Any, timings: dict) -> list:
        """Run ``fn(shard, payload)`` on every shard; add 'broadcast' and 'wait' seconds to ``timings``."""

    def stop(self) -> None:
        """Release what :meth:`start` acquired."""
