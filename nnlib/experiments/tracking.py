"""Optional experiment tracking with MLflow (``tracking: mlflow``; install with ``pip install -e ".[tracking]"``).

With ``tracking: none`` (the default) nothing here imports MLflow. With
``tracking: mlflow`` a run becomes an MLflow run named after its run
directory, in the experiment ``mlflow.experiment``:

- params: every config key, dotted (``train.lr``, ``mappers``, ...);
- metrics, per round (``step`` = the round's number as printed, from 1):
  test accuracy and loss, train loss, the round's seconds and its overhead;
- at the end: the summary's numbers, and the run directory's files as
  artifacts (model.npz, config.yaml, rounds.csv, mapper_times.csv,
  summary.json).

``mlflow.tracking_uri`` names the store: a tracking server
(``http://127.0.0.1:5000``), a database (``sqlite:///mlflow.db``: SQLAlchemy
and the model registry's tables come with the ``mlflow`` package the
``tracking`` extra installs), or a folder (``file:///path/mlruns``); left
out, it is a local ``mlruns/`` folder in the working directory. MLflow
keeps the folder store in maintenance mode and asks for an opt-in
(``MLFLOW_ALLOW_FILE_STORE``), which nnlib gives for a folder URI while the
run is tracked. MLflow's own INFO lines (creating tables and experiments)
are kept off the console while the run is tracked.

Tracking is a guest of the run:

- nnlib talks to the store through its own ``MlflowClient``; the process's
  tracking URI, experiment, active run, logging levels and environment are
  as they were before :func:`nnlib.train` once it returns;
- called inside the caller's ``with mlflow.start_run():``, the run is logged
  as a child of the caller's run (tag ``mlflow.parentRunId``, in its
  experiment) when nnlib tracks to the caller's store (``mlflow.tracking_uri``
  left out, or the same URI), and beside it otherwise;
- a store that cannot be reached when the run starts is refused in one line
  before training (a TCP probe finds a tracking server nobody listens on
  within :data:`PROBE_SECONDS`): the run has cost nothing yet and the user
  asked for its record;
- once training runs, every MLflow call is made on a daemon thread in
  order, so a slow store never holds a round up; the first call that fails
  (a run deleted from the UI, a server gone) prints one warning line and
  turns tracking off for the rest of the run, whose own files are complete;
  at the end the run waits at most :data:`FINISH_SECONDS` for the store.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from nnlib.config import Config, flatten
from nnlib.errors import ConfigError, first_line

ROUND_METRICS = ("test_accuracy", "test_loss", "train_loss", "seconds", "overhead_seconds")
REGRESSION_METRICS = ("test_r2", "test_rmse", "test_mae", "val_r2", "val_rmse", "val_mae")  # model.task=regression
ARTIFACTS = ("config.yaml", "rounds.csv", "mapper_times.csv", "model.npz", "summary.json")
PROBE_SECONDS = 5.0  # a tracking server's port must accept a connection within this
START_SECONDS = 60.0  # creating the run (a new sqlite store creates its tables first)
FINISH_SECONDS = 60.0  # the summary, the artifacts and the run's end, after the last round
FAILED_SECONDS = 10.0  # the same for a run that failed or was interrupted


class NoTracking:
    """``tracking: none``: every call does nothing."""

    def start(self, config: Config, run_name: str) -> None:
        pass

    def log_round(self, row: dict) -> None:
        pass

    def finish(self, summary: dict | None, run_dir: Path | None) -> None:
        pass


def probe(uri: str, seconds: float = PROBE_SECONDS) -> str | None:
    """Why the tracking server of an ``http(s)://`` ``uri`` cannot be reached (a TCP connect within
    ``seconds``), or None when it answers or ``uri`` names no server."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=seconds):
            return None
    except TimeoutError:
        return f"no answer from {parts.hostname}:{port} within {seconds:g} s"
    except OSError as exc:
        return f"{parts.hostname}:{port}: {exc.strerror or first_line(exc)}"


class _Calls:
    """MLflow calls run in order on one daemon thread (a stuck call never keeps the process from exiting).

    The first call that raises stops the rest: ``failed`` holds what it was doing and why.
    """

    def __init__(self, on_failure: Callable[[str], None]):
        self.failed: str | None = None
        self._on_failure = on_failure
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, name="nnlib-tracking", daemon=True).start()

    def _work(self) -> None:
        while True:
            what, call, done = self._queue.get()
            if call is not None and self.failed is None:
                try:
                    call()
                except Exception as exc:  # noqa: BLE001  - any failure of the store turns tracking off
                    self.failed = f"{what} failed ({first_line(exc)[:300]})"
                    self._on_failure(self.failed)
            if done is not None:
                done.set()
            if call is None and done is None:
                return

    def submit(self, what: str, call: Callable[[], None]) -> None:
        if self.failed is None:
            self._queue.put((what, call, None))

    def wait(self, seconds: float) -> bool:
        """Whether every call submitted so far is done within ``seconds``."""
        done = threading.Event()
        self._queue.put(("", lambda: None, done))
        return done.wait(seconds)

    def close(self) -> None:
        self._queue.put(("", None, None))


