"""The mrjob engine: one Hadoop streaming job per round (:mod:`nnlib.engines.mrjob.model_avg`).

Input is one gzipped file per shard holding that shard's index: gzipped files
are never split, so every runner (inline, local, hadoop, emr) starts exactly
one map task per shard. A Parquet source is first cut into its shards by one
map-only job (:mod:`nnlib.engines.mrjob.partition`, one map task per source
file) that writes them under ``mrjob.scratch``; each round's map task reads
only its shard's folder there. The round's payload (the weights) is written to an
``.npz`` file and uploaded to every task with mrjob's file upload; the
reducer combines with nnlib's combine rules and the driver reads back the
combined weights and every mapper's timing.
"""

from __future__ import annotations

import gzip
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from types import MethodType

import yaml

from nnlib.engines.base import SingleDriver
from nnlib.engines.mrjob.wire import decode_array, decode_stats, payload_to_bytes
from nnlib.errors import EngineError, NnlibError, error_from_text
from nnlib.rounds.payload import Combined
from nnlib.util.ship import zip_package
from nnlib.util.timing import timed

_RUNNING_JOB = False  # this process is in a job's runner.run(): processes it forks end quietly on Ctrl-C


def _quiet_exit(_signum, _frame):
    raise SystemExit(130)  # unwinds (a pool worker waiting on its queue lets go of the queue's lock)


def _after_fork_in_child() -> None:
    """In a process forked during a job (the local runner's ``multiprocessing`` pool): Ctrl-C, which the
    terminal sends to every process of the job, ends it with status 130 and no "Process ForkPoolWorker-N:"
    traceback; the driver reports the interrupt. Its task's own subprocess gets the signal as well."""
    if _RUNNING_JOB:
        signal.signal(signal.SIGINT, _quiet_exit)


os.register_at_fork(after_in_child=_after_fork_in_child)

WAIT_SLICE_SECONDS = 0.2  # how often the driver's main thread wakes while the local runner's tasks run
TERMINATE_SECONDS = 10.0  # how long the pool gets to end its workers after a failed task or a Ctrl-C


def _run_multiple_interruptibly(runner, funcs, num_processes=None):
    """mrjob 0.7.4's ``LocalMRJobRunner._run_multiple`` (one ``multiprocessing`` pool task per function),
    waiting in slices: a Ctrl-C that the kernel hands to one of the pool's threads instead of the main
    one only trips Python's flag, and a main thread blocked in ``result.get()`` would never see it."""
    from multiprocessing import Pool

    from mrjob.local import _pickle_safe

    pool = Pool(processes=runner._opts["num_cores"])
    try:
        results = [pool.apply_async(partial(_pickle_safe, func)) for func in funcs]
        for result in results:
            while not result.ready():
                result.wait(WAIT_SLICE_SECONDS)
            result.get()
        pool.close()
    except BaseException:  # one task failed, or Ctrl-C: end the others
        ender = threading.Thread(target=pool.terminate, name="nnlib-mrjob-terminate", daemon=True)
        ender.start()
        ender.join(TERMINATE_SECONDS)
        if ender.is_alive():  # Pool.terminate can wait forever on a queue lock that a dying worker took along
            for worker in list(pool._pool):  # type: ignore[attr-defined]  # Pool keeps its workers private
                worker.kill()
        raise
    pool.join()


class _NoConfigNote(logging.Filter):
    """Drop mrjob's 'No configs specified for X runner': running without mrjob.conf is normal here."""

    def filter(self, record):
        return not record.getMessage().startswith("No configs specified")


def import_mrjob():
    """Import mrjob quietly; explain in one line where it cannot be imported at all."""
    logging.getLogger("mrjob.conf").addFilter(_NoConfigNote())
    try:
        with warnings.catch_warnings():
            # mrjob 0.7.4 (2020) imports modules that Python 3.11 deprecates (pipes, distutils; on 3.12 and
            # 3.13 they come from setuptools and standard-pipes)
            warnings.simplefilter("ignore", DeprecationWarning)
            import mrjob.job  # noqa: F401
    except ImportError as exc:
        version = ".".join(map(str, sys.version_info[:3]))
        raise EngineError(
            f"engine=mrjob needs mrjob 0.7.4, which cannot be imported on Python {version} ({exc}); "
            "install it with pip install -e '.[mrjob]', which adds standard-pipes on Python 3.13 and newer "
            "and setuptools (for distutils) on 3.12 and newer"
        ) from None


