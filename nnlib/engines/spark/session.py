"""Which SparkSession a run uses, and whether nnlib may stop it.

nnlib uses the session Spark gives before it builds one, as xgboost.spark
and TorchDistributor do:

1. a session the caller already has: the active one of this thread, else the
   process's default one (a thread pool's threads, CrossValidator's among
   them, have no active session), or a bare ``SparkContext``, classic or
   Spark Connect. nnlib changes nothing on it (``spark.master`` and
   ``spark.conf`` that differ get a warning line) and never stops it;
2. else a Spark Connect session when ``spark.remote`` (or pyspark's own
   ``SPARK_REMOTE``) names a server (``sc://HOST:PORT``, or ``local[N]`` for a
   server of pyspark's own jars on this machine);
3. else a classic session built here, whose master is, in order: the one
   ``spark-submit`` was given (``--master``, ``--conf``, ``spark-defaults.conf``
   in ``SPARK_CONF_DIR``, as Spark documents), with a warning when nnlib's
   ``spark.master`` names another; nnlib's ``spark.master`` when the user set
   it; the master ``spark-defaults.conf`` names; ``local[*]``. A ``local[...]``
   master with fewer task slots than mappers gets one slot per mapper (a
   barrier stage needs them all at once); a cluster's master is never
   replaced. Settings the user gave Spark (``--conf``, ``spark-defaults.conf``)
   are kept: nnlib adds its own only where they are unset.

Outside spark-submit nnlib starts the JVM itself, with its logging
configuration (``log4j2.properties`` here, at ``spark.log_level``) as a
driver option, so Spark prints none of its start-up lines; it reads
``spark-defaults.conf`` from Python for that, without starting the JVM first.
Under spark-submit the JVM runs before nnlib does: only the launch can quiet
it (``--conf spark.driver.defaultJavaOptions=-Dlog4j2.configurationFile=...``,
which ``submit.sh`` passes), and nnlib sets ``spark.log.level`` unless the
user did.

A session built here is stopped when the last run using it ends, whichever
thread ends it (runs in several threads share it).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlib.config import redact_url as redact
from nnlib.errors import ConfigError, EngineError, NnlibError, first_line
from nnlib.util.stop import holding_interrupt

LOG4J_CONF = Path(__file__).with_name("log4j2.properties")
# Arrow's system allocator in the Python workers: its default (mimalloc) reserves about 1 GB of address space,
# which spark.executor.pyspark.memory (a limit on address space, RLIMIT_AS) counts against every worker
EXECUTOR_DEFAULTS = {"spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL": "system"}
DEFAULT_MASTER = "local[*]"
_LOCAL = re.compile(r"local(?:\[(\*|\d+)(?:,\s*(\d+))?\])?$")
# under spark-submit (and the pyspark shell) the JVM is started first and tells Python where it listens
_SUBMITTED = "PYSPARK_GATEWAY_PORT" in os.environ


def local_master_with_slots(master: str, slots: int) -> str:
    """A ``local[...]`` master with at least ``slots`` task slots (any other master unchanged)."""
    match = _LOCAL.match(master)
    if not match:
        return master
    threads, failures = match.groups()
    if threads is None:
        have = 1
    elif threads == "*":
        have = os.cpu_count() or 1
    else:
        have = int(threads)
    if have >= slots:
        return master
    return f"local[{slots},{failures}]" if failures else f"local[{slots}]"


def is_connect(session) -> bool:
    """True for a Spark Connect session (``pyspark.sql.connect.session.SparkSession``)."""
    return type(session).__module__.startswith("pyspark.sql.connect")


def existing_session():
    """The session the caller already has, or None: this thread's active session, else the process's default
    one, else a session over the running ``SparkContext`` the caller made without one (classic first, then
    Spark Connect). A stopped session does not count."""
    if "pyspark" not in sys.modules:  # nobody made a session in this process
        return None
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if "SPARK_LOCAL_REMOTE" in os.environ and (session := _connect_session()) is not None:
        return session  # remote("local[N]"): the classic session in this process is that Connect server's own
    sc = SparkContext._active_spark_context
    if sc is not None and sc._jsc is not None:
        session = SparkSession.getActiveSession() or SparkSession._instantiatedSession
        if session is not None and session._sc is sc:
            return session
        return SparkSession(sc)  # a bare SparkContext: the session wraps it and owns nothing
    return _connect_session()


def connect_expected(settings: SessionSettings) -> bool:
    """Will :func:`open_session` give a Spark Connect session? Told without opening one, in its order:
    ``spark.remote``, the caller's session, ``SPARK_REMOTE``, else a classic one built here."""
    if settings.remote:
        return True
    session = existing_session()
    if session is not None:
        return is_connect(session)
    return bool(os.environ.get("SPARK_REMOTE"))


