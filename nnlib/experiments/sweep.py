"""Sweeps: one file names a base conf, the axes to vary and the repeats; every run is an ordinary run.

A sweep file (YAML)::

    base: ../default.yaml          # a conf file, relative to the sweep file (default: the built-in defaults)
    set: {train.rounds: 5}         # overrides every run shares (optional)
    grid:                          # every combination of these values ...
      mappers: [1, 2, 4, 8]
      combine: [average, sum]
    cases:                         # ... or (and) a list of cases, each a set of overrides
      - {engine: local}
    repeats: 3                     # each case with seeds seed, seed+1, ... (default 1)
    target_accuracy: 0.95          # optional: report the training seconds to reach it

Every case is checked (keys, types, ranges) before anything runs; a mistake
stops the sweep in one line naming the case. Each run is ``nnlib run`` in a
process of its own, writing its run directory under the sweep's folder;
``results.csv`` gets a row per run as it finishes (a failed run gets its
one-line error and the sweep goes on). Running the sweep again skips the
runs that finished and redoes the others. When the runs are done the
figures of :mod:`nnlib.experiments.plots` are drawn into ``plots/``; ``sweep.yaml`` and
``sweep.json`` keep the sweep file as run and the command that reruns it.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nnlib.config import load_config, read_yaml, suggest_key
from nnlib.errors import ConfigError
from nnlib.outputs import atomic_write_bytes, csv_bytes, read_csv_rows

SWEEP_KEYS = ("base", "set", "grid", "cases", "repeats", "target_accuracy")
RESULT_COLUMNS = ["run", "case", "seed", "status", "final_test_accuracy", "best_test_accuracy",
                  "seconds_to_target", "rounds_run", "wall_seconds", "train_seconds", "seconds_per_round",
                  "mean_mapper_seconds", "max_mapper_seconds",
                  "mean_overhead_seconds", "error"]


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a case's overrides with one seed."""

    name: str                 # its folder under the sweep's directory
    case: dict                # the varied keys and their values
    seed: int
    overrides: list[str]      # every --set the run gets


