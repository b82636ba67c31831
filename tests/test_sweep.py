"""nnlib sweep: every case checked first, one row per run, finished runs skipped, failures recorded."""

import base64
import re
from pathlib import Path

import pytest

from nnlib.cli import main
from nnlib.config import load_config
from nnlib.driver import run
from nnlib.experiments.sweep import plan_sweep
from nnlib.outputs import read_csv_rows

TINY = "set: {train.rounds: 2, model.hidden: [8], mappers: 2}\n"


def embedded_images(page: Path) -> list[bytes]:
    """The PNG files an HTML report holds as data URIs, sorted."""
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page.read_text())
    return sorted(base64.b64decode(e) for e in found)


def write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_two_values_two_repeats_then_a_rerun_skips_what_finished(tmp_path, capsys):
    sweep = write(tmp_path, TINY + "grid: {combine: [average, sum]}\nrepeats: 2\ntarget_accuracy: 0.5\n")
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    rows = read_csv_rows(out / "results.csv")
    assert [(r["combine"], r["seed"], r["status"]) for r in rows] == [
        ("average", 0, "ok"),
        ("average", 1, "ok"),
        ("sum", 0, "ok"),
        ("sum", 1, "ok"),
    ]
    for row in rows:  # each row holds the numbers of the same run done directly, in this process
        direct = run(
            load_config(
                None,
                ["train.rounds=2", "model.hidden=[8]", "mappers=2", f"combine={row['combine']}", f"seed={row['seed']}"],
            ),
            log=lambda _m: None,
        )
        accs = [r["test_accuracy"] for r in direct.rounds]
        assert (row["final_test_accuracy"], row["best_test_accuracy"]) == (accs[-1], max(accs))
        assert row["rounds_run"] == 2
        assert 0 < row["seconds_to_target"] <= row["wall_seconds"]  # every run reached 0.5
    assert rows[0]["final_test_accuracy"] != rows[1]["final_test_accuracy"]  # the seeds differ
    assert "4 runs (0 already finished, 0 failed)" in capsys.readouterr().out

    (out / "case001-seed1" / "summary.json").unlink()  # as if that run had been interrupted
    kept = (out / "case000-seed0" / "model.npz").stat().st_mtime_ns
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert "4 runs (3 already finished, 0 failed)" in capsys.readouterr().out
    assert (out / "case000-seed0" / "model.npz").stat().st_mtime_ns == kept
    again = read_csv_rows(out / "results.csv")
    assert again[:3] == rows[:3]  # read back from the finished runs
    assert again[3]["final_test_accuracy"] == rows[3]["final_test_accuracy"]  # redone: same seed, same weights


@pytest.mark.slow
def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    missing = tmp_path / "missing.npz"
    sweep = write(tmp_path, TINY + f"cases:\n  - {{data.source: {missing}}}\n  - {{seed: 3}}\n")
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    failed, ok = read_csv_rows(tmp_path / "out" / "results.csv")
    assert failed["status"] == "failed" and f"data.source: file {missing} does not exist" in failed["error"]
    assert ok["status"] == "ok" and ok["seed"] == 3
    assert "2 runs (0 already finished, 1 failed)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            TINY + "grid: {mappers: [1, 0]}\n",
            "case 1 (mappers=0): --set: config key 'mappers': Input should be greater than or equal to 1, got 0",
        ),
        (TINY + "cases:\n  - {train.lrr: 0.1}\n", "case 0 (train.lrr=0.1): --set: unknown config key 'train.lrr'"),
        (TINY + "repeat: 3\n", "unknown key 'repeat'; did you mean 'repeats'?"),
        (TINY + "grid: {mappers: 4}\n", "'grid' maps keys to non-empty lists of values, got {'mappers': 4}"),
    ],
)
def test_a_bad_sweep_fails_in_one_line_before_anything_runs(tmp_path, capsys, text, expected):
    sweep = write(tmp_path, text)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and err.startswith(f"nnlib: error: sweep {sweep}: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_sweep_over_mappers_draws_its_figures_and_the_report_embeds_them(tmp_path, capsys):
    sweep = write(tmp_path, TINY + "grid: {mappers: [1, 2]}\nrepeats: 2\n")
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names == ["convergence.png", "mappers.png", "speedup.png", "spread.png", "timeline.png"]
    for name in names:
        data = (out / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and int.from_bytes(data[16:20], "big") > 300
    rows = read_csv_rows(out / "results.csv")
    assert all(r["train_seconds"] == pytest.approx(r["seconds_per_round"] * r["rounds_run"]) for r in rows)
    assert all(0 < r["train_seconds"] < r["wall_seconds"] for r in rows)

    assert main(["report", str(out)]) == 0
    assert embedded_images(out / "report.html") == sorted((out / "plots" / n).read_bytes() for n in names)
    md = (out / "report.md").read_text()
    assert f"nnlib sweep {sweep.resolve()} --out {out.resolve()}" in md
    assert "| 1 | 2/2 |" in md and "| 2 | 2/2 |" in md  # one row per case, both repeats finished


EXPERIMENTS = sorted((Path(__file__).parent.parent / "conf" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_study_sweep_is_valid(path):
    _, runs, _ = plan_sweep(path)  # every case's config checked
    assert len(runs) >= 8 and len({r.name for r in runs}) == len(runs)


@pytest.mark.slow
def test_the_threads_study_compares_1_to_8_mappers_averaged_and_summed(tmp_path):
    """The study's sweep file itself, on small data and the local engine so that it runs in seconds."""
    threads = next(p for p in EXPERIMENTS if p.stem == "threads")
    out = tmp_path / "threads"
    assert (
        main(
            [
                "sweep",
                str(threads),
                "--out",
                str(out),
                "--quiet",
                "--set",
                "engine=local",
                "--set",
                "data.n_samples=1200",
                "--set",
                "model.hidden=[16]",
                "--set",
                "train.local_epochs=1",
            ]
        )
        == 0
    )
    rows = read_csv_rows(out / "results.csv")
    assert sorted({(r["mappers"], r["combine"]) for r in rows}) == [
        (m, c) for m in (1, 2, 4, 8) for c in ("average", "sum")
    ]
    assert all(r["status"] == "ok" for r in rows)
    # one mapper: its weights summed are its weights averaged
    one = {(r["combine"], r["seed"]): r["final_test_accuracy"] for r in rows if r["mappers"] == 1}
    assert all(one["average", seed] == one["sum", seed] for seed in (0, 1, 2))
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names == ["mappers.png", "speedup.png", "spread.png", "timeline.png"]  # one round: no convergence curve
    assert main(["report", str(out)]) == 0
    assert embedded_images(out / "report.html") == sorted((out / "plots" / n).read_bytes() for n in names)
