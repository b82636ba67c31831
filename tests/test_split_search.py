"""nnlib split-search: every split evaluated once, the closed-form counts; each row is the ``combine: split``
run of its groups and the baseline a plain run, exactly; the same table on the local, mrjob and Spark engines."""

import csv
import json
from dataclasses import dataclass, fields, replace

import numpy as np
import pytest
from conftest import needs_mrjob

from nnlib.cli import main
from nnlib.config import load_config
from nnlib.core.split import Split
from nnlib.driver import RunResult, Setup, prepare, run, train_rounds
from nnlib.engines import make_engine
from nnlib.experiments.search import format_split, search_config, split_search, unsplit
from nnlib.rounds.reduce import make_server


def rows(path):
    with open(path / "combinations.csv", newline="") as f:
        return list(csv.DictReader(f))


def _quiet(_message):
    pass


QUICK = [
    "--set",
    "model.hidden=[8]",
    "--set",
    "mappers=2",
    "--set",
    "train.rounds=2",
    "--set",
    "train.local_epochs=1",
    "--quiet",
]
# four mappers, two groups: each sub-network is trained by two mappers; two hidden layers: 9 splits
SMALL = [
    "engine=local",
    "mappers=4",
    "train.rounds=3",
    "train.local_epochs=1",
    "model.hidden=[4,4]",
    "train.batch_size=32",
    "train.lr=0.1",
    "seed=7",
    "split.groups=2",
]


@dataclass(frozen=True)
class FixedGroups(Setup):
    """The oracle: a ``combine: split`` run whose sub-network round trains ``split``'s groups, in that order."""

    split: Split | None = None

    def round_payload(self, payload, r, result):
        payload = super().round_payload(payload, r, result)
        if payload.subnets is None:
            return payload
        labels = tuple(tuple(int(u) for u in lab) for lab in self.split.labels())
        return replace(payload, subnets=replace(payload.subnets, labels=labels))


def run_with_groups(config, split: Split) -> RunResult:
    """A whole run from round 0 on a fresh local engine, its last round's groups fixed to ``split``."""
    setup = prepare(config, _quiet)
    fixed = FixedGroups(**{f.name: getattr(setup, f.name) for f in fields(Setup)}, split=split)
    result = RunResult(setup.first.params, {})
    server = make_server(setup.config, setup.first.params)
    result.params = train_rounds(
        make_engine(setup.config), fixed, setup.first, 0, None, result, log=_quiet, warn=_quiet, server=server
    ).params
    return result


def as_split(groups) -> Split:
    """A summary's ``split_groups`` as a :class:`Split`, groups in the run's order."""
    return Split(tuple(tuple(tuple(g) for g in layer) for layer in groups))


def canonical(split: Split) -> Split:
    """The search's form of a split: each layer's groups ordered by their smallest unit."""
    return Split(tuple(tuple(sorted(layer, key=min)) for layer in split.groups))


@pytest.mark.parametrize("method", ["random", "independence", "alternating"])
def test_fixing_the_groups_a_method_chose_is_the_same_run(method):
    sets = SMALL + ["combine=split", f"split.method={method}", "train.momentum=0.9"]
    done = run(load_config(None, sets), log=_quiet, warn=_quiet)
    np.testing.assert_array_equal(
        run_with_groups(load_config(None, sets), as_split(done.summary["split_groups"])).params, done.params
    )


# the optimizer's and the server optimizer's state carried into the last round; mappers 2, 3 take the
# groups in the alternating pairing across the two layers
STATEFUL = SMALL + ["split.method=alternating", "train.momentum=0.9", "server.lr=0.8", "server.momentum=0.5"]


