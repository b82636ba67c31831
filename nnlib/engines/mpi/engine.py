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

- ``allreduce``: every combine rule is linear (``sum_i c_i w_i + c_0 start``,
  :data:`nnlib.core.combine.COEFFICIENTS`), so rank ``i`` contributes
  ``c_i * w_i`` to one Allreduce, accumulated in float64 like the local
  engine's combine;
- ``allgather``: every rank receives every rank's float32 vector and reduces
  them with the same :class:`nnlib.rounds.reduce.RoundReducer` as the local engine.

A round of sub-networks (``combine: ist``, the last round of ``split``; the
sub-networks differ in size) always uses one Allreduce of full-length float64
shares: each rank puts its sub-network, divided by the number of holders, in
its places and zeros elsewhere.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from nnlib.core.combine import COEFFICIENTS, combine
from nnlib.core.params import DTYPE
from nnlib.core.optim import state_rows
from nnlib.core.split import embed, held_count, shares_divisor
from nnlib.data import tables
from nnlib.data.rows import merge_in_order
from nnlib.engines.base import Engine
from nnlib.errors import EngineError
from nnlib.rounds.mapper import score_held_out, sync_shards, train_shard
from nnlib.rounds.payload import Combined, MapperResult, MapperStats, RoundPayload
from nnlib.rounds.reduce import RoundReducer, check_bad_mappers, whole_network_rule
from nnlib.util.timing import timed

_HOST_BYTES = 64
# per-mapper numbers gathered every round, in this order, as float64
_META = ("n_samples", "steps", "train_loss", "train_seconds", "comm_seconds", "pid", "peak_rss_mb",
         "result_bytes")


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise EngineError(f"engine=mpi needs mpi4py and an MPI library ({exc}); "
                          "install them with pip install '.[mpi]'") from None
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


def _weighted_sum(comm, vector: np.ndarray | None, coef: float, n: int) -> np.ndarray:
    """``sum over ranks of coef * vector`` in float64 (a rank with ``vector=None`` adds nothing)."""
    total = coef * vector.astype(np.float64) if vector is not None else np.zeros(n)
    comm.Allreduce(_in_place(), total)
    return total


class MpiCollective:
    """Gradient averaging across ranks for synchronous rounds, the same mean as the local engine's."""

    def __init__(self, comm, collective: str):
        self.comm, self.collective = comm, collective

    def mean(self, local: list[np.ndarray]) -> np.ndarray:
        (vector,) = local  # one mapper per rank
        k = self.comm.Get_size()
        if self.collective == "allgather":
            gathered = np.empty((k, vector.size), DTYPE)
            self.comm.Allgather(np.ascontiguousarray(vector, DTYPE), gathered)
            return combine("average", list(gathered), [1] * k)
        coefs, _ = COEFFICIENTS["average"]([1] * k)
        return _weighted_sum(self.comm, vector, coefs[self.comm.Get_rank()], vector.size).astype(DTYPE)

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        return ranks_flagged(self.comm, local_flags)


class MpiReader:
    """How MPI ranks read a row-keyed (Parquet) source: each rank surveys the files ``rank, rank + size, ...``
    and one allgather gives every rank the whole, merged in position order (the same figures as one reader).

    The test and validation rows are never collected: each rank keeps its
    part of them with its shard and scores it (:meth:`MpiEngine.score`).
    """

    collect_limit_bytes = 0

    def __init__(self, comm):
        self.comm = comm
        self.local = tables.LocalReader()

    def open(self, source, label_column, features_column):
        return self._together(lambda: self.local.open(source, label_column, features_column), first=True)

    def _mine(self, table) -> list[int]:
        return list(range(self.comm.Get_rank(), len(table.files), self.comm.Get_size()))

    def _together(self, work, first: bool = False):
        """``work()`` on every rank, its results allgathered; a rank's error is raised on every rank."""
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



