"""The run directory: config.yaml, rounds.csv, mapper_times.csv, model.npz, summary.json.

Every file is written to a temporary name in the same directory and renamed
into place, so a reader (or a crash) never sees half a file. ``summary.json``
is written last: its presence marks a finished run.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from nnlib.core.params import FILE_KEYS
from nnlib.errors import NnlibError, OutputError, first_line
from nnlib.rounds.payload import STATS_FIELDS

if TYPE_CHECKING:
    from nnlib.util.lock import FolderLock

ROUND_COLUMNS = [
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "seconds",
    "broadcast_seconds",
    "wait_seconds",
    "combine_seconds",
    "evaluate_seconds",
    "max_mapper_seconds",
    "median_mapper_seconds",
    "overhead_seconds",
    "result_bytes",
    "lr",
    "val_accuracy",
    "val_loss",
]
# a regression run's rounds.csv: R², RMSE and MAE in the targets' own units, the loss in training (standardised) units
REGRESSION_ROUND_COLUMNS = [
    "round",
    "test_r2",
    "test_rmse",
    "test_mae",
    "test_loss",
    "train_loss",
    "seconds",
    *ROUND_COLUMNS[5:-2],
    "val_r2",
    "val_rmse",
    "val_mae",
    "val_loss",
]


def round_columns(rows: list[dict]) -> list[str]:
    """rounds.csv's columns for these rows: a classifier's, or a regressor's (rows holding ``test_r2``)."""
    return REGRESSION_ROUND_COLUMNS if rows and "test_r2" in rows[0] else ROUND_COLUMNS


# MapperStats' fields, who and where first; result_bytes is summed per round in rounds.csv instead
MAPPER_COLUMNS = [
    "round",
    "mapper",
    "host",
    "pid",
    *(name for name in STATS_FIELDS if name not in ("mapper", "host", "pid", "result_bytes", "weight_sum")),
]


def default_run_dir(prefix: str = "") -> Path:
    """``runs/<prefix><timestamp>``, or ``runs/<prefix><timestamp>-2`` (and so on) when a run of the same
    second has it.

    The folder is created here, with a plain ``mkdir`` that fails if it exists: of two runs started in the
    same second (in one process or two), each gets its own folder.
    """
    base = Path("runs") / time.strftime(f"{prefix}%Y%m%d-%H%M%S")
    make_dir(base.parent, "--out")
    path, n = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        except OSError as exc:
            raise write_error(path, exc, "--out") from None


# errno -> the cause a person can act on
WRITE_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large (past the file-size limit, ulimit -f, or the file system's)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "its folder does not exist",
    errno.ENOTDIR: "a part of its path is not a folder",
    errno.EISDIR: "it is a folder",
}


def write_cause(exc: BaseException) -> str:
    """Why a write failed, in words: the errno's cause (disk full, file too large, permission), else the
    error's first line (pyarrow's errors carry no errno)."""
    errno_ = getattr(exc, "errno", None)
    if errno_ in WRITE_CAUSES:
        return WRITE_CAUSES[errno_]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = first_line(exc)
    for code, cause in WRITE_CAUSES.items():  # pyarrow puts the C library's message in its text only
        if os.strerror(code) in text:
            return cause
    return text


def write_error(path: Path, exc: BaseException, what: str = "") -> OutputError:
    """The one-line :class:`OutputError` for a failed write of ``path``."""
    prefix = f"{what}: " if what else ""
    return OutputError(f"{prefix}cannot write {path}: {write_cause(exc)}")


def make_dir(path: Path, what: str = "") -> Path:
    """``mkdir -p path``; a failure is one :class:`OutputError` line naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc, what) from None
    return path


def atomic_write_bytes(path: Path, data: bytes, what: str = "") -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: ``path`` holds the old bytes or the new.

    A write that fails (disk full, file too large, permission) removes the
    temporary file and raises :class:`OutputError` naming ``path`` (after ``what``, the setting that chose it,
    e.g. ``--out``) and the cause.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc, what) from None
        raise


def strict_json(value):
    """``value`` with every non-finite float (NaN, inf) replaced by None, so that it is strict JSON."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def json_bytes(value) -> bytes:
    """``value`` as indented strict JSON (no NaN or Infinity: they are written as null), UTF-8, newline-ended."""
    return (json.dumps(strict_json(value), indent=2, allow_nan=False) + "\n").encode()


def csv_bytes(columns: list[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})  # "": a column the row predates
    return buf.getvalue().encode()