class MlflowTracking:
    """Params at the start, metrics every round, summary and artifacts at the end; never ends the run."""

    def __init__(self, tracking_uri: str | None, experiment: str, warn: Callable[[str], None] = print):
        require_mlflow()
        self.uri, self.experiment, self.warn = tracking_uri, experiment, warn
        self.run_id: str | None = None
        self.calls: _Calls | None = None
        self._restore: list[Callable[[], object]] = []  # undoes what start changed in the process, in reverse

    def _guest_settings(self, uri: str) -> None:
        """MLflow's INFO lines off and the folder store's opt-in, for the tracked run only."""
        import logging

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables...", "Creating experiment"
            logger = logging.getLogger(name)
            self._restore.append(partial(logger.setLevel, logger.level))
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        if (uri.startswith("file:") or "://" not in uri) and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            self._restore.append(lambda: os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None))

    def _give_back(self) -> None:
        while self._restore:
            self._restore.pop()()

    def start(self, config: Config, run_name: str) -> None:
        """Create the MLflow run (a child of the caller's active run in the same store); refuse in one line,
        before training, a store that cannot be reached."""
        import mlflow
        from mlflow.tracking import MlflowClient

        parent = mlflow.active_run()  # read only: the caller's run stays theirs
        caller_uri = mlflow.get_tracking_uri()
        uri = self.uri
        if uri is None:
            uri = caller_uri if parent is not None else Path("mlruns").resolve().as_uri()
        nested = parent is not None and uri == caller_uri
        where = f"mlflow.tracking_uri={uri}"
        if (why := probe(uri)) is not None:
            raise ConfigError(
                f"{where}: the tracking server cannot be reached ({why}); start it, fix "
                "mlflow.tracking_uri, or set tracking=none"
            )
        self._guest_settings(uri)
        params = {k: str(v) for k, v in flatten(config.shareable_dict()).items()}
        created: dict = {}

        def create() -> None:
            client = MlflowClient(tracking_uri=uri)
            if nested and parent is not None:
                experiment_id = parent.info.experiment_id
                tags = {"mlflow.parentRunId": parent.info.run_id}
            else:
                found = client.get_experiment_by_name(self.experiment)
                experiment_id = found.experiment_id if found else client.create_experiment(self.experiment)
                tags = {}
            run = client.create_run(experiment_id, run_name=run_name, tags=tags)
            created.update(client=client, run_id=run.info.run_id)
            self._params(client, run.info.run_id, params)

        failures: list[str] = []
        self.calls = _Calls(failures.append)
        self.calls.submit("creating the run", create)
        if not self.calls.wait(START_SECONDS) or failures:
            self.calls.close()
            self._give_back()
            why = failures[0] if failures else f"no answer within {START_SECONDS:g} s"
            raise ConfigError(
                f"{where}: the tracking store cannot be used ({why}); fix mlflow.tracking_uri or set tracking=none"
            )
        self.client, self.run_id = created["client"], created["run_id"]
        self.calls._on_failure = self._turned_off

    @staticmethod
    def _params(client, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            client.log_batch(run_id, params=items[i : i + 100])

    def _turned_off(self, why: str) -> None:
        self.warn(
            f"tracking: MLflow run {self.run_id}: {why}; tracking is off for the rest of this run, "
            "which goes on (its own files are complete)"
        )

    def log_round(self, row: dict) -> None:
        if self.run_id is None or self.calls is None:
            return
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(row["round"])
        metrics = [Metric(k, float(row[k]), stamp, step) for k in (*ROUND_METRICS, *REGRESSION_METRICS) if k in row]
        self.calls.submit(f"logging round {step}", lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def finish(self, summary: dict | None, run_dir: Path | None) -> None:
        """End the run: FINISHED with the summary and artifacts, or FAILED when ``summary`` is None.

        Waits for the store at most :data:`FINISH_SECONDS` (:data:`FAILED_SECONDS` for a failed run), then
        gives the process's settings back.
        """
        if self.run_id is None or self.calls is None:
            return
        from mlflow.entities import Metric

        run_id, client, calls = self.run_id, self.client, self.calls
        if summary is not None:
            stamp = int(time.time() * 1000)
            numbers = [
                Metric(f"final.{k}", float(v), stamp, 0)
                for k, v in summary.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            calls.submit("logging the summary", lambda: client.log_batch(run_id, metrics=numbers))
        if run_dir is not None:
            for name in ARTIFACTS:
                if (run_dir / name).exists():
                    path = str(run_dir / name)
                    calls.submit(f"uploading {name}", partial(client.log_artifact, run_id, path))
        status = "FINISHED" if summary is not None else "FAILED"
        calls.submit("ending the run", lambda: client.set_terminated(run_id, status))
        seconds = FINISH_SECONDS if summary is not None else FAILED_SECONDS
        if not calls.wait(seconds) and calls.failed is None:
            self.warn(
                f"tracking: MLflow run {run_id}: the store did not answer within {seconds:g} s; the MLflow "
                "run may lack the end of this run (its own files are complete)"
            )
        calls.close()
        self.run_id = None
        self._give_back()


def require_mlflow() -> None:
    """Refuse ``tracking: mlflow`` in one line, before anything starts, when MLflow is not installed."""
    from importlib.util import find_spec

    if find_spec("mlflow") is None:
        raise ConfigError(
            "tracking: mlflow needs the mlflow package, which is not installed; "
            'install it with pip install -e ".[tracking]" or set tracking: none'
        )


def make_tracking(config: Config, warn: Callable[[str], None] = print) -> NoTracking | MlflowTracking:
    """The run's tracking: ``warn`` receives the one line a failing store prints."""
    if config.tracking == "mlflow":
        return MlflowTracking(config.mlflow.tracking_uri, config.mlflow.experiment, warn)
    return NoTracking()