def load_job_class(name: str = "MRModelAvg"):
    """An MRJob class of nnlib's (:mod:`nnlib.engines.mrjob.model_avg`, :mod:`nnlib.engines.mrjob.partition`),
    imported quietly."""
    import_mrjob()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from nnlib.engines.mrjob.model_avg import MRModelAvg
        from nnlib.engines.mrjob.partition import MRPartition
    return {"MRModelAvg": MRModelAvg, "MRPartition": MRPartition}[name]


def gzipped_lines(folder: Path, name: str, count: int) -> list[str]:
    """``count`` gzipped files, file ``i`` holding the line ``i``: one map task each on every runner."""
    paths = []
    for i in range(count):
        path = folder / f"{name}-{i:05d}.gz"
        with gzip.open(path, "wt") as f:
            f.write(f"{i}\n")
        paths.append(str(path))
    return paths


class MrjobEngine(SingleDriver):
    def __init__(self, config, runner: str = "local", extra_args: Sequence[str] = ()):
        self.config, self.runner, self.extra_args = config, runner, list(extra_args)
        self.map_tasks: list[int] = []  # map tasks started, per round (from the job's counter)
        self._dir: Path | None = None
        self._scratch_fs = None  # (filesystem, path) of shards written under a mrjob.scratch URI
        self.mappers_elsewhere = runner != "inline"  # the inline runner runs its tasks in this process

    @property
    def _folder(self) -> Path:
        """The run's scratch folder on this machine (made by :meth:`start`)."""
        if self._dir is None:
            raise EngineError("mrjob: the engine's scratch folder is made by start(), which has not run")
        return self._dir

    def start(self, source):
        self._job_class = load_job_class()
        self._dir = Path(tempfile.mkdtemp(prefix="nnlib-mrjob-"))
        self._inputs = gzipped_lines(self._dir, "shard", source.mappers)
        conf = self.config.to_dict()
        conf.update(mappers=source.mappers, seed=source.seed, data=source.data.model_dump())
        self._conf = self._dir / "config.yaml"
        self._conf.write_text(yaml.safe_dump(conf, sort_keys=False))
        # tasks import the driver's exact code (inline runs in this process and needs no shipping)
        self._py_files = [] if self.runner == "inline" else ["--py-files", str(zip_package(self._dir / "nnlib.zip"))]
        self._rows = []
        if source.rows is not None:
            self._rows = self._partition(source.rows)

    def _partition(self, rows) -> list[str]:
        """Cut a Parquet source into its shards under the scratch space, once (one job); return the round
        jobs' arguments that point their map tasks at them."""
        from nnlib.engines.mrjob.partition import filesystem

        scratch = self.config.mrjob.scratch
        if scratch is None and self.runner in ("hadoop", "emr"):
            raise EngineError(
                f"mrjob.scratch: the {self.runner} runner needs a URI every node can write for a "
                "Parquet source's shards (e.g. hdfs:///tmp/nnlib); none is set"
            )
        if scratch is None:
            self._scratch = str(self._folder / "shards")
        else:
            self._scratch = f"{scratch.rstrip('/')}/{self._folder.name}"
            self._scratch_fs = filesystem(self._scratch)
        path = self._folder / "rows.pkl"
        path.write_bytes(pickle.dumps(rows))
        args = ["--rows", str(path), "--scratch", self._scratch]
        job = load_job_class("MRPartition")(
            args=[
                "-r",
                self.runner,
                *args,
                *self._py_files,
                *self.extra_args,
                *gzipped_lines(self._folder, "file", len(rows.table.files)),
            ]
        )
        records, _ = self._run_job(job, "cutting the source into shards")
        written = [counts for _, (_, counts) in records]
        per_shard = [sum(c[k] for c in written) for k in range(rows.plan.mappers)]
        if len(written) != len(rows.table.files) or per_shard != list(rows.shard_sizes):
            raise EngineError(
                f"mrjob: cutting {rows.table.source} into shards wrote {per_shard} rows from "
                f"{len(written)} of its {len(rows.table.files)} files; the survey counted "
                f"{list(rows.shard_sizes)}"
            )
        return args

    def round(self, payload, reducer, timings):
        """One Hadoop streaming job: the mappers train, the job's reducer combines with ``reducer``'s rule."""
        with timed(timings, "broadcast"):
            path = self._folder / f"payload-{payload.round_index:05d}.npz"
            path.write_bytes(payload_to_bytes(payload))
        args = [
            "-r",
            self.runner,
            "--nnlib-conf",
            str(self._conf),
            "--payload",
            str(path),
            "--combine",
            reducer.rule,
            "--skip-bad-mappers",
            str(reducer.skip_bad).lower(),
            *self._rows,
            *self._py_files,
            *self.extra_args,
            *self._inputs,
        ]
        job = self._job_class(args=args)
        with timed(timings, "wait"):
            records, counters = self._run_job(job, f"round {payload.round_index + 1}")
        self.map_tasks.append(sum(c.get("nnlib", {}).get("map_tasks", 0) for c in counters))
        combined = next(v for k, v in records if k == "combined")
        # the reducer ran inside the job: its time is the combine, not the wait
        timings["combine"] = combined["combine_seconds"]
        timings["wait"] -= combined["combine_seconds"]
        stats = [decode_stats(v) for k, v in records if k == "mapper"]
        return Combined(
            decode_array(combined["params"]), decode_array(combined["opt_state"]), combined["skipped"]
        ), stats

    def sync_round(self, payload, timings):
        raise EngineError("engine=mrjob cannot run synchronous rounds (combine=gradient, train.sync_rounds)")

    def _run_job(self, job, what: str) -> tuple[list, list]:
        """Run one mrjob job; return its output records and counters. A failed job is one line: an nnlib error
        from a task as itself, else the root cause mrjob found in the task's log (its "Probable cause of
        failure", which mrjob's own logging would print above the line), saying ``what`` failed."""
        global _RUNNING_JOB
        log = _CapturedLog()
        mrjob_logger = logging.getLogger("mrjob")
        mrjob_logger.addHandler(log)
        try:
            with warnings.catch_warnings(), job.make_runner() as runner:
                warnings.simplefilter("ignore", DeprecationWarning)
                if self.runner == "local":
                    runner._run_multiple = MethodType(_run_multiple_interruptibly, runner)
                _RUNNING_JOB = True
                try:
                    runner.run()
                finally:
                    _RUNNING_JOB = False
                return list(job.parse_output(runner.cat_output())), runner.counters()
        except NnlibError:
            raise  # the inline runner runs the tasks in this process: their own error
        except Exception as exc:
            text = "\n".join([str(exc), _task_stderr(exc), log.text()])
            raise error_from_text(text, f"mrjob ({self.runner} runner)", what) from None
        finally:
            mrjob_logger.removeHandler(log)

    def stop(self):
        if self._scratch_fs is not None:  # shards written under a mrjob.scratch URI
            fs, path = self._scratch_fs
            try:
                fs.delete_dir(path)
            except OSError:
                pass
            self._scratch_fs = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class _CapturedLog(logging.Handler):
    """mrjob's warnings and errors during one job, kept for the one-line error instead of printed."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(record.getMessage())

    def text(self) -> str:
        return "\n".join(self.records)


def _task_stderr(exc: Exception) -> str:
    """The stderr text a failed mrjob task left, when the exception carries it."""
    parts = []
    for attr in ("reason", "stderr", "output"):
        value = getattr(exc, attr, None)
        if isinstance(value, (str, bytes)):
            parts.append(value.decode(errors="replace") if isinstance(value, bytes) else value)
    return "\n".join(parts)
