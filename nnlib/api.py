"""The Python API: train as ``nnlib run`` does, from a notebook or a script, and get the run back.

    import nnlib
    run = nnlib.train("conf/mappers_4.yaml", overrides={"train.rounds": 3}, out="runs/m4")
    run.summary["final_test_accuracy"]   # what summary.json holds
    run.rounds[-1]                       # the rows of rounds.csv, as dicts (run.frames() as pandas)
    run.model.predict(x_raw)             # the trained model (nnlib.model.Model), raw features in

``nnlib run`` is a thin wrapper over :func:`train`: the same config
resolution, run directory, tracking and driver loop. Errors are
:class:`nnlib.errors.NnlibError` subclasses with a one-line message (the CLI
prints them and exits 2).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from nnlib.config import Config, diff_keys, flatten, load_config
from nnlib.driver import RunResult, warn as _warn
from nnlib.engines import make_engine
from nnlib.engines.base import Engine
from nnlib.engines.mpi.launcher import inside_launcher, launch
from nnlib.errors import ConfigError, EngineError, NnlibError
from nnlib.experiments.search import run_with_baseline
from nnlib.experiments.tracking import NoTracking, make_tracking, require_mlflow
from nnlib.model.model import Model
from nnlib.outputs import RunDir, default_run_dir, read_csv_rows


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; the message says the round reached, what is kept and how to resume.

    A ``KeyboardInterrupt``, so code that catches that still does; ``path``
    is the run directory (None when nothing was written).
    """

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


def interrupted(run_dir: Path | None, rounds: int, engine: str) -> Interrupted:
    """The :class:`Interrupted` of a run stopped in ``run_dir`` (of ``rounds`` rounds) by Ctrl-C."""
    from nnlib.outputs import checkpoint_rounds

    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return Interrupted("interrupted before the first round started; nothing was written", None)
    done = checkpoint_rounds(run_dir)
    where = shlex.quote(str(run_dir))
    rounds_kept = "round 1 is" if done == 1 else f"rounds 1-{done} are"
    kept = (f"{rounds_kept} kept (checkpoint {run_dir / 'checkpoints' / f'round-{done:05d}.npz'})" if done
            else "no round had finished")
    if engine == "mpi":  # the MPI path cannot resume yet
        return Interrupted(f"interrupted in round {done + 1}/{rounds}; {kept}, but engine=mpi cannot resume: "
                           f"start again with --out {where} --overwrite", run_dir)
    return Interrupted(f"interrupted in round {done + 1}/{rounds}; {kept}; resume with: "
                       f"nnlib run --resume {where}", run_dir)


@dataclass
class Run:
    """A finished run: its summary, its tables and its model.

    ``summary`` is summary.json's dict; ``rounds`` and ``mappers`` are the
    rows of rounds.csv and mapper_times.csv as dicts (seconds, bytes and
    MB as their column names say); ``model`` the trained
    :class:`nnlib.model.Model`; ``path`` the run directory (None when
    nothing was written); ``config`` the config it ran with.
    """

    summary: dict
    rounds: list[dict]
    mappers: list[dict]
    model: Model
    path: Path | None = None
    config: Config | None = None
    skipped: list[dict] = field(default_factory=list)

    def frames(self) -> dict[str, Any]:
        """``{"rounds": DataFrame, "mappers": DataFrame}`` (pandas, one row per round / per mapper and round)."""
        import pandas as pd

        return {"rounds": pd.DataFrame(self.rounds), "mappers": pd.DataFrame(self.mappers)}

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        """A finished run directory read back (summary.json, the two tables, model.npz)."""
        path = Path(path)
        if not (path / "summary.json").is_file():
            raise ConfigError(f"{path}: not a finished run (no summary.json)")
        summary = json.loads((path / "summary.json").read_text())
        return cls(summary, read_csv_rows(path / "rounds.csv"), read_csv_rows(path / "mapper_times.csv"),
                   Model.load(path), path, None, summary.get("skipped_mappers", []))

    @classmethod
    def from_result(cls, result: RunResult, run_dir: RunDir | None, config: Config) -> "Run":
        return cls(result.summary, result.rounds, result.mapper_rows, Model(result.model),
                   None if run_dir is None else run_dir.path, config, result.skipped)


def resolve(conf: str | Path | Config | None = None,
            overrides: Mapping[str, Any] | Sequence[str] | None = None, engine: str | None = None) -> Config:
    """The config of a run: ``conf`` (a conf file, a :class:`Config`, or None for the defaults), then
    ``overrides`` (``{"train.rounds": 3}`` or ``["train.rounds=3"]``), then ``engine`` (a name)."""
    items = as_overrides(overrides) + ([f"engine={engine}"] if engine is not None else [])
    if isinstance(conf, Config):
        from nnlib.config import build_config

        return build_config(conf.to_dict(), items, source="the given Config") if items else conf
    return load_config(None if conf is None else str(conf), items)


def as_overrides(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``key=value`` strings from a dict (values written as YAML would read them back) or a list of strings."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a dict or a list of 'key=value' strings, got the string {overrides!r}")
    return list(overrides)


