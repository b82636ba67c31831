"""The MPI engine: one rank per mapper, weights combined with collectives.

Every rank runs the same driver loop (:mod:`nnlib.driver`) on identical
weights; rank 0 alone is ``is_main`` (writes the outputs and prints). Each
rank builds its own shard once (rank ``r`` reads the data and keeps shard
``r``), so no data moves after the start. Every collective of the rounds uses
mpi4py's buffer form (``Allreduce``, ``Allgather`` on numpy arrays), never the
pickling lower-case calls; only reading a Parquet source at the start
(:class:`MpiReader`) allgathers small pickled summaries (the file list, the
per-block tallies).

``mpi.collective``:

- ``allreduce``: the reduce is a sum of shares
  (:class:`nnlib.rounds.reduce.RoundShares`: the rule's coefficient times the
  weights, or a sub-network in its places), so each rank adds its share to
  one float64 Allreduce and every rank finishes the same sum. The engine
  computes no coefficient of its own;
- ``allgather``: every rank receives every rank's float32 vector and reduces
  them with the same :class:`nnlib.rounds.reduce.RoundReducer` as the local
  engine. A round of sub-networks (``combine: ist``, the last round of
  ``split``), whose vectors differ in size, always uses the Allreduce.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from nnlib.core.params import DTYPE
from nnlib.data import tables
from nnlib.data.dataset import Shard
from nnlib.data.disk import MemoryStore, ShardStore, kept, shard_store
from nnlib.data.rows import merge_in_order
from nnlib.engines.base import Engine
from nnlib.errors import EngineError
from nnlib.rounds.mapper import score_held_out, sync_shards, train_shard
from nnlib.rounds.payload import NUMERIC_STATS, Combined, MapperResult, MapperStats, RoundPayload, stats_from_numbers
from nnlib.rounds.reduce import RoundReducer, check_bad_mappers, gradient_share, mean_gradient
from nnlib.util.timing import timed

_HOST_BYTES = 64


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise EngineError(
            f"engine=mpi needs mpi4py and an MPI library ({exc}); install them with pip install '.[mpi]'"
        ) from None
    return MPI


def _in_place():
    return import_mpi().IN_PLACE


def ranks_flagged(comm, local_flags: dict[int, bool]) -> list[int]:
    """The ranks, across the whole communicator, whose flag is set (one Allreduce of a flag vector)."""
    flags = np.zeros(comm.Get_size(), np.int64)
    for rank, flag in local_flags.items():
        flags[rank] = int(flag)
    comm.Allreduce(_in_place(), flags)
    return [int(r) for r in np.flatnonzero(flags)]


class MpiCollective:
    """Gradient averaging across ranks for synchronous rounds, the same mean as the local engine's."""

    def __init__(self, comm, collective: str):
        self.comm, self.collective = comm, collective

    def mean(self, local: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
        (vector,) = local  # one mapper per rank
        k = self.comm.Get_size()
        if self.collective == "allgather":
            gathered = np.empty((k, vector.size), DTYPE)
            self.comm.Allgather(np.ascontiguousarray(vector, DTYPE), gathered)
            return mean_gradient(list(gathered), coefficients)
        share = gradient_share(vector, coefficients[self.comm.Get_rank()])
        self.comm.Allreduce(_in_place(), share)
        return share.astype(DTYPE)

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        return ranks_flagged(self.comm, local_flags)


class MpiReader:
    """How MPI ranks read a row-keyed (Parquet) source: each rank surveys the files ``rank, rank + size, ...``
    and one allgather gives every rank the whole, merged in position order (the same figures as one reader).

    The test and validation rows are never collected: each rank keeps its
    part of them with its shard and scores it (:meth:`MpiEngine.score`).
    """

    collect_limit_bytes: float | None = 0

    def __init__(self, comm):
        self.comm = comm
        self.local = tables.LocalReader()

    def open(self, source, label_column, features_column):
        return self._together(lambda: self.local.open(source, label_column, features_column), first=True)

    def _mine(self, table) -> list[int]:
        return list(range(self.comm.Get_rank(), len(table.files), self.comm.Get_size()))

    def _together(self, work, first: bool = False):
        """``work()`` on every rank, its results allgathered; a rank's error is raised on every rank."""
        out: tuple[Exception | None, Any]
        try:
            out = (None, work())
        except Exception as exc:  # noqa: BLE001  - raised on every rank below, so none waits forever
            out = (exc, None)
        gathered = self.comm.allgather(out)
        for error, _ in gathered:
            if error is not None:
                raise error
        return gathered[0][1] if first else [result for _, result in gathered]

    def survey(self, table, plan):
        parts = self._together(lambda: tables.tally(table, plan, self._mine(table)))
        return merge_in_order([t for part in parts for t in part])

    def rows(self, table, plan, role, n_features):
        """Every rank reads the rows itself (only a set with no rows reaches here: any other stays with the
        mappers, ``collect_limit_bytes = 0``)."""
        return self.local.rows(table, plan, role, n_features)


class MpiEngine(Engine):
    """One rank per mapper; every rank runs the driver loop, rank 0 is the main process."""

    mappers_elsewhere = False  # rank 0 trains a mapper too

    def __init__(self, comm=None, collective: str = "allreduce"):
        self.comm = comm if comm is not None else import_mpi().COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_main = self.rank == 0
        self.collective = collective
        self.shard: Shard | None = None
        self.store: ShardStore | MemoryStore = MemoryStore()
        self.reader = MpiReader(self.comm)  # a row-keyed source: each rank surveys part, then one allgather

    @property
    def _shard(self) -> Shard:
        """This rank's shard (built by :meth:`start`)."""
        if self.shard is None:
            raise EngineError("engine=mpi: this rank's shard is built by start(), which has not run")
        return self.shard

    def all_ok(self, ok: bool) -> bool:
        return not ranks_flagged(self.comm, {self.rank: not ok})

    def start(self, source):
        if source.mappers != self.size:
            raise EngineError(
                f"engine=mpi: mappers must equal the number of MPI ranks ({self.size}), got {source.mappers}"
            )
        error = None
        try:
            self.store = shard_store(source.data)  # data.shard_storage: disk keeps it in a scratch folder
            self.shard = kept(source.build([self.rank]), self.store)[0]
        except Exception as exc:  # noqa: BLE001  - re-raised below, after every rank knows
            error = exc
        if not self.all_ok(error is None):
            if error is not None:
                raise error
            raise EngineError("engine=mpi: another rank failed to build its shard")

    def _gather_stats(self, mine: MapperStats) -> list[MapperStats]:
        """Every rank's stats, on every rank (buffer-form Allgather of numbers and host names)."""
        table = np.empty((self.size, len(NUMERIC_STATS)), np.float64)
        self.comm.Allgather(np.array([getattr(mine, k) for k in NUMERIC_STATS], np.float64), table)
        host = np.zeros(_HOST_BYTES, np.uint8)
        encoded = mine.host.encode()[:_HOST_BYTES]
        host[: len(encoded)] = np.frombuffer(encoded, np.uint8)
        hosts = np.empty((self.size, _HOST_BYTES), np.uint8)
        self.comm.Allgather(host, hosts)
        return [
            stats_from_numbers(m, bytes(hosts[m]).rstrip(b"\0").decode(errors="replace"), row)
            for m, row in enumerate(table)
        ]

    def round(self, payload: RoundPayload, reducer: RoundReducer, timings: dict) -> tuple[Combined, list[MapperStats]]:
        timings.setdefault("broadcast", 0.0)  # every rank already holds the weights
        with timed(timings, "wait"):
            res = train_shard(self._shard, payload)
            trained = time.perf_counter()
            stats = self._gather_stats(res.stats)  # returns once every rank has trained
        with timed(timings, "combine"):
            if self.collective == "allgather" and payload.subnets is None:
                combined = reducer(self._allgather_results(res, stats), payload)
            else:  # sub-networks differ in size, so they always take the Allreduce of shares
                combined = self._allreduce_shares(res, stats, payload, reducer)
        # each rank's time in collectives this round, gathered with one number per rank
        comm = np.empty(self.size, np.float64)
        self.comm.Allgather(np.array([time.perf_counter() - trained]), comm)
        return combined, [dataclasses.replace(s, comm_seconds=float(c)) for s, c in zip(stats, comm, strict=True)]

    def _allgather_results(self, res: MapperResult, stats: list[MapperStats]) -> list[MapperResult]:
        params = np.empty((self.size, res.params.size), DTYPE)
        self.comm.Allgather(np.ascontiguousarray(res.params, DTYPE), params)
        states = [None] * self.size
        if res.opt_state is not None:
            gathered = np.empty((self.size, res.opt_state.size), DTYPE)
            self.comm.Allgather(np.ascontiguousarray(res.opt_state, DTYPE), gathered)
            states = list(gathered)
        return [MapperResult(stats[m], params[m], states[m]) for m in range(self.size)]

    def _allreduce_shares(
        self, res: MapperResult, stats: list[MapperStats], payload: RoundPayload, reducer: RoundReducer
    ) -> Combined:
        """The reduce as one Allreduce: every good rank adds its :class:`RoundShares` share, a skipped one
        zeros; the bad ranks are found with one flag Allreduce and judged by :func:`check_bad_mappers`."""
        bad = ranks_flagged(self.comm, {self.rank: not np.isfinite(res.params).all()})
        check_bad_mappers(bad, self.size, payload.round_index, reducer.skip_bad)
        good = [m for m in range(self.size) if m not in bad]
        shares = reducer.shares(payload, good, [stats[m].combine_size for m in good])
        params, state = shares.share(self.rank, res.params, res.opt_state) if self.rank in good else shares.zeros()
        self.comm.Allreduce(_in_place(), params)
        if state is not None:
            self.comm.Allreduce(_in_place(), state)
        return Combined(*shares.finish(params, state), bad)

    def sync_round(self, payload: RoundPayload, timings: dict) -> tuple[Combined, list[MapperStats]]:
        timings.setdefault("broadcast", 0.0)
        with timed(timings, "wait"):
            combined, (mine,) = sync_shards([self._shard], payload, MpiCollective(self.comm, self.collective))
            stats = self._gather_stats(mine)
        timings["combine"] = mine.comm_seconds
        timings["wait"] -= mine.comm_seconds
        return combined, stats

    def score(self, backend, model, params) -> list[dict]:
        """Every rank's scores of ``params`` on the held-out rows it keeps, on every rank (one Allgather), so
        every rank adds them up in the same order and takes the same early-stopping decision."""
        mine = score_held_out(self._shard, backend, model, params)
        roles = sorted(mine)  # the same on every rank: the row plan's roles
        table = np.empty((self.size, 3 * len(roles)), np.float64)
        self.comm.Allgather(np.array([v for r in roles for v in mine[r]], np.float64), table)
        return [
            {r: (float(row[3 * i]), int(row[3 * i + 1]), int(row[3 * i + 2])) for i, r in enumerate(roles)}
            for row in table
        ]

    def stop(self):
        self.shard = None
        self.store.remove()


def fit_to_ranks(config, size: int, warn):
    """The config with ``mappers`` set to the number of ranks, warning (through ``warn``) when it differs."""
    if config.mappers == size:
        return config
    warn(f"mappers={config.mappers} in the config; using {size}, the number of MPI ranks")
    return config.model_copy(update={"mappers": size})
