"""The mapper comparison of ``nnlib report``: a table of medians and min–max over the repeats, and one verdict.

The verdict is tested on closed cases built from run summaries (a clear winner, differences within the spread,
an accuracy cost beyond it, a count that missed the target, none that reached it); the slow tests run the conf
files themselves (conf/experiments/mappers.yaml and conf/mappers_{1,2}.yaml) in a small --set form and check the
report against the runs' own rounds.csv.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from nnlib.cli import main
from nnlib.config import load_config
from nnlib.errors import NnlibError
from nnlib.experiments.report import (
    MapperRepeat,
    _mapper_comparison_runs,
    mapper_speedups,
    mapper_table,
    mapper_verdict,
)
from nnlib.experiments.sweep import plan_sweep
from nnlib.outputs import read_csv_rows

ROOT = Path(__file__).resolve().parent.parent


def repeats(
    mappers: int, to_target: list[float | None], final: list[float], epoch: list[float] | None = None, rounds: int = 1
) -> list[MapperRepeat]:
    """One mapper count's repeats, seeds 0, 1, ...; the epoch seconds default to the seconds to the target."""
    epoch = epoch or [t if t is not None else 9.0 for t in to_target]
    return [
        MapperRepeat(mappers, seed, e, t, None if t is None else rounds, a)
        for seed, (t, a, e) in enumerate(zip(to_target, final, epoch, strict=True))
    ]


# ---- the verdict on closed cases ------------------------------------------------------------------------------


def test_a_clear_winner_with_its_paired_speedup_and_an_accuracy_cost_within_the_spread():
    runs = (
        repeats(1, [2.0, 2.2, 2.4], [0.630, 0.634, 0.638])
        + repeats(2, [1.0, 1.0, 1.5], [0.629, 0.633, 0.640])
        + repeats(4, [1.6, 1.7, 1.8], [0.640, 0.641, 0.642])
        + repeats(8, [3.0, 3.1, 3.2], [0.64, 0.64, 0.64])
    )
    # seed by seed: 2.0/1.0, 2.2/1.0, 2.4/1.5 -> median 2.00, range 1.60–2.20
    assert mapper_verdict(runs, 0.62) == (
        "2 mappers are fastest to test accuracy 0.62 (median 1 s, 2.00x 1 mapper's time, 1.60–2.20x over the "
        "repeats), at a median final accuracy of 0.6330 against 1 mapper's 0.6340 (-0.0010, within the spread of "
        "the repeats); 1 mapper, 4 mappers and 8 mappers are slower beyond the spread."
    )


def test_differences_within_the_spread_are_named_as_such():
    runs = (
        repeats(1, [2.0, 2.1, 2.2], [0.63, 0.63, 0.63])
        + repeats(2, [1.0, 1.2, 1.7], [0.63, 0.63, 0.63])
        + repeats(4, [0.9, 1.6, 1.9], [0.63, 0.63, 0.63])
        + repeats(8, [1.1, 2.5, 1.5], [0.63, 0.63, 0.63])
    )
    verdict = mapper_verdict(runs, 0.62)
    assert verdict.startswith("2 mappers are fastest to test accuracy 0.62 (median 1.2 s")
    # seed by seed, 4 mappers are faster than 2 with seed 0 and slower with seeds 1 and 2, 8 mappers slower with
    # seeds 0 and 1 and faster with seed 2; 1 mapper is slower with every seed
    assert verdict.endswith(
        "; 4 mappers and 8 mappers are within the spread of that time; 1 mapper is slower beyond the spread."
    )


def test_a_difference_every_seed_agrees_on_is_beyond_the_spread_though_the_ranges_overlap():
    # the seeds' data sets differ in difficulty, so the ranges overlap; seed by seed 2 mappers always win
    runs = repeats(1, [1.0, 2.0, 3.0], [0.60, 0.65, 0.70]) + repeats(2, [0.9, 1.8, 2.7], [0.61, 0.66, 0.71])
    assert mapper_verdict(runs, 0.5) == (
        "2 mappers are fastest to test accuracy 0.5 (median 1.8 s, 1.11x 1 mapper's time in every repeat), at a median final accuracy of 0.6600 against 1 mapper's 0.6500 (+0.0100, beyond the spread of "
        "the repeats); 1 mapper is slower beyond the spread."
    )
    # the same numbers without a seed in common: the ranges overlap, so both differences are within the spread
    apart = repeats(1, [1.0, 2.0, 3.0], [0.60, 0.65, 0.70]) + [
        MapperRepeat(2, seed + 10, t, t, 1, a) for seed, (t, a) in enumerate([(0.9, 0.61), (1.8, 0.66), (2.7, 0.71)])
    ]
    verdict = mapper_verdict(apart, 0.5)
    assert "(+0.0100, within the spread of the repeats); 1 mapper is within the spread of that time." in verdict