def _as_override(key: str, value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def _case_label(case: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in case.items()) or "base"


def plan_sweep(path: str | Path, extra: list[str] = ()) -> tuple[Path | None, list[Run], float | None]:
    """``(base conf, runs, target accuracy)`` of a sweep file; every run's config is checked here."""
    path = Path(path)
    tree = read_yaml(path)
    for key in tree:
        if key not in SWEEP_KEYS:
            hint = suggest_key(key, list(SWEEP_KEYS))
            raise ConfigError(f"sweep {path}: unknown key '{key}'{hint}; a sweep has {', '.join(SWEEP_KEYS)}")
    base = path.parent / tree["base"] if tree.get("base") else None
    shared = [_as_override(k, v) for k, v in (tree.get("set") or {}).items()] + list(extra)
    grid = tree.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError(f"sweep {path}: 'grid' maps keys to non-empty lists of values, got {grid!r}")
    cases = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else []
    listed = tree.get("cases") or []
    if not isinstance(listed, list) or any(not isinstance(c, dict) for c in listed):
        raise ConfigError(f"sweep {path}: 'cases' is a list of key: value mappings, got {listed!r}")
    cases += [dict(c) for c in listed]
    cases = cases or [{}]
    repeats = tree.get("repeats", 1)
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"sweep {path}: 'repeats' must be an integer >= 1, got {repeats!r}")
    target = tree.get("target_accuracy")
    if target is not None and not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ConfigError(f"sweep {path}: 'target_accuracy' must be in (0, 1], got {target!r}")
    runs = []
    for i, case in enumerate(cases):
        overrides = shared + [_as_override(k, v) for k, v in case.items()]
        try:
            config = load_config(base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep {path}: case {i} ({_case_label(case)}): {exc}") from None
        if config.model.regression:  # its rows, tables and plots are a classifier's accuracy
            raise ConfigError(f"sweep {path}: case {i} ({_case_label(case)}): model.task=regression runs with "
                              "nnlib run so far; a sweep compares classifiers' test accuracy")
        for r in range(repeats):
            seed = config.seed + r
            runs.append(Run(f"case{i:03d}-seed{seed}", case, seed, [*overrides, f"seed={seed}"]))
    return base, runs, target


def _result_row(run: Run, run_dir: Path, target: float | None, error: str | None) -> dict:
    row = {"run": run.name, "case": _case_label(run.case), "seed": run.seed, **run.case}
    if error is not None:
        return {**row, "status": "failed", "error": error}
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = read_csv_rows(run_dir / "rounds.csv")
    mappers = read_csv_rows(run_dir / "mapper_times.csv")
    elapsed, to_target = 0.0, None
    for r in rounds:
        elapsed += r["seconds"]
        if target is not None and to_target is None and r["test_accuracy"] >= target:
            to_target = elapsed
    return {**row, "status": "ok", "final_test_accuracy": summary["final_test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in rounds), "seconds_to_target": to_target,
            "rounds_run": len(rounds), "wall_seconds": summary["wall_seconds"],
            "train_seconds": elapsed, "seconds_per_round": elapsed / len(rounds),
            "mean_mapper_seconds": statistics.mean(m["train_seconds"] for m in mappers),
            "max_mapper_seconds": max(m["train_seconds"] for m in mappers),
            "mean_overhead_seconds": statistics.mean(r["overhead_seconds"] for r in rounds), "error": ""}


def _last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if "error" in ln.lower()]
    return (lines[-1] if lines else (stderr.strip().splitlines() or ["exited without a message"])[-1])[:500]


@dataclass
class SweepResult:
    results: Path       # results.csv
    rows: list[dict]    # one per run, in sweep order
    skipped: int        # runs found finished and not run again
    plots: list[Path]   # the figures drawn into plots/


def run_sweep(path: str | Path, out: str | Path | None = None, extra: list[str] = (),
              quiet: bool = False) -> SweepResult:
    """Run every run of the sweep that has not finished; write results.csv as runs finish."""
    base, runs, target = plan_sweep(path, extra)
    out = Path(out) if out else Path("runs") / f"sweep-{Path(path).stem}"
    out.mkdir(parents=True, exist_ok=True)
    _record_sweep(Path(path), out, extra)
    varied = list(dict.fromkeys(k for run in runs for k in run.case))
    columns = RESULT_COLUMNS[:3] + varied + RESULT_COLUMNS[3:]
    rows: list[dict] = []
    skipped = 0
    from tqdm import tqdm

    with tqdm(total=len(runs), unit="run", disable=quiet, file=sys.stderr, desc="sweep") as bar:
        for run in runs:
            run_dir = out / run.name
            error = None
            if (run_dir / "summary.json").exists():
                skipped += 1
            else:
                cmd = [sys.executable, "-m", "nnlib", "run", *([str(base)] if base else []), "--out", str(run_dir),
                       "--overwrite", "--quiet"]
                for item in run.overrides:
                    cmd += ["--set", item]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    error = _last_error_line(proc.stderr)
            rows.append(_result_row(run, run_dir, target, error))
            atomic_write_bytes(out / "results.csv", csv_bytes(columns, [{c: r.get(c, "") for c in columns}
                                                                        for r in rows]))
            bar.update(1)
    from nnlib.experiments.plots import plot_sweep

    return SweepResult(out / "results.csv", rows, skipped, plot_sweep(out))


def _record_sweep(path: Path, out: Path, extra: list[str]) -> None:
    """``sweep.yaml`` (the sweep file as run) and ``sweep.json`` (where it came from, how to rerun it)."""
    import json
    import shlex

    command = ["nnlib", "sweep", str(path.resolve()), "--out", str(out.resolve())]
    for item in extra:
        command += ["--set", item]
    atomic_write_bytes(out / "sweep.yaml", path.read_bytes())
    atomic_write_bytes(out / "sweep.json", (json.dumps(
        {"sweep_file": str(path.resolve()), "overrides": list(extra), "command": shlex.join(command)},
        indent=2) + "\n").encode())
