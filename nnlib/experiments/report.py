"""``nnlib report DIR``: report.md and a self-contained report.html of a run or a sweep.

A report is a list of blocks (heading, paragraph, table, figure, code),
rendered twice: to Markdown (figures linked from ``plots/``) and to one HTML
file with every figure embedded as a data URI, so the page can be mailed or
archived alone. It holds the tables, the figures, the machine the runs ran
on (recorded in each run's summary.json), the resolved configs and the
commands that rerun them.
"""

from __future__ import annotations

import base64
import html
import json
import shlex
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from nnlib.errors import NnlibError
from nnlib.experiments.plots import (
    loss_units,
    mean_std,
    plot_run,
    plot_sweep,
    run_is_regression,
    sweep_varied_keys,
    target_units,
)
from nnlib.experiments.sweep import is_regression_results
from nnlib.outputs import atomic_write_bytes, read_csv_rows
from nnlib.util.machine import describe


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list]


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    text: str
    language: str = ""


CAPTIONS = {
    "speedup": "Speedup T(1)/T(m) and parallel efficiency of the training seconds against mappers; dotted: ideal.",
    "convergence": "Test accuracy against round and against training seconds (mean over repeats); "
    "dashed black: one mapper (sequential).",
    "timeline": "Each mapper's train and comm seconds in every round, rounds laid end to end.",
    "spread": "Final test accuracy of every repeat (each its own seed and random split); red: mean.",
}


RUN_CAPTIONS = {"convergence": "Test accuracy after every round, against round and against training seconds."}

# a regression run's or sweep's figures (model.task=regression): R² where a classifier's show accuracy
REGRESSION_CAPTIONS = {
    **CAPTIONS,
    "convergence": "Test R² against round and against training seconds (mean over repeats); "
    "dashed black: one mapper (sequential).",
    "spread": "Final test R² of every repeat (each its own seed and random split); red: mean.",
}
REGRESSION_RUN_CAPTIONS = {
    "convergence": "Test R² (solid) and validation R² (dashed, with a validation set) after every round, against "
    "round and against training seconds.",
    "errors": "Test and validation RMSE and MAE after every round, in the targets' own units.",
    "loss": "Training, test and validation loss after every round, in training units (the targets standardised "
    "under data.standardize_target).",
}


def _caption(path: Path, regression: bool = False) -> str:
    if regression:
        return REGRESSION_CAPTIONS.get(
            path.stem,
            f"Training time, final test R² and final test RMSE against "
            f"{path.stem} (mean over repeats, error bars one standard "
            "deviation).",
        )
    return CAPTIONS.get(
        path.stem,
        f"Training time and final test accuracy against {path.stem} "
        "(mean over repeats, error bars one standard deviation).",
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return _fmt(values[0])
    mean, std = mean_std(values)
    return f"{mean:.4g} ± {std:.2g}"


def _numbers(rows: list[dict], key: str) -> list[float]:
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))]


def _machine_table(machine: dict) -> Table:
    rows = [
        ["host", machine.get("host")],
        ["platform", machine.get("platform")],
        ["CPU cores", machine.get("cpu_count")],
        ["memory (GiB)", machine.get("memory_gb")],
        ["Python", machine.get("python")],
    ]
    rows += [[name, version] for name, version in machine.get("libraries", {}).items()]
    return Table(["", "value"], rows)


def _machine_blocks(summary_file: Path | None) -> list:
    if summary_file is not None and summary_file.exists():
        machine = json.loads(summary_file.read_text()).get("machine")
        if machine:
            return [Heading("Machine"), Para("As recorded by the run (summary.json)."), _machine_table(machine)]
    return [
        Heading("Machine"),
        Para("The run recorded no machine; this is the machine that wrote the report."),
        _machine_table(describe()),
    ]


# ---- a sweep ---------------------------------------------------------------------------------