def _connect_session():
    """This thread's active Spark Connect session, else the process's default one, else None."""
    connect = sys.modules.get("pyspark.sql.connect.session")  # loaded only where a Connect session was made
    if connect is None:
        return None
    return connect.SparkSession.getActiveSession() or connect.SparkSession._get_default_session()


@dataclass(frozen=True)
class SessionSettings:
    """What nnlib's config says about the session (``spark.*``); ``master`` None: the user set none."""

    master: str | None = None
    remote: str | None = None
    app_name: str = "nnlib"
    log_level: str = "ERROR"
    conf: dict[str, str] = field(default_factory=dict)
    task_gpus: float | None = None  # spark.task_gpus: the stage's ResourceProfile (:func:`stage_profile`)

    @classmethod
    def from_config(cls, spark) -> SessionSettings:
        """From a :class:`nnlib.config.SparkConfig`."""
        return cls(
            spark.master,
            spark.remote,
            spark.app_name,
            spark.log_level,
            dict(spark.conf),
            getattr(spark, "task_gpus", None),
        )


@dataclass
class Opened:
    """A session and what nnlib knows of it: ``created`` (nnlib built it, and stops it), ``connect``, and the
    ``master`` it runs on (a classic session's master, or the redacted Connect URL)."""

    session: Any  # a SparkSession, classic or Spark Connect
    created: bool
    connect: bool
    master: str

    def stop(self) -> None:
        """Stop the session if nnlib built it and no other run still uses it; a session the caller gave is
        left running."""
        if not self.created:
            return
        self.created = False
        with _BUILT_LOCK:
            users = _BUILT.pop(id(self.session), 1) - 1
            if users > 0:  # a run in another thread still uses it
                _BUILT[id(self.session)] = users
                return
        self.session.stop()


# the sessions nnlib built and still holds: id(session) -> how many runs use it. A run in another thread
# finds such a session as "existing" and shares it; the last run to end stops it.
_BUILT: dict[int, int] = {}
_BUILT_LOCK = threading.RLock()


def open_session(settings: SessionSettings, min_slots: int = 1, warn: Callable[[str], None] | None = None) -> Opened:
    """The session a run uses (the rules in this module's docstring; ``spark.remote`` set in the config comes
    first); a failure to start one is one :class:`nnlib.errors.EngineError` line."""
    opened = _open(settings, min_slots, warn or (lambda _message: None))
    ship_code(opened.session)
    return opened


def _open(settings: SessionSettings, min_slots: int, warn: Callable[[str], None]) -> Opened:
    with _BUILT_LOCK:  # two threads opening at once share one session, and both count as its users
        if settings.remote:
            return _registered(_open_connect(settings.remote, settings))
        session = existing_session()
        if session is not None:
            connect = is_connect(session)
            opened = Opened(session, id(session) in _BUILT, connect, _master_of(session, connect))
            if opened.created:
                _BUILT[id(session)] += 1
            _warn_unapplied(settings, opened, warn)
            return opened
        if os.environ.get("SPARK_REMOTE"):
            return _registered(_open_connect(os.environ["SPARK_REMOTE"], settings, SPARK_REMOTE_KEY))
        return _registered(_open_classic(settings, min_slots, warn))


_SHIPPED: set[str] = set()  # the Spark Connect sessions (by id) whose workers have nnlib's code
# held while a session is shipped: fits in threads (CrossValidator's parallelism) would each add the same
# artifact, and the server refuses the second (FileAlreadyExistsException)
_SHIPPING = threading.Lock()


def ship_code(session) -> None:
    """Give a Spark Connect session's Python workers nnlib's own code, once a session: the package as one zip
    (:func:`nnlib.util.ship.zip_package`) through ``addArtifacts(..., pyfile=True)``, which the server puts
    first on its workers' ``sys.path``. So the server's Python needs nnlib's dependencies (numpy, pyarrow,
    pydantic, pyyaml, scikit-learn; torch for a module) but not nnlib, and runs the client's nnlib whatever
    version it has. A failure is one EngineError line. Nothing to do on a classic session."""
    import tempfile

    if not is_connect(session):
        return
    from nnlib.util.ship import zip_package

    key = session.session_id
    with _SHIPPING:
        if key in _SHIPPED:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = zip_package(Path(tmp) / "nnlib.zip")
            try:
                session.addArtifacts(str(path), pyfile=True)
            except Exception as exc:  # noqa: BLE001  - gRPC and the server's own errors
                raise EngineError(
                    f"spark.remote: could not ship nnlib's code to the Spark Connect server ({first_line(exc)})"
                ) from None
        _SHIPPED.add(key)


