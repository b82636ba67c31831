"""Figures of a run directory or a sweep directory (matplotlib, PNG, no display needed).

A sweep's figures (``plot_sweep``), each drawn when the sweep varies what it needs:

- ``<key>.png`` for every numeric key the sweep varies (``mappers``,
  ``train.batch_size``, ...): training seconds and final test accuracy
  against that key, one line per combination of the other varied keys
  (``combine=average`` and ``combine=sum`` on the same axes);
- ``speedup.png`` when ``mappers`` varies: speedup ``T(1 mapper) / T(m)`` of
  the training seconds and parallel efficiency ``speedup / m``, with the
  ideal lines;
- ``convergence.png``: test accuracy against round and against training
  seconds for every case, a one-mapper (sequential) case drawn dashed black;
- ``timeline.png``: each mapper's train and comm seconds in every round of
  one run (the one with the most mappers), so a straggler shows;
- ``spread.png`` with two or more repeats: every run's final test accuracy,
  case by case (the accuracies over N random splits).

A sweep of regression runs (``model.task: regression``; its results.csv
holds ``final_test_r2`` where a classifier's holds ``final_test_accuracy``)
draws the same figures with the test R² in place of the accuracy, and each
``<key>.png`` gains a third panel, the final test RMSE in the targets' own
units. A regression run's figures (``plot_run``) are its test (and
validation) R² by round and by time (``convergence.png``), its RMSE and MAE
in the targets' own units (``errors.png``) and its losses in training units
(``loss.png``), beside the timeline.

Points are means over the repeats; error bars are one standard deviation.
Training seconds are the sum of the rounds' seconds (``rounds.csv``): the
run's wall time less the start (Spark session, data loading), which does not
change with the varied keys and would hide what does.
"""

from __future__ import annotations

import io
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from nnlib.outputs import atomic_write_bytes, read_csv_rows

RESULT_META = ("run", "case", "seed")  # results.csv columns before the varied keys
SEQUENTIAL_STYLES = ("--", ":", "-.")  # sequential cases: black, these line styles in turn


def _figure(ncols: int = 1, width: float = 5.2, height: float = 3.8):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format=path.suffix.lstrip(".") or "png")
    atomic_write_bytes(path, buf.getvalue())  # a write that fails is one line naming the figure, nothing left
    return path


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value): the points and error bars."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---- what a run is scored by -----------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """The score figures compare runs by: the rounds.csv column (``test_accuracy`` or ``test_r2``), the
    results.csv columns of its final and best values, and how an axis names it."""

    column: str
    final: str
    best: str
    name: str


ACCURACY = Score("test_accuracy", "final_test_accuracy", "best_test_accuracy", "test accuracy")
R2 = Score("test_r2", "final_test_r2", "best_test_r2", "test R²")


def run_is_regression(run_dir: Path) -> bool:
    """Whether a run directory holds a regression run (summary.json's ``task``)."""
    import json

    summary = Path(run_dir) / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("task") == "regression"


def target_units(run_dir: Path | None) -> str:
    """How an axis names a regression metric's units: ``target units``, and with several targets that the metric
    is their mean (summary.json's ``targets``)."""
    import json

    summary = None if run_dir is None else Path(run_dir) / "summary.json"
    targets = json.loads(summary.read_text()).get("targets") if summary is not None and summary.is_file() else None
    if targets and len(targets) > 1:
        return f"target units, mean over {len(targets)} targets"
    return "target units"


def loss_units(run_dir: Path) -> str:
    """The units of a regression run's loss: its training units, standardised targets under
    ``data.standardize_target`` (config.yaml), else the targets' own."""
    import yaml

    config = Path(run_dir) / "config.yaml"
    data = (yaml.safe_load(config.read_text()) or {}).get("data", {}) if config.is_file() else {}
    standardized = data.get("standardize_target", True) is not False
    return "training units: standardised targets" if standardized else "training units"


# ---- reading a sweep -------------------------------------------------------------------------


def sweep_varied_keys(results: list[dict]) -> list[str]:
    """The keys the sweep varies: the results.csv columns between ``seed`` and ``status``."""
    if not results:
        return []
    columns = list(results[0])
    return columns[columns.index("seed") + 1 : columns.index("status")]


def _label(row: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys) or "all runs"


def _is_sequential(row: dict) -> bool:
    return row.get("mappers") == 1


def _series(rows: list[dict], x_key: str, keys: list[str], metric: str) -> dict[str, list[tuple]]:
    """``{label: [(x, mean, std), ...]}``: ``metric`` against ``x_key``, one series per value of ``keys``."""
    groups: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if _is_number(row.get(metric)):
            groups[_label(row, keys)][row[x_key]].append(row[metric])
    return {label: [(x, *mean_std(v)) for x, v in sorted(points.items())] for label, points in groups.items()}


def _draw_series(ax, series: dict[str, list[tuple]]) -> None:
    for label, points in series.items():
        xs, means, stds = zip(*points, strict=True)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)


