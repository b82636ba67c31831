"""``spark.mode: jobs``: one Spark job per round, DataFrame calls only, the same code on classic and Spark Connect.

Nothing in a task connects back to the client (on Spark Connect the client,
where the driver loop runs, is not a place executors can reach): the round's
payload travels in the task function's closure and every result comes back
as rows.

The shard inputs are a DataFrame of exactly ``mappers`` partitions,
partition ``i`` = shard ``i``: ``spark.range(0, k, 1, k)`` for a recipe
source (the task builds shard ``i`` itself), or, for a row-keyed (Parquet,
DataFrame) source, the rows Spark's shuffle sent to their shard
(:meth:`nnlib.engines.spark.reader.SparkReader.shards`), persisted on the
executors' disks for the run. A task takes its shard from its Python
worker's cache (:func:`task_shard`: one shard per worker, so a worker's
memory stays bounded), else from the shard's file in its executor's scratch
folder, else builds it from its input and writes that file. Spark reuses
workers but hands a partition to any idle one (the reduce task's worker
too), so shards change workers between rounds; without the file each change
rebuilt the shard inside the round (for an .npz source: loading and
partitioning the whole file). The files are the run's own scratch, written
by its tasks as arrays only (``.npy`` records, read without unpickling),
under the executor's block-manager dirs (``SPARK_LOCAL_DIRS``, which Spark
removes with the executor); :meth:`SparkJobsEngine.stop` removes the run's
folder with one small job. A task always reads its input to the end: a
worker whose input is left unread is not reused.

A local round is one job of two stages::

    shard inputs --mapInArrow(train_shard)--> (mapper, seq, chunk) rows   k tasks
        --repartition(1)--> mapInArrow(RoundReducer) --> (0, seq, chunk)   1 task

The reduce task rebuilds every mapper's :class:`MapperResult` from its
chunks (at most ``CHUNK_BYTES`` each: Connect sends Arrow batches of at most
4 MiB), runs the very :class:`nnlib.rounds.reduce.RoundReducer` the local
engine runs (so the same bits), and sends back the ``Combined`` state and
the mappers' stats: what the client collects does not grow with the number
of mappers (a few hundred bytes of stats each). Mapper 0's task forwards the
payload to the reduce through the shuffle, so the payload crosses the
client's connection once, in the first stage's closure; the closure must fit
Spark Connect's message limit (``spark.connect.grpc.maxInboundMessageSize``,
128 MiB by default: a model of about 15 million float32 parameters with a
momentum buffer).

A synchronous round is one barrier job: the tasks swap their listening
addresses with one ``BarrierTaskContext.allGather`` (about a second each
over Connect, hence once a round, never in a local round) and average their
gradients every step over their own sockets
(:class:`nnlib.engines.spark.collective.TaskCollective`, token-authenticated);
mapper 0 returns the state.

Every job runs in a helper thread under a job tag (``session.addTag``, a
thread's own); the main thread waits in short slices, so a Ctrl-C or a
SIGTERM reaches it, and then cancels the job with ``session.interruptTag``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any

import numpy as np

from nnlib.data.dataset import Shard
from nnlib.data.disk import shard_store
from nnlib.engines.base import SingleDriver
from nnlib.engines.spark.engine import _SparkSession
from nnlib.engines.spark.reader import shard_from_records
from nnlib.engines.spark.session import local_schema, stage_profile
from nnlib.errors import error_from_text
from nnlib.rounds.mapper import score_held_out, sync_shards, train_shard

CHUNK_BYTES = 1 << 20  # one row's bytes at most (Connect's Arrow batches hold at most 4 MiB)
# the rows every job returns; mapInArrow is given it as a StructType (local_schema): a string costs a Spark Connect
# session a round trip to its server per job
CHUNKS = "mapper int, seq int, blob binary"
PAYLOAD = -1  # the mapper column of the payload's chunks, forwarded by mapper 0's task to the reduce
WAIT_SLICE = 0.2  # seconds the main thread waits on a job at a time (a Ctrl-C is seen between slices)
CANCEL_SECONDS = 30.0  # how long a cancelled job's thread gets to end


# ----------------------------------------------------------------------------------- rows of chunks


def to_chunks(mapper: int, data: bytes):
    """``data`` as Arrow batches of ``(mapper, seq, blob)`` rows, one per ``CHUNK_BYTES`` piece."""
    import pyarrow as pa

    view = memoryview(data)
    for seq, lo in enumerate(range(0, max(len(data), 1), CHUNK_BYTES)):
        yield pa.RecordBatch.from_arrays(
            [
                pa.array([mapper], pa.int32()),
                pa.array([seq], pa.int32()),
                pa.array([view[lo : lo + CHUNK_BYTES].tobytes()], pa.binary()),
            ],
            names=["mapper", "seq", "blob"],
        )


def from_chunks(rows) -> dict[int, bytes]:
    """``{mapper: its bytes}`` from ``(mapper, seq, blob)`` rows in any order."""
    pieces: dict[int, list[tuple[int, bytes]]] = {}
    for mapper, seq, blob in rows:
        pieces.setdefault(mapper, []).append((seq, blob))
    return {m: b"".join(blob for _, blob in sorted(p)) for m, p in pieces.items()}


def arrow_rows(batches):
    """The ``(mapper, seq, blob)`` rows of Arrow batches in :data:`CHUNKS`' schema."""
    for batch in batches:
        yield from zip(*(batch.column(i).to_pylist() for i in range(3)), strict=True)