# what a resume may change: the rounds, and where and how the same arithmetic runs (every engine equals local)
RESUME_MAY_CHANGE = ("train.rounds", "train.stop_grace_seconds", "engine", "spark.", "mpi.", "mrjob.")


def may_change_on_resume(key: str) -> bool:
    """Whether a resume may give the dotted config ``key`` another value (:data:`RESUME_MAY_CHANGE`)."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)


def config_digest(config) -> str:
    """A digest of every config key a resume may not change: a checkpoint records its run's, and a resume
    refuses a checkpoint whose digest is not its config's (a checkpoint of another run)."""
    from nnlib.config import flatten

    kept = sorted((k, v) for k, v in flatten(config.to_dict()).items() if not may_change_on_resume(k))
    return hashlib.sha256(json.dumps(kept, default=str).encode()).hexdigest()[:16]


def make_folder(path: Path) -> list[Path]:
    """``mkdir -p path``, returning the folders it made, deepest first (``path`` and any missing parents), so
    that a run refused before its first write can take them back (:func:`remove_if_empty`). Raises
    FileExistsError when ``path`` exists, OSError as ``mkdir`` does."""
    missing = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    path.mkdir(parents=True)
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) while it is empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


class RunDir:
    """The output folder of one run.

    ``overwrite``: replace a run there (its outputs and checkpoints go on the
    first write); ``resume``: continue the run there, or start one if it
    holds none yet. Without either, a folder that holds a run is refused.

    The process that writes the run calls :meth:`claim` first: it holds the
    folder's lock (:mod:`nnlib.util.lock`) until :meth:`release` or its end,
    so a second run into the same folder is refused naming the first. A
    RunDir only read (an MPI rank other than 0 reading the checkpoint) claims
    nothing (``reader=True``: it is not refused for the lock its main process holds).
    """

    def __init__(
        self,
        path: str | Path,
        overwrite: bool = False,
        resume: bool = False,
        created: bool = False,
        reader: bool = False,
    ):
        self.path = Path(path)
        self.overwrite, self.resume = overwrite, resume
        self._ready = False
        self._created = created  # this run made the folder
        self._made: list[Path] = []  # the folders it made for it, deepest first (the folder and new parents)
        self._lock: FolderLock | None = None
        self._reader = reader  # only reads a folder the run's main process holds (an MPI rank other than 0)
        self._check()

    def _check(self) -> None:
        """Refuse a folder another run holds, or one that holds a run ``overwrite``/``resume`` do not allow."""
        from nnlib.util.lock import in_use

        if self.path.exists() and not self.path.is_dir():
            raise NnlibError(f"--out: {self.path} exists and is not a directory")
        if self._lock is None and not self._reader and (busy := in_use(self.path, "--out")) is not None:
            raise busy  # before what the folder holds: the run there is live, not one to resume or overwrite
        if self.resume:  # a folder that holds no run yet (no config.yaml) is started afresh there
            pass
        elif (self.path / "summary.json").exists() and not self.overwrite:
            raise NnlibError(
                f"--out: {self.path} already holds a finished run (summary.json); "
                "choose another directory or pass --overwrite"
            )
        elif (self.path / "config.yaml").exists() and not self.overwrite:
            done = checkpoint_rounds(self.path)
            kept = f"its checkpoint holds {done} finished round(s)" if done else "no round of it finished"
            raise NnlibError(
                f"--out: {self.path} holds an unfinished run ({kept}); continue it with "
                f"--resume {self.path}, or start over with --overwrite"
            )

    def claim(self) -> RunDir:
        """Create the folder if need be and hold its lock; a folder another live run holds is refused in one line
        naming that run's PID and host. The checks of the constructor are made again under the lock (a run
        that finished meanwhile is seen)."""
        from nnlib.util.lock import hold

        if not self.path.exists():
            try:
                self._made = make_folder(self.path)
                self._created = True
            except FileExistsError:
                pass  # another run made it this instant: the lock decides
            except OSError as exc:
                raise write_error(self.path, exc, "--out") from None
        self._lock = hold(self.path, "--out")
        try:
            self._check()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Give the folder's lock back; a folder this run made and left empty (a run refused before its first
        write) is removed."""
        if self._lock is None:
            return
        from nnlib.util.lock import LOCK_NAME

        lock, self._lock = self._lock, None
        try:
            if self._created and [p.name for p in self.path.iterdir()] == [LOCK_NAME]:
                (self.path / LOCK_NAME).unlink()
                remove_if_empty(self._made or [self.path])  # and the parents this run made for it
        except OSError:
            pass  # leaving an empty folder behind is harmless
        finally:
            lock.release()

    def _prepare(self) -> None:
        """Create the folder on the first write, so a run refused early leaves nothing behind."""
        if self._ready:
            return
        if not self.path.exists():
            try:
                self._made = make_folder(self.path)
                self._created = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise write_error(self.path, exc, "--out") from None
        if self.overwrite:
            for name in ("summary.json", "model.npz", "rounds.csv", "mapper_times.csv"):
                (self.path / name).unlink(missing_ok=True)
            for old in (self.path / "checkpoints").glob("round-*.npz"):
                old.unlink()
        self._ready = True

    def file(self, name: str) -> Path:
        self._prepare()
        return self.path / name

    def discard(self) -> None:
        """Remove what a run that failed before its first checkpoint wrote (its config, no round worth
        resuming), and the folder if the run made it: an input error found by a worker leaves nothing behind."""
        for name in ("config.yaml", "rounds.csv", "mapper_times.csv"):
            (self.path / name).unlink(missing_ok=True)
        for folder in (self.path / "checkpoints", self.path if self._created else None):
            if folder is not None and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if self._created and not self.path.exists():
            remove_if_empty(self._made[1:])  # the parents this run made for its folder

    def write_config(self, config_dict: dict) -> None:
        atomic_write_bytes(self.file("config.yaml"), yaml.safe_dump(config_dict, sort_keys=False).encode())

    def write_tables(self, rounds: list[dict], mapper_rows: list[dict]) -> None:
        """Rewrite both CSV tables with every row so far (small: one row per round or mapper)."""
        atomic_write_bytes(self.file("rounds.csv"), csv_bytes(round_columns(rounds), rounds))
        atomic_write_bytes(self.file("mapper_times.csv"), csv_bytes(MAPPER_COLUMNS, mapper_rows))

    def write_model(self, named: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **named)  # type: ignore[arg-type]  # numpy's stubs: **kwds might fill allow_pickle
        self._write_last(self.file("model.npz"), buf.getvalue())

    def _write_last(self, path: Path, data: bytes) -> None:
        """model.npz or summary.json, after the last round: a failure says that every round is kept."""
        try:
            atomic_write_bytes(path, data)
        except OutputError as exc:
            raise OutputError(
                f"{exc}; every round is checkpointed: make room, then finish the run with: "
                f"nnlib run --resume {self.path}"
            ) from None

    def write_checkpoint(
        self,
        rounds_done: int,
        params: np.ndarray,
        opt_state: np.ndarray | None,
        skipped: Sequence[dict] = (),
        keep: int = 2,
        server_state: np.ndarray | None = None,
        fingerprint: tuple[tuple[str, str], ...] = (),
        config: str | None = None,
    ) -> Path:
        """Save the state after ``rounds_done`` rounds to ``checkpoints/``; keep the newest ``keep`` files.

        ``fingerprint`` is the data's (``Dataset.fingerprint``: each input's
        key and the digest of its rows) and ``config`` the config's
        (:func:`config_digest`), which ``--resume`` compares.
        """
        folder = make_dir(self.file("checkpoints"), "--out")
        arrays = {
            "rounds_done": np.int64(rounds_done),
            "params": params,
            "skipped": np.array([[s["round"], s["mapper"]] for s in skipped], np.int64).reshape(-1, 2),
            "data_fingerprint": np.array([list(pair) for pair in fingerprint], np.str_).reshape(-1, 2),
        }
        if opt_state is not None:
            arrays["opt_state"] = opt_state
        if server_state is not None:
            arrays["server_state"] = server_state
        if config is not None:
            arrays["config_digest"] = np.array(config, np.str_)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stubs: **kwds might fill allow_pickle
        path = folder / f"round-{rounds_done:05d}.npz"
        atomic_write_bytes(path, buf.getvalue())
        for old in sorted(folder.glob("round-*.npz"))[:-keep]:
            old.unlink()
        return path

    def write_round(
        self,
        rounds: list[dict],
        mapper_rows: list[dict],
        skipped: list[dict],
        params: np.ndarray,
        opt_state: np.ndarray | None,
        server_state: np.ndarray | None = None,
        fingerprint: tuple[tuple[str, str], ...] = (),
        config: str | None = None,
    ) -> Path:
        """A finished round's tables (every row so far) and then its checkpoint.

        Tables first: a resume drops table rows past the newest checkpoint. A
        write that fails (disk full, file too large) leaves the last good
        checkpoint and tables as they were, no temporary file, and raises one
        :class:`OutputError` line saying where to resume from.
        """
        done = rounds[-1]["round"]
        try:
            self.write_tables(rounds, mapper_rows)
            return self.write_checkpoint(
                done, params, opt_state, skipped, server_state=server_state, fingerprint=fingerprint, config=config
            )
        except OutputError as exc:
            try:  # the tables as of the last checkpoint, so none holds a row for a round it cannot resume
                self.write_tables(
                    [r for r in rounds if r["round"] < done], [r for r in mapper_rows if r["round"] < done]
                )
            except OutputError:
                pass  # a resume drops those rows anyway
            kept = checkpoint_rounds(self.path)
            then = (
                f"round {done} is lost; the last good checkpoint is "
                f"{self.path / 'checkpoints' / f'round-{kept:05d}.npz'}"
                if kept
                else f"round {done} is lost; no round was checkpointed"
            )
            raise OutputError(f"{exc}; {then}; make room, then resume with: nnlib run --resume {self.path}") from None

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint, read with pickle disabled; a damaged one is refused by name."""
        files = sorted((self.path / "checkpoints").glob("round-*.npz"))
        if not files:
            return None
        path = files[-1]
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # fh: closed even if np.load fails
                rounds_done = int(f["rounds_done"])
                params = f["params"]
                opt_state = f["opt_state"] if "opt_state" in f.files else None
                server_state = f["server_state"] if "server_state" in f.files else None
                skipped = f["skipped"].reshape(-1, 2).tolist()
                fingerprint = (
                    tuple(tuple(pair) for pair in f["data_fingerprint"].tolist())
                    if "data_fingerprint" in f.files
                    else None
                )
                digest = str(f["config_digest"]) if "config_digest" in f.files else None
        except Exception as exc:  # noqa: BLE001  - any damage reads as "corrupted"
            raise NnlibError(
                f"--resume: checkpoint {path} is corrupted ({first_line(exc)}); delete it to resume from the one before"
            ) from None
        if params.dtype != np.float32 or params.ndim != 1:
            raise NnlibError(
                f"--resume: checkpoint {path} is corrupted (params must be a float32 vector, "
                f"got {params.dtype} {params.shape})"
            )
        return Checkpoint(rounds_done, params, opt_state, skipped, path, server_state, fingerprint, digest)

    def read_tables(self, rounds_done: int) -> tuple[list[dict], list[dict]]:
        """Rows of rounds.csv and mapper_times.csv for rounds 1 .. ``rounds_done`` (to resume).

        Tables written when rounds were numbered from 0 are renumbered from 1 as they are read.
        """
        rounds = read_csv_rows(self.path / "rounds.csv")
        mappers = read_csv_rows(self.path / "mapper_times.csv")
        if any(r["round"] == 0 for r in rounds + mappers):
            rounds = [{**r, "round": r["round"] + 1} for r in rounds]
            mappers = [{**r, "round": r["round"] + 1} for r in mappers]
        return ([r for r in rounds if r["round"] <= rounds_done], [r for r in mappers if r["round"] <= rounds_done])

    def write_summary(self, summary: dict) -> None:
        self._write_last(self.file("summary.json"), json_bytes(summary))