def test_an_accuracy_cost_beyond_the_spread_is_said_with_its_sign():
    runs = repeats(1, [2.0, 2.0], [0.650, 0.655]) + repeats(4, [0.9, 1.0], [0.600, 0.610])
    verdict = mapper_verdict(runs, 0.55)
    assert "4 mappers are fastest" in verdict
    assert "at a median final accuracy of 0.6050 against 1 mapper's 0.6525 (-0.0475, beyond the spread" in verdict


def test_one_mapper_fastest_when_more_mappers_only_add_rounds():
    runs = repeats(1, [1.0, 1.1], [0.64, 0.65]) + repeats(2, [1.5, 1.6], [0.64, 0.65], rounds=3)
    assert mapper_verdict(runs, 0.6) == (
        "1 mapper is fastest to test accuracy 0.6 (median 1.05 s), at a median "
        "final accuracy of 0.6450; 2 mappers are slower beyond the spread."
    )


def test_a_count_that_missed_the_target_in_a_repeat_is_not_the_fastest_and_is_named():
    runs = (
        repeats(1, [2.0, 2.0, 2.0], [0.63] * 3)
        + repeats(2, [1.5, 1.6, 1.7], [0.63] * 3)
        + repeats(8, [0.5, None, 0.6], [0.61, 0.58, 0.61])
    )
    verdict = mapper_verdict(runs, 0.6)
    assert verdict.startswith("2 mappers are fastest")  # 8 mappers' median time is lower, but one repeat missed
    assert verdict.endswith("; 8 mappers missed it in 1 of 3 repeats.")


def test_no_count_reached_the_target_names_the_most_accurate_instead():
    runs = repeats(1, [None, None], [0.50, 0.52]) + repeats(2, [None, 1.0], [0.55, 0.61])
    assert mapper_verdict(runs, 0.6) == (
        "No mapper count reached test accuracy 0.6 in every repeat, so none is "
        "fastest to it; the highest median final accuracy is 2 mappers' (0.5800)."
    )


def test_a_single_mapper_count_is_no_comparison():
    with pytest.raises(NnlibError, match=r"two or more mapper counts, got \[2\]"):
        mapper_verdict(repeats(2, [1.0, 1.1], [0.6, 0.6]), 0.5)


def test_speedups_pair_the_repeats_by_seed():
    base = repeats(1, [2.0, 3.0, 4.0], [0.6] * 3)
    case = [r for r in repeats(2, [1.0, 1.0, 1.0], [0.6] * 3) if r.seed > 0]  # seeds 1 and 2 only
    assert mapper_speedups(base, case, "seconds_to_target") == [3.0, 4.0]
    other = [MapperRepeat(2, 7, 1.0, 2.0, 1, 0.6)]  # no seed in common: every pair
    assert mapper_speedups(base, other, "seconds_to_target") == [1.0, 1.5, 2.0]


def test_the_table_gives_medians_with_their_range_and_the_speedups():
    runs = (
        repeats(1, [2.0, 2.2, 2.4], [0.630, 0.634, 0.638], epoch=[1.0, 1.1, 1.2])
        + repeats(2, [1.0, 1.0, 1.5], [0.629, 0.633, 0.640], epoch=[0.5, 0.5, 0.6])
        + repeats(8, [3.0, None, 3.2], [0.64, 0.60, 0.64], epoch=[1.5, 1.5, 1.5], rounds=2)
    )
    table = mapper_table(runs, 0.62)
    assert table.columns == [
        "mappers",
        "repeats",
        "s per epoch",
        "speedup per epoch vs 1 mapper",
        "s to accuracy 0.62",
        "rounds to 0.62",
        "speedup to 0.62 vs 1 mapper",
        "final test accuracy",
    ]
    assert table.rows[0] == [1, 3, "1.1 (1–1.2)", "1.00x", "2.2 (2–2.4)", "1", "1.00x", "0.6340 (0.6300–0.6380)"]
    assert table.rows[1] == [
        2,
        3,
        "0.5 (0.5–0.6)",
        "2.00x (2.00–2.20)",
        "1 (1–1.5)",
        "1",
        "2.00x (1.60–2.20)",
        "0.6330 (0.6290–0.6400)",
    ]
    # 8 mappers: a repeat missed the target; its speedups pair the seeds that reached it (0 and 2)
    assert table.rows[2] == [
        8,
        3,
        "1.5",
        "0.73x (0.67–0.80)",
        "3.1 (3–3.2) (2 of 3 reached)",
        "2",
        "0.71x (0.67–0.75)",
        "0.6400 (0.6000–0.6400)",
    ]


def rows(varied: dict[str, list], seeds=(0, 1)) -> list[dict]:
    """results.csv rows (their columns in order: run, case, seed, the varied keys, status) of finished runs."""
    import itertools

    found = []
    for values in itertools.product(*varied.values()):
        for seed in seeds:
            case = dict(zip(varied, values, strict=True))
            found.append(
                {
                    "run": f"r{len(found)}",
                    "case": str(values),
                    "seed": seed,
                    **case,
                    "status": "ok",
                    "final_test_accuracy": 0.6,
                }
            )
    return found