def _quiet(_message: str) -> None:
    pass


def _after(first: str, log: Callable[[str], None]) -> Callable[[str], None]:
    """``log``, saying ``first`` before its first message: the run's start line comes once the driver has
    read the data and speaks, so bad input prints its one error line alone."""
    pending = [first]

    def say(message: str) -> None:
        while pending:
            log(pending.pop())
        log(message)

    return say


def train(conf: str | Path | Config | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
          out: str | Path | None = None, engine: str | Engine | None = None, *, resume: bool = False,
          overwrite: bool = False, write: bool = True, log: Callable[[str], None] | None = None,
          warn: Callable[[str], None] = _warn) -> Run:
    """Train as ``nnlib run`` does and return the :class:`Run`.

    ``conf``: a conf file, a :class:`nnlib.config.Config` or None (the
    built-in defaults); ``overrides``: dotted keys, ``{"mappers": 4}`` or
    ``["mappers=4"]``; ``out``: the run directory (default
    ``runs/<timestamp>``; with ``write=False`` nothing is written and
    there is no checkpoint); ``engine``: an engine name (``"local"``,
    ``"spark"``, ``"mrjob"``, ``"mpi"``: the same as ``overrides={"engine":
    ...}``) or an engine object to run on; ``resume``: continue the run in
    ``out`` from its newest checkpoint; ``overwrite``: replace a finished
    run in ``out``. ``log`` receives the progress lines (default: none) and
    ``warn`` the warnings (default: stderr).

    With ``engine="mpi"`` outside ``mpiexec`` the ranks are launched
    (``mpi.launcher``) and the run is read back from ``out``.

    Raises :class:`nnlib.errors.ConfigError` or ``DataError`` for bad input
    (one line, nothing written), ``DivergenceError`` when training diverges,
    ``EngineError`` when an engine fails.
    """
    engine_obj = engine if engine is not None and not isinstance(engine, str) else None
    config = resolve(conf, overrides, engine if isinstance(engine, str) else None)
    log = log or _quiet
    if config.engine == "mpi" and engine_obj is None and not inside_launcher():
        return _launch_mpi(conf, overrides, config, out, overwrite, write)
    if config.tracking == "mlflow":
        require_mlflow()
    engine_obj = engine_obj or make_engine(config, warn)
    speak = engine_obj.is_main
    if config.engine == "mpi":
        from nnlib.engines.mpi.engine import fit_to_ranks

        config = fit_to_ranks(config, engine_obj.size, warn if speak else _quiet)
    run_dir = open_run_dir(engine_obj, out, overwrite, resume) if write else None
    log = _after(f"nnlib: engine={config.engine} mappers={config.mappers} combine={config.combine} "
                 f"data={config.data.source} -> {run_dir.path if run_dir else '-'}", log)
    tracking = make_tracking(config) if speak else NoTracking()
    tracking.start(config, run_dir.path.name if run_dir else "run")
    result = None
    try:
        result = run_with_baseline(config, run_dir, engine=engine_obj, log=log if speak else _quiet,
                                   warn=warn if speak else _quiet, resume=resume, on_round=tracking.log_round)
    except KeyboardInterrupt:
        # the driver loop stopped the engine (its Spark session, its ranks) on the way out
        raise interrupted(run_dir.path if run_dir else None, config.train.rounds, config.engine) from None
    finally:
        tracking.finish(result.summary if result else None, run_dir.path if run_dir else None)
    return Run.from_result(result, run_dir, config)


def open_run_dir(engine: Engine, out: str | Path | None, overwrite: bool, resume: bool) -> RunDir | None:
    """The run directory, opened by the main process alone; every process learns whether that worked."""
    run_dir, error = None, None
    if engine.is_main:
        try:
            run_dir = RunDir(Path(out) if out else default_run_dir(), overwrite=overwrite, resume=resume)
        except NnlibError as exc:
            error = exc
    if not engine.all_ok(error is None):
        raise error or EngineError("the main process refused the run directory")
    return run_dir


def _launch_mpi(conf, overrides, config: Config, out, overwrite: bool, write: bool) -> Run:
    """``engine=mpi`` from a process outside mpiexec: start the ranks on ``nnlib run``, read the run back."""
    if not write:
        raise ConfigError("engine=mpi runs in other processes and returns its run through the run directory; "
                          "write=False cannot be used with it")
    out = Path(out) if out else default_run_dir()
    # every key that differs from the defaults, so a Config object crosses to the ranks as --set items
    values = flatten(config.to_dict())
    argv = []
    for key in diff_keys(Config(), config):
        argv += ["--set", f"{key}={json.dumps(values[key])}"]
    argv += ["--set", "engine=mpi", "--out", str(out), "--quiet"] + ["--overwrite"] * overwrite
    try:
        status = launch(config.mpi.launcher, config.mappers, config.mpi.args, argv)
    except KeyboardInterrupt:
        raise interrupted(out, config.train.rounds, "mpi") from None
    if status != 0:
        raise EngineError(f"engine=mpi: {config.mpi.launcher[0]} exited with status {status}")
    return Run.load(out)