def local_schema(ddl: str):
    """The ``StructType`` of a DDL string of ``name type`` fields (``"mapper int, seq int, blob binary"``; types
    int, long, double, string, binary, all nullable, as Spark parses them), built here. Given the string,
    ``mapInArrow`` on a Spark Connect session asks the server to parse it: a round trip for every job, where
    nnlib's schemas are always the same few. Another type is a ValueError (a mistake in nnlib's code)."""
    from pyspark.sql import types as T

    kinds = {
        "int": T.IntegerType,
        "long": T.LongType,
        "double": T.DoubleType,
        "string": T.StringType,
        "binary": T.BinaryType,
    }
    fields = []
    for part in ddl.split(","):
        name, kind = part.split()
        if kind not in kinds:
            raise ValueError(f"local_schema: type {kind!r} of {name!r} is not one of {', '.join(kinds)}")
        fields.append(T.StructField(name, kinds[kind]()))
    return T.StructType(fields)


def _registered(opened: Opened) -> Opened:
    if opened.created:
        _BUILT[id(opened.session)] = 1
    return opened


def _warn_unapplied(settings: SessionSettings, opened: Opened, warn: Callable[[str], None]) -> None:
    """One line for each of nnlib's session settings that a session it did not build does not take."""
    if opened.connect:
        return  # Spark Connect's own rules: nnlib.engines.spark.jobs
    if settings.master and settings.master != opened.master:
        warn(
            f"spark.master {settings.master} is not used: the run uses the SparkSession already running, on "
            f"master {opened.master} (nnlib changes nothing on a session it did not start)"
        )
    if settings.conf:
        warn(
            f"spark.conf ({', '.join(sorted(settings.conf))}) is not applied: the run uses the SparkSession "
            "already running (nnlib changes nothing on a session it did not start)"
        )


def stage_profile(task_gpus: float | None, master: str | None):
    """The ResourceProfile of nnlib's stage for ``spark.task_gpus`` (each task asks for that many GPUs), or None
    when unset. Spark schedules a task resource profile on a standalone, YARN or Kubernetes cluster (with
    dynamic allocation off) but not on a ``local[...]`` master, which is refused in one line; ``master`` None
    (a Spark Connect server's, unknown here) is not checked. The executors must offer GPUs
    (``spark.executor.resource.gpu.amount`` and a discovery script, or the cluster manager's)."""
    if task_gpus is None:
        return None
    if master is not None and master.startswith("local"):
        raise ConfigError(
            f"spark.task_gpus={task_gpus:g} needs a cluster master (spark://HOST:PORT, yarn or "
            f"k8s://...): Spark has no stage-level scheduling on a local one, got master {master}"
        )
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().resource("gpu", task_gpus)).build


def java_root_cause(exc: BaseException) -> str:
    """The useful line of an exception from Spark's JVM: its root cause (a Py4JJavaError's own first line says
    nothing), else the exception's first line."""
    java = getattr(exc, "java_exception", None)
    if java is None:
        return first_line(exc)
    while java.getCause() is not None and java.getCause() != java:
        java = java.getCause()
    return first_line(java.toString())


def _master_of(session, connect: bool) -> str:
    if connect:
        return _connect_url(session)
    return session.sparkContext.master


def _connect_url(session) -> str:
    """``sc://HOST:PORT`` of a Connect session (no token, no other parameter)."""
    endpoint = getattr(getattr(session.client, "_builder", None), "endpoint", None)
    return f"sc://{endpoint}" if endpoint else "sc://"


CONNECT_PACKAGES = ("grpc", "grpc_status", "google.rpc", "zstandard")
REACH_SECONDS = 5.0  # how long an sc:// server gets to accept a TCP connection before the run says so


SPARK_REMOTE_KEY = "SPARK_REMOTE (environment variable)"  # how errors name a server that variable gave


def _open_connect(remote: str, settings: SessionSettings, key: str = "spark.remote") -> Opened:
    """A Spark Connect session to ``remote`` (``sc://HOST:PORT[/;params]``, or ``local[N]``: a server of
    pyspark's own jars started here, stopped with the session); errors name ``key``, where ``remote`` came
    from (``spark.remote``, or :data:`SPARK_REMOTE_KEY`)."""
    import importlib.util

    # gRPC's core logs each failed TLS handshake and retry at INFO on stderr unless told otherwise before it
    # starts; nnlib's line carries the cause, so only gRPC's errors show
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    shown = redact(remote)
    if not remote.startswith(("sc://", "local")):
        raise EngineError(f"{key}: must be sc://HOST:PORT (a Spark Connect server) or local[N], got {shown!r}")
    if remote.startswith("sc://"):
        _check_url(remote, shown, key)
    missing = [p for p in CONNECT_PACKAGES if importlib.util.find_spec(p.split(".")[0]) is None]
    if missing:
        raise EngineError(
            f"{key} {shown}: Spark Connect's client needs {', '.join(missing)}, not installed "
            "(pip install 'nnlib[connect]')"
        )
    mine = _existing_connect(remote)
    if mine is not None:  # the caller's session to the same server, connected already
        return Opened(mine, False, True, _connect_url(mine))
    if remote.startswith("sc://"):
        _check_reachable(remote, shown, key)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.remote(remote)
    if remote.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    for key, value in settings.conf.items():  # the session's own settings (a server's static ones refuse)
        builder = builder.config(key, value)
    try:
        with holding_interrupt() as interrupted:
            session = builder.create()
            _ = session.version  # the first call to the server: a server that answers wrongly fails here
    except Exception as exc:  # noqa: BLE001  - gRPC's errors, a server that is not Spark Connect, ...
        raise EngineError(f"{key} {shown}: could not open a Spark Connect session ({first_line(exc)})") from None
    if interrupted:
        session.stop()
        raise KeyboardInterrupt
    return Opened(session, True, True, shown)


