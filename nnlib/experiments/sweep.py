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
    target_accuracy: 0.95          # optional: report the training seconds to reach it (classifiers only)

Every case is checked (keys, types, ranges) before anything runs; a mistake
stops the sweep in one line naming the case. Each run is ``nnlib run`` in a
process of its own, writing its run directory under the sweep's folder;
``results.csv`` gets a row per run as it finishes (a failed run gets its
one-line error and the sweep goes on). Running the sweep again skips the
runs that finished and redoes the others. When the runs are done the
figures of :mod:`nnlib.experiments.plots` are drawn into ``plots/``; ``sweep.yaml`` and
``sweep.json`` keep the sweep file as run and the command that reruns it.

The cases of a sweep are all classifiers or all regressions
(``model.task``), since one table compares them: a classifier's row holds
its final and best test accuracy (:data:`RESULT_COLUMNS`), a regression's
its test and validation R², RMSE, MAE and loss (:data:`REGRESSION_COLUMNS`),
and its report ranks the cases by test R². Cases of both tasks, or a
``target_accuracy`` with regression cases, stop the sweep in one line.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nnlib.config import load_config, read_yaml, suggest_key
from nnlib.errors import ConfigError
from nnlib.outputs import atomic_write_bytes, csv_bytes, read_csv_rows

SWEEP_KEYS = ("base", "set", "grid", "cases", "repeats", "target_accuracy")
RESULT_COLUMNS = [
    "run",
    "case",
    "seed",
    "status",
    "final_test_accuracy",
    "best_test_accuracy",
    "seconds_to_target",
    "rounds_run",
    "wall_seconds",
    "train_seconds",
    "seconds_per_round",
    "mean_mapper_seconds",
    "max_mapper_seconds",
    "mean_overhead_seconds",
    "error",
]
# a regression run's row (model.task=regression): its R², RMSE, MAE and loss on the test and validation sets
# (the RMSE and MAE in the targets' own units, the loss in training units; the validation ones empty without a
# validation set) where a classifier's has its accuracy; the best round is the one of the highest test R²
REGRESSION_COLUMNS = [
    "run",
    "case",
    "seed",
    "status",
    "final_test_r2",
    "best_test_r2",
    "final_test_rmse",
    "final_test_mae",
    "final_test_loss",
    "final_val_r2",
    "final_val_rmse",
    "final_val_mae",
    "final_val_loss",
    "rounds_run",
    "wall_seconds",
    "train_seconds",
    "seconds_per_round",
    "mean_mapper_seconds",
    "max_mapper_seconds",
    "mean_overhead_seconds",
    "error",
]
REGRESSION_SCORES = ("r2", "rmse", "mae", "loss")  # the rounds.csv columns test_* and val_* of a regression run


def result_columns(regression: bool) -> list[str]:
    """The results.csv columns of a sweep's runs, the varied keys going after ``seed`` (the first three)."""
    return list(REGRESSION_COLUMNS if regression else RESULT_COLUMNS)


def is_regression_results(results: list[dict]) -> bool:
    """Whether results.csv rows (:func:`nnlib.outputs.read_csv_rows`) are of regression runs (their columns)."""
    return bool(results) and "final_test_r2" in results[0]


@dataclass(frozen=True)
class Run:
    """One run of a sweep: a case's overrides with one seed."""

    name: str  # its folder under the sweep's directory
    case: dict  # the varied keys and their values
    seed: int
    overrides: list[str]  # every --set the run gets


def _as_override(key: str, value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def _case_label(case: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in case.items()) or "base"


def plan_sweep(path: str | Path, extra: Sequence[str] = ()) -> tuple[Path | None, list[Run], float | None]:
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
    cases = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] if grid else []
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
    runs, tasks = [], {}
    for i, case in enumerate(cases):
        overrides = shared + [_as_override(k, v) for k, v in case.items()]
        try:
            config = load_config(base, overrides)
        except ConfigError as exc:
            raise ConfigError(f"sweep {path}: case {i} ({_case_label(case)}): {exc}") from None
        tasks[i] = config.model.task
        if config.model.regression and target is not None:
            raise ConfigError(
                f"sweep {path}: case {i} ({_case_label(case)}): target_accuracy={target} is a "
                "classifier's test accuracy; a model.task=regression case has none (leave it out)"
            )
        for r in range(repeats):
            seed = config.seed + r
            runs.append(Run(f"case{i:03d}-seed{seed}", case, seed, [*overrides, f"seed={seed}"]))
    if len(set(tasks.values())) > 1:  # one table compares them: accuracy or R², not both
        named = "; ".join(
            f"{task}: " + ", ".join(f"case {i} ({_case_label(cases[i])})" for i, t in tasks.items() if t == task)
            for task in ("classification", "regression")
        )
        raise ConfigError(
            f"sweep {path}: its cases mix model.task=classification and regression ({named}); a "
            "sweep compares runs of one task (by test accuracy or by test R²): sweep them apart"
        )
    return base, runs, target