def _finish(ax, xlabel: str, ylabel: str, title: str, log_x: bool = False) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


# ---- sweep figures ---------------------------------------------------------------------------


def _key_figure(
    ok: list[dict], key: str, others: list[str], out: Path, score: Score = ACCURACY, units: str = ""
) -> Path:
    """Time and the score against one numeric key; a regression sweep's (``units`` given) also its RMSE."""
    fig, (left, right, *rest) = _figure(3 if units else 2)
    per_round = key != "mappers"  # a larger batch means fewer steps a round: compare a round's seconds
    time_metric = "seconds_per_round" if per_round else "train_seconds"
    _draw_series(left, _series(ok, key, others, time_metric))
    _draw_series(right, _series(ok, key, others, score.final))
    log_x = key == "mappers" and min(r[key] for r in ok) >= 1
    _finish(
        left,
        key,
        "seconds per round (s)" if per_round else "training seconds (s)",
        f"{'time per round' if per_round else 'training time'} against {key}",
        log_x,
    )
    _finish(right, key, f"final {score.name}", f"{score.name} against {key}", log_x)
    if rest:
        _draw_series(rest[0], _series(ok, key, others, "final_test_rmse"))
        _finish(rest[0], key, f"final test RMSE ({units})", f"test RMSE against {key}", log_x)
    return _save(fig, out / f"{_slug(key)}.png")


def _speedup_figure(ok: list[dict], others: list[str], out: Path) -> Path | None:
    """Speedup and parallel efficiency against mappers, against each series' one-mapper run."""
    fig, (left, right) = _figure(2)
    drawn = 0
    for label, points in _series(ok, "mappers", others, "train_seconds").items():
        base = dict((m, t) for m, t, _ in points).get(1)
        if not base:
            continue
        ms = [m for m, _, _ in points]
        speedup = [base / t for _, t, _ in points]
        left.plot(ms, speedup, marker="o", label=label)
        right.plot(ms, [s / m for s, m in zip(speedup, ms, strict=True)], marker="o", label=label)
        drawn += 1
    if not drawn:
        return None
    top = max(r["mappers"] for r in ok)
    left.plot([1, top], [1, top], color="gray", linestyle=":", label="ideal")
    right.axhline(1.0, color="gray", linestyle=":", label="ideal")
    _finish(left, "mappers", "speedup T(1) / T(m)", "speedup of training time", log_x=True)
    _finish(right, "mappers", "parallel efficiency T(1) / (m T(m))", "parallel efficiency", log_x=True)
    right.set_ylim(0, max(1.1, right.get_ylim()[1]))
    return _save(fig, out / "speedup.png")


def _mean_curve(
    run_dirs: list[Path], column: str = "test_accuracy"
) -> tuple[list[int], list[float], list[float]] | None:
    """``(rounds, mean cumulative seconds, mean of rounds.csv's column)`` over runs, up to the shortest run."""
    tables = [read_csv_rows(d / "rounds.csv") for d in run_dirs]
    tables = [t for t in tables if t]
    if not tables:
        return None
    n = min(len(t) for t in tables)
    rounds = list(range(1, n + 1))
    seconds = [statistics.mean(sum(r["seconds"] for r in t[: i + 1]) for t in tables) for i in range(n)]
    accuracy = [statistics.mean(t[i][column] for t in tables) for i in range(n)]
    return rounds, seconds, accuracy


