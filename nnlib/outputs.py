"""The run directory: config.yaml, rounds.csv, mapper_times.csv, model.npz, summary.json.

Every file is written to a temporary name in the same directory and renamed
into place, so a reader (or a crash) never sees half a file. ``summary.json``
is written last: its presence marks a finished run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from nnlib.core.params import FILE_KEYS
from nnlib.errors import NnlibError, first_line
from nnlib.rounds.payload import STATS_FIELDS

ROUND_COLUMNS = ["round", "test_accuracy", "test_loss", "train_loss", "seconds",
                 "broadcast_seconds", "wait_seconds", "combine_seconds", "evaluate_seconds",
                 "max_mapper_seconds", "median_mapper_seconds", "overhead_seconds", "result_bytes", "lr",
                 "val_accuracy", "val_loss"]
# MapperStats' fields, who and where first; result_bytes is summed per round in rounds.csv instead
MAPPER_COLUMNS = ["round", "mapper", "host", "pid",
                  *(name for name in STATS_FIELDS if name not in ("mapper", "host", "pid", "result_bytes"))]


def default_run_dir() -> Path:
    """``runs/<timestamp>``, or ``runs/<timestamp>-2`` (and so on) when a run of the same second has it."""
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


class RunDir:
    """The output folder of one run.

    ``overwrite``: replace a run there (its outputs and checkpoints go on the
    first write); ``resume``: continue the run there, or start one if it
    holds none yet. Without either, a folder that holds a run is refused.
    """

    def __init__(self, path: str | Path, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NnlibError(f"--out: {self.path} exists and is not a directory")
        if resume:  # a folder that holds no run yet (no config.yaml) is started afresh there
            pass
        elif (self.path / "summary.json").exists() and not overwrite:
            raise NnlibError(f"--out: {self.path} already holds a finished run (summary.json); "
                             "choose another directory or pass --overwrite")
        elif (self.path / "config.yaml").exists() and not overwrite:
            done = checkpoint_rounds(self.path)
            kept = f"its checkpoint holds {done} finished round(s)" if done else "no round of it finished"
            raise NnlibError(f"--out: {self.path} holds an unfinished run ({kept}); continue it with "
                             f"--resume {self.path}, or start over with --overwrite")
        self.overwrite = overwrite
        self._ready = False
        self._created = False  # this run made the folder

    def _prepare(self) -> None:
        """Create the folder on the first write, so a run refused early leaves nothing behind."""
        if self._ready:
            return
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NnlibError(f"--out: cannot create {self.path} ({exc.strerror})") from None
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

    def write_config(self, config_dict: dict) -> None:
        atomic_write_bytes(self.file("config.yaml"), yaml.safe_dump(config_dict, sort_keys=False).encode())

    def write_tables(self, rounds: list[dict], mapper_rows: list[dict]) -> None:
        """Rewrite both CSV tables with every row so far (small: one row per round or mapper)."""
        atomic_write_bytes(self.file("rounds.csv"), csv_bytes(ROUND_COLUMNS, rounds))
        atomic_write_bytes(self.file("mapper_times.csv"), csv_bytes(MAPPER_COLUMNS, mapper_rows))

    def write_model(self, named: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, **named)
        atomic_write_bytes(self.file("model.npz"), buf.getvalue())

    def write_checkpoint(self, rounds_done: int, params: np.ndarray, opt_state: np.ndarray | None,
                         skipped: list[dict] = (), keep: int = 2, server_state: np.ndarray | None = None,
                         fingerprint: tuple[tuple[str, str], ...] = ()) -> Path:
        """Save the state after ``rounds_done`` rounds to ``checkpoints/``; keep the newest ``keep`` files.

        ``fingerprint`` is the data's (``Dataset.fingerprint``: each input's
        key and the digest of its rows), which ``--resume`` compares.
        """
        folder = self.file("checkpoints")
        folder.mkdir(exist_ok=True)
        arrays = {"rounds_done": np.int64(rounds_done), "params": params,
                  "skipped": np.array([[s["round"], s["mapper"]] for s in skipped], np.int64).reshape(-1, 2),
                  "data_fingerprint": np.array([list(pair) for pair in fingerprint], np.str_).reshape(-1, 2)}
        if opt_state is not None:
            arrays["opt_state"] = opt_state
        if server_state is not None:
            arrays["server_state"] = server_state
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = folder / f"round-{rounds_done:05d}.npz"
        atomic_write_bytes(path, buf.getvalue())
        for old in sorted(folder.glob("round-*.npz"))[:-keep]:
            old.unlink()
        return path

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
                fingerprint = (tuple(tuple(pair) for pair in f["data_fingerprint"].tolist())
                               if "data_fingerprint" in f.files else None)
        except Exception as exc:  # noqa: BLE001  - any damage reads as "corrupted"
            raise NnlibError(f"--resume: checkpoint {path} is corrupted ({first_line(exc)}); "
                             "delete it to resume from the one before") from None
        if params.dtype != np.float32 or params.ndim != 1:
            raise NnlibError(f"--resume: checkpoint {path} is corrupted (params must be a float32 vector, "
                             f"got {params.dtype} {params.shape})")
        return Checkpoint(rounds_done, params, opt_state, skipped, path, server_state, fingerprint)

    def read_tables(self, rounds_done: int) -> tuple[list[dict], list[dict]]:
        """Rows of rounds.csv and mapper_times.csv for rounds 1 .. ``rounds_done`` (to resume).

        Tables written when rounds were numbered from 0 are renumbered from 1 as they are read.
        """
        rounds = read_csv_rows(self.path / "rounds.csv")
        mappers = read_csv_rows(self.path / "mapper_times.csv")
        if any(r["round"] == 0 for r in rounds + mappers):
            rounds = [{**r, "round": r["round"] + 1} for r in rounds]
            mappers = [{**r, "round": r["round"] + 1} for r in mappers]
        return ([r for r in rounds if r["round"] <= rounds_done],
                [r for r in mappers if r["round"] <= rounds_done])

    def write_summary(self, summary: dict) -> None:
        atomic_write_bytes(self.file("summary.json"), json_bytes(summary))


def checkpoint_rounds(run_dir: Path) -> int:
    """The rounds done in ``run_dir``'s newest checkpoint, from its name (``round-NNNNN.npz``); 0 without one."""
    names = sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("round-*.npz"))
    return int(names[-1][len("round-"):-len(".npz")]) if names else 0


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


def load_model(path: str | Path) -> dict[str, np.ndarray]:
    """A ``model.npz``'s weights, named, in flat order, read with pickle disabled (the header and the
    standardisation arrays, ``meta.header``, ``meta.mean`` and ``meta.std``, are left out:
    :mod:`nnlib.model.file` reads the whole file)."""
    with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # fh: closed even if np.load fails
        return {k: f[k] for k in f.files if k not in FILE_KEYS}
