"""The Python API: train as ``nnlib run`` does, from a notebook or a script, and get the run back.

    import nnlib
    run = nnlib.train("conf/mappers_4.yaml", overrides={"train.rounds": 3}, out="runs/m4")
    run.summary["final_test_accuracy"]   # what summary.json holds
    run.rounds[-1]                       # the rows of rounds.csv, as dicts (run.frames() as pandas)
    run.model.predict(x_raw)             # the trained model (nnlib.model.Model), raw features in

A regressor (``overrides={"model.task": "regression", "data.label_column": "price"}``, engine local):
``run.summary["final_test_r2"]``, ``"final_test_rmse"``, ``"final_test_mae"`` (the targets' units) and
``"final_test_loss"`` (standardised units); ``run.model.predict(x_raw)`` is float64 in the targets' units.

``nnlib run`` is a thin wrapper over :func:`train`: the same config
resolution, run directory, tracking and driver loop. Errors are
:class:`nnlib.errors.NnlibError` subclasses with a one-line message (the CLI
prints them and exits 2). While :func:`train` runs (in the main thread),
SIGTERM asks for a clean stop: the round in progress finishes, its
checkpoint is written and :class:`Stopped` is raised (the CLI prints its one
line and exits 143).
"""

from __future__ import annotations

import json
import shlex
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnlib.config import Config, build_config, diff_keys, flatten, load_config, read_layered, read_yaml
from nnlib.driver import RunResult, with_absolute_paths
from nnlib.driver import warn as _warn
from nnlib.engines import make_engine
from nnlib.engines.base import Engine
from nnlib.engines.mpi.launcher import inside_launcher, launch
from nnlib.errors import ConfigError, EngineError, NnlibError
from nnlib.experiments.search import run_with_baseline
from nnlib.experiments.tracking import NoTracking, make_tracking, require_mlflow
from nnlib.model.model import Model
from nnlib.outputs import (  # noqa: F401
    RESUME_MAY_CHANGE,
    RunDir,
    checkpoint_rounds,
    default_run_dir,
    may_change_on_resume,
    read_csv_rows,
)
from nnlib.util.stop import STOP_STATUS, StopRequested, handling_stop, signal_name


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run; the message says the round reached, what is kept and how to resume.

    A ``KeyboardInterrupt``, so code that catches that still does; ``path``
    is the run directory (None when nothing was written).
    """

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


class Stopped(Interrupted):
    """A signal (SIGTERM) stopped a run cleanly: the message says after which round, what is kept and how to
    resume. ``status`` is the exit status ``nnlib run`` gives it (143, 128 + SIGTERM)."""

    status = STOP_STATUS


def _kept(run_dir: Path, done: int) -> str:
    rounds_kept = "round 1 is" if done == 1 else f"rounds 1-{done} are"
    return (
        f"{rounds_kept} kept (checkpoint {run_dir / 'checkpoints' / f'round-{done:05d}.npz'})"
        if done
        else "no round had finished"
    )


def interrupted(run_dir: Path | None, rounds: int, engine: str) -> Interrupted:
    """The :class:`Interrupted` of a run stopped in ``run_dir`` (of ``rounds`` rounds) by Ctrl-C (every
    engine resumes; ``engine`` is kept for the callers' sake)."""
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return Interrupted("interrupted before the first round started; nothing was written", None)
    done = checkpoint_rounds(run_dir)
    when = (
        f"in round {done + 1}/{rounds}"
        if done < rounds
        else f"after the last round ({rounds}/{rounds}), before the run's outputs were written"
    )
    return Interrupted(
        f"interrupted {when}; {_kept(run_dir, done)}; resume with: nnlib run --resume {shlex.quote(str(run_dir))}",
        run_dir,
    )


def stopped(run_dir: Path | None, rounds: int, stop: StopRequested) -> Stopped:
    """The :class:`Stopped` of a run in ``run_dir`` (of ``rounds`` rounds) that ``stop`` ended: after a round,
    or in one abandoned past ``train.stop_grace_seconds``."""
    name = signal_name(stop.signum)
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return Stopped(f"stopped by {name} before the first round started; nothing was written", None)
    done = checkpoint_rounds(run_dir)
    where = shlex.quote(str(run_dir))
    abandoned = (
        f" (round {done + 1} was abandoned: train.stop_grace_seconds={stop.grace:g} passed)" if stop.abandoned else ""
    )
    when = f"after round {done}/{rounds}" if done else f"in round 1/{rounds}"
    return Stopped(
        f"stopped by {name} {when}{abandoned}; {_kept(run_dir, done)}; resume with: nnlib run --resume {where}", run_dir
    )


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
    def load(cls, path: str | Path) -> Run:
        """A finished run directory read back (summary.json, the two tables, model.npz)."""
        path = Path(path)
        if not (path / "summary.json").is_file():
            raise ConfigError(f"{path}: not a finished run (no summary.json)")
        summary = json.loads((path / "summary.json").read_text())
        return cls(
            summary,
            read_csv_rows(path / "rounds.csv"),
            read_csv_rows(path / "mapper_times.csv"),
            Model.load(path),
            path,
            None,
            summary.get("skipped_mappers", []),
        )

    @classmethod
    def from_result(cls, result: RunResult, run_dir: RunDir | None, config: Config) -> Run:
        assert result.model is not None  # a finished run has its model
        return cls(
            result.summary,
            result.rounds,
            result.mapper_rows,
            Model(result.model),
            None if run_dir is None else run_dir.path,
            config,
            result.skipped,
        )


def resolve(
    conf: str | Path | Config | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    engine: str | None = None,
    overrides_source: str = "overrides",
) -> Config:
    """The config of a run: ``conf`` (a conf file, a :class:`Config`, or None for the defaults), then
    ``overrides`` (``{"train.rounds": 3}`` or ``["train.rounds=3"]``), then ``engine`` (a name). An error names
    a bad value's source: ``overrides_source`` (the API's ``overrides``; ``--set`` from the command line) or
    the conf file."""
    items = as_overrides(overrides) + ([f"engine={engine}"] if engine is not None else [])
    if isinstance(conf, Config):
        from nnlib.config import build_config

        return (
            build_config(conf.to_dict(), items, source="the given Config", overrides_source=overrides_source)
            if items
            else conf
        )
    return load_config(None if conf is None else str(conf), items, overrides_source)


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


def resume_config(
    out: str | Path,
    conf: str | Path | Config | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    engine: str | None = None,
    overrides_source: str = "overrides",
) -> Config:
    """The config of a resume into ``out``: ``conf`` (default: the run's ``out/config.yaml``), then
    ``overrides``, then ``engine``.

    ``out`` holding no run yet (no config.yaml): the config of a fresh start
    there. Otherwise a config that differs from the saved one in anything but
    :data:`RESUME_MAY_CHANGE` (``train.rounds``, the engine and its settings,
    ``train.stop_grace_seconds``) raises :class:`ConfigError` naming each key
    with the run's value and the given one.
    """
    saved_file = Path(out) / "config.yaml"
    if not saved_file.is_file():
        return resolve(conf, overrides, engine, overrides_source)
    saved = build_config(read_yaml(saved_file), source=str(saved_file))
    items = as_overrides(overrides) + ([f"engine={engine}"] if engine is not None else [])
    if isinstance(conf, Config):
        base, source = conf.to_dict(), "the given Config"
    elif conf is not None:
        base, source = read_layered(conf), str(conf)
    else:
        base, source = read_yaml(saved_file), str(saved_file)
    requested = with_absolute_paths(build_config(base, items, source=source, overrides_source=overrides_source))
    if requested.engine == "mpi":  # one mapper per rank, as many as the run had (the ranks check it)
        requested = requested.model_copy(update={"mappers": saved.mappers})
    differ = [k for k in diff_keys(saved, requested) if not may_change_on_resume(k)]
    if differ:
        had, given = flatten(saved.to_dict()), flatten(requested.to_dict())
        changes = ", ".join(f"{k} (the run has {had.get(k)!r}, given {given.get(k)!r})" for k in differ)
        raise ConfigError(
            f"--resume {out}: the config differs from the run's in {changes}; "
            "only train.rounds may change (and the engine: engine, spark.*, mpi.*, mrjob.*, "
            "train.stop_grace_seconds)"
        )
    return requested


def train(
    conf: str | Path | Config | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    out: str | Path | None = None,
    engine: str | Engine | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    write: bool = True,
    log: Callable[[str], None] | None = None,
    warn: Callable[[str], None] = _warn,
) -> Run:
    """Train as ``nnlib run`` does and return the :class:`Run`.

    ``conf``: a conf file, a :class:`nnlib.config.Config` or None (the
    built-in defaults); ``overrides``: dotted keys, ``{"mappers": 4}`` or
    ``["mappers=4"]``; ``out``: the run directory (default
    ``runs/<timestamp>``; with ``write=False`` nothing is written and
    there is no checkpoint); ``engine``: an engine name (``"local"``,
    ``"spark"``, ``"mrjob"``, ``"mpi"``: the same as ``overrides={"engine":
    ...}``) or an engine object to run on; ``resume``: continue the run in
    ``out`` from its newest checkpoint, or start it there if ``out`` holds
    no run yet (so one call serves the first start and every restart; the
    config defaults to the saved one, and may differ from it only in
    ``train.rounds``, the engine and its settings: :func:`resume_config`);
    ``overwrite``: replace a finished run in ``out``. ``log`` receives the
    progress lines (default: none) and ``warn`` the warnings (default: stderr).

    With ``engine="mpi"`` outside ``mpiexec`` the ranks are launched
    (``mpi.launcher``) and the run is read back from ``out``.

    In the main thread, SIGTERM (and, in an MPI rank, SIGUSR1, which
    ``mpiexec`` passes on to its ranks) asks for a clean stop: the round in
    progress finishes (or, still running ``train.stop_grace_seconds`` later,
    is abandoned), its checkpoint is written, and :class:`Stopped` is raised
    (a ``KeyboardInterrupt``; ``resume=True`` with the same arguments then
    continues to an uninterrupted run's weights). A run whose last round
    finishes returns as usual.

    Raises :class:`nnlib.errors.ConfigError` or ``DataError`` for bad input
    (one line, nothing written), ``DivergenceError`` when training diverges,
    ``EngineError`` when an engine fails; :class:`Stopped` or
    :class:`Interrupted` (Ctrl-C) when a signal ends the run.
    """
    engine_obj = engine if engine is not None and not isinstance(engine, str) else None
    engine_name = engine if isinstance(engine, str) else None
    if resume and write and out is None:
        raise ConfigError("resume=True continues the run in out: name the run directory (out=...)")
    config = (
        resume_config(out, conf, overrides, engine_name)
        if resume and write and out is not None
        else resolve(conf, overrides, engine_name)
    )
    log = log or _quiet
    if config.engine == "mpi" and engine_obj is None and not inside_launcher():
        return _launch_mpi(conf, overrides, config, out, overwrite, write, resume)
    if config.tracking == "mlflow":
        require_mlflow()
    # mpiexec ends its ranks on SIGTERM at once and passes SIGUSR1 on: a rank stops cleanly on either
    signals = (signal.SIGTERM, signal.SIGUSR1) if inside_launcher() else (signal.SIGTERM,)
    with handling_stop(signals, config.train.stop_grace_seconds):
        try:
            return _train(config, engine_obj, out, resume, overwrite, write, log, warn)
        except StopRequested as stop:
            # the driver loop stopped the engine (its Spark session, its ranks) on the way out
            raise stopped(Path(out) if write and out is not None else None, config.train.rounds, stop) from None


def _train(
    config: Config,
    engine_obj: Engine | None,
    out,
    resume: bool,
    overwrite: bool,
    write: bool,
    log: Callable[[str], None],
    warn: Callable[[str], None],
) -> Run:
    """:func:`train` once the config is resolved and the stop signals are handled."""
    engine_obj = engine_obj or make_engine(config, warn)
    speak = engine_obj.is_main
    if config.engine == "mpi":
        from nnlib.engines.mpi.engine import fit_to_ranks

        if resume and write and engine_obj.size != config.mappers and (Path(out) / "config.yaml").is_file():
            raise ConfigError(
                f"--resume {out}: the run has mappers={config.mappers}, and engine=mpi runs one "
                f"mapper per rank: start {config.mappers} ranks, got {engine_obj.size}"
            )
        config = fit_to_ranks(config, engine_obj.size, warn if speak else _quiet)
    run_dir = open_run_dir(engine_obj, out, overwrite, resume) if write else None
    resume_from: bool | RunDir = resume
    if resume and write and not engine_obj.is_main:
        # every rank reads the checkpoint; rank 0 alone writes
        resume_from = RunDir(Path(out), resume=True, reader=True)
    log = _after(
        f"nnlib: engine={config.engine} mappers={config.mappers} combine={config.combine} "
        f"data={config.data.source} -> {run_dir.path if run_dir else '-'}",
        log,
    )
    try:
        tracking = make_tracking(config, warn) if speak else NoTracking()
        tracking.start(config, run_dir.path.name if run_dir else "run")
        result = None
        try:
            result = run_with_baseline(
                config,
                run_dir,
                engine=engine_obj,
                log=log if speak else _quiet,
                warn=warn if speak else _quiet,
                resume=resume_from,
                on_round=tracking.log_round,
            )
        except StopRequested:
            raise  # train() says it, naming out
        except KeyboardInterrupt:
            # the driver loop stopped the engine (its Spark session, its ranks) on the way out
            raise interrupted(run_dir.path if run_dir else None, config.train.rounds, config.engine) from None
        finally:
            tracking.finish(result.summary if result else None, run_dir.path if run_dir else None)
    finally:
        if run_dir is not None:
            run_dir.release()  # the folder's lock; the process's end would drop it too
    return Run.from_result(result, run_dir, config)


def open_run_dir(engine: Engine, out: str | Path | None, overwrite: bool, resume: bool) -> RunDir | None:
    """The run directory, opened and claimed (held against other runs) by the main process alone; every process
    learns whether that worked."""
    run_dir, error = None, None
    if engine.is_main:
        try:
            path, created = (Path(out), False) if out else (default_run_dir(), True)
            run_dir = RunDir(path, overwrite=overwrite, resume=resume, created=created).claim()
        except NnlibError as exc:
            error = exc
    if not engine.all_ok(error is None):
        raise error or EngineError("the main process refused the run directory")
    return run_dir


def _launch_mpi(conf, overrides, config: Config, out, overwrite: bool, write: bool, resume: bool = False) -> Run:
    """``engine=mpi`` from a process outside mpiexec: start the ranks on ``nnlib run``, read the run back."""
    if not write:
        raise ConfigError(
            "engine=mpi runs in other processes and returns its run through the run directory; "
            "write=False cannot be used with it"
        )
    out = Path(out) if out else default_run_dir()
    # every key that differs from the defaults, so a Config object crosses to the ranks as --set items
    values = flatten(config.to_dict())
    argv = []
    for key in diff_keys(Config(), config):
        argv += ["--set", f"{key}={json.dumps(values[key])}"]
    argv += ["--set", "engine=mpi", "--resume" if resume else "--out", str(out), "--quiet"]
    argv += ["--overwrite"] * overwrite
    status = launch_ranks(config, out, argv)
    if status != 0:
        raise EngineError(f"engine=mpi: {config.mpi.launcher[0]} exited with status {status}")
    return Run.load(out)


def launch_ranks(config: Config, out: Path, nnlib_args: list[str]) -> int:
    """``engine=mpi`` started here: ``mpi.launcher`` runs ``nnlib run NNLIB_ARGS`` on ``mappers`` ranks that
    write ``out``; mpiexec's exit status.

    SIGTERM is passed on to the ranks, which stop cleanly after the same
    round: :class:`Stopped` is raised then (and 0 returned if the run had
    finished anyway); Ctrl-C raises :class:`Interrupted`.
    """
    try:
        return launch(
            config.mpi.launcher, config.mappers, config.mpi.args, nnlib_args, stop_grace=config.train.stop_grace_seconds
        )
    except StopRequested as stop:
        if (out / "summary.json").is_file():  # the signal came in the last round, which finished the run
            return 0
        raise stopped(out, config.train.rounds, stop) from None
    except KeyboardInterrupt:
        raise interrupted(out, config.train.rounds, "mpi") from None