# ----------------------------------------------------------------------------------- in the tasks

_held: dict = {}  # this Python worker's shard: {(run token, mapper): Shard}, one entry at most


def scratch_folder(token: str) -> str:
    """This executor's folder for the run's shard files: ``nnlib-<digest of token>`` (the token is also the
    tasks' mesh password, so it is not a file name) under the first of the block-manager dirs Spark gives its
    Python workers in ``SPARK_LOCAL_DIRS`` (removed when the executor ends), else the system's temporary folder."""
    roots = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    name = "nnlib-" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return os.path.join(roots[0] if roots else tempfile.gettempdir(), name)


def save_shard(path: str, shard: Shard) -> None:
    """``shard`` as one file of ``.npy`` records (a header ``[index, weighted, role...]``, ``x``, ``y``, the
    sample weights when ``weighted``, then each held-out role's ``x`` and ``y``), written under a temporary
    name and renamed: a reader sees the whole file or none. A failed write (a full disk) leaves no file; the
    shard is then built again where it is missed."""
    roles = sorted(shard.held_out)
    weights = () if shard.w is None else (shard.w,)  # data.weight_column: lost, the shard would train unweighted
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "wb") as f:
            for array in (
                np.array([shard.index, len(weights), *roles], np.int64),
                shard.x,
                shard.y,
                *weights,
                *(a for role in roles for a in shard.held_out[role]),
            ):
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def load_shard(path: str) -> Shard | None:
    """The shard :func:`save_shard` wrote at ``path`` (arrays only: nothing in the file is run), or None when
    there is none."""
    try:
        with open(path, "rb") as f:
            read = functools.partial(np.lib.format.read_array, f, allow_pickle=False)
            index, weighted, *roles = (int(v) for v in read())
            x, y = read(), read()
            w = read() if weighted else None
            return Shard(index, x, y, {role: (read(), read()) for role in roles}, w)
    except FileNotFoundError:
        return None


def disk_store(token: str, data):
    """The executor's :class:`nnlib.data.disk.ShardStore` of the run's shards under ``data.shard_storage: disk``
    (``data`` a DataConfig): named by the run's token and owned by the executor's Python daemon (the worker's
    parent), so every worker of the executor finds a shard another one wrote, and a later run removes the
    folder once that daemon is gone."""
    return shard_store(data, "jobs-" + hashlib.sha256(token.encode()).hexdigest()[:16], os.getppid())