def _convergence_figure(
    curves: dict[str, tuple], sequential: set[str], out: Path, score: Score = ACCURACY
) -> Path | None:
    if not curves or max(len(c[0]) for c in curves.values()) < 2:
        return None
    fig, (left, right) = _figure(2)
    n_sequential = 0
    for label, (rounds, seconds, accuracy) in curves.items():
        style, name = {}, label
        if label in sequential:
            style = {"color": "black", "linestyle": SEQUENTIAL_STYLES[n_sequential % len(SEQUENTIAL_STYLES)]}
            name, n_sequential = f"{label} (sequential)", n_sequential + 1
        left.plot(rounds, accuracy, marker=".", label=name, **style)
        right.plot(seconds, accuracy, marker=".", label=name, **style)
    left.xaxis.get_major_locator().set_params(integer=True)
    _finish(left, "round", score.name, "convergence by round")
    _finish(right, "training seconds (s)", score.name, "convergence by time")
    return _save(fig, out / "convergence.png")


def _spread_figure(ok: list[dict], out: Path, score: Score = ACCURACY) -> Path | None:
    by_case: dict[str, list[float]] = defaultdict(list)
    for row in ok:
        by_case[row["case"]].append(row[score.final])
    if max((len(v) for v in by_case.values()), default=0) < 2:
        return None
    fig, (ax,) = _figure(1, width=max(5.2, 0.6 * len(by_case) + 2))
    for i, values in enumerate(by_case.values()):
        ax.scatter([i] * len(values), values, alpha=0.6, color="C0")
        ax.hlines(statistics.mean(values), i - 0.3, i + 0.3, color="C3")
    ax.set_xticks(range(len(by_case)), list(by_case), rotation=30, ha="right", fontsize=8)
    _finish(ax, "case", f"final {score.name}", f"final {score.name} of every repeat (red: mean)")
    return _save(fig, out / "spread.png")


def plot_sweep(sweep_dir: str | Path) -> list[Path]:
    """Draw the figures of a finished (or partly finished) sweep into ``sweep_dir/plots/``."""
    sweep_dir = Path(sweep_dir)
    results = read_csv_rows(sweep_dir / "results.csv")
    ok = [r for r in results if r["status"] == "ok"]
    if not ok:
        return []
    out = sweep_dir / "plots"
    out.mkdir(exist_ok=True)
    varied = sweep_varied_keys(results)
    regression = "final_test_r2" in results[0]
    score = R2 if regression else ACCURACY
    units = target_units(sweep_dir / ok[0]["run"]) if regression else ""
    paths: list[Path | None] = []
    for key in varied:
        if all(_is_number(r.get(key)) for r in ok) and len({r[key] for r in ok}) > 1:
            others = [k for k in varied if k != key]
            paths.append(_key_figure(ok, key, others, out, score, units))
            if key == "mappers":
                paths.append(_speedup_figure(ok, others, out))
    by_case: dict[str, list[Path]] = defaultdict(list)
    sequential = set()
    for row in ok:
        by_case[row["case"]].append(sweep_dir / row["run"])
        if _is_sequential(row):
            sequential.add(row["case"])
    curves = {case: c for case, dirs in by_case.items() if (c := _mean_curve(dirs, score.column))}
    paths.append(_convergence_figure(curves, sequential, out, score))
    widest = max(ok, key=lambda r: r["mappers"] if _is_number(r.get("mappers")) else 0)  # the first such
    paths.append(timeline_figure(sweep_dir / widest["run"], out / "timeline.png", f"run {widest['run']}"))
    paths.append(_spread_figure(ok, out, score))
    return [p for p in paths if p is not None]


# ---- run figures -----------------------------------------------------------------------------


def round_starts(rounds: list[dict]) -> dict[int, float]:
    """``{round: seconds since the first round's start at which its mappers start}`` (after its broadcast)."""
    starts, t = {}, 0.0
    for row in rounds:
        starts[row["round"]] = t + row["broadcast_seconds"]
        t += row["seconds"]
    return starts


def timeline_bars(rounds: list[dict], mappers: list[dict], sequential: bool) -> list[tuple[int, float, float, float]]:
    """``(mapper, start s, train s, comm s)`` of every mapper in every round, as the timeline draws them: the
    mappers of a round start together, or (``sequential``, the local engine) each where the one before ended."""
    starts = round_starts(rounds)
    bars: list[tuple[int, float, float, float]] = []
    next_start: dict[int, float] = {}
    for m in sorted(mappers, key=lambda m: (m["round"], m["mapper"])):
        if m["round"] not in starts:
            continue
        x0 = next_start.get(m["round"], starts[m["round"]]) if sequential else starts[m["round"]]
        bars.append((m["mapper"], x0, m["train_seconds"], m["comm_seconds"]))
        next_start[m["round"]] = x0 + m["train_seconds"] + m["comm_seconds"]
    return bars