def is_regression_plan(runs: list[Run], base: Path | None) -> bool:
    """Whether a planned sweep's runs are regression runs (they are all of one task: :func:`plan_sweep`)."""
    return bool(runs) and load_config(base, runs[0].overrides).model.regression


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
    if summary.get("task") == "regression":
        # the final figures are the model's (summary.json: the best round's with train.patience), the validation
        # ones those of the model's round in rounds.csv
        kept = _kept_round(rounds, summary)
        scores = {f"final_test_{s}": summary[f"final_test_{s}"] for s in REGRESSION_SCORES}
        scores.update({f"final_val_{s}": _number(kept.get(f"val_{s}")) for s in REGRESSION_SCORES})
        scores["best_test_r2"] = max(r["test_r2"] for r in rounds)
    else:
        scores = {
            "final_test_accuracy": summary["final_test_accuracy"],
            "best_test_accuracy": max(r["test_accuracy"] for r in rounds),
            "seconds_to_target": to_target,
        }
    return {
        **row,
        "status": "ok",
        **scores,
        "rounds_run": len(rounds),
        "wall_seconds": summary["wall_seconds"],
        "train_seconds": elapsed,
        "seconds_per_round": elapsed / len(rounds),
        "mean_mapper_seconds": statistics.mean(m["train_seconds"] for m in mappers),
        "max_mapper_seconds": max(m["train_seconds"] for m in mappers),
        "mean_overhead_seconds": statistics.mean(r["overhead_seconds"] for r in rounds),
        "error": "",
    }


def _kept_round(rounds: list[dict], summary: dict) -> dict:
    """The rounds.csv row of the round whose weights the run's model holds (``best_round`` with
    ``train.patience``, numbered from 1 as the rows; else the last)."""
    best = summary.get("best_round")
    found = [r for r in rounds if r["round"] == best] if isinstance(best, int) else []
    return found[0] if found else rounds[-1]


def _number(value):
    """A rounds.csv cell as a number, or None when empty (no validation set)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if "error" in ln.lower()]
    return (lines[-1] if lines else (stderr.strip().splitlines() or ["exited without a message"])[-1])[:500]


@dataclass
class SweepResult:
    results: Path  # results.csv
    rows: list[dict]  # one per run, in sweep order
    skipped: int  # runs found finished and not run again
    plots: list[Path]  # the figures drawn into plots/


def run_sweep(
    path: str | Path, out: str | Path | None = None, extra: Sequence[str] = (), quiet: bool = False
) -> SweepResult:
    """Run every run of the sweep that has not finished; write results.csv as runs finish."""
    base, runs, target = plan_sweep(path, extra)
    out = Path(out) if out else Path("runs") / f"sweep-{Path(path).stem}"
    out.mkdir(parents=True, exist_ok=True)
    _record_sweep(Path(path), out, extra)
    varied = list(dict.fromkeys(k for run in runs for k in run.case))
    every = result_columns(is_regression_plan(runs, base))
    columns = every[:3] + varied + every[3:]
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
                cmd = [
                    sys.executable,
                    "-m",
                    "nnlib",
                    "run",
                    *([str(base)] if base else []),
                    "--out",
                    str(run_dir),
                    "--overwrite",
                    "--quiet",
                ]
                for item in run.overrides:
                    cmd += ["--set", item]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    error = _last_error_line(proc.stderr)
            rows.append(_result_row(run, run_dir, target, error))
            atomic_write_bytes(
                out / "results.csv", csv_bytes(columns, [{c: r.get(c, "") for c in columns} for r in rows])
            )
            bar.update(1)
    from nnlib.experiments.plots import plot_sweep

    return SweepResult(out / "results.csv", rows, skipped, plot_sweep(out))


def _record_sweep(path: Path, out: Path, extra: Sequence[str]) -> None:
    """``sweep.yaml`` (the sweep file as run) and ``sweep.json`` (where it came from, how to rerun it)."""
    import json
    import shlex

    command = ["nnlib", "sweep", str(path.resolve()), "--out", str(out.resolve())]
    for item in extra:
        command += ["--set", item]
    atomic_write_bytes(out / "sweep.yaml", path.read_bytes())
    atomic_write_bytes(
        out / "sweep.json",
        (
            json.dumps(
                {"sweep_file": str(path.resolve()), "overrides": list(extra), "command": shlex.join(command)}, indent=2
            )
            + "\n"
        ).encode(),
    )