@pytest.mark.slow  # nine runs against a search
def test_each_row_is_the_split_run_of_its_groups(tmp_path):
    search = split_search(load_config(None, STATEFUL), tmp_path / "search", quiet=True, log=_quiet, warn=_quiet)
    assert len(search.rows) == 9
    config = search_config(load_config(None, STATEFUL), 2)
    for row in search.rows:
        split = as_split(
            [[[int(u) for u in g.split()] for g in layer.split("|")] for layer in row["groups"].split("/")]
        )
        alone = run_with_groups(config, split).rounds[-1]  # on its own, from round 0
        assert (row["test_accuracy"], row["test_loss"]) == (alone["test_accuracy"], alone["test_loss"]), row["id"]
    done = run(load_config(None, STATEFUL + ["combine=split"]), log=_quiet, warn=_quiet)
    chosen = as_split(done.summary["split_groups"])
    same = next(r for r in search.rows if r["groups"] == format_split(canonical(chosen)))
    assert same["cross_coupling"] == done.summary["split_cross_coupling"]

    # the baseline and the warm-up are the plain run with split.method=none
    plain = run(unsplit(load_config(None, STATEFUL + ["combine=split"])), log=_quiet, warn=_quiet)
    f = search.facts
    assert (f["baseline_test_accuracy"], f["baseline_test_loss"]) == (
        plain.summary["final_test_accuracy"],
        plain.summary["final_test_loss"],
    )
    assert f["warmup_test_accuracy"] == plain.rounds[1]["test_accuracy"]
    assert f["n_warmup"] == sum(m["n_samples"] for m in plain.mapper_rows if m["round"] == 1)
    assert f["n_rest"] == sum(m["n_samples"] for m in plain.mapper_rows if m["round"] == 3)
    assert f["n_warmup"] + f["n_rest"] == plain.summary["n_train"]
    assert f["beat_baseline"] == sum(r["test_accuracy"] > f["baseline_test_accuracy"] for r in search.rows)
    saved = json.loads((tmp_path / "search" / "search.json").read_text())
    assert saved["config"]["combine"] == "split" and saved["config"]["split"]["groups"] == 2


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param([], id="local"),
        pytest.param(["engine=mrjob", "mrjob.runner=inline"], id="mrjob", marks=[needs_mrjob, pytest.mark.slow]),
    ],
)
def test_a_split_run_prints_its_unsplit_baseline_a_plain_run(tmp_path, capsys, engine):
    sets = SMALL + ["combine=split"]
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *[a for s in sets + engine for a in ("--set", s)]]) == 0
    summary = json.loads((out / "summary.json").read_text())
    plain = run(unsplit(load_config(None, sets)), log=_quiet, warn=_quiet)  # on the local engine
    assert summary["baseline_test_accuracy"] == plain.summary["final_test_accuracy"]
    assert summary["baseline_test_loss"] == plain.summary["final_test_loss"]
    baseline = json.loads((out / "baseline" / "summary.json").read_text())
    assert baseline["split_groups"] == [[[0, 1, 2, 3]], [[0, 1, 2, 3]]]
    assert (
        f"final test accuracy {summary['final_test_accuracy']:.4f} (unsplit baseline "
        f"{plain.summary['final_test_accuracy']:.4f})"
    ) in capsys.readouterr().out


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
    assert len({r["test_accuracy"] for r in table}) > 1  # the split is what differs between rows
    for name in ("accuracy.png", "histogram.png", "coupling.png"):
        assert (out / "plots" / name).read_bytes().startswith(b"\x89PNG")
    facts = json.loads((out / "search.json").read_text())
    best = max(table, key=lambda r: float(r["test_accuracy"]))
    assert f"best: #{best['id']} [{best['groups']}] accuracy {float(best['test_accuracy']):.4f}" in printed
    assert f"unsplit baseline {facts['baseline_test_accuracy']:.4f}; 35 splits" in printed

    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    md = (out / "report.md").read_text()
    assert "| distinct_splits | 35 |" in md and f"--out {out.resolve()}" in md


