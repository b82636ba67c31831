"""nnlib plot and nnlib report on a run: valid PNGs, every figure embedded in the one HTML file."""

import base64
import contextlib
import io
import json
import re

import pytest

from nnlib.cli import main
from nnlib.outputs import read_csv_rows

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    assert (
        main(
            [
                "run",
                "--out",
                str(out),
                "--quiet",
                "--set",
                "mappers=3",
                "--set",
                "train.rounds=3",
                "--set",
                "model.hidden=[8]",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def reported(run_dir) -> str:
    """``nnlib report`` run once on the run; what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["report", str(run_dir)]) == 0
    return printed.getvalue()


def fmt(value) -> str:
    """A number as the report's tables write it (4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def test_plot_draws_a_runs_convergence_and_timeline(run_dir, capsys):
    from matplotlib.image import imread

    assert main(["plot", str(run_dir)]) == 0
    assert "2 figures" in capsys.readouterr().out
    # at 110 dpi: convergence, two 5.2 x 3.8 in panels; timeline, 8 in wide and 0.45 in per mapper + 1.5 in high
    for name, shape in (("convergence.png", (418, 1144)), ("timeline.png", (313, 880))):
        assert (run_dir / "plots" / name).read_bytes().startswith(PNG_SIGNATURE)
        pixels = imread(run_dir / "plots" / name)  # decodes the whole file
        assert pixels.shape == (*shape, 4)
        assert 0.01 < (pixels[..., :3] < 1).any(axis=-1).mean() < 0.5  # drawn on, and mostly white background


def test_report_embeds_every_figure_and_says_how_to_rerun(run_dir, reported):
    assert f"report: {run_dir / 'report.md'} and {run_dir / 'report.html'}" in reported
    page = (run_dir / "report.html").read_text()
    figures = sorted((run_dir / "plots").glob("*.png"))
    assert [f.name for f in figures] == ["convergence.png", "timeline.png"]
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(f.read_bytes() for f in figures)
    assert 'src="http' not in page and "<link" not in page  # self-contained
    md = (run_dir / "report.md").read_text()
    assert all(f"(plots/{f.name})" in md for f in figures)
    config = (run_dir / "config.yaml").read_text()
    assert "mappers: 3" in config and "mappers: 3" in md
    assert f"nnlib run {run_dir.resolve() / 'config.yaml'}" in md
    assert re.search(r"\| CPU cores \| \d+ \|", md) and "| numpy |" in md


def test_the_reports_tables_hold_the_runs_numbers(run_dir, reported):
    md, page = (run_dir / "report.md").read_text(), (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("final_test_accuracy", "final_test_loss", "rounds_run", "mappers", "n_params"):
        assert f"| {key} | {fmt(summary[key])} |" in md
    rounds = read_csv_rows(run_dir / "rounds.csv")
    assert [r["round"] for r in rounds] == [1, 2, 3]  # numbered from 1, as the console prints them
    for r in rounds:  # every round, in the Markdown table and in the HTML one
        cells = [
            fmt(r[c])
            for c in (
                "round",
                "test_accuracy",
                "test_loss",
                "train_loss",
                "seconds",
                "max_mapper_seconds",
                "overhead_seconds",
            )
        ]
        assert "| " + " | ".join(cells) + " |" in md
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" in page
    mappers = read_csv_rows(run_dir / "mapper_times.csv")
    for m in range(3):  # each mapper's samples over the three rounds
        seen = sum(row["n_samples"] for row in mappers if row["mapper"] == m)
        assert re.search(rf"^\| {m} \| [^|]+ \| {seen} \|", md, re.M)


def test_report_of_a_folder_that_holds_no_run_fails_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}: not a finished run (no summary.json), a sweep" in err
    assert list(tmp_path.iterdir()) == []


def test_the_timeline_draws_the_local_engines_mappers_one_after_another(run_dir):
    from nnlib.experiments.plots import round_starts, timeline_bars

    rounds, mappers = read_csv_rows(run_dir / "rounds.csv"), read_csv_rows(run_dir / "mapper_times.csv")
    starts = round_starts(rounds)
    bars = timeline_bars(rounds, mappers, sequential=True)  # the local engine: the run here
    assert [b[0] for b in bars] == [0, 1, 2] * 3
    for r in range(3):
        mine = bars[3 * r : 3 * r + 3]
        assert mine[0][1] == starts[r + 1]  # the round's first mapper starts after the broadcast
        for before, after in zip(mine, mine[1:]):  # each starts where the one before ended
            assert after[1] == pytest.approx(before[1] + before[2] + before[3])
    parallel = timeline_bars(rounds, mappers, sequential=False)  # Spark, MPI, mrjob: together
    assert [b[1] for b in parallel] == [starts[r] for r in (1, 2, 3) for _ in range(3)]
