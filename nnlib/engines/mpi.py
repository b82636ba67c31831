"""The MPI engine: one rank per mapper, weights combined with collectives.

Every rank runs the same driver loop (:mod:`nnlib.driver`) on identical
weights; rank 0 alone writes the outputs and prints. Each rank builds its own
shard once (rank ``r`` reads the data and keeps shard ``r``), so no data moves
after the start. All collectives use mpi4py's buffer form (``Allreduce``,
``Allgather`` on numpy arrays), never the pickling lower-case calls.

``mpi.collective``:

- ``allreduce``: every combine rule is linear (``sum_i c_i w_i + c_0 start``),
  so rank ``i`` contributes ``c_i * w_i`` to one Allreduce (accumulated in
  float64, so the sum matches the local engine's float64 combine);
- ``allgather``: every rank receives every rank's float32 vector and combines
  them with the same pure combine function as the local engine.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from nnlib.core.combine import linear_coefficients
from nnlib.core.params import DTYPE
from nnlib.errors import EngineError
from nnlib.tasks import Combined, MapperResult, check_bad_mappers, sync_gradient_round
from nnlib.timing import timed

COLLECTIVES = ("allreduce", "allgather")
_HOST_BYTES = 64
# per-mapper facts gathered every round, in this order, as float64
_META = ("n_samples", "steps", "train_loss", "train_seconds", "comm_seconds", "pid")


def import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise EngineError(f"engine=mpi needs mpi4py and an MPI library ({exc}); "
                          "install them with pip install -e '.[mpi]'") from None
    return MPI


class MpiCollective:
    """Averages across ranks for synchronous rounds."""

    def __init__(self, comm, collective: str):
        self.comm, self.collective = comm, collective

    def mean(self, local):
        (vector,) = local  # one mapper per rank
        k = self.comm.Get_size()
        if self.collective == "allgather":
            gathered = np.empty((k, vector.size), DTYPE)
            self.comm.Allgather(np.ascontiguousarray(vector, DTYPE), gathered)
            return np.mean(gathered, axis=0, dtype=np.float64).astype(DTYPE)
        total = vector.astype(np.float64)
        self.comm.Allreduce(_in_place(), total)
        return (total / k).astype(DTYPE)

    def mappers_flagged(self, local_flags):
        return ranks_flagged(self.comm, local_flags)


def _in_place():
    from mpi4py import MPI

    return MPI.IN_PLACE


def ranks_flagged(comm, local_flags: dict[int, bool]) -> list[int]:
    """The ranks, across the whole communicator, whose flag is set (one Allreduce of a flag vector)."""
    flags = np.zeros(comm.Get_size(), np.int64)
    for rank, flag in local_flags.items():
        flags[rank] = int(flag)
    comm.Allreduce(_in_place(), flags)
    return [int(r) for r in np.flatnonzero(flags)]


class MpiEngine:
    name = "mpi"

    def __init__(self, comm=None, collective: str = "allreduce"):
        if collective not in COLLECTIVES:
            raise EngineError(f"mpi.collective must be one of {', '.join(COLLECTIVES)}, got {collective!r}")
        self.comm = comm if comm is not None else import_mpi().COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.collective = collective
        self.shard = None

    def agree(self, ok: bool) -> bool:
        """True on every rank when ``ok`` holds on every rank (so a local failure stops all ranks)."""
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
        if not self.agree(error is None):
            if error is not None:
                raise error
            raise EngineError("engine=mpi: another rank failed to build its shard")

    def _gather_meta(self, res: MapperResult, comm_seconds: float) -> list[MapperResult]:
        """Every rank's timing facts, on every rank (buffer-form Allgather)."""
        mine = np.array([res.n_samples, res.steps, res.train_loss, res.train_seconds, comm_seconds, res.pid],
                        np.float64)
        table = np.empty((self.size, len(_META)), np.float64)
        self.comm.Allgather(mine, table)
        host = np.zeros(_HOST_BYTES, np.uint8)
        encoded = res.host.encode()[:_HOST_BYTES]
        host[:len(encoded)] = np.frombuffer(encoded, np.uint8)
        hosts = np.empty((self.size, _HOST_BYTES), np.uint8)
        self.comm.Allgather(host, hosts)
        out = []
        for m in range(self.size):
            row = dict(zip(_META, table[m]))
            out.append(MapperResult(m, None, None, int(row["n_samples"]), float(row["train_loss"]),
                                    int(row["steps"]), bytes(hosts[m]).rstrip(b"\0").decode(errors="replace"),
                                    int(row["pid"]), float(row["train_seconds"]), float(row["comm_seconds"])))
        return out

    def round(self, fn, payload, reduce, timings):
        timings.setdefault("broadcast", 0.0)  # every rank already holds the weights
        with timed(timings, "wait"):
            res = fn(self.shard, payload)
            start = time.perf_counter()
            with timed(timings, "combine"):
                counts = np.empty(self.size, np.int64)
                self.comm.Allgather(np.array([res.n_samples], np.int64), counts)
                if self.collective == "allgather":
                    combined = reduce(self._allgather_results(res, counts), payload)
                else:
                    combined = self._allreduce_combine(res, counts, payload, reduce)
            comm_seconds = time.perf_counter() - start
            results = self._gather_meta(res, comm_seconds)
        return combined, results

    def _allgather_results(self, res, counts):
        n = res.params.size
        params = np.empty((self.size, n), DTYPE)
        self.comm.Allgather(np.ascontiguousarray(res.params, DTYPE), params)
        velocity = None
        if res.velocity is not None:
            velocity = np.empty((self.size, n), DTYPE)
            self.comm.Allgather(np.ascontiguousarray(res.velocity, DTYPE), velocity)
        return [MapperResult(m, params[m], None if velocity is None else velocity[m], int(counts[m]), 0.0, 0,
                             "", 0, 0.0) for m in range(self.size)]

    def _allreduce_combine(self, res, counts, payload, reduce):
        skipped = ranks_flagged(self.comm, {self.rank: not np.isfinite(res.params).all()})
        # the same check as the local reduce, so the same error (or skip) on every rank
        check_bad_mappers(skipped, self.size, payload.round_index, reduce.skip_bad)
        good = [m for m in range(self.size) if m not in skipped]
        mine = self.rank in good
        coefs, start_coef = linear_coefficients(reduce.rule, counts[good].tolist())
        weight = coefs[good.index(self.rank)] if mine else 0.0
        total = weight * res.params.astype(np.float64) if mine else np.zeros(res.params.size)
        self.comm.Allreduce(_in_place(), total)
        if start_coef:
            total += start_coef * payload.params.astype(np.float64)
        velocity = None
        if res.velocity is not None:
            velocity = res.velocity.astype(np.float64) / len(good) if mine else np.zeros(res.velocity.size)
            self.comm.Allreduce(_in_place(), velocity)
            velocity = velocity.astype(DTYPE)
        return Combined(total.astype(DTYPE), velocity, skipped)

    def sync_round(self, payload, timings):
        timings.setdefault("broadcast", 0.0)
        with timed(timings, "wait"):
            combined, (res,) = sync_gradient_round([self.shard], payload, MpiCollective(self.comm, self.collective))
            results = self._gather_meta(res, res.comm_seconds)
        timings["combine"] = res.comm_seconds
        return combined, results

    def stop(self):
        self.shard = None