class MpiEngine(Engine):
    """One rank per mapper; every rank runs the driver loop, rank 0 is the main process."""

    def __init__(self, comm=None, collective: str = "allreduce"):
        self.comm = comm if comm is not None else import_mpi().COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.is_main = self.rank == 0
        self.collective = collective
        self.shard = None
        self.reader = MpiReader(self.comm)  # a row-keyed source: each rank surveys part, then one allgather

    def all_ok(self, ok: bool) -> bool:
        return not ranks_flagged(self.comm, {self.rank: not ok})

    def start(self, source):
        if source.mappers != self.size:
            raise EngineError(f"engine=mpi: mappers must equal the number of MPI ranks ({self.size}), "
                              f"got {source.mappers}")
        error = None
        try:
            self.shard = source.build([self.rank])[0]
        except Exception as exc:  # noqa: BLE001  - re-raised below, after every rank knows
            error = exc
        if not self.all_ok(error is None):
            if error is not None:
                raise error
            raise EngineError("engine=mpi: another rank failed to build its shard")

    def _gather_stats(self, mine: MapperStats) -> list[MapperStats]:
        """Every rank's stats, on every rank (buffer-form Allgather of numbers and host names)."""
        table = np.empty((self.size, len(_META)), np.float64)
        self.comm.Allgather(np.array([getattr(mine, k) for k in _META], np.float64), table)
        host = np.zeros(_HOST_BYTES, np.uint8)
        encoded = mine.host.encode()[:_HOST_BYTES]
        host[:len(encoded)] = np.frombuffer(encoded, np.uint8)
        hosts = np.empty((self.size, _HOST_BYTES), np.uint8)
        self.comm.Allgather(host, hosts)
        return [MapperStats(m, int(row[0]), int(row[1]), float(row[2]),
                            bytes(hosts[m]).rstrip(b"\0").decode(errors="replace"), int(row[5]), float(row[3]),
                            float(row[4]), float(row[6]), int(row[7]))
                for m, row in enumerate(table)]

    def round(self, payload: RoundPayload, reducer: RoundReducer,
              timings: dict) -> tuple[Combined, list[MapperStats]]:
        timings.setdefault("broadcast", 0.0)  # every rank already holds the weights
        with timed(timings, "wait"):
            res = train_shard(self.shard, payload)
            trained = time.perf_counter()
            stats = self._gather_stats(res.stats)  # returns once every rank has trained
        with timed(timings, "combine"):
            if payload.subnets is not None:  # sub-networks differ in size: one Allreduce of their shares
                combined = self._allreduce_subnets(res, payload, reducer)
            elif self.collective == "allgather":
                combined = reducer(self._allgather_results(res, stats), payload)
            else:
                combined = self._allreduce_combine(res, stats, payload, reducer)
        # each rank's time in collectives this round, gathered with one number per rank
        comm = np.empty(self.size, np.float64)
        self.comm.Allgather(np.array([time.perf_counter() - trained]), comm)
        return combined, [dataclasses.replace(s, comm_seconds=float(c)) for s, c in zip(stats, comm)]

    def _allgather_results(self, res: MapperResult, stats: list[MapperStats]) -> list[MapperResult]:
        params = np.empty((self.size, res.params.size), DTYPE)
        self.comm.Allgather(np.ascontiguousarray(res.params, DTYPE), params)
        states = [None] * self.size
        if res.opt_state is not None:
            gathered = np.empty((self.size, res.opt_state.size), DTYPE)
            self.comm.Allgather(np.ascontiguousarray(res.opt_state, DTYPE), gathered)
            states = list(gathered)
        return [MapperResult(stats[m], params[m], states[m]) for m in range(self.size)]

    def _good_ranks(self, res: MapperResult, payload: RoundPayload,
                    reducer: RoundReducer) -> tuple[list[int], list[int]]:
        """``(bad, good)`` ranks of a local round: one flag Allreduce, judged by :func:`check_bad_mappers`."""
        bad = ranks_flagged(self.comm, {self.rank: not np.isfinite(res.params).all()})
        check_bad_mappers(bad, self.size, payload.round_index, reducer.skip_bad)
        return bad, [m for m in range(self.size) if m not in bad]

    def _allreduce_combine(self, res: MapperResult, stats: list[MapperStats], payload: RoundPayload,
                           reducer: RoundReducer) -> Combined:
        bad, good = self._good_ranks(res, payload, reducer)
        mine = self.rank in good
        counts = [stats[m].n_samples for m in good]
        coefs, start_coef = COEFFICIENTS[whole_network_rule(reducer.rule)](counts)
        coef = coefs[good.index(self.rank)] if mine else 0.0
        params = _weighted_sum(self.comm, res.params if mine else None, coef, res.params.size)
        if start_coef:
            params += start_coef * payload.params.astype(np.float64)
        opt_state = None
        if res.opt_state is not None:
            avg, _ = COEFFICIENTS["average"](counts)
            opt_state = _weighted_sum(self.comm, res.opt_state if mine else None, avg[0] if mine else 0.0,
                                      res.opt_state.size).astype(DTYPE)
        return Combined(params.astype(DTYPE), opt_state, bad)

    def _allreduce_subnets(self, res: MapperResult, payload: RoundPayload, reducer: RoundReducer) -> Combined:
        """Sub-networks (``ist``, ``split``): each rank adds its share (:func:`nnlib.core.split.embed`)."""
        bad, good = self._good_ranks(res, payload, reducer)
        layers, split = payload.model.layers, payload.split()
        count = held_count(layers, split, [payload.subnets.choice(m, layers) for m in good])
        divide = shares_divisor(count, "sum" if payload.subnets.sum_shared else "average")
        mine = self.rank in good
        choice = payload.subnets.choice(self.rank, layers)

        def reduce(sub: np.ndarray, start: np.ndarray) -> np.ndarray:
            share = embed(sub, layers, split, choice, divide) if mine else np.zeros(start.shape)
            self.comm.Allreduce(_in_place(), share)
            return np.where(count > 0, share, start.astype(np.float64)).astype(DTYPE)

        params = reduce(res.params, payload.params)
        opt_state = None
        if res.opt_state is not None:  # each buffer (row) of the optimizer state, like the weights
            start = state_rows(payload.opt_state, layers.n_params)
            opt_state = reduce(res.opt_state.reshape(len(start), -1), start).ravel()
        return Combined(params, opt_state, bad)

    def sync_round(self, payload: RoundPayload, timings: dict) -> tuple[Combined, list[MapperStats]]:
        timings.setdefault("broadcast", 0.0)
        with timed(timings, "wait"):
            combined, (mine,) = sync_shards([self.shard], payload, MpiCollective(self.comm, self.collective))
            stats = self._gather_stats(mine)
        timings["combine"] = mine.comm_seconds
        timings["wait"] -= mine.comm_seconds
        return combined, stats

    def score(self, backend, model, params) -> list[dict]:
        """Every rank's scores of ``params`` on the held-out rows it keeps, on every rank (one Allgather), so
        every rank adds them up in the same order and takes the same early-stopping decision."""
        mine = score_held_out(self.shard, backend, model, params)
        roles = sorted(mine)  # the same on every rank: the row plan's roles
        table = np.empty((self.size, 3 * len(roles)), np.float64)
        self.comm.Allgather(np.array([v for r in roles for v in mine[r]], np.float64), table)
        return [{r: (float(row[3 * i]), int(row[3 * i + 1]), int(row[3 * i + 2])) for i, r in enumerate(roles)}
                for row in table]

    def stop(self):
        self.shard = None


def fit_to_ranks(config, size: int, warn):
    """The config with ``mappers`` set to the number of ranks, warning (through ``warn``) when it differs."""
    if config.mappers == size:
        return config
    warn(f"mappers={config.mappers} in the config; using {size}, the number of MPI ranks")
    return config.model_copy(update={"mappers": size})