def test_only_a_comparison_of_mapper_counts_alone_gets_the_section():
    assert len(_mapper_comparison_runs(rows({"mappers": [1, 2, 4]}))) == 6
    # a key that follows the count (the master a session got for its mappers) is still a mapper comparison
    follow = [{**r, "spark.master": f"local[{r['mappers']}]"} for r in rows({"mappers": [1, 2]})]
    follow = [
        {k: r[k] for k in ("run", "case", "seed", "mappers", "spark.master", "status", "final_test_accuracy")}
        for r in follow
    ]
    assert _mapper_comparison_runs(follow) is not None
    assert _mapper_comparison_runs(rows({"mappers": [1, 2], "combine": ["average", "sum"]})) is None
    assert _mapper_comparison_runs(rows({"mappers": [2]})) is None
    assert _mapper_comparison_runs(rows({"combine": ["average", "sum"]})) is None


def test_the_conf_files_compare_one_to_eight_mappers_on_generated_data():
    for m in (1, 2, 4, 8):
        config = load_config(ROOT / f"conf/mappers_{m}.yaml")
        assert (config.mappers, config.engine, config.data.source) == (m, "spark", "synthetic")
        assert config.data.n_samples >= 100_000  # enough work per epoch for mappers to pay off
    base, runs, target = plan_sweep(ROOT / "conf/experiments/mappers.yaml")
    assert base.resolve() == (ROOT / "conf/mappers_base.yaml").resolve() and target is not None
    assert sorted({r.case["mappers"] for r in runs}) == [1, 2, 4, 8]
    assert all(sum(r.case["mappers"] == m for r in runs) >= 3 for m in (1, 2, 4, 8))  # repeats over seeds


# ---- the conf files, end to end --------------------------------------------------------------------------------

SMALL = ["engine=local", "data.n_samples=20000", "model.hidden=[32]", "train.rounds=3"]


def seconds_to(run_dir: Path, target: float) -> float | None:
    """The training seconds until rounds.csv's test accuracy first reached ``target``, as the test reads them."""
    total = 0.0
    for row in read_csv_rows(run_dir / "rounds.csv"):
        total += row["seconds"]
        if row["test_accuracy"] >= target:
            return total
    return None


def verdict_of(report: str) -> str:
    lines = [ln for ln in report.splitlines() if ln.startswith("Verdict: ")]
    assert len(lines) == 1, report
    return lines[0].removeprefix("Verdict: ")


@pytest.mark.slow
def test_the_sweep_file_in_a_small_form_reports_every_count_and_a_verdict_its_runs_bear_out(tmp_path, capsys):
    out = tmp_path / "mappers"
    args = ["sweep", str(ROOT / "conf/experiments/mappers.yaml"), "--out", str(out), "--quiet"]
    for item in SMALL:
        args += ["--set", item]
    assert main(args) == 0
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Mapper counts" in report and "Target: test accuracy 0.62, the sweep file's target_accuracy" in report
    results = read_csv_rows(out / "results.csv")
    assert {r["status"] for r in results} == {"ok"} and len(results) == 12
    table = report.split("## Mapper counts", 1)[1].split("Verdict:", 1)[0]
    assert [ln.split("|")[1].strip() for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:] == [
        "1",
        "2",
        "4",
        "8",
    ]
    times = {m: [seconds_to(out / r["run"], 0.62) for r in results if r["mappers"] == m] for m in (1, 2, 4, 8)}
    complete = {m: t for m, t in times.items() if None not in t}
    verdict = verdict_of(report)
    if complete:  # the fastest count by median time among those that reached the target every time
        fastest = min(complete, key=lambda m: (statistics.median(complete[m]), m))
        assert verdict.startswith(
            f"{fastest} mapper{'' if fastest == 1 else 's'} "
            f"{'is' if fastest == 1 else 'are'} fastest to test accuracy 0.62"
        )
        for m in set(times) - set(complete):
            assert f"{m} mappers missed it in {times[m].count(None)} of 3 repeats" in verdict
    else:
        assert verdict.startswith("No mapper count reached test accuracy 0.62 in every repeat")


@pytest.mark.slow
def test_runs_of_the_conf_files_compared_by_one_report_get_the_target_every_run_reached(tmp_path, capsys):
    for m in (1, 2):
        for seed in (0, 1):
            args = [
                "run",
                str(ROOT / f"conf/mappers_{m}.yaml"),
                "--out",
                str(tmp_path / f"m{m}-s{seed}"),
                "--quiet",
                "--set",
                f"seed={seed}",
            ]
            for item in SMALL:
                args += ["--set", item]
            assert main(args) == 0
    assert main(["report", str(tmp_path / "m*"), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    runs = sorted(tmp_path.glob("m*-s*"))
    reached = min(max(r["test_accuracy"] for r in read_csv_rows(d / "rounds.csv")) for d in runs)
    target = int(reached * 1000) / 1000
    assert (
        f"Target: test accuracy {target:.4g}, the highest test accuracy every run reached (no target_accuracy given)"
    ) in report
    assert "missed" not in verdict_of(report)  # every run reached it, by construction
