"""The Spark engines: one long-lived stage for the whole run (``spark.mode: stage``), or a job per round.

``stage``: one barrier stage holds the ``mappers`` tasks for
the whole run. Each task builds its shard once, inside the executor, keeps
it, and serves rounds over one authenticated TCP connection to the driver
(:mod:`nnlib.engines.spark.exchange`): every round the driver sends the weights and
receives each mapper's result. In synchronous rounds the tasks average their
gradients among themselves every step (``spark.collective: tasks``, the
default: a reduce-scatter by slices and an allgather over their own sockets,
:mod:`nnlib.engines.spark.collective`; the driver only hands out the
addresses and collects the round's result), or each sends its gradient to
the driver and waits for the mean (``spark.collective: driver``). Spark's
barrier calls are never used, not even to swap addresses: the tasks name
their listening addresses to the driver when they connect. A barrier
stage needs a free task slot per mapper: in local mode the session gets as
many slots as mappers; on a cluster the engine checks the slots first. When
an executor is lost, Spark aborts the barrier stage; the engine starts it
again (``spark.stage_attempts`` in all) and redoes the unfinished round from
the last finished one, which gives the same weights, since every mapper's
randomness is seeded by (seed, round, shard).

``jobs`` (:mod:`nnlib.engines.spark.jobs`): a Spark job per round over
DataFrames, nothing connecting back to the driver's process: the engine for
Spark Connect sessions, and a choice on classic ones. ``auto`` (the default)
picks ``stage`` on a classic session and ``jobs`` on Spark Connect
(:func:`nnlib.engines.make_engine`).
"""

from __future__ import annotations

import socket
import threading
import time
from functools import partial

from nnlib.data.dataset import ShardSource
from nnlib.engines.base import ReduceOnDriver
from nnlib.engines.spark.exchange import Hub, MapperLost, serve_mapper
from nnlib.engines.spark.reader import SparkReader, shard_from_records
from nnlib.engines.spark.session import Opened, SessionSettings, open_session, stage_profile
from nnlib.errors import EngineError, error_from_text, hint, root_cause

SLOT_WAIT_SECONDS = 60  # how long a stage waits for enough executors to register


class _SparkSession:
    """Use the session Spark gives, or start one (:mod:`nnlib.engines.spark.session`); stop it at the end only
    if this engine started it."""

    mappers_elsewhere = True  # the mappers are Spark's Python workers
    mode = "stage"  # spark.mode, as config.yaml records it

    def __init__(
        self, settings: SessionSettings | None = None, min_slots: int = 1, collect_held_out_mb: float = 64.0, warn=None
    ):
        self.settings = settings or SessionSettings()
        self.min_slots = min_slots
        self.warn = warn or (lambda _message: None)
        self.opened: Opened | None = None
        # a row-keyed (Parquet) source is read by Spark in the executors, before and during the run
        self.reader = SparkReader(self._started_session, collect_held_out_mb, self.warn)

    @property
    def session(self):
        return None if self.opened is None else self.opened.session

    @property
    def master(self) -> str:
        """The master the run uses (``spark.master`` until the session is open)."""
        return (self.settings.master or "spark.master") if self.opened is None else self.opened.master

    def used_settings(self) -> dict[str, str]:
        """The ``spark.*`` config keys as the run really used them, for its config.yaml."""
        if self.opened is None:
            return {"spark.mode": self.mode}
        where = {"spark.remote": self.opened.master} if self.opened.connect else {"spark.master": self.opened.master}
        return {**where, "spark.mode": self.mode}

    def use_session(self, session) -> _SparkSession:
        """Run on ``session``, the caller's own (an estimator's DataFrame's), never stopped here; None: open
        one as :func:`nnlib.engines.spark.session.open_session` says."""
        if session is not None:
            from nnlib.engines.spark.session import _master_of, is_connect, ship_code

            self.opened = Opened(session, False, is_connect(session), _master_of(session, is_connect(session)))
            ship_code(session)
        return self

    def _open(self, min_slots: int = 1):
        if self.opened is None:
            opened = open_session(self.settings, min_slots, self.warn)
            if opened.connect and self.settings.conf and not opened.created:
                raise EngineError(
                    f"spark.conf: a Spark Connect session nnlib did not open keeps its server's "
                    f"settings; set them on the server or the session, or leave spark.conf empty, "
                    f"got {sorted(self.settings.conf)}"
                )
            self.opened = opened
        return self.session

    def _started_session(self):
        """The session, started (with ``min_slots`` task slots) if it is not yet."""
        return self._open(self.min_slots)

    def python_memory_setting(self) -> str | None:
        """``spark.executor.pyspark.memory`` as the run's session holds it (spark-submit's ``--conf``,
        spark-defaults.conf, a caller's session), or None where unset: ``data.shard_storage: auto``'s budget.
        Starts the session, as :meth:`start` would next."""
        session = self._started_session()
        try:
            value = session.conf.get("spark.executor.pyspark.memory", None)
        except Exception:  # noqa: BLE001  - a server that refuses to say: no budget, as where unset
            return None
        return None if value in (None, "") else str(value)

    def _close(self):
        if self.opened is not None:
            self.opened.stop()
        self.opened = None