def sweep_blocks(sweep_dir: Path) -> list:
    results = read_csv_rows(sweep_dir / "results.csv")
    varied = sweep_varied_keys(results)
    ok = [r for r in results if r["status"] == "ok"]
    failed = [r for r in results if r["status"] != "ok"]
    meta = json.loads((sweep_dir / "sweep.json").read_text()) if (sweep_dir / "sweep.json").exists() else {}
    compared = json.loads((sweep_dir / COMPARE_FILE).read_text()) if (sweep_dir / COMPARE_FILE).exists() else None
    title = f"nnlib report: {len(results)} runs compared" if compared else f"nnlib sweep: {sweep_dir.name}"
    blocks: list = [
        Heading(title, 1),
        Para(
            f"{len(results)} runs ({len(ok)} finished, {len(failed)} failed) varying "
            f"{', '.join(varied) or 'nothing'}; report written {time.strftime('%Y-%m-%d %H:%M')}. "
            "Means over repeats ± one standard deviation. Training seconds are the sum of the rounds' seconds "
            "(the start of a run, e.g. the Spark session, is left out)."
        ),
    ]
    by_case: dict[str, list[dict]] = defaultdict(list)
    for row in results:
        by_case[row["case"]].append(row)
    regression = is_regression_results(results)
    if regression:
        blocks += _regression_cases(sweep_dir, by_case, varied)
    else:
        columns = varied + [
            "runs",
            "final test accuracy",
            "best test accuracy",
            "training s",
            "s per round",
            "s to target",
            "max mapper s",
            "overhead s per round",
        ]
        rows = []
        for case_rows in by_case.values():
            done = [r for r in case_rows if r["status"] == "ok"]
            rows.append(
                [case_rows[0].get(k) for k in varied]
                + [
                    f"{len(done)}/{len(case_rows)}",
                    _mean_std(_numbers(done, "final_test_accuracy")),
                    _mean_std(_numbers(done, "best_test_accuracy")),
                    _mean_std(_numbers(done, "train_seconds")),
                    _mean_std(_numbers(done, "seconds_per_round")),
                    _mean_std(_numbers(done, "seconds_to_target")),
                    _mean_std(_numbers(done, "max_mapper_seconds")),
                    _mean_std(_numbers(done, "mean_overhead_seconds")),
                ]
            )
        blocks += [Heading("Cases"), Table(columns, rows)]
        blocks += mapper_blocks(sweep_dir, results)
    blocks += [Heading("Figures")] + [Figure(p, _caption(p, regression)) for p in plot_sweep(sweep_dir)]
    scores = (
        ["final_test_r2", "final_test_rmse", "final_test_mae", "final_test_loss"]
        if regression
        else ["final_test_accuracy"]
    )
    run_columns = ["run", "seed", *varied, "status", *scores, "train_seconds", "wall_seconds"]
    blocks += [Heading("Every run"), Table(run_columns, [[r.get(c) for c in run_columns] for r in results])]
    if failed:
        blocks += [Heading("Failed runs"), Table(["run", "error"], [[r["run"], r["error"]] for r in failed])]
    first = sweep_dir / ok[0]["run"] if ok else None
    blocks += _machine_blocks(first / "summary.json" if first else None)
    blocks += [Heading("Configuration")]
    if (sweep_dir / "sweep.yaml").exists():
        blocks += [Para("The sweep file:"), Code((sweep_dir / "sweep.yaml").read_text(), "yaml")]
    if first is not None:
        blocks += [
            Para(f"The resolved config of run {first.name} (every run's is in its folder, config.yaml):"),
            Code((first / "config.yaml").read_text(), "yaml"),
        ]
    if compared:
        commands = [
            f"nnlib run {shlex.quote(str((sweep_dir / r['run'] / 'config.yaml').resolve()))} "
            f"--out {shlex.quote(str((sweep_dir / r['run']).resolve()))}-again"
            for r in results
        ]
        blocks += [
            Heading("Commands"),
            Para("Train each run again (same config, same seed, same weights), then compare them again:"),
            Code("\n".join([*commands, compared["command"]]), "sh"),
        ]
        return blocks
    commands = [meta["command"]] if meta.get("command") else []
    if first is not None:
        commands.append(f"nnlib run {shlex.quote(str((first / 'config.yaml').resolve()))} --out runs/{first.name}")
    blocks += [
        Heading("Commands"),
        Para("Rerun the sweep (finished runs are skipped), and one run alone:"),
        Code("\n".join(commands), "sh"),
    ]
    return blocks