@pytest.mark.slow  # a sampled search
def test_more_splits_than_the_limit_are_sampled_with_a_note(tmp_path, capsys):
    out = tmp_path / "search"
    assert (
        main(
            [
                "split-search",
                "--out",
                str(out),
                *QUICK,
                "--set",
                "model.hidden=[12]",
                "--set",
                "split.max_combinations=20",
            ]
        )
        == 0
    )
    assert "462 distinct splits of hidden [12] into 2 equal groups; 20 drawn at random" in capsys.readouterr().out
    assert len({r["groups"] for r in rows(out)}) == 20


def test_any_sizes_counts_the_stirling_number(tmp_path, capsys):
    out = tmp_path / "search"
    assert (
        main(
            ["split-search", "--out", str(out), *QUICK, "--set", "model.hidden=[6]", "--set", "split.equal_sizes=false"]
        )
        == 0
    )
    assert "31 distinct splits of hidden [6] into 2 groups of any size; all evaluated" in capsys.readouterr().out
    assert len(rows(out)) == 31


@pytest.mark.parametrize(
    "sets,expected",
    [
        (["--set", "engine=mpi"], "split-search runs on engine local, spark or mrjob, got engine=mpi"),
        (["--set", "model.hidden=[7]"], "7 hidden units do not split into 2 equal groups"),
        (["--set", "split.groups=9"], "model.hidden=[8] has a layer with fewer units than split.groups=9"),
        (["--set", "mappers=3"], "split-search: combine=split: mappers (3) must be a multiple of split.groups (2)"),
        (["--set", "train.rounds=1"], "train.rounds must be >= 2, got 1"),
        (["--set", "split.method=none"], "split.method must be independence, random or alternating"),
        (["--set", "train.target_accuracy=0.9"], "train.target_accuracy stops a run early and must be unset, got 0.9"),
        (["--set", "train.sync_rounds=2"], "train.sync_rounds must be < train.rounds (2), got 2"),
    ],
)
def test_a_search_that_cannot_run_is_one_line(tmp_path, capsys, sets, expected):
    assert main(["split-search", "--out", str(tmp_path / "s"), *QUICK, *sets]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def _without_seconds(table):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in table]


@needs_mrjob
@pytest.mark.slow  # two searches
def test_the_search_gives_the_same_table_on_mrjob_as_locally(tmp_path):
    sets = [
        "--quiet",
        "--set",
        "model.hidden=[4]",
        "--set",
        "mappers=2",
        "--set",
        "train.rounds=2",
        "--set",
        "train.local_epochs=1",
    ]
    assert main(["split-search", "--out", str(tmp_path / "local"), *sets]) == 0
    assert (
        main(
            [
                "split-search",
                "--out",
                str(tmp_path / "mrjob"),
                *sets,
                "--set",
                "engine=mrjob",
                "--set",
                "mrjob.runner=inline",
            ]
        )
        == 0
    )
    assert len(rows(tmp_path / "local")) == 3
    assert _without_seconds(rows(tmp_path / "local")) == _without_seconds(rows(tmp_path / "mrjob"))


@pytest.mark.slow
def test_the_search_gives_the_same_table_on_spark_as_locally(spark, tmp_path):
    assert main(["split-search", "--out", str(tmp_path / "local"), *QUICK]) == 0
    assert (
        main(
            [
                "split-search",
                "--out",
                str(tmp_path / "spark"),
                *QUICK,
                "--set",
                "engine=spark",
                "--set",
                "spark.master=local[4]",
            ]
        )
        == 0
    )
    assert _without_seconds(rows(tmp_path / "local")) == _without_seconds(rows(tmp_path / "spark"))
    local, remote = (json.loads((tmp_path / d / "search.json").read_text()) for d in ("local", "spark"))
    assert remote["baseline_test_accuracy"] == local["baseline_test_accuracy"]
    assert remote["warmup_test_accuracy"] == local["warmup_test_accuracy"]
    assert spark.sparkContext._jsc is not None  # the test run's one session is still up after the search