def timeline_figure(run_dir: Path, path: Path, title: str = "") -> Path | None:
    """Each mapper's train (solid) and comm (hatched) seconds in every round, rounds laid end to end.

    Mappers report durations, not clock times, so each bar starts at its
    round's start plus the round's broadcast; the gap to the next round is
    the wait for the slowest mapper, the combine and the evaluation. On the
    local engine (summary.json's ``engine``) the mappers run one after
    another in the driver's process, and are drawn so: each starts where the
    one before it ended. The comm share of the mappers' time is written in
    the legend, which sits outside the axes, right of the last round.
    """
    import json

    rounds = read_csv_rows(run_dir / "rounds.csv")
    mappers = read_csv_rows(run_dir / "mapper_times.csv")
    if not rounds or not mappers:
        return None
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    sequential = summary.get("engine") == "local"
    starts = round_starts(rounds)
    n_mappers = max(m["mapper"] for m in mappers) + 1
    fig, (ax,) = _figure(1, width=8, height=max(2.5, 0.45 * n_mappers + 1.5))
    for mapper, x0, train, comm in timeline_bars(rounds, mappers, sequential):
        ax.broken_barh([(x0, train)], (mapper - 0.35, 0.7), color="C0")
        if comm > 0:  # an edge line keeps a bar of a few milliseconds visible
            ax.broken_barh(
                [(x0 + train, comm)], (mapper - 0.35, 0.7), facecolor="C3", edgecolor="C3", hatch="//", linewidth=0.8
            )
    for x in list(starts.values())[1:]:
        ax.axvline(x, color="gray", linewidth=0.5, alpha=0.5)
    from matplotlib.patches import Patch

    busy = sum(m["train_seconds"] + m["comm_seconds"] for m in mappers)
    comm = sum(m["comm_seconds"] for m in mappers)
    share = f"{100 * comm / busy:.2g}%" if busy > 0 and comm > 0 else "0%"
    ax.legend(
        handles=[
            Patch(color="C0", label="train"),
            Patch(facecolor="C3", edgecolor="C3", hatch="//", label=f"comm ({share} of\nmapper time)"),
        ],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
    )
    ax.set_yticks(range(n_mappers), [f"mapper {i}" for i in range(n_mappers)])
    ax.invert_yaxis()
    how = " (local engine: mappers one after another)" if sequential else ""
    ax.set_xlabel("seconds since the first round (s)")
    ax.set_title(f"per-mapper timeline {title}{how}".replace("  ", " ").strip(), fontsize=10)
    return _save(fig, path)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw one run's convergence and per-mapper timeline into ``run_dir/plots/``."""
    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    if run_is_regression(run_dir):
        return [
            p
            for p in [*_regression_run_figures(run_dir, out), timeline_figure(run_dir, out / "timeline.png")]
            if p is not None
        ]
    paths: list[Path | None] = []
    curve = _mean_curve([run_dir])
    if curve is not None:
        rounds, seconds, accuracy = curve
        fig, (left, right) = _figure(2)
        left.plot(rounds, accuracy, marker="o")
        right.plot(seconds, accuracy, marker="o")
        left.xaxis.get_major_locator().set_params(integer=True)
        _finish(left, "round", "test accuracy", "convergence by round")
        _finish(right, "training seconds (s)", "test accuracy", "convergence by time")
        paths.append(_save(fig, out / "convergence.png"))
    paths.append(timeline_figure(run_dir, out / "timeline.png"))
    return [p for p in paths if p is not None]


def _curves(ax, rows: list[dict], x: list[float], columns: list[tuple[str, str, str]]) -> None:
    """Plot rounds.csv's ``columns`` ``(column, label, line style)`` against ``x``; empty cells (no validation
    set) are left out."""
    for column, label, style in columns:
        points = [(xi, r[column]) for xi, r in zip(x, rows, strict=True) if _is_number(r.get(column))]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", linestyle=style, label=label)