def _existing_connect(remote: str):
    """The caller's Connect session (this thread's, else the process's default) when it talks to ``remote``'s
    server."""
    session = _connect_session()
    if session is None:
        return None
    if remote.startswith("local"):
        return session if session.client._builder.host in ("localhost", "127.0.0.1") else None
    host, port = _host_port(remote)
    return session if _connect_url(session) in (f"sc://{host}:{port}",) else None


def _host_port(remote: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    parsed = urlparse("http://" + remote[len("sc://") :].split("/;")[0].split(";")[0])
    return parsed.hostname or "localhost", parsed.port or 15002


def _check_url(remote: str, shown: str, key: str) -> None:
    """A malformed ``sc://`` URL is one line (pyspark's client would raise a traceback)."""
    netloc = remote[len("sc://") :].split("/")[0].split(";")[0]
    host, colon, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if not host or (colon and (not port.isdigit() or not 0 < int(port) < 65536)):
        raise EngineError(
            f"{key} {shown}: Spark Connect needs sc://HOST[:PORT] with a host and, if given, a port "
            f"number (a server's is 15002 unless started otherwise), got {netloc!r}"
        )


def _check_reachable(remote: str, shown: str, key: str = "spark.remote") -> None:
    """One line within seconds, with the cause, when an ``sc://`` URL is malformed (pyspark's client would raise
    a traceback), its host does not resolve, nothing accepts a connection there, or what does accept is no gRPC
    server (within :data:`PROBE_SECONDS`; gRPC would retry for minutes)."""
    where = f"{key} {shown}"
    _check_url(remote, shown, key)
    host, port = _host_port(remote)
    _reach(host, port, where, "Spark Connect server", "start one, or check the host and port")
    _probe_grpc(remote, host, port, where)


def _probe_grpc(remote: str, host: str, port: int, where: str) -> None:
    """The gRPC channel pyspark's client would open for ``remote`` (its own channel builder: TLS, local
    credentials or none, as the URL's ``use_ssl`` and ``token`` and the host decide) must get ready within
    :data:`PROBE_SECONDS`: a port that accepts connections but speaks no HTTP/2 (another service) is one line,
    not minutes of the client's retries."""
    import grpc
    from pyspark.sql.connect.client import DefaultChannelBuilder

    builder = DefaultChannelBuilder(remote)
    # pyspark's client speaks TLS where the URL says use_ssl=true, or gives a token to a host other than localhost
    tls = builder.use_ssl or (builder.token is not None and builder.host != "localhost")
    channel = builder.toChannel()
    try:
        grpc.channel_ready_future(channel).result(timeout=PROBE_SECONDS)
    except grpc.FutureTimeoutError:
        if tls:
            raise EngineError(
                f"{where}: no gRPC server answers {host}:{port} over TLS within {PROBE_SECONDS} s "
                f"(pyspark's client uses TLS for {'use_ssl=true' if builder.use_ssl else 'a token'}"
                " to a host other than localhost): a server without TLS, or another service's port; "
                "for a local server without TLS write sc://localhost:PORT"
            ) from None
        raise EngineError(
            f"{where}: {host}:{port} accepts connections but no gRPC server answers there within "
            f"{PROBE_SECONDS} s: not a Spark Connect server (another service's port?)"
        ) from None
    finally:
        channel.close()


def _launch_settings() -> dict[str, str]:
    """The ``spark.*`` settings the user gave Spark's launch: under spark-submit, what its JVM holds (its
    ``--master``, ``--conf``, ``spark-defaults.conf``); else ``spark-defaults.conf``, read here without
    starting the JVM, so that nnlib's own driver options reach the JVM when it starts."""
    if not _SUBMITTED:
        return defaults_file()
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the gateway spark-submit started; SparkConf reads the JVM's settings
    return dict(SparkConf().getAll())


def defaults_file() -> dict[str, str]:
    """What ``spark-defaults.conf`` sets (in ``SPARK_CONF_DIR``, else ``SPARK_HOME/conf``), as Spark reads it:
    a Java properties file, ``key value``, ``key=value`` or ``key: value`` a line."""
    import importlib.util

    home = os.environ.get("SPARK_HOME")
    if not home and (spec := importlib.util.find_spec("pyspark")) is not None and spec.origin:
        home = os.path.dirname(spec.origin)
    folder = os.environ.get("SPARK_CONF_DIR") or os.path.join(home or ".", "conf")
    try:
        lines = Path(folder, "spark-defaults.conf").read_text().splitlines()
    except OSError:
        return {}
    settings = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = _property(line)
            settings[key] = value
    return settings


def _property(line: str) -> tuple[str, str, str]:
    """``key value`` / ``key=value`` / ``key: value`` -> (key, separator, value)."""
    match = re.match(r"([^\s=:]+)(\s*[=:]\s*|\s+|$)(.*)", line)
    assert match is not None  # the callers pass lines that are neither blank nor comments
    return match.group(1), match.group(2), match.group(3).strip()


def _open_classic(settings: SessionSettings, min_slots: int, warn: Callable[[str], None]) -> Opened:
    from pyspark.sql import SparkSession

    try:
        launched = _launch_settings()
    except Exception as exc:  # noqa: BLE001  - no Java, a broken SPARK_HOME, ...
        raise EngineError(f"spark: could not start Spark's JVM ({first_line(exc)})") from None
    given = launched.get("spark.master")
    if _SUBMITTED and given:
        master, origin = given, "spark-submit's master"
        if settings.master and settings.master != given:
            warn(
                f"spark.master {settings.master} is not used: spark-submit's master {given} is (its --master, "
                "--conf spark.master or spark-defaults.conf, else its default local[*]; spark-submit's wins)"
            )
    elif settings.master:
        master, origin = settings.master, "spark.master"
    else:
        master = given or DEFAULT_MASTER
        origin = "spark.master of spark-defaults.conf" if given else "spark.master"
    check_master(master, origin)  # in seconds, before the JVM; Spark would print a trace, or retry for a minute
    master = local_master_with_slots(master, min_slots)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers use this interpreter
    builder = (
        SparkSession.builder.appName(settings.app_name) if "spark.app.name" not in launched else SparkSession.builder
    )
    if master != given or not _SUBMITTED:
        builder = builder.master(master)
    ours = {
        "spark.ui.showConsoleProgress": "false",
        # applied as the SparkContext starts: under spark-submit the driver JVM is already running
        # with Spark's own logging, and this keeps the rest of its chatter out
        "spark.log.level": settings.log_level,
        **EXECUTOR_DEFAULTS,
    }
    if not _SUBMITTED:  # nnlib starts the JVM: its logging from the first line (under spark-submit it runs)
        ours["spark.driver.extraJavaOptions"] = (
            f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()} "
            f"-Dnnlib.spark.log.level={settings.log_level} "
            f"-Dnnlib.spark.context.log.level={_context_level(settings)}"
        )
    for key, value in ours.items():
        if key not in launched:  # what the user gave Spark wins
            builder = builder.config(key, value)
    for key, value in settings.conf.items():  # nnlib's spark.conf: the user's own, for a session built here
        builder = builder.config(key, value)
    quiet_py4j(settings.log_level)
    try:
        with holding_interrupt() as interrupted:  # cut short, the JVM's start would leave it running
            if not _SUBMITTED:
                _start_jvm(builder._options, origin, master)
            if master.startswith("spark://"):
                _probe_standalone(master, origin, builder._options, settings.log_level)
            session = builder.getOrCreate()
    except NnlibError:
        raise
    except Exception as exc:  # noqa: BLE001  - a cluster that refuses, a setting Spark does not take, ...
        raise EngineError(f"{origin} {master}: could not start Spark ({java_root_cause(exc)})") from None
    if interrupted:
        session.stop()
        raise KeyboardInterrupt
    if "spark.log.level" not in launched:
        session.sparkContext.setLogLevel(settings.log_level)
        quiet_task_failures(session.sparkContext, settings.log_level)
    _wait_for_executors(session, master, origin)
    return Opened(session, True, False, session.sparkContext.master or master)