def checkpoint_rounds(run_dir: Path) -> int:
    """The rounds done in ``run_dir``'s newest checkpoint, from its name (``round-NNNNN.npz``); 0 without one."""
    names = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("round-*.npz"))
    return int(names[-1][len("round-") : -len(".npz")]) if names else 0


def _parse_cell(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def read_csv_rows(path: Path) -> list[dict]:
    """Rows of one of our CSV tables, numbers parsed back to int/float."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


@dataclass
class Checkpoint:
    """The state after ``rounds_done`` finished rounds."""

    rounds_done: int
    params: np.ndarray
    opt_state: np.ndarray | None  # the optimizer state (momentum buffer)
    skipped: list[list[int]]  # [round, mapper] pairs left out so far
    path: Path
    server_state: np.ndarray | None = None  # the server optimizer's momentum (server.momentum)
    fingerprint: tuple[tuple[str, str], ...] | None = None  # (input key, digest of its rows); None: not recorded
    config_digest: str | None = None  # config_digest() of the run that wrote it; None: not recorded


def load_model(path: str | Path) -> dict[str, np.ndarray]:
    """A ``model.npz``'s weights, named, in flat order, read with pickle disabled (the header and the
    standardisation arrays, ``meta.header``, ``meta.mean`` and ``meta.std``, are left out:
    :mod:`nnlib.model.file` reads the whole file)."""
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # fh: closed even if np.load fails
        return {k: f[k] for k in f.files if k not in FILE_KEYS}