def task_shard(token: str, batches, build, data=None):
    """``(mapper, shard)`` of the running task: the partition's index is the mapper; the shard from this
    worker's cache when it last held this run's shard ``mapper``, else from the shard's file in the executor's
    scratch folder (:func:`scratch_folder`), else ``build(mapper, batches)``, and saved there. Spark hands a
    partition to any idle Python worker, so shards change workers between jobs: the file makes that a read
    from the page cache instead of a build. The task's input is read to its end either way (a worker whose
    input is left unread is not reused). Under ``data.shard_storage: disk`` (``data``, a DataConfig) the
    shard is kept in :func:`disk_store`'s folder instead and the worker holds only its open files."""
    from pyspark import TaskContext

    context = TaskContext.get()
    assert context is not None  # this runs in a Spark task
    mapper = context.partitionId()
    key = (token, mapper)
    shard = _held.get(key)
    if shard is None:
        _held.clear()  # drop the old shard first: one shard per worker at a time
        if data is not None and data.shard_storage == "disk":
            store = disk_store(token, data)
            shard = store.find(mapper) or store.keep([build(mapper, batches)])[0]
        else:
            path = os.path.join(scratch_folder(token), f"shard-{mapper}")
            shard = load_shard(path)
            if shard is None:
                shard = build(mapper, batches)
                save_shard(path, shard)
        _held[key] = shard
    for _ in batches:
        pass
    return mapper, shard


def clean_task(token: str, data=None):
    """Remove the run's scratch folder on the task's executor (and its disk shards' folder, ``data`` the
    run's DataConfig) and drop its shard from this worker's cache."""

    def task(batches):
        for _ in batches:
            pass
        for key in [k for k in _held if k[0] == token]:
            del _held[key]
        shutil.rmtree(scratch_folder(token), ignore_errors=True)  # several tasks of one executor race here
        if data is not None and data.shard_storage == "disk":
            with contextlib.suppress(Exception):  # a scratch dir gone bad since: nothing of ours is there
                disk_store(token, data).remove()
        yield from ()

    return task


def recipe_builder(source):
    """``build(mapper, batches)`` for a recipe source: its input is ``range``'s one id, the mapper."""

    def build(mapper, batches):
        ids = [i for batch in batches for i in batch.column(0).to_pylist()]
        if ids != [mapper]:
            raise RuntimeError(f"task {mapper} was given the ids {ids}, expected [{mapper}]")
        return source.build([mapper])[0]

    return build


def rows_builder(rows, data=None):
    """``build(mapper, batches)`` for a row-keyed source: its input is the shard's ``(shard, blob)`` rows."""

    def build(mapper, batches):
        records = (
            record
            for batch in batches
            for record in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)
        )
        return shard_from_records(mapper, records, rows, data)

    return build


def train_task(token: str, build, payload_blob: bytes, data=None):
    """A local round's first stage: train the task's shard, emit its result (and, from mapper 0, the payload)."""

    def task(batches):
        mapper, shard = task_shard(token, batches, build, data)
        result = train_shard(shard, pickle.loads(payload_blob))
        yield from to_chunks(mapper, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
        if mapper == 0:
            yield from to_chunks(PAYLOAD, payload_blob)

    return task


def reduce_task(reducer, mappers: int):
    """A local round's second stage, one task: every mapper's result through ``reducer`` (a
    :class:`nnlib.rounds.reduce.RoundReducer`); emits ``(Combined, [MapperStats] in mapper order,
    its seconds)``."""

    def task(batches):
        parts = from_chunks(arrow_rows(batches))
        start = time.perf_counter()
        payload = pickle.loads(parts.pop(PAYLOAD))
        if sorted(parts) != list(range(mappers)):
            raise RuntimeError(f"the reduce received results of mappers {sorted(parts)}, expected 0..{mappers - 1}")
        results = [pickle.loads(parts.pop(m)) for m in range(mappers)]
        combined = reducer(results, payload)
        stats = [res.stats for res in results]
        answer = (combined, stats, time.perf_counter() - start)
        yield from to_chunks(0, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))

    return task