def _regression_cases(sweep_dir: Path, by_case: dict[str, list[dict]], varied: list[str]) -> list:
    """The cases of a regression sweep compared by their final test R² (highest first): R², RMSE, MAE and loss on
    the test set, then on the validation set when the runs had one, then the times."""
    units = target_units(
        next((sweep_dir / r["run"] for rows in by_case.values() for r in rows if r["status"] == "ok"), None)
    )
    sets = [("test", "final_test_")]
    if any(_numbers(rows, "final_val_r2") for rows in by_case.values()):
        sets.append(("validation", "final_val_"))
    columns = varied + ["runs"]
    for name, _ in sets:
        columns += [f"final {name} R²", f"final {name} RMSE", f"final {name} MAE", f"final {name} loss"]
    columns += ["best test R²", "training s", "s per round", "max mapper s", "overhead s per round"]
    ranked = []
    for case_rows in by_case.values():
        done = [r for r in case_rows if r["status"] == "ok"]
        row = [case_rows[0].get(k) for k in varied] + [f"{len(done)}/{len(case_rows)}"]
        for _, prefix in sets:
            row += [_mean_std(_numbers(done, prefix + s)) for s in ("r2", "rmse", "mae", "loss")]
        row += [
            _mean_std(_numbers(done, k))
            for k in (
                "best_test_r2",
                "train_seconds",
                "seconds_per_round",
                "max_mapper_seconds",
                "mean_overhead_seconds",
            )
        ]
        r2 = _numbers(done, "final_test_r2")
        ranked.append((statistics.mean(r2) if r2 else float("-inf"), row, case_rows[0]["case"]))
    ranked.sort(key=lambda item: -item[0])  # stable: cases of equal R² keep the sweep's order
    blocks: list = [
        Heading("Cases"),
        Para(
            f"Cases by final test R², highest first; RMSE and MAE in {units} (the targets' own), the loss in "
            "training units."
        ),
    ]
    if ranked and ranked[0][0] != float("-inf"):
        blocks.append(Para(f"Highest final test R²: {ranked[0][2]} ({ranked[0][0]:.4g})."))
    return blocks + [Table(columns, [row for _, row, _ in ranked])]


# ---- a mapper comparison ---------------------------------------------------------------------


@dataclass(frozen=True)
class MapperRepeat:
    """One finished run of a mapper comparison, as its verdict needs it.

    ``epoch_seconds``: the training seconds (the rounds' sum) over the
    epochs run (rounds x train.local_epochs); ``seconds_to_target`` and
    ``rounds_to_target``: the training seconds and rounds until the test
    accuracy first reached the target, None when it never did.
    """

    mappers: int
    seed: int
    epoch_seconds: float
    seconds_to_target: float | None
    rounds_to_target: int | None
    final_accuracy: float


