"""What the benchmark scripts share: the data sets, running nnlib as a user does, medians, tables."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# generated data sets (not in git), and the JSON every script writes (read by bench/README.md's tables);
# NNLIB_BENCH_DATA and NNLIB_BENCH_RESULTS move them (the smoke test keeps both in its temporary folder)
DATA = Path(os.environ.get("NNLIB_BENCH_DATA") or BENCH / ".data")
RESULTS = Path(os.environ.get("NNLIB_BENCH_RESULTS") or BENCH / "results")


def synthetic_npz(n_train: int = 60000, n_test: int = 10000, n_features: int = 784) -> Path:
    """A 10-class set made by scikit-learn's ``make_classification`` (64 informative features), cached as .npz."""
    path = DATA / f"synthetic-{n_train}x{n_features}.npz"
    if not path.exists():
        from sklearn.datasets import make_classification

        x, y = make_classification(
            n_samples=n_train + n_test,
            n_features=n_features,
            n_informative=64,
            n_redundant=0,
            n_classes=10,
            n_clusters_per_class=1,
            class_sep=1.0,
            flip_y=0.0,
            random_state=0,
        )
        DATA.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            x=x[:n_train].astype(np.float32),
            y=y[:n_train],
            x_test=x[n_train:].astype(np.float32),
            y_test=y[n_train:],
        )
        tmp.rename(path)
    return path


def bench_env(tmp: Path | None = None) -> dict:
    """The environment every engine needs here: this interpreter on the workers, MPI as root, loopback Spark."""
    env = dict(
        os.environ,
        PYSPARK_PYTHON=sys.executable,
        SPARK_LOCAL_IP="127.0.0.1",
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return env


def mpi_launcher(ranks: int) -> list[str]:
    """This interpreter's ``mpiexec`` for ``ranks`` ranks, more than the cores allowed (the machine has 2)."""
    return [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), "--oversubscribe"]


def scratch():
    """A temporary folder, inside the checkout's .tmp/ when there is one (CI keeps scratch files there)."""
    return tempfile.TemporaryDirectory(dir=ROOT / ".tmp" if (ROOT / ".tmp").is_dir() else None)


def nnlib_run(sets: list[str], launcher: list[str] = (), timeout: float = 1800) -> dict:
    """``nnlib run --set ...`` as a user runs it, in a scratch run directory.

    Returns its summary, rounds and mapper tables, and the process's wall time.
    """
    from nnlib.outputs import read_csv_rows

    with scratch() as tmp:
        out = Path(tmp) / "run"
        cmd = [*launcher, sys.executable, "-m", "nnlib", "run", "--out", str(out), "--quiet"]
        for item in sets:
            cmd += ["--set", item]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=bench_env(Path(tmp)), capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        return {
            "summary": json.loads((out / "summary.json").read_text()),
            "rounds": read_csv_rows(out / "rounds.csv"),
            "mappers": read_csv_rows(out / "mapper_times.csv"),
            "process_seconds": wall,
        }


def median(values) -> float:
    return float(statistics.median(values))


def write_result(name: str, result) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """``rows`` as a Markdown table of ``columns`` (floats to 3 significant digits)."""

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
