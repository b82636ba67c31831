"""nnlib split-search: every split evaluated once, the closed-form counts, the same table on local and Spark."""

import csv

import pytest

from nnlib.cli import main


def rows(path):
    with open(path / "combinations.csv", newline="") as f:
        return list(csv.DictReader(f))


QUICK = ["--set", "model.hidden=[8]", "--set", "train.local_epochs=2", "--quiet"]


def test_eight_units_into_two_equal_groups_is_35_rows_and_the_figures(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["split-search", "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "35 distinct splits of hidden [8] into 2 equal groups; all evaluated" in printed
    table = rows(out)
    assert [int(r["id"]) for r in table] == list(range(35))
    splits = {r["groups"] for r in table}
    assert len(splits) == 35
    for text in splits:
        groups = [sorted(map(int, g.split())) for g in text.split("|")]
        assert sorted(sum(groups, [])) == list(range(8)) and [len(g) for g in groups] == [4, 4]
    assert all(0 < float(r["test_accuracy"]) <= 1 and 0 <= float(r["cross_coupling"]) <= 1 for r in table)
    for name in ("accuracy.png", "histogram.png", "coupling.png"):
        assert (out / "plots" / name).read_bytes().startswith(b"\x89PNG")
    assert "unsplit baseline" in printed and "best: #" in printed and "worst: #" in printed

    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    md = (out / "report.md").read_text()
    assert "| distinct_splits | 35 |" in md and f"--out {out.resolve()}" in md


def test_more_splits_than_the_limit_are_sampled_with_a_note(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["split-search", "--out", str(out), *QUICK, "--set", "model.hidden=[12]",
                 "--set", "split.max_combinations=20"]) == 0
    assert "462 distinct splits of hidden [12] into 2 equal groups; 20 drawn at random" in capsys.readouterr().out
    assert len({r["groups"] for r in rows(out)}) == 20


def test_any_sizes_counts_the_stirling_number(tmp_path, capsys):
    out = tmp_path / "search"
    assert main(["split-search", "--out", str(out), *QUICK, "--set", "model.hidden=[6]",
                 "--set", "split.equal_sizes=false"]) == 0
    assert "31 distinct splits of hidden [6] into 2 groups of any size; all evaluated" in capsys.readouterr().out
    assert len(rows(out)) == 31


@pytest.mark.parametrize("sets,expected", [
    (["--set", "engine=mpi"], "split-search runs on engine local or spark, got engine=mpi"),
    (["--set", "model.hidden=[7]"], "7 hidden units do not split into 2 equal groups"),
    (["--set", "split.groups=9"], "model.hidden=[8] has a layer with fewer units than split.groups=9"),
])
def test_a_search_that_cannot_run_is_one_line(tmp_path, capsys, sets, expected):
    assert main(["split-search", "--out", str(tmp_path / "s"), *QUICK, *sets]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_the_search_gives_the_same_table_on_spark_as_locally(spark, tmp_path):
    assert main(["split-search", "--out", str(tmp_path / "local"), *QUICK]) == 0
    assert main(["split-search", "--out", str(tmp_path / "spark"), *QUICK, "--set", "engine=spark",
                 "--set", "spark.master=local[4]"]) == 0
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "local")]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "spark")]