# the master URLs Spark takes (SparkContext.createTaskScheduler, SparkSubmit): N >= 1 threads, F tries per task
_LOCAL_URL = re.compile(
    r"local(\[(\*|[1-9]\d*)(\s*,\s*[1-9]\d*)?\])?|local-cluster\[\s*[1-9]\d*\s*,\s*[1-9]\d*\s*,"
    r"\s*[1-9]\d*\s*\]"
)
MASTER_FORMS = "local, local[N], local[*], local[N,F], spark://HOST:PORT[,HOST:PORT...], yarn or k8s://HOST[:PORT]"
PROBE_SECONDS = 10  # how long a spark:// address that accepts a connection gets to answer as a Spark master
PROBE_LOGGER = "org.apache.spark.network.client.TransportResponseHandler"


def check_master(master: str, origin: str = "spark.master") -> None:
    """Refuse, in one :class:`EngineError` line naming ``origin`` (where the master came from), a master URL Spark
    would refuse or wait on: a form Spark does not take, ``spark://`` without a host and port, ``yarn`` without
    ``HADOOP_CONF_DIR`` or ``YARN_CONF_DIR``, a host that does not resolve, an address where nothing accepts a
    connection (within :data:`REACH_SECONDS`). Spark itself would print a Java trace, or retry for a minute and
    then report a stopped SparkContext. A ``spark://`` address that accepts but is no Spark master is found by
    :func:`_probe_standalone`, once the JVM runs."""
    where = f"{origin} {master}"
    if master.startswith("local"):
        if not _LOCAL_URL.fullmatch(master):
            raise EngineError(
                f"{where}: Spark takes local, local[N], local[*], local[N,F] or "
                f"local-cluster[N,C,M] with whole numbers N >= 1, got {master!r}"
            )
        return
    if master.startswith("spark://"):
        for host, port in _standalone_addresses(master, where):
            _reach(host, port, where, "Spark master", "start the master, or check the host and port")
        return
    if master == "yarn":
        if not (os.environ.get("HADOOP_CONF_DIR") or os.environ.get("YARN_CONF_DIR")):
            raise EngineError(
                f"{where}: Spark finds the YARN cluster through HADOOP_CONF_DIR or YARN_CONF_DIR, and "
                "neither is set in the environment; point one at the cluster's configuration folder"
            )
        return
    if master.startswith("k8s://"):
        host, port = _k8s_address(master, where)
        _reach(host, port, where, "Kubernetes API server", "check the host and port")
        return
    raise EngineError(f"{where}: not a master URL Spark takes ({MASTER_FORMS}), got {master!r}")


