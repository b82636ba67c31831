"""The engine contract: where shards live, how a round's map and reduce happen.

The driver loop (:mod:`nnlib.driver`) is the same for every engine. An engine
decides only *where* the shards live and *how* a round's work runs on them:

- ``start(source)``: build and place the ``source.mappers`` shards once,
  before the first round (each worker builds its own from the recipe; the
  training data never goes through the driver).
- ``round(payload, reducer, timings) -> (Combined, list[MapperStats])``: a
  local round. Every mapper runs :func:`nnlib.rounds.mapper.train_shard` on its shard
  from ``payload``; the results are reduced with ``reducer`` (the driver's
  :class:`nnlib.rounds.reduce.RoundReducer`, or the same rule as a collective); the
  engine returns the next state and each mapper's stats in mapper order.
- ``sync_round(payload, timings) -> (Combined, list[MapperStats])``: a
  synchronous round (gradients averaged every mini-batch). Engines that
  cannot sync raise :class:`nnlib.errors.EngineError` (the config refuses
  them first).
- ``score(backend, model, params) -> list[dict]`` (optional): only for
  engines whose reader may leave a Parquet source's test and validation rows
  with the mappers (Spark past ``spark.collect_held_out_mb``, MPI always):
  each mapper's :func:`nnlib.rounds.mapper.score_held_out` of ``params`` on
  the rows it keeps; the driver adds them up. The others raise
  :class:`nnlib.errors.EngineError` (their readers always collect the rows,
  so the driver never asks).
- ``reader``: how the engine reads a row-keyed (Parquet) source, a
  :class:`nnlib.data.tables.Reader`; ``None``: pyarrow in the driver's
  process (:class:`nnlib.data.tables.LocalReader`).
- ``size``: how many processes run the driver loop: the MPI ranks, else 1.
- ``mappers_elsewhere``: True when no mapper trains in the driver's process
  (Spark's Python workers, mrjob's local and cluster runners): the driver
  may then score round r while the mappers train round r+1
  (:func:`nnlib.driver.overlaps_scoring`).
- ``stop()``: release what ``start`` acquired.
- ``is_main``: True in the process that writes the run directory and prints.
  An SPMD engine (MPI) runs the driver on every rank; only rank 0 is main.
- ``all_ok(ok) -> bool``: True on every process when ``ok`` holds on every
  process (one process's failure stops all); plain ``ok`` for engines with a
  single driver process.

What the timings mean, on every engine (seconds, added to ``timings``):

- ``broadcast``: making the round's payload available to every mapper
  (serialising, broadcasting, writing the file mappers read); 0 where every
  mapper already holds it.
- ``wait``: from the end of ``broadcast`` until every mapper's result is
  available to the reduce, the mappers' training included.
- ``combine``: turning the results into the next weights (a driver-side
  combine, a Hadoop reducer, an MPI Allreduce). In a synchronous round, the
  time spent averaging gradients; ``wait`` is then the rest of the round.
- ``overhead`` (computed by the driver): ``wait`` less the slowest mapper's
  ``train_seconds``: launching, shipping, scheduling and, on the sequential
  local engine, the other mappers' training.
"""

from __future__ import annotations

from typing import Protocol

from nnlib.data.dataset import ShardSource
from nnlib.data.tables import Reader
from nnlib.errors import EngineError
from nnlib.rounds.payload import Combined, MapperResult, MapperStats, RoundPayload
from nnlib.rounds.reduce import RoundReducer
from nnlib.util.timing import timed


class Engine(Protocol):
    is_main: bool
    size: int
    reader: Reader | None
    mappers_elsewhere: bool

    def start(self, source: ShardSource) -> None: ...

    def round(
        self, payload: RoundPayload, reducer: RoundReducer, timings: dict
    ) -> tuple[Combined, list[MapperStats]]: ...

    def sync_round(self, payload: RoundPayload, timings: dict) -> tuple[Combined, list[MapperStats]]: ...

    def score(self, backend: str, model, params) -> list[dict]: ...

    def all_ok(self, ok: bool) -> bool: ...

    def stop(self) -> None: ...


class SingleDriver(Engine):
    """For engines with one driver process, which is the main process, and (unless they say otherwise) the
    local reader, which collects every held-out row to the driver."""

    is_main = True
    size = 1
    reader: Reader | None = None
    mappers_elsewhere = False

    def all_ok(self, ok: bool) -> bool:
        return ok

    def score(self, backend: str, model, params) -> list[dict]:
        raise EngineError(f"{type(self).__name__} keeps no held-out rows with its mappers; the driver scores them")


class ReduceOnDriver(SingleDriver):
    """For engines whose driver collects every mapper's result and reduces it in its own process.

    A subclass says how :func:`nnlib.rounds.mapper.train_shard` is mapped over the
    shards (``map``, which records ``broadcast`` and ``wait``); the reduce is
    the same everywhere.
    """

    def map(self, payload: RoundPayload, timings: dict) -> list[MapperResult]:
        raise NotImplementedError

    def round(self, payload: RoundPayload, reducer: RoundReducer, timings: dict) -> tuple[Combined, list[MapperStats]]:
        results = self.map(payload, timings)
        with timed(timings, "combine"):
            combined = reducer(results, payload)
        return combined, sorted((res.stats for res in results), key=lambda s: s.mapper)
