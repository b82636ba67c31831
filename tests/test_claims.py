"""What the manual promises and the code must keep: the round whose weights a run's model holds is said in the
run's last lines, and ``nnlib predict`` gives the same bits on every engine, however a reader cuts the rows.

Each early-stopping case is checked against the run's own ``rounds.csv`` (the round of the lowest validation
loss) and against a second run stopped at that round, whose model must be the same weights.
"""

from __future__ import annotations

import csv

import numpy as np
import pyarrow.parquet as pq
import pytest

from nnlib.cli import main
from nnlib.data.sources import load_digits
from nnlib.model.model import ALIGN_ROWS, Model

# a small network at a large step: the validation loss falls, then wanders (digits, seed 0)
WANDERS = ["model.hidden=[16]", "train.lr=1.0", "data.validation_fraction=0.1"]


def _run(tmp_path, name: str, capsys, *sets: str) -> tuple[list[str], list[dict], Model]:
    """``nnlib run`` with ``sets``: (its stdout lines, its rounds.csv rows, its model)."""
    out = tmp_path / name
    argv = ["run", "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    return lines, rows, Model.load(out)


def _best(rows: list[dict]) -> int:
    losses = [float(r["val_loss"]) for r in rows]
    return int(np.argmin(losses)) + 1


def test_without_validation_the_last_line_names_the_last_round(tmp_path, capsys):
    lines, rows, _ = _run(tmp_path, "plain", capsys, "train.rounds=3")
    assert len(rows) == 3
    assert lines[-2] == "model: round 3's weights (the last round; no train.patience, so no validation choice)"
    assert lines[-1].startswith("final test accuracy ")


def test_when_the_best_round_is_the_last_the_line_says_so(tmp_path, capsys):
    lines, rows, _ = _run(
        tmp_path, "last", capsys, "train.rounds=3", "train.patience=5", "data.validation_fraction=0.1"
    )
    assert _best(rows) == 3 == len(rows)
    loss = min(float(r["val_loss"]) for r in rows)
    assert lines[-2] == f"model: round 3's weights (the last round, with the lowest validation loss {loss:.4f})"


def _same_weights_as_a_run_stopped_at(tmp_path, capsys, model: Model, best: int) -> None:
    """The model holds round ``best``'s weights: a run of ``best`` rounds (no patience) ends with them."""
    _, _, short = _run(tmp_path, "short", capsys, *WANDERS, f"train.rounds={best}")
    np.testing.assert_array_equal(model.params, short.params)


def test_a_best_round_before_the_last_is_named_though_patience_never_fired(tmp_path, capsys):
    lines, rows, model = _run(tmp_path, "quiet", capsys, *WANDERS, "train.rounds=12", "train.patience=4")
    best, last = _best(rows), len(rows)
    assert last == 12 and best < last  # the run went to its end, and an earlier round was better
    assert not any(line.startswith("no lower validation loss") for line in lines)  # patience never fired
    loss = min(float(r["val_loss"]) for r in rows)
    later = f"round {last}" if best + 1 == last else f"rounds {best + 1}-{last}"
    assert (
        lines[-2] == f"model: round {best}'s weights (the lowest validation loss {loss:.4f}); {later} did not lower it"
    )
    _same_weights_as_a_run_stopped_at(tmp_path, capsys, model, best)


def test_when_patience_fires_the_stop_and_the_kept_round_are_the_last_lines(tmp_path, capsys):
    lines, rows, model = _run(tmp_path, "fired", capsys, *WANDERS, "train.rounds=40", "train.patience=2")
    best, last = _best(rows), len(rows)
    assert last == best + 2 < 40
    loss = min(float(r["val_loss"]) for r in rows)
    assert lines[-3:-1] == [
        f"no lower validation loss for train.patience=2 rounds; stopping after round {last}, keeping round {best}'s "
        "weights",
        f"model: round {best}'s weights (the lowest validation loss {loss:.4f}); rounds {best + 1}-{last} did not "
        "lower it",
    ]
    _same_weights_as_a_run_stopped_at(tmp_path, capsys, model, best)


def test_a_best_round_trained_before_a_resume_is_named_and_the_kept_round_is_the_last(tmp_path, capsys):
    """A resume holds the best round's loss but not its weights (the checkpoints keep the newest rounds only): the
    line says which round the model holds, and that the best one is not it."""
    out = tmp_path / "resumed"
    assert (
        main(
            [
                "run",
                "--out",
                str(out),
                *sum((["--set", s] for s in [*WANDERS, "train.rounds=11", "train.patience=20"]), []),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--set", "train.rounds=13"]) == 0
    lines = capsys.readouterr().out.splitlines()
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    best = _best(rows)
    assert best <= 11 and len(rows) == 13
    loss = min(float(r["val_loss"]) for r in rows)
    assert lines[-2] == (
        f"model: round 13's weights (the last round); round {best} had the lowest validation loss "
        f"{loss:.4f} but was trained before the resume, and its weights are not kept"
    )


# ---- predict: the same bits however the rows are cut


def test_a_rows_logits_do_not_depend_on_how_the_rows_are_cut(tmp_path):
    """A BLAS product's bits depend on a row's place in the matrix: scoring in blocks aligned to the source's
    positions makes every cut (Spark's partitions and batches, the local path's pieces) give the same bits."""
    x, _ = load_digits()
    rng = np.random.default_rng(0)
    model = _tiny_model(tmp_path / "run")
    rows = model.standardize(x.astype(np.float32), "x", 0)
    whole = model.logits_of(rows, 0)
    for _ in range(5):
        cuts = sorted(set(rng.integers(1, len(rows), size=6).tolist()))
        edges = [0, *cuts, len(rows)]
        pieces = np.concatenate([model.logits_of(rows[a:b], a) for a, b in zip(edges, edges[1:])])
        assert np.array_equal(pieces, whole), cuts
    # without the alignment (every piece scored as if it began a source) the bits differ: the test can fail
    unaligned = np.concatenate([model.logits_of(rows[a : a + 7], 0) for a in range(0, len(rows), 7)])
    assert not np.array_equal(unaligned, whole)
    assert ALIGN_ROWS > 7


def _tiny_model(folder) -> Model:
    """A model of a real two-round run on digits, written to ``folder``."""
    from nnlib.config import load_config
    from nnlib.driver import run
    from nnlib.outputs import RunDir

    run(
        load_config(None, ["train.rounds=2", "model.hidden=[32]"]),
        RunDir(folder),
        log=lambda _m: None,
        warn=lambda _m: None,
    )
    return Model.load(folder)


@pytest.mark.slow
def test_local_and_spark_predict_agree_bit_for_bit_on_digits(spark, tmp_path, capsys):
    """The README's claim, on the case that broke it: digits, read by the driver and cut by Spark into
    partitions and Arrow batches unlike the local path's one piece."""
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--set", "train.rounds=2", "--quiet"]) == 0
    local, on_spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    assert main(["predict", str(out), "digits", "--out", str(local)]) == 0
    assert main(["predict", str(out), "digits", "--set", "engine=spark", "--out", str(on_spark)]) == 0
    capsys.readouterr()

    def by_row(path):
        table = pq.read_table(path)
        order = np.argsort(table.column("row").to_numpy())
        return (
            table.column("prediction").to_numpy()[order],
            np.array(table.column("probability").to_pylist(), np.float32)[order],
        )

    (p_local, q_local), (p_spark, q_spark) = by_row(local), by_row(on_spark)
    assert len(q_local) == 1797 and spark.sparkContext.defaultParallelism > 1  # more than one partition
    assert np.array_equal(p_local, p_spark)
    assert np.array_equal(q_local.view(np.uint32), q_spark.view(np.uint32))  # bits, not a tolerance