def _standalone_addresses(master: str, where: str) -> list[tuple[str, int]]:
    """``spark://H1:P1,H2:P2`` -> [(H1, P1), (H2, P2)], as Spark reads it: every address needs a host and a port."""
    addresses = []
    for address in master[len("spark://") :].split(","):
        host, colon, port = address.rpartition(":")
        host = host.strip("[]")  # an IPv6 address in brackets
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in address:
            raise EngineError(
                f"{where}: Invalid master URL: Spark needs spark://HOST:PORT, each address with a "
                f"host and a port (a standalone master listens on 7077 unless started otherwise), "
                f"got {address!r}"
            )
        addresses.append((host, int(port)))
    return addresses


def _k8s_address(master: str, where: str) -> tuple[str, int]:
    """``k8s://[https://]HOST[:PORT]`` -> (HOST, PORT), as Spark reads it (https, port 443, unless given)."""
    from urllib.parse import urlsplit

    rest = master[len("k8s://") :]
    url = rest if rest.startswith(("http://", "https://")) else "https://" + rest
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        host, port = None, None
    if not host or port is None or parts.path not in ("", "/"):
        raise EngineError(
            f"{where}: Spark needs k8s://HOST[:PORT] or k8s://https://HOST[:PORT] (the Kubernetes "
            f"API server), got {master!r}"
        )
    return host, port


def _reach(host: str, port: int, where: str, what: str, fix: str) -> None:
    """One line within :data:`REACH_SECONDS` when ``host`` does not resolve or nothing accepts a connection."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise EngineError(f"{where}: host {host!r} does not resolve ({exc.strerror}); check the host name") from None
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(REACH_SECONDS)
                s.connect(address)
            return
        except OSError as exc:
            error = exc
    cause = (
        f"no answer within {REACH_SECONDS:g} s"
        if isinstance(error, socket.timeout)
        else (error.strerror if error is not None and error.strerror else str(error))
    )
    raise EngineError(
        f"{where}: nothing accepts a connection at {host}:{port} ({cause}): no {what} listens there; {fix}"
    ) from None


def _probe_standalone(master: str, origin: str, options: dict, log_level: str = "ERROR") -> None:
    """Ask each address of a ``spark://`` master for Spark's ``Master`` endpoint, as the application's client
    would, within :data:`PROBE_SECONDS`; none answering is one line with the cause. Without this, an address
    that accepts connections but is no Spark master (another service, a worker's port) keeps Spark's
    application client waiting a minute ("All masters are unresponsive! Giving up.") and the cause stays in
    Spark's log. Starts the JVM (with ``options``, the session's settings), as building the session would."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).setAll(list(options.items())))
    jvm = SparkContext._jvm
    assert jvm is not None  # _ensure_initialized started the JVM
    if log_level.upper() in ("ERROR", "FATAL", "OFF"):  # the probe's unanswered request, logged as it closes
        log4j = jvm.org.apache.logging.log4j
        log4j.core.config.Configurator.setLevel(PROBE_LOGGER, log4j.Level.OFF)
    conf = jvm.org.apache.spark.SparkConf(True)  # the launch's settings (spark-submit's --conf), then the session's
    for key, value in options.items():
        conf.set(key, value)
    conf.set("spark.rpc.lookupTimeout", f"{PROBE_SECONDS}s")
    manager_class = jvm.org.apache.spark.SecurityManager
    manager = manager_class(
        conf,
        getattr(manager_class, "$lessinit$greater$default$2")(),
        getattr(manager_class, "$lessinit$greater$default$3")(),
    )
    env = jvm.org.apache.spark.rpc.RpcEnv.create("nnlib-probe", "127.0.0.1", 0, conf, manager, True)
    causes = []
    try:
        for host, port in _standalone_addresses(master, f"{origin} {master}"):
            try:
                env.setupEndpointRef(jvm.org.apache.spark.rpc.RpcAddress(host, port), "Master")
                return
            except Exception as exc:  # noqa: BLE001  - py4j's error of Spark's RPC failure
                cause = java_root_cause(exc)
                if "TimeoutException" in cause:
                    causes.append(
                        f"{host}:{port} accepts connections but gives no Spark RPC answer within {PROBE_SECONDS} s"
                    )
                elif "RpcEndpointNotFoundException" in cause:
                    causes.append(f"{host}:{port} is a Spark process but not a master (a worker's or a driver's port?)")
                else:
                    causes.append(f"{host}:{port}: {cause}")
    finally:
        env.shutdown()
    raise EngineError(
        f"{origin} {master}: no Spark master answers ({'; '.join(causes)}); check the port (a "
        "standalone master's is 7077 unless started otherwise, its web UI's is another)"
    )