def _regression_run_figures(run_dir: Path, out: Path) -> list[Path]:
    """A regression run's figures: R² by round and by time, RMSE and MAE by round (the targets' own units),
    and the losses by round (training units); the validation set's dashed beside the test set's."""
    rows = read_csv_rows(run_dir / "rounds.csv")
    if not rows:
        return []
    rounds = [r["round"] for r in rows]
    seconds = [sum(r["seconds"] for r in rows[: i + 1]) for i in range(len(rows))]
    units = target_units(run_dir)
    # an axis names the sets it shows: "test R²", or "R² (test, validation)" with a validation set
    sets = "" if not any(_is_number(r.get("val_r2")) for r in rows) else " (test, validation)"

    def named(metric: str, unit: str = "") -> str:
        inside = ", ".join(p for p in (sets[2:-1], unit) if p)
        return f"{metric} ({inside})" if sets else f"test {metric}" + (f" ({unit})" if unit else "")

    r2 = [("test_r2", "test", "-"), ("val_r2", "validation", "--")]
    fig, (left, right) = _figure(2)
    _curves(left, rows, rounds, r2)
    _curves(right, rows, seconds, r2)
    left.xaxis.get_major_locator().set_params(integer=True)
    _finish(left, "round", named("R²"), "R² by round")
    _finish(right, "training seconds (s)", named("R²"), "R² by time")
    paths = [_save(fig, out / "convergence.png")]
    fig, (left, right) = _figure(2)
    for ax, name in ((left, "rmse"), (right, "mae")):
        _curves(ax, rows, rounds, [(f"test_{name}", "test", "-"), (f"val_{name}", "validation", "--")])
        ax.xaxis.get_major_locator().set_params(integer=True)
        _finish(ax, "round", named(name.upper(), units), f"{name.upper()} by round")
    paths.append(_save(fig, out / "errors.png"))
    fig, (ax,) = _figure(1)
    _curves(
        ax, rows, rounds, [("train_loss", "train", ":"), ("test_loss", "test", "-"), ("val_loss", "validation", "--")]
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish(ax, "round", f"loss ({loss_units(run_dir)})", "loss by round")
    paths.append(_save(fig, out / "loss.png"))
    return paths


# ---- split-search figures --------------------------------------------------------------------


def plot_search(out: Path, rows: list[dict], facts: dict) -> list[Path]:
    """The search's figures: accuracy per combination (the study's Figure 3), histogram, against coupling."""
    out = Path(out) / "plots"
    out.mkdir(exist_ok=True)
    ids = [r["id"] for r in rows]
    acc = [r["test_accuracy"] for r in rows]
    base, warm = facts["baseline_test_accuracy"], facts["warmup_test_accuracy"]

    def lines(ax, horizontal: bool = True):
        draw = ax.axhline if horizontal else ax.axvline
        draw(base, color="C3", linestyle="--", label=f"unsplit baseline ({base:.3f})")
        draw(warm, color="gray", linestyle=":", label=f"after the warm-up ({warm:.3f})")

    title = (
        f"{facts['evaluated']} splits of hidden {facts['hidden']} into {facts['groups']} groups "
        f"({facts['n_rest']} samples after {facts['n_warmup']} of warm-up)"
    )
    fig, (ax,) = _figure(1, width=8)
    ax.plot(ids, acc, marker="o", linestyle="none" if len(ids) > 60 else "-", markersize=3, label="split")
    lines(ax)
    _finish(ax, "combination (id in combinations.csv)", "test accuracy after recombining", title)
    paths = [_save(fig, out / "accuracy.png")]
    fig, (ax,) = _figure(1)
    ax.hist(acc, bins=min(30, max(5, len(acc) // 3)), color="C0", alpha=0.8, label="splits")
    lines(ax, horizontal=False)
    _finish(ax, "test accuracy after recombining", "number of splits", "spread of the splits' accuracy")
    paths.append(_save(fig, out / "histogram.png"))
    fig, (ax,) = _figure(1)
    ax.scatter([r["cross_coupling"] for r in rows], acc, s=12, alpha=0.7, label="split")
    lines(ax)
    corr = facts.get("coupling_accuracy_correlation")
    _finish(
        ax,
        "cross-group coupling (mean |corr| of activations)",
        "test accuracy after recombining",
        "accuracy against coupling" + (f" (r = {corr:.2f})" if corr is not None else ""),
    )
    paths.append(_save(fig, out / "coupling.png"))
    return paths