def run_mpi(argv: list[str], prog: str = "mpi_model_avg.py") -> int:
    """The SPMD entry: every rank runs this; rank 0 prints and writes the run directory."""
    from nnlib.cli import build_run_parser, print_final, progress_log
    from nnlib.config import default_conf_path, load_config
    from nnlib.driver import run, warn
    from nnlib.errors import NnlibError
    from nnlib.outputs import RunDir, default_run_dir

    args = build_run_parser(prog).parse_args(argv)
    if args.resume:
        print(f"{prog}: error: --resume: engine=mpi cannot resume a run yet; start it again with "
              "engine=local or spark, or anew", file=sys.stderr)
        return 2
    MPI = import_mpi()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    engine = None
    try:
        conf = args.conf if args.conf is not None else default_conf_path()
        config = load_config(conf, [*args.overrides, "engine=mpi"])
        if config.mappers != size:
            if rank == 0:
                warn(f"mappers={config.mappers} in the config; using {size}, the number of MPI ranks")
            config = config.model_copy(update={"mappers": size})
        engine = MpiEngine(comm, config.mpi.collective)
        run_dir, error = None, None
        if rank == 0:
            try:
                run_dir = RunDir(args.out or default_run_dir(), overwrite=args.overwrite)
            except NnlibError as exc:
                error = exc
        if not engine.agree(error is None):
            raise error or EngineError("rank 0 refused the run directory")
        log = progress_log(args.quiet or rank != 0)
        if rank == 0:
            log(f"nnlib: engine=mpi ranks={size} combine={config.combine} collective={config.mpi.collective} "
                f"data={config.data.source} -> {run_dir.path}")
        result = run(config, run_dir, engine=engine, log=log, warn=warn if rank == 0 else (lambda _msg: None))
        if rank == 0:
            print_final(result.summary, run_dir.path)
        return 0
    except NnlibError as exc:
        # config and data errors arise alike on every rank; say it once
        if rank == 0:
            print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2


def inside_mpiexec() -> bool:
    """True in a process started by mpiexec (Open MPI, MPICH or any PMI/PMIx launcher)."""
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"))


def launch_or_run(config, args) -> int:
    """``nnlib run`` with engine=mpi: run as a rank under mpiexec, or start mpiexec with ``mappers`` ranks."""
    import subprocess
    from pathlib import Path

    argv = _argv_of(args)
    if inside_mpiexec():
        return run_mpi(argv, prog="nnlib")
    job = Path(__file__).resolve().parents[2] / "jobs" / "mpi_model_avg.py"
    cmd = [*config.mpi.launcher, "-n", str(config.mappers), *config.mpi.args, sys.executable, str(job), *argv]
    try:
        return subprocess.run(cmd).returncode
    except FileNotFoundError:
        raise EngineError(f"mpi.launcher: {config.mpi.launcher[0]!r} not found on PATH "
                          "(pip install -e '.[mpi]' provides mpiexec)") from None


def _argv_of(args) -> list[str]:
    argv = [args.conf] if args.conf else []
    for item in args.overrides:
        argv += ["--set", item]
    if args.out:
        argv += ["--out", str(args.out)]
    argv += ["--overwrite"] * args.overwrite + ["--quiet"] * args.quiet
    if args.resume:
        argv += ["--resume", str(args.resume)]
    return argv
