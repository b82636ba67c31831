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
(``MLFLOW_ALLOW_FILE_STORE``), which nnlib gives for a folder URI. MLflow's
own INFO lines (creating tables and experiments) are kept off the console.
"""

from __future__ import annotations

from pathlib import Path

from nnlib.config import Config, flatten
from nnlib.errors import ConfigError

ROUND_METRICS = ("test_accuracy", "test_loss", "train_loss", "seconds", "overhead_seconds")
ARTIFACTS = ("config.yaml", "rounds.csv", "mapper_times.csv", "model.npz", "summary.json")


class NoTracking:
    """``tracking: none``: every call does nothing."""

    def start(self, config: Config, run_name: str) -> None:
        pass

    def log_round(self, row: dict) -> None:
        pass

    def finish(self, summary: dict | None, run_dir: Path | None) -> None:
        pass


class MlflowTracking:
    """Params at the start, metrics every round, summary and artifacts at the end."""

    def __init__(self, tracking_uri: str | None, experiment: str):
        import os

        require_mlflow()
        import mlflow

        if tracking_uri is None:
            tracking_uri = Path("mlruns").resolve().as_uri()
        if tracking_uri.startswith("file:") or "://" not in tracking_uri:  # a folder store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import logging

        for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables...", "Creating experiment"
            logging.getLogger(name).setLevel(logging.WARNING)
        self.mlflow = mlflow
        self.uri, self.experiment = tracking_uri, experiment
        self.run = None

    def start(self, config: Config, run_name: str) -> None:
        self.mlflow.set_tracking_uri(self.uri)
        self.mlflow.set_experiment(self.experiment)
        self.run = self.mlflow.start_run(run_name=run_name)
        self.mlflow.log_params({k: str(v) for k, v in flatten(config.shareable_dict()).items()})

    def log_round(self, row: dict) -> None:
        self.mlflow.log_metrics({k: float(row[k]) for k in ROUND_METRICS}, step=int(row["round"]))

    def finish(self, summary: dict | None, run_dir: Path | None) -> None:
        """End the run: FINISHED with the summary and artifacts, or FAILED when ``summary`` is None."""
        if self.run is None:
            return
        if summary is not None:
            numbers = {f"final.{k}": float(v) for k, v in summary.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.mlflow.log_metrics(numbers)
        if run_dir is not None:
            for name in ARTIFACTS:
                if (run_dir / name).exists():
                    self.mlflow.log_artifact(str(run_dir / name))
        self.mlflow.end_run(status="FINISHED" if summary is not None else "FAILED")
        self.run = None


def require_mlflow() -> None:
    """Refuse ``tracking: mlflow`` in one line, before anything starts, when MLflow is not installed."""
    from importlib.util import find_spec

    if find_spec("mlflow") is None:
        raise ConfigError("tracking: mlflow needs the mlflow package, which is not installed; "
                          'install it with pip install -e ".[tracking]" or set tracking: none')


def make_tracking(config: Config) -> NoTracking | MlflowTracking:
    if config.tracking == "mlflow":
        return MlflowTracking(config.mlflow.tracking_uri, config.mlflow.experiment)
    return NoTracking()