def sync_task(token: str, build, payload_blob: bytes, mappers: int, data=None):
    """A synchronous round's barrier task: swap listening addresses once, then average gradients among the
    tasks every step; emits its ``MapperStats`` (mapper 0: with the round's ``Combined``)."""

    def task(batches):
        from pyspark import BarrierTaskContext

        from nnlib.engines.spark.collective import Listener, TaskCollective, TaskMesh

        context = BarrierTaskContext.get()
        mapper, shard = task_shard(token, batches, build, data)
        host = context.getTaskInfos()[context.partitionId()].address.rsplit(":", 1)[0]
        listener = Listener(host)
        try:
            peers = [tuple(json.loads(m)) for m in context.allGather(json.dumps(list(listener.address)))]
            mesh = TaskMesh.connect(listener, mapper, peers, [[m] for m in range(mappers)], token)
        finally:
            listener.close()
        try:
            combined, (stats,) = sync_shards([shard], pickle.loads(payload_blob), TaskCollective(mesh))
        finally:
            mesh.close()
        answer = (stats, combined if mapper == 0 else None)
        yield from to_chunks(mapper, pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))

    return task


def score_task(token: str, build, backend: str, model, params, data=None):
    """Score ``params`` on the held-out rows the task's shard keeps; emits ``score_held_out``'s sums."""

    def task(batches):
        mapper, shard = task_shard(token, batches, build, data)
        yield from to_chunks(mapper, pickle.dumps(score_held_out(shard, backend, model, params)))

    return task


# ----------------------------------------------------------------------------------- on the client


