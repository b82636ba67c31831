"""nnlib plot and nnlib report on a run: valid PNGs, every figure embedded in the one HTML file."""

import base64
import re

import pytest

from nnlib.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", "--out", str(out), "--quiet", "--set", "mappers=3", "--set", "train.rounds=3",
                 "--set", "model.hidden=[8]"]) == 0
    return out


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_draws_a_runs_convergence_and_timeline(run_dir, capsys):
    assert main(["plot", str(run_dir)]) == 0
    assert "2 figures" in capsys.readouterr().out
    for name in ("convergence.png", "timeline.png"):
        width, height = png_size((run_dir / "plots" / name).read_bytes())
        assert width > 300 and height > 200


def test_report_embeds_every_figure_and_says_how_to_rerun(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (run_dir / "report.html").read_text()
    figures = sorted((run_dir / "plots").glob("*.png"))
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(f.read_bytes() for f in figures)
    assert "src=\"http" not in page and "<link" not in page  # self-contained
    md = (run_dir / "report.md").read_text()
    assert all(f"(plots/{f.name})" in md for f in figures)
    config = (run_dir / "config.yaml").read_text()
    assert "mappers: 3" in config and "mappers: 3" in md
    assert f"nnlib run {run_dir.resolve() / 'config.yaml'}" in md
    assert re.search(r"\| CPU cores \| \d+ \|", md) and "| numpy |" in md


def test_report_of_a_folder_that_holds_no_run_fails_in_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}: not a finished run (no summary.json), a sweep" in err
    assert list(tmp_path.iterdir()) == []