def mapper_repeat(run_dir: Path, mappers: int, seed: int, target: float) -> MapperRepeat:
    """A run folder (rounds.csv, config.yaml, summary.json) as a :class:`MapperRepeat` against ``target``."""
    import yaml

    rounds = read_csv_rows(run_dir / "rounds.csv")
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    local_epochs = (config.get("train") or {}).get("local_epochs", 1)
    elapsed, to_target, rounds_to = 0.0, None, None
    for r in rounds:
        elapsed += r["seconds"]
        if to_target is None and r["test_accuracy"] >= target:
            to_target, rounds_to = elapsed, r["round"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return MapperRepeat(
        mappers, seed, elapsed / (len(rounds) * local_epochs), to_target, rounds_to, summary["final_test_accuracy"]
    )


def _label_mappers(m: int) -> str:
    return f"{m} mapper" if m == 1 else f"{m} mappers"


def _spread(values: list[float], digits: str = ".3g", unit: str = "") -> str:
    """``median (min–max)`` of the repeats, e.g. ``1.83x (1.62–1.95)``; the value alone when they all agree."""
    if not values:
        return ""
    low, mid, high = (format(v, digits) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid}{unit}" if low == high else f"{mid}{unit} ({low}–{high})"


def _overlap(a: list[float], b: list[float]) -> bool:
    """Whether the ranges (min–max) of two sets of repeats overlap."""
    return min(a) <= max(b) and min(b) <= max(a)


def _within_spread(a: list[MapperRepeat], b: list[MapperRepeat], field: str) -> bool:
    """Whether ``a``'s and ``b``'s ``field`` differ by less than the repeats spread.

    Repeats with the same seed share their data, split and initial weights, so
    where the two share seeds they are compared seed by seed: the difference
    is within the spread when its sign changes across the seeds (or it is 0
    in one). Without a shared seed, when their min–max ranges overlap.
    """
    x = {r.seed: getattr(r, field) for r in a if getattr(r, field) is not None}
    y = {r.seed: getattr(r, field) for r in b if getattr(r, field) is not None}
    shared = set(x) & set(y)
    if shared:
        differences = [x[s] - y[s] for s in shared]
        return min(differences) <= 0 <= max(differences)
    return _overlap(list(x.values()), list(y.values()))


def mapper_speedups(base: list[MapperRepeat], case: list[MapperRepeat], field: str) -> list[float]:
    """``base``'s ``field`` seconds over ``case``'s, one ratio per seed both ran (paired repeats: the same data,
    split and initial weights); every pair when they share no seed; repeats missing the field are left out."""

    def times(rows):
        return {r.seed: getattr(r, field) for r in rows if getattr(r, field) is not None}

    b, c = times(base), times(case)
    shared = sorted(set(b) & set(c))
    if shared:
        return [b[s] / c[s] for s in shared]
    return [x / y for x in b.values() for y in c.values()]


def _by_mappers(repeats: list[MapperRepeat]) -> dict[int, list[MapperRepeat]]:
    by: dict[int, list[MapperRepeat]] = defaultdict(list)
    for r in sorted(repeats, key=lambda r: (r.mappers, r.seed)):
        by[r.mappers].append(r)
    return dict(by)


def mapper_table(repeats: list[MapperRepeat], target: float) -> Table:
    """A row per mapper count: seconds per epoch, seconds and rounds to ``target``, final test accuracy, and the
    speedups against the fewest mappers (one, normally), each as median (min–max) over the repeats."""
    by = _by_mappers(repeats)
    base_m = min(by)
    base = _label_mappers(base_m)
    columns = [
        "mappers",
        "repeats",
        "s per epoch",
        f"speedup per epoch vs {base}",
        f"s to accuracy {target:.4g}",
        f"rounds to {target:.4g}",
        f"speedup to {target:.4g} vs {base}",
        "final test accuracy",
    ]
    rows = []
    for m, rows_m in by.items():
        reached = [r.seconds_to_target for r in rows_m if r.seconds_to_target is not None]
        rounds_to = [float(r.rounds_to_target) for r in rows_m if r.rounds_to_target is not None]
        rows.append(
            [
                m,
                len(rows_m),
                _spread([r.epoch_seconds for r in rows_m]),
                _spread(mapper_speedups(by[base_m], rows_m, "epoch_seconds"), ".2f", "x"),
                _spread(reached)
                + ("" if len(reached) == len(rows_m) else f" ({len(reached)} of {len(rows_m)} reached)"),
                _spread(rounds_to, ".2g"),
                _spread(mapper_speedups(by[base_m], rows_m, "seconds_to_target"), ".2f", "x"),
                _spread([r.final_accuracy for r in rows_m], ".4f"),
            ]
        )
    return Table(columns, rows)


def mapper_verdict(repeats: list[MapperRepeat], target: float) -> str:
    """One sentence drawn from the repeats: which mapper count reaches ``target`` fastest (median time, among the
    counts that reached it in every repeat), its speedup and what final accuracy it costs against the fewest
    mappers, and which differences are within the spread (:func:`_within_spread`: seed by seed, their sign
    changes; without shared seeds, the min–max ranges overlap).

    Raises :class:`NnlibError` with fewer than two mapper counts (nothing to compare).
    """
    by = _by_mappers(repeats)
    if len(by) < 2:
        raise NnlibError(f"report: a mapper comparison needs two or more mapper counts, got {sorted(by)}")
    base_m = min(by)
    base = by[base_m]
    complete = {m: rows for m, rows in by.items() if all(r.seconds_to_target is not None for r in rows)}
    missed = [
        f"{_label_mappers(m)} missed it in {sum(r.seconds_to_target is None for r in rows)} of {len(rows)} repeats"
        for m, rows in by.items()
        if m not in complete
    ]
    final = {m: [r.final_accuracy for r in rows] for m, rows in by.items()}
    if not complete:
        best = max(by, key=lambda m: statistics.median(final[m]))
        return (
            f"No mapper count reached test accuracy {target:.4g} in every repeat, so none is fastest to it; "
            f"the highest median final accuracy is {_label_mappers(best)}' "
            f"({statistics.median(final[best]):.4f})."
        )
    times = {m: [r.seconds_to_target for r in rows if r.seconds_to_target is not None] for m, rows in complete.items()}
    fastest = min(complete, key=lambda m: (statistics.median(times[m]), m))
    name = _label_mappers(fastest)
    parts = [
        f"{name} {'is' if fastest == 1 else 'are'} fastest to test accuracy {target:.4g} "
        f"(median {statistics.median(times[fastest]):.3g} s"
    ]
    if fastest != base_m:
        speedups = mapper_speedups(base, complete[fastest], "seconds_to_target")
        low, high = f"{min(speedups):.2f}", f"{max(speedups):.2f}"
        parts[0] += (
            f", {statistics.median(speedups):.2f}x {_label_mappers(base_m)}'s time"
            + (" in every repeat" if low == high else f", {low}–{high}x over the repeats")
            + ")"
        )
        gap = statistics.median(final[fastest]) - statistics.median(final[base_m])
        within = _within_spread(by[fastest], base, "final_accuracy")
        parts[0] += (
            f", at a median final accuracy of {statistics.median(final[fastest]):.4f} against "
            f"{_label_mappers(base_m)}'s {statistics.median(final[base_m]):.4f} ({gap:+.4f}, "
            f"{'within' if within else 'beyond'} the spread of the repeats)"
        )
    else:
        parts[0] += f"), at a median final accuracy of {statistics.median(final[fastest]):.4f}"
    ties = [m for m in complete if m != fastest and _within_spread(complete[m], complete[fastest], "seconds_to_target")]
    slower = [m for m in complete if m != fastest and m not in ties]
    if ties:
        parts.append(
            f"{_join([_label_mappers(m) for m in ties])} "
            f"{'is' if ties == [1] else 'are'} within the spread of that time"
        )
    if slower:
        parts.append(
            f"{_join([_label_mappers(m) for m in slower])} {'is' if slower == [1] else 'are'} slower beyond the spread"
        )
    parts += missed
    return "; ".join(parts) + "."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _mapper_comparison_runs(results: list[dict]) -> list[dict] | None:
    """The finished rows of a comparison whose cases differ only in ``mappers`` (other varied keys, such as the
    Spark master a session got for its mappers, follow the count), with two or more counts; else None."""
    varied = sweep_varied_keys(results)
    ok = [r for r in results if r["status"] == "ok" and isinstance(r.get("mappers"), int)]
    if "mappers" not in varied or is_regression_results(results) or len({r["mappers"] for r in ok}) < 2:
        return None
    others = [k for k in varied if k != "mappers"]
    cases = {(r["mappers"], *(repr(r.get(k)) for k in others)) for r in ok}
    return ok if len(cases) == len({r["mappers"] for r in ok}) else None


def comparison_target(ok: list[dict], sweep_dir: Path) -> tuple[float, str]:
    """The target accuracy of a mapper comparison and where it comes from: the sweep file's ``target_accuracy``,
    else the highest test accuracy every run reached (floored to 0.001, so each reached it)."""
    import math

    if (sweep_dir / "sweep.yaml").exists():
        import yaml

        target = (yaml.safe_load((sweep_dir / "sweep.yaml").read_text()) or {}).get("target_accuracy")
        if isinstance(target, (int, float)):
            return float(target), "the sweep file's target_accuracy"
    best = min(max(r["test_accuracy"] for r in read_csv_rows(sweep_dir / row["run"] / "rounds.csv")) for row in ok)
    return math.floor(best * 1000) / 1000, "the highest test accuracy every run reached (no target_accuracy given)"


def mapper_blocks(sweep_dir: Path, results: list[dict]) -> list:
    """The mapper-count section of a sweep's or comparison's report: its table and one verdict sentence."""
    ok = _mapper_comparison_runs(results)
    if ok is None:
        return []
    target, source = comparison_target(ok, sweep_dir)
    repeats = [mapper_repeat(sweep_dir / r["run"], r["mappers"], r["seed"], target) for r in ok]
    base = _label_mappers(min(r.mappers for r in repeats))
    return [
        Heading("Mapper counts"),
        Para(
            f"Each figure is the median over the repeats (seeds), with their min–max in brackets. Target: test "
            f"accuracy {target:.4g}, {source}. Seconds are training seconds (the rounds' sum, the start of a run "
            f"left out); a speedup is {base}'s seconds over the count's, seed by seed. A difference is within the "
            "spread when, seed by seed (the same data, split and initial weights), its sign changes across the "
            "repeats."
        ),
        mapper_table(repeats, target),
        Para("Verdict: " + mapper_verdict(repeats, target)),
    ]


# ---- several runs compared -------------------------------------------------------------------

COMPARE_FILE = "compare.json"  # in a comparison's folder: the runs compared and the command that made it


def compare_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``out/results.csv`` over finished runs, as a sweep's, so that a sweep's report and figures draw them.

    The varied keys are the config keys whose values differ between the
    runs (``seed`` has its own column; runs that differ only in it are
    repeats of one case); each row's ``run`` is the run's folder relative
    to ``out``. Raises :class:`NnlibError` naming a folder that is not a
    finished run, or when fewer than two runs are given.
    """
    import os
    import shlex

    import yaml

    from nnlib.config import flatten
    from nnlib.experiments.sweep import Run, _result_row, result_columns
    from nnlib.outputs import csv_bytes

    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.exists():
            raise NnlibError(f"report: {d} does not exist")
        if not (d / "summary.json").is_file():
            raise NnlibError(f"report: {d} is not a finished run (no summary.json); only finished runs can be compared")
    if len(set(map(Path.resolve, dirs))) < 2:
        raise NnlibError(f"report: comparing runs needs two or more run directories, got {len(dirs)}")
    regression = [d for d in dirs if run_is_regression(d)]
    if regression and len(regression) < len(dirs):  # one table compares them: by accuracy or by R², not both
        classification = [d for d in dirs if d not in regression]
        raise NnlibError(
            f"report: {', '.join(map(str, regression))} "
            f"{'is a regression run' if len(regression) == 1 else 'are regression runs'} "
            f"(model.task=regression) and {', '.join(map(str, classification))} "
            f"{'is a classification run' if len(classification) == 1 else 'are classification runs'}"
            "; a report compares runs of one task (by test accuracy or by test R²): report them apart"
        )
    configs = [flatten(yaml.safe_load((d / "config.yaml").read_text()) or {}) for d in dirs]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    varied = [k for k in keys if k != "seed" and len({repr(c.get(k)) for c in configs}) > 1]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for d, config in zip(dirs, configs, strict=True):
        case = {
            k: config.get(k) if isinstance(config.get(k), (int, float, str)) else str(config.get(k)) for k in varied
        }
        run = Run(os.path.relpath(d.resolve(), out.resolve()), case, config.get("seed", 0), [])
        rows.append(_result_row(run, d, None, None))
    every = result_columns(bool(regression))
    columns = every[:3] + varied + every[3:]
    atomic_write_bytes(out / "results.csv", csv_bytes(columns, [{c: r.get(c, "") for c in columns} for r in rows]))
    command = shlex.join(["nnlib", "report", *(str(d.resolve()) for d in dirs), "--out", str(out.resolve())])
    atomic_write_bytes(
        out / COMPARE_FILE,
        (
            json.dumps({"runs": [str(d.resolve()) for d in dirs], "varied": varied, "command": command}, indent=2)
            + "\n"
        ).encode(),
    )
    return out


# ---- a run -----------------------------------------------------------------------------------


def run_blocks(run_dir: Path) -> list:
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = read_csv_rows(run_dir / "rounds.csv")
    mappers = read_csv_rows(run_dir / "mapper_times.csv")
    regression = summary.get("task") == "regression"
    scores = (
        ["task", "targets", "final_test_r2", "final_test_rmse", "final_test_mae"]
        if regression
        else ["final_test_accuracy"]
    )
    keys = [
        *scores,
        "final_test_loss",
        "final_train_loss",
        "wall_seconds",
        "train_seconds",
        "rounds_run",
        "engine",
        "mappers",
        "combine",
        "backend",
        "n_train",
        "n_test",
        "n_val",
        "model_type",
        "layer_sizes",
        "image_shape",
        "channels",
        "n_params",
        "driver_peak_rss_mb",
        "best_round",
        "baseline_test_accuracy",
        "split_method",
        "split_cross_coupling",
    ]
    if not regression:
        keys.remove("n_val")  # a classifier's table as it was
    blocks: list = [
        Heading(f"nnlib run: {run_dir.name}", 1),
        Para(f"Report written {time.strftime('%Y-%m-%d %H:%M')}."),
        Table(["", "value"], [[k, _fmt(summary.get(k))] for k in keys if k in summary]),
    ]
    captions = REGRESSION_RUN_CAPTIONS if regression else RUN_CAPTIONS
    blocks += [Heading("Figures")] + [
        Figure(p, captions.get(p.stem, _caption(p, regression))) for p in plot_run(run_dir)
    ]
    if regression:
        validation = any(isinstance(r.get("val_r2"), (int, float)) for r in rounds)
        columns = [
            "round",
            "test_r2",
            "test_rmse",
            "test_mae",
            "test_loss",
            *(["val_r2", "val_rmse", "val_mae", "val_loss"] if validation else []),
            "train_loss",
            "seconds",
            "max_mapper_seconds",
            "overhead_seconds",
        ]
        blocks.append(
            Para(f"RMSE and MAE in {target_units(run_dir)} (the targets' own), losses in {loss_units(run_dir)}.")
        )
    else:
        columns = [
            "round",
            "test_accuracy",
            "test_loss",
            "train_loss",
            "seconds",
            "max_mapper_seconds",
            "overhead_seconds",
        ]
    shown = rounds if len(rounds) <= 60 else rounds[:30] + rounds[-30:]
    blocks += [Heading("Rounds"), Table(columns, [[r[c] for c in columns] for r in shown])]
    if len(shown) < len(rounds):
        blocks.append(Para(f"The first and last 30 of {len(rounds)} rounds; all are in rounds.csv."))
    by_mapper: dict[int, list[dict]] = defaultdict(list)
    for row in mappers:
        by_mapper[row["mapper"]].append(row)
    blocks += [
        Heading("Mappers"),
        Table(
            ["mapper", "host", "samples seen", "mean train s", "max train s", "mean comm s", "peak memory MB"],
            [
                [
                    m,
                    rows[0]["host"],
                    sum(r["n_samples"] for r in rows),
                    statistics.mean(r["train_seconds"] for r in rows),
                    max(r["train_seconds"] for r in rows),
                    statistics.mean(r["comm_seconds"] for r in rows),
                    max(r["peak_rss_mb"] for r in rows),
                ]
                for m, rows in sorted(by_mapper.items())
            ],
        ),
    ]
    blocks += _machine_blocks(run_dir / "summary.json")
    blocks += [
        Heading("Configuration"),
        Code((run_dir / "config.yaml").read_text(), "yaml"),
        Heading("Command"),
        Para("Train again with the same config (same seed, same weights):"),
        Code(
            f"nnlib run {shlex.quote(str((run_dir / 'config.yaml').resolve()))} --out runs/{run_dir.name}-again", "sh"
        ),
    ]
    return blocks


# ---- a split search --------------------------------------------------------------------------

SEARCH_CAPTIONS = {
    "accuracy": "Test accuracy of every split after recombining, with the unsplit baseline and the warmed-up "
    "network (the separation study's Figure 3).",
    "histogram": "How the splits' accuracies spread.",
    "coupling": "Accuracy against the split's cross-group coupling (mean |corr| of the warmed-up units' "
    "activations across groups).",
}


def search_blocks(search_dir: Path) -> list:
    facts = json.loads((search_dir / "search.json").read_text())
    rows = sorted(read_csv_rows(search_dir / "combinations.csv"), key=lambda r: -r["test_accuracy"])
    keys = [
        "engine",
        "hidden",
        "groups",
        "equal_sizes",
        "distinct_splits",
        "evaluated",
        "seed",
        "n_warmup",
        "n_rest",
        "warmup_test_accuracy",
        "baseline_test_accuracy",
        "mean_test_accuracy",
        "min_test_accuracy",
        "max_test_accuracy",
        "beat_baseline",
        "coupling_accuracy_correlation",
        "balance_accuracy_correlation",
    ]
    blocks: list = [
        Heading(f"nnlib split-search: {search_dir.name}", 1),
        Para(f"Report written {time.strftime('%Y-%m-%d %H:%M')}."),
        Table(["", "value"], [[k, _fmt(facts.get(k))] for k in keys if k in facts]),
    ]
    blocks += [Heading("Figures")] + [
        Figure(p, SEARCH_CAPTIONS.get(p.stem, p.stem)) for p in sorted((search_dir / "plots").glob("*.png"))
    ]
    columns = ["id", "groups", "test_accuracy", "cross_coupling", "weight_balance", "seconds"]
    shown = rows if len(rows) <= 40 else rows[:20] + rows[-20:]
    blocks += [Heading("Splits, best first"), Table(columns, [[r[c] for c in columns] for r in shown])]
    if len(shown) < len(rows):
        blocks.append(Para(f"The best and worst 20 of {len(rows)}; all are in combinations.csv."))
    machine = facts.get("machine")
    blocks += [Heading("Machine"), _machine_table(machine or describe())]
    if facts.get("config"):
        import yaml

        blocks += [Heading("Configuration"), Code(yaml.safe_dump(facts["config"], sort_keys=False), "yaml")]
    if facts.get("command"):
        blocks += [Heading("Command"), Code(facts["command"], "sh")]
    return blocks


# ---- rendering -------------------------------------------------------------------------------


def _md_cell(value) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list, base: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(b.columns) + " |", "|" + "---|" * len(b.columns)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Figure):
            out.append(f"![{b.caption}]({b.path.relative_to(base).as_posix()})\n\n*{b.caption}*")
        elif isinstance(b, Code):
            out.append(f"```{b.language}\n{b.text.rstrip()}\n```")
    return "\n\n".join(out) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f2f2f2}td{text-align:right}td:first-child{text-align:left}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:0.9em}
pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.85em}"""


def to_html(blocks: list) -> str:
    title = next((b.text for b in blocks if isinstance(b, Heading)), "nnlib report")
    out = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b.columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in b.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.path.read_bytes()).decode()
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(b.caption)}">'
                f"<figcaption>{html.escape(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Code):
            out.append(f"<pre><code>{html.escape(b.text.rstrip())}</code></pre>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_report(directory: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into a run or sweep directory; return their paths."""
    directory = Path(directory)
    if (directory / "results.csv").exists():
        blocks = sweep_blocks(directory)
    elif (directory / "search.json").exists():
        blocks = search_blocks(directory)
    elif (directory / "summary.json").exists():
        blocks = run_blocks(directory)
    else:
        raise NnlibError(
            f"report: {directory} is neither a finished run (summary.json), "
            "a sweep (results.csv) nor a split search (search.json)"
        )
    md, page = directory / "report.md", directory / "report.html"
    atomic_write_bytes(md, to_markdown(blocks, directory).encode())
    atomic_write_bytes(page, to_html(blocks).encode())
    return md, page