def _context_level(settings: SessionSettings) -> str:
    """The level of SparkContext's own logger: off at ERROR and above (its "Error initializing SparkContext" and
    the trace after it; nnlib's line carries the root cause), else ``spark.log_level``."""
    return "OFF" if settings.log_level.upper() in ("ERROR", "FATAL", "OFF") else settings.log_level


def _start_jvm(options: dict, origin: str, master: str) -> None:
    """Start pyspark's JVM (its gateway) with the session's settings, unless it runs. The JVM's stderr is read
    through a pipe and held back while it starts: a JVM that exits at once (spark-submit refusing a setting:
    ``Exception in thread "main" ...`` and its trace) is one :class:`EngineError` line with that cause, and
    nothing on the console. Once it runs, what it held and all that follows go to this process's stderr, so
    Spark's own logging shows as it did (at ``spark.log_level`` WARN, INFO, ...)."""
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    if SparkContext._gateway is not None:
        return
    conf = SparkConf(loadDefaults=False).setAll(list(options.items()))
    read_end, write_end = os.pipe()
    relay = _StderrRelay(read_end)
    try:
        gateway = launch_gateway(conf, popen_kwargs={"stderr": write_end})
    except Exception as exc:  # noqa: BLE001  - pyspark's JAVA_GATEWAY_EXITED, no java, ...
        os.close(write_end)  # the JVM has exited: the pipe ends once this copy of its end is closed
        cause = jvm_start_cause(relay.held_text()) or first_line(exc)
        raise EngineError(f"{origin} {master}: could not start Spark's JVM ({cause})") from None
    os.close(write_end)
    relay.release()
    SparkContext._ensure_initialized(gateway=gateway, conf=conf)


class _StderrRelay:
    """Reads the JVM's stderr pipe on a thread: holds what comes while the JVM starts, then passes it all on to
    file descriptor 2 (where the JVM wrote before). Reading never stops, so the JVM never blocks on a full pipe."""

    def __init__(self, read_end: int):
        self._held: list[bytes] = []
        self._lock = threading.Lock()
        self._released = False
        self._thread = threading.Thread(target=self._pump, args=(read_end,), name="nnlib-jvm-stderr", daemon=True)
        self._thread.start()

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            for chunk in iter(lambda: pipe.read(65536), b""):
                with self._lock:
                    if not self._released:
                        self._held.append(chunk)
                        continue
                _write_stderr(chunk)

    def held_text(self, wait: float = 2.0) -> str:
        """What the JVM printed before it exited (waits up to ``wait`` seconds for the pipe's end)."""
        self._thread.join(wait)
        with self._lock:
            return b"".join(self._held).decode(errors="replace")

    def release(self) -> None:
        with self._lock:
            self._released = True
            held, self._held = self._held, []
        for chunk in held:
            _write_stderr(chunk)


def _write_stderr(chunk: bytes) -> None:
    try:
        os.write(2, chunk)
    except OSError:
        pass


def jvm_start_cause(text: str) -> str | None:
    """The cause in what a JVM that failed to start printed: the root ``Caused by:``, else the ``Exception in thread
    "main"`` line, else spark-submit's ``Error:`` line; None when there is none."""
    lines = [line.strip() for line in text.splitlines()]
    caused = [line[len("Caused by: ") :] for line in lines if line.startswith("Caused by: ")]
    if caused:
        return caused[-1]
    for prefix in ('Exception in thread "main" ', "Error: "):
        for line in lines:
            if line.startswith(prefix):
                return line[len(prefix) :] if prefix != "Error: " else line
    return None