def run_job(session, action, what: str):
    """``action()`` (a Spark job) in a helper thread under a fresh job tag, the main thread waiting in short
    slices: a Ctrl-C or a stop request (a ``KeyboardInterrupt``) cancels the job (``interruptTag``) and is
    raised again. A failure in a task or in Spark is one nnlib error line (:func:`nnlib.errors.error_from_text`)."""
    tag = f"nnlib-{secrets.token_hex(8)}"
    box: dict = {}

    def work():
        try:
            session.addTag(tag)  # a thread's own tags: only this job carries it
            box["value"] = action()
        except BaseException as exc:  # noqa: BLE001  - handed to the main thread
            box["error"] = exc
        finally:
            try:
                session.removeTag(tag)
            except Exception:  # noqa: BLE001  - a session closed under the job
                pass

    thread = threading.Thread(target=work, name="nnlib-spark-job", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(WAIT_SLICE)
    except KeyboardInterrupt:
        try:
            session.interruptTag(tag)
        except Exception:  # noqa: BLE001  - the server is gone: nothing left to cancel
            pass
        thread.join(CANCEL_SECONDS)
        raise
    if "error" in box:
        raise error_from_text(str(box["error"]), "spark", what) from None
    return box["value"]


def collected(rows) -> dict[int, bytes]:
    """``{mapper: bytes}`` from collected ``(mapper, seq, blob)`` Rows."""
    return from_chunks((row[0], row[1], row[2]) for row in rows)


class SparkJobsEngine(_SparkSession, SingleDriver):  # type: ignore[misc]  # reader: a SparkReader, which is a Reader; mypy holds a mutable attribute of two bases invariant
    """``spark.mode: jobs``: a Spark job per round over DataFrames; serves classic and Spark Connect sessions."""

    mode = "jobs"

    def __init__(self, settings=None, min_slots: int = 1, collect_held_out_mb: float = 64.0, warn=None):
        super().__init__(settings, min_slots, collect_held_out_mb, warn)
        self.token = secrets.token_hex(16)  # this run's shards in the workers' caches; the tasks' mesh password
        self.mappers = 0
        self._inputs: Any = None  # the shard inputs (a DataFrame): k partitions, partition i = shard i
        self._persisted = None
        self._build = None
        self._data = None
        self._resources: dict = {}  # mapInArrow's profile= for spark.task_gpus
        self._built = False  # every shard built once (and saved in its executor's scratch folder)
        self.bytes_sent = self.bytes_collected = 0  # the payloads' pickled bytes; the bytes of rows collected

    def start(self, source):
        session = self._started_session()
        self.mappers = source.mappers
        self._data = source.data  # data.shard_storage, read in the tasks
        if source.rows is None:
            self._inputs = session.range(0, source.mappers, 1, numPartitions=source.mappers)
            self._build = recipe_builder(source)
        else:
            from pyspark import StorageLevel

            # on the executors' disks, not their JVM heap: the Python workers keep the built shards, and a
            # second copy of the training rows in memory would only compete with them
            self._persisted = self.reader.shards(source.rows).persist(StorageLevel.DISK_ONLY)
            self._inputs = self._persisted
            self._build = rows_builder(source.rows, source.data)
        token, build, data = self.token, self._build, self._data
        # spark.task_gpus: the training stages ask each task for GPUs (stage-level scheduling), as the stage does
        opened = self.opened
        assert opened is not None  # _open() opened it
        self._resources = (
            {}
            if self.settings.task_gpus is None
            else {"profile": stage_profile(self.settings.task_gpus, None if opened.connect else opened.master)}
        )

        def sizes(batches):
            mapper, shard = task_shard(token, batches, build, data)
            yield from to_chunks(mapper, pickle.dumps(shard.n_samples))

        # build the shards now (into the workers' caches, and the persisted rows), not inside round 0's timing
        self._collect(self._inputs.mapInArrow(sizes, local_schema(CHUNKS)), "building the shards")
        self._built = True

    def _collect(self, frame, what: str) -> dict[int, bytes]:
        rows = run_job(self.session, frame.collect, what)
        self.bytes_collected += sum(len(row[2]) for row in rows)
        return collected(rows)

    def _payload_blob(self, payload, timings: dict) -> bytes:
        start = time.perf_counter()
        blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        timings["broadcast"] = time.perf_counter() - start
        self.bytes_sent += len(blob)
        return blob

    def round(self, payload, reducer, timings):
        blob = self._payload_blob(payload, timings)
        frame = (
            self._inputs.mapInArrow(
                train_task(self.token, self._build, blob, self._data), local_schema(CHUNKS), **self._resources
            )
            .repartition(1)  # a shuffle to one reduce task (coalesce would run the mappers in one task)
            .mapInArrow(reduce_task(reducer, self.mappers), local_schema(CHUNKS))
        )
        start = time.perf_counter()
        answer = self._collect(frame, f"round {payload.round_index + 1}")
        combined, stats, combine_seconds = pickle.loads(answer[0])
        timings["combine"] = combine_seconds
        timings["wait"] = time.perf_counter() - start - combine_seconds
        return combined, stats

    def sync_round(self, payload, timings):
        blob = self._payload_blob(payload, timings)
        frame = self._inputs.mapInArrow(
            sync_task(self.token, self._build, blob, self.mappers, self._data),
            local_schema(CHUNKS),
            barrier=True,
            **self._resources,
        )
        start = time.perf_counter()
        answers = self._collect(frame, f"round {payload.round_index + 1}")
        finished = [pickle.loads(answers[m]) for m in range(self.mappers)]
        stats = [s for s, _ in finished]
        timings["combine"] = stats[0].comm_seconds  # mapper 0's time in the collective, as MPI reports rank 0's
        timings["wait"] = time.perf_counter() - start - timings["combine"]
        return finished[0][1], stats

    def score(self, backend, model, params):
        """Each shard's held-out parts scored in the task that holds the shard."""
        frame = self._inputs.mapInArrow(
            score_task(self.token, self._build, backend, model, params, self._data), local_schema(CHUNKS)
        )
        answers = self._collect(frame, "scoring the held-out rows")
        return [pickle.loads(answers[m]) for m in range(self.mappers)]

    def stop(self):
        try:
            if self._inputs is not None and self.session is not None:
                # each executor's shard files; over the shard inputs once they are built (a persisted input's
                # blocks lie where its shards were built), else over plain ids (a failed read is not run again).
                # On a multi-host cluster a task may miss an executor; its block-manager dirs, where the files
                # are, go with the executor anyway.
                inputs = self._inputs if self._built else self.session.range(0, self.mappers, 1, self.mappers)
                with contextlib.suppress(Exception):  # the session or server is already gone
                    run_job(
                        self.session,
                        inputs.mapInArrow(clean_task(self.token, self._data), local_schema(CHUNKS)).collect,
                        "removing the shard files",
                    )
            if self._persisted is not None and self.session is not None:
                with contextlib.suppress(Exception):
                    self._persisted.unpersist()
        finally:
            self._persisted = self._inputs = None
            self._built = False
            self._close()