def task_slots(sc, profile=None) -> int:
    """How many tasks the cluster can run at once now (executors registered so far), each with ``profile``'s
    resources (a pyspark ``ResourceProfile``; None: Spark's default one)."""
    jsc = sc._jsc.sc()
    try:
        java_profile = profile._java_resource_profile if profile is not None else None
        return int(jsc.maxNumConcurrentTasks(java_profile or jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001  - an internal API; fall back to the public estimate
        return sc.defaultParallelism


def driver_address(sc) -> str:
    """Where the driver listens for its mappers: 127.0.0.1 in local mode (every task runs on this
    machine), else the address Spark itself uses for the driver."""
    if sc.master.startswith("local"):
        return "127.0.0.1"
    conf = sc.getConf()
    host = conf.get("spark.driver.bindAddress", None) or conf.get("spark.driver.host", "127.0.0.1")
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


class SparkStageEngine(_SparkSession, ReduceOnDriver):  # type: ignore[misc]  # reader: a SparkReader, which is a Reader; mypy holds a mutable attribute of two bases invariant
    """``spark.mode: stage``: one long-lived barrier stage serves every round of the run."""

    def __init__(
        self,
        settings: SessionSettings | None = None,
        port: int = 0,
        mapper_timeout: float = 1800.0,
        stage_attempts: int = 3,
        warn=None,
        min_slots: int = 1,
        collect_held_out_mb: float = 64.0,
        collective: str = "tasks",
    ):
        super().__init__(settings, min_slots, collect_held_out_mb, warn)
        self.port, self.mapper_timeout, self.stage_attempts = port, mapper_timeout, stage_attempts
        self.collective = collective
        self.hub: Hub | None = None
        self.source: ShardSource | None = None
        self.attempt = 0
        self._thread: threading.Thread | None = None
        self._stage_error: BaseException | None = None
        self._group = ""
        self._profile = None  # spark.task_gpus: the stage's ResourceProfile

    @property
    def _hub(self) -> Hub:
        """The driver's end of the mappers' connections (made by :meth:`start`)."""
        if self.hub is None:
            raise EngineError("spark: the stage's connections are made by start(), which has not run")
        return self.hub

    def start(self, source):
        self.source = source
        session = self._open(min_slots=source.mappers)
        assert self.opened is not None  # _open() opened it
        if self.opened.connect:
            raise EngineError(
                f"spark.mode=stage needs a classic Spark session (its tasks connect back to this "
                f"process), and {self.opened.master} is Spark Connect: use spark.mode auto or jobs, "
                "got stage"
            )
        sc = session.sparkContext
        self._profile = stage_profile(self.settings.task_gpus, self.opened.master)
        if sc.getConf().get("spark.dynamicAllocation.enabled", "false").lower() == "true":
            raise EngineError(
                "spark.mode=stage needs spark.dynamicAllocation.enabled=false (a barrier stage "
                "holds its executors for the whole run); or use spark.mode=jobs"
            )
        self.hub = Hub(source.mappers, driver_address(sc), self.port, self.mapper_timeout, self.collective)
        self._input = None if source.rows is None else self.reader.shards(source.rows).rdd
        try:
            self._launch()
        except _StageDied as died:  # the root cause, or the nnlib error a task raised
            raise error_from_text(died.text, "spark", "starting the mappers") from None

    def _wait_for_slots(self, sc, needed: int) -> None:
        deadline = time.monotonic() + SLOT_WAIT_SECONDS
        while (have := task_slots(sc, self._profile)) < needed:
            if time.monotonic() > deadline:
                gpus = (
                    ""
                    if self._profile is None
                    else (
                        f", each with spark.task_gpus={self.settings.task_gpus:g} GPUs (the executors' GPUs: "
                        "spark.executor.resource.gpu.amount and a discovery script)"
                    )
                )
                raise EngineError(
                    f"spark.mode=stage needs {needed} free task slots (one per mapper{gpus}) and "
                    f"{self.master} has {have}; use fewer mappers, more executors, or "
                    "spark.mode=jobs"
                )
            time.sleep(0.5)

    def _launch(self) -> None:
        """Submit the barrier stage from a background thread and wait until every mapper is connected."""
        sc = self.session.sparkContext
        source = self.source
        assert source is not None  # start() set it
        mappers = source.mappers
        self._wait_for_slots(sc, mappers)
        address, token = self._hub.address, self._hub.token
        self._group = f"nnlib-stage-{id(self)}-{self.attempt}"
        self._stage_error = None

        rows, data = source.rows, source.data  # data.shard_storage, read in the tasks

        def build(mapper: int):
            return source.build([mapper])[0]

        def mapper_task(indices):
            for mapper in indices:
                serve_mapper(partial(build, mapper), mapper, address, token, data)
            return iter(())

        def rows_task(index, records):  # a row-keyed source: this partition's records are shard `index`
            assert rows is not None  # only a row-keyed source's stage reads records
            serve_mapper(lambda: shard_from_records(index, records, rows, data), index, address, token, data)
            return iter(())

        def hold_stage():
            try:
                sc.setJobGroup(self._group, "nnlib: the long-lived training stage", interruptOnCancel=True)
                if self._input is None:
                    stage = sc.parallelize(range(mappers), mappers).barrier().mapPartitions(mapper_task)
                else:
                    stage = self._input.barrier().mapPartitionsWithIndex(rows_task)
                if self._profile is not None:  # stage-level scheduling: each task gets its GPUs
                    stage = stage.withResources(self._profile)
                stage.collect()
            except BaseException as exc:  # noqa: BLE001  - seen by the driver loop through _alive()
                self._stage_error = exc

        self._thread = threading.Thread(target=hold_stage, name="nnlib-spark-stage", daemon=True)
        self._thread.start()
        self._hub.connect(self._alive)

    def _alive(self) -> None:
        """Raise if the stage has ended while the driver still waits on it."""
        if self._thread is not None and not self._thread.is_alive():
            raise _StageDied(str(self._stage_error) if self._stage_error else "it finished early")

    def _with_retries(self, exchange, what: str):
        """Run one exchange (``what``: "round 3"); when the stage dies under it, start the stage again and redo it."""
        while True:
            try:
                if self._thread is None:
                    self._launch()
                return exchange()
            except (MapperLost, _StageDied) as exc:
                if isinstance(exc, _StageDied) and not isinstance(
                    error := error_from_text(exc.text, "spark", what), EngineError
                ):
                    raise error from None  # an nnlib error raised in a task: the same again on a retry
                reason = f"lost {exc}" if isinstance(exc, MapperLost) else f"the stage stopped ({exc})"
                self.attempt += 1
                if self.attempt >= self.stage_attempts:
                    raise EngineError(
                        f"spark: {reason} in {what}, and the stage has been started "
                        f"{self.stage_attempts} times (spark.stage_attempts); ending the run"
                    ) from None
                self.warn(
                    f"spark: {reason} in {what}; starting the stage again (attempt "
                    f"{self.attempt + 1} of {self.stage_attempts}) and redoing {what}"
                )
                self._end_stage()

    def _end_stage(self) -> None:
        """Stop the mappers, cancel the stage's job and wait for its thread."""
        self._hub.close_mappers()
        if self.session is not None:
            self.session.sparkContext.cancelJobGroup(self._group)
        if self._thread is not None:
            self._thread.join(timeout=120)
            self._thread = None

    def map(self, payload, timings):
        return self._with_retries(
            lambda: self._hub.local_round(payload, self._alive, timings), f"round {payload.round_index + 1}"
        )

    def sync_round(self, payload, timings):
        return self._with_retries(
            lambda: self._hub.sync_round(payload, self._alive, timings), f"round {payload.round_index + 1}"
        )

    def score(self, backend, model, params):
        """Each mapper scores ``params`` on the held-out rows it keeps."""
        return self._with_retries(
            lambda: self._hub.score(backend, model, params, self._alive), "scoring the held-out rows"
        )

    def stop(self):
        if self.hub is not None:
            self.hub.close_mappers()  # the tasks return, and the stage's job ends by itself
            if self._thread is not None:
                self._thread.join(timeout=STAGE_END_SECONDS)
            if self._thread is not None and self._thread.is_alive() and self.session is not None:
                # tasks still starting (a Ctrl-C while the stage was launched) never learn of the end: cancel
                self.session.sparkContext.cancelJobGroup(self._group)
                self._thread.join(timeout=60)
            self._thread = None
            self.hub.close()
            self.hub = None
        self._close()


STAGE_END_SECONDS = 5.0  # how long a stopped stage's job gets to end by itself before it is cancelled


class _StageDied(Exception):
    """The barrier stage ended (aborted by Spark) while the driver waited on it; ``text`` is Spark's whole error,
    and the exception reads as its root cause."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        cause = root_cause(self.text)
        return cause + hint(cause)