# Spark's setting for how long a new application waits for executors before scheduling; nnlib waits that long
# for the first one, and says so rather than leave a stage waiting for executors that never come
EXECUTOR_WAIT_KEY = "spark.scheduler.maxRegisteredResourcesWaitingTime"


def _wait_for_executors(session, master: str, origin: str) -> None:
    """On a cluster master (dynamic allocation off), wait for the first executor up to Spark's
    ``spark.scheduler.maxRegisteredResourcesWaitingTime`` (30 s unless set); none by then is one line naming that
    limit and the setting, and the session is stopped. A master that accepts the application but has no worker
    with the cores and memory an executor asks would otherwise leave the run's first stage waiting for good."""
    if master.startswith("local"):
        return
    sc = session.sparkContext
    conf = sc.getConf()
    if conf.get("spark.dynamicAllocation.enabled", "false").strip().lower() == "true":
        return  # executors come with the first job's tasks
    limit = conf.get(EXECUTOR_WAIT_KEY, "30s")
    seconds = sc._jvm.org.apache.spark.network.util.JavaUtils.timeStringAsMs(limit) / 1000
    deadline = time.monotonic() + seconds
    while sc._jsc.sc().getExecutorMemoryStatus().size() <= 1:  # the driver's block manager is always there
        if time.monotonic() > deadline:
            asked = (
                f"{conf.get('spark.executor.cores', 'all free')} core(s) and "
                f"{conf.get('spark.executor.memory', '1g')} of memory"
            )
            session.stop()
            raise EngineError(
                f"{origin} {master}: no executor registered within {limit} "
                f"({EXECUTOR_WAIT_KEY}): the cluster accepted the application but started no "
                f"executor (no worker alive, or none with the {asked} an executor asks); start a "
                f"worker, or wait longer with --set 'spark.conf={{{EXECUTOR_WAIT_KEY}: 120s}}'"
            )
        time.sleep(0.25)


# Spark's own report of a failed task: the executor's stack trace ("ERROR Executor: Exception in task"), the
# scheduler's "Lost task" and "aborting job"; nnlib reports the failure itself, in one line
# A failed write task and job are reported again by the writers ("Aborting job", "Aborting commit for
# partition", "... is aborting"): those loggers log nothing else.
TASK_FAILURE_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    "org.apache.spark.sql.execution.datasources.v2.DataWritingSparkTask",
    "org.apache.spark.sql.execution.datasources.v2.OverwriteByExpressionExec",
    "org.apache.spark.sql.execution.datasources.v2.AppendDataExec",
)
# Utils logs a failed write task as "Aborting task" with its whole trace; only that message is dropped, its
# other errors (an uncaught exception in a thread, a SparkContext stopped by one) still show
TASK_FAILURE_MESSAGES = (("org.apache.spark.util.Utils", "Aborting task"),)


def quiet_task_failures(sc, log_level: str) -> None:
    """Keep Spark's logging of a failed task off the console at ``spark.log_level`` ERROR and above (the
    default); at WARN, INFO, ... it shows, with the whole trace."""
    if log_level.upper() not in ("ERROR", "FATAL", "OFF"):
        return
    jvm = sc._jvm
    log4j = jvm.org.apache.logging.log4j
    for name in TASK_FAILURE_LOGGERS:
        log4j.core.config.Configurator.setLevel(name, log4j.Level.OFF)
    context = log4j.LogManager.getContext(False)
    config = context.getConfiguration()
    deny, neutral = log4j.core.Filter.Result.DENY, log4j.core.Filter.Result.NEUTRAL
    for name, message in TASK_FAILURE_MESSAGES:
        logger = config.getLoggerConfig(name)
        if logger.getName() != name:  # the logger has no configuration of its own: one at its parent's level
            logger = log4j.core.config.LoggerConfig(name, None, True)
            config.addLogger(name, logger)
        # the message as logged (its format, not the rendered text): the exception's trace is not matched
        logger.addFilter(log4j.core.filter.RegexFilter.createFilter(f"{message}.*", None, True, deny, neutral))
    context.updateLoggers()


class _Py4jTraces(logging.Filter):
    """Drops what py4j logs on the root logger itself (``logging.exception`` in its calls to the JVM)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}py4j{os.sep}" not in record.pathname


def quiet_py4j(log_level: str) -> None:
    """Keep py4j's tracebacks (a Ctrl-C or a lost connection in the middle of a call to the JVM) off the
    console at ``spark.log_level`` ERROR and above (the default): nnlib reports the interrupt or the
    failure in one line. py4j logs on its ``py4j.*`` loggers and, with ``logging.exception``, on the root."""
    if log_level.upper() not in ("ERROR", "FATAL", "OFF"):
        return
    logging.getLogger("py4j").setLevel(logging.CRITICAL + 1)
    root = logging.getLogger()
    if not any(isinstance(f, _Py4jTraces) for f in root.filters):
        root.addFilter(_Py4jTraces())
