"""nnlib report, sweeps and nnlib predict of regression runs and of weighted runs.

A regression run's report and a sweep of regression cases show R², RMSE, MAE and loss where a classifier's show
accuracy, with figures whose axes say what they show; mixing the two tasks is one line. ``nnlib predict`` of a
regressor on Spark writes the local engine's predictions and figures to the bit, and ``data.weight_column``
weighs predict's figures as a run weighs its test set: on the run's own test rows, its final figures exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import on
from nnlib.api import train
from nnlib.cli import main
from nnlib.data.dataset import _split
from nnlib.experiments import plots
from nnlib.model.model import load_model
from nnlib.outputs import read_csv_rows
from test_regression import N, REG, friedman1, friedman_csv, write_csv

QUICK = {**REG, "train.rounds": 3}


def fmt(value) -> str:
    """A number as the report's tables write it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@pytest.fixture
def axes(monkeypatch) -> dict[str, list[tuple[str, str]]]:
    """``{figure file name: [(x label, y label) of each panel]}`` of the figures drawn while the test runs (the
    real figures are still written: this only reads their axes before they are saved)."""
    drawn: dict[str, list[tuple[str, str]]] = {}
    save = plots._save

    def reading(fig, path):
        drawn[path.name] = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", reading)
    return drawn


def weighted_csv(tmp_path, name="f.csv", **extra) -> tuple[str, np.ndarray]:
    """Friedman's rows with a weight column ``w`` (0.5 to 3) and more columns; the weights too."""
    w = np.random.default_rng(7).uniform(0.5, 3.0, size=N)
    return friedman_csv(tmp_path, name, w=w, **extra), w


# ---- nnlib report of a regression run ---------------------------------------------------------------------------


def test_report_of_a_regression_run_shows_r2_rmse_mae_and_loss(tmp_path, capsys, axes):
    src = friedman_csv(tmp_path, v=np.arange(N) % 5 == 0)
    run = train(overrides={**QUICK, "data.source": src, "data.validation_column": "v"}, out=tmp_path / "run")
    s = run.summary
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "report: " in capsys.readouterr().out
    md = (tmp_path / "run" / "report.md").read_text()
    for key in ("final_test_r2", "final_test_rmse", "final_test_mae", "final_test_loss"):
        assert f"| {key} | {fmt(s[key])} |" in md
    assert "final_test_accuracy" not in md and "test_accuracy" not in md
    rounds = read_csv_rows(tmp_path / "run" / "rounds.csv")
    header = (
        "| round | test_r2 | test_rmse | test_mae | test_loss | val_r2 | val_rmse | val_mae | val_loss | train_loss |"
    )
    assert header in md
    last = rounds[-1]
    assert (
        f"| 3 | {fmt(last['test_r2'])} | {fmt(last['test_rmse'])} | {fmt(last['test_mae'])} | "
        f"{fmt(last['test_loss'])} | {fmt(last['val_r2'])} |"
    ) in md
    assert sorted(p.name for p in (tmp_path / "run" / "plots").glob("*.png")) == [
        "convergence.png",
        "errors.png",
        "loss.png",
        "timeline.png",
    ]
    assert axes["convergence.png"] == [
        ("round", "R² (test, validation)"),
        ("training seconds (s)", "R² (test, validation)"),
    ]
    assert axes["errors.png"] == [
        ("round", "RMSE (test, validation, target units)"),
        ("round", "MAE (test, validation, target units)"),
    ]
    assert axes["loss.png"] == [("round", "loss (training units: standardised targets)")]
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4


def test_a_regression_runs_axes_without_a_validation_set_say_test(tmp_path, axes):
    x, y = friedman1()
    y2 = np.stack([y, -2 * y + 3], axis=1)
    columns = {**{f"f{j}": x[:, j] for j in range(10)}, "a": y2[:, 0], "b": y2[:, 1]}
    src = write_csv(tmp_path / "two.csv", columns)
    overrides = {**QUICK, "data.source": src, "data.label_columns": ["a", "b"], "data.standardize_target": False}
    del overrides["data.label_column"]
    train(overrides=overrides, out=tmp_path / "run")
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert axes["convergence.png"][0] == ("round", "test R²")
    assert axes["errors.png"] == [
        ("round", "test RMSE (target units, mean over 2 targets)"),
        ("round", "test MAE (target units, mean over 2 targets)"),
    ]
    assert axes["loss.png"] == [("round", "loss (training units)")]  # targets as they are


# ---- several runs compared, and sweeps ------------------------------------------------------------------------


def test_comparing_regression_runs_ranks_them_by_test_r2(tmp_path, capsys, axes):
    src = friedman_csv(tmp_path)
    runs = {}
    for lr in (0.05, 0.001):
        runs[lr] = train(overrides={**QUICK, "data.source": src, "train.lr": lr}, out=tmp_path / f"lr{lr}").summary
    out = tmp_path / "cmp"
    assert main(["report", str(tmp_path / "lr0.001"), str(tmp_path / "lr0.05"), "--out", str(out)]) == 0
    rows = read_csv_rows(out / "results.csv")
    assert [r["train.lr"] for r in rows] == [0.001, 0.05]
    for row in rows:
        s = runs[row["train.lr"]]
        for key in ("final_test_r2", "final_test_rmse", "final_test_mae", "final_test_loss"):
            assert row[key] == s[key]
        assert row["final_val_r2"] is None or row["final_val_r2"] == ""  # no validation set
        assert "final_test_accuracy" not in row
    md = (out / "report.md").read_text()
    best = max(runs, key=lambda lr: runs[lr]["final_test_r2"])
    worst = min(runs, key=lambda lr: runs[lr]["final_test_r2"])
    assert runs[best]["final_test_r2"] > runs[worst]["final_test_r2"]
    assert f"Highest final test R²: train.lr={best} ({runs[best]['final_test_r2']:.4g})." in md
    cases = md.split("## Cases")[1].split("## Figures")[0]
    assert cases.index(f"| {best} | 1/1 | {fmt(runs[best]['final_test_r2'])} |") < cases.index(
        f"| {worst} | 1/1 | {fmt(runs[worst]['final_test_r2'])} |"
    )  # highest R² first
    assert "final test RMSE" in cases and "final validation R²" not in cases
    assert ("train.lr", "final test R²") in axes["train_lr.png"]
    assert ("train.lr", "final test RMSE (target units)") in axes["train_lr.png"]
    assert axes["convergence.png"][0] == ("round", "test R²")


def test_a_report_mixing_regression_and_classification_runs_is_one_line(tmp_path, capsys):
    train(overrides={**QUICK, "data.source": friedman_csv(tmp_path)}, out=tmp_path / "reg")
    assert (
        main(["run", "--out", str(tmp_path / "cls"), "--quiet", "--set", "train.rounds=1", "--set", "model.hidden=[8]"])
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["report", str(tmp_path / "reg"), str(tmp_path / "cls"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"nnlib: error: report: {tmp_path / 'reg'} is a regression run (model.task=regression) and "
        f"{tmp_path / 'cls'} is a classification run; a report compares runs of one task (by test "
        "accuracy or by test R²): report them apart\n"
    )
    assert not out.exists()


def _sweep(tmp_path, text: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_a_sweep_mixing_tasks_or_asking_a_regression_for_a_target_accuracy_is_one_line(tmp_path, capsys):
    src = friedman_csv(tmp_path)
    reg = f"{{model.task: regression, data.label_column: target, data.source: {src}}}"
    mixed = _sweep(tmp_path, f"set: {{train.rounds: 1}}\ncases:\n  - {reg}\n  - {{seed: 2}}\n")
    assert main(["sweep", str(mixed), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"nnlib: error: sweep {mixed}: its cases mix model.task=classification and regression "
        "(classification: case 1 (seed=2); regression: case 0 (model.task=regression,"
    )
    assert err.endswith("a sweep compares runs of one task (by test accuracy or by test R²): sweep them apart\n")
    assert err.count("\n") == 1
    target = _sweep(tmp_path, f"set: {{train.rounds: 1}}\ncases:\n  - {reg}\ntarget_accuracy: 0.9\n")
    assert main(["sweep", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "target_accuracy=0.9 is a classifier's test accuracy; a model.task=regression case has none" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_sweep_of_regression_cases_compares_them_by_r2(tmp_path, capsys, axes):
    src = friedman_csv(tmp_path)
    sweep = _sweep(
        tmp_path,
        f"set: {{model.task: regression, data.label_column: target, data.source: {src}, "
        "train.rounds: 2, model.hidden: [16], train.batch_size: 16}\n"
        "grid: {mappers: [1, 2]}\nrepeats: 2\n",
    )
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    rows = read_csv_rows(out / "results.csv")
    assert [(r["mappers"], r["seed"], r["status"]) for r in rows] == [
        (1, 0, "ok"),
        (1, 1, "ok"),
        (2, 0, "ok"),
        (2, 1, "ok"),
    ]
    for row in rows:  # each row holds its run's own figures
        s = json.loads((out / row["run"] / "summary.json").read_text())
        r2 = [r["test_r2"] for r in read_csv_rows(out / row["run"] / "rounds.csv")]
        assert (row["final_test_r2"], row["best_test_r2"]) == (s["final_test_r2"], max(r2))
        assert (row["final_test_rmse"], row["final_test_mae"], row["final_test_loss"]) == (
            s["final_test_rmse"],
            s["final_test_mae"],
            s["final_test_loss"],
        )
    names = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert names == ["convergence.png", "mappers.png", "speedup.png", "spread.png", "timeline.png"]
    assert axes["mappers.png"] == [
        ("mappers", "training seconds (s)"),
        ("mappers", "final test R²"),
        ("mappers", "final test RMSE (target units)"),
    ]
    assert axes["spread.png"] == [("case", "final test R²")]
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    mean = {m: np.mean([r["final_test_r2"] for r in rows if r["mappers"] == m]) for m in (1, 2)}
    best = max(mean, key=mean.get)
    assert f"Highest final test R²: mappers={best} ({mean[best]:.4g})." in md
    assert "| mappers | runs | final test R² | final test RMSE | final test MAE | final test loss |" in md


# ---- nnlib predict: weighted figures ------------------------------------------------------------------------


def _test_rows_csv(tmp_path, src_columns: dict, name: str) -> str:
    """The run's own test rows (the split every run of seed 0 makes), in its order, as a CSV file."""
    _, test_idx = _split(N, 0.2, 0)
    return write_csv(tmp_path / name, {k: np.asarray(v)[test_idx] for k, v in src_columns.items()})


def _columns(w, **extra) -> dict:
    x, y = friedman1()
    return {**{f"f{j}": x[:, j] for j in range(10)}, "target": y, "w": w, **extra}


def test_weighted_predict_of_a_regressors_test_rows_is_the_runs_final_figures(tmp_path, capsys):
    src, w = weighted_csv(tmp_path)
    run = train(overrides={**QUICK, "data.source": src, "data.weight_column": "w"}, out=tmp_path / "run").summary
    test = _test_rows_csv(tmp_path, _columns(w), "test.csv")
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(tmp_path / "run"),
                test,
                "--set",
                "data.weight_column=w",
                "--out",
                str(tmp_path / "p.parquet"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith(
        f"predict: {N // 5} rows; RMSE {run['final_test_rmse']:.6g}, MAE {run['final_test_mae']:.6g}"
        f", R² {run['final_test_r2']:.4f}, loss {run['final_test_loss']:.4f}"
    )
    from nnlib.model.predict import predict_source

    model = load_model(tmp_path / "run")
    done = predict_source(model, test, ["data.weight_column=w"])
    assert (done.rmse, done.mae, done.r2, done.loss) == (
        run["final_test_rmse"],
        run["final_test_mae"],
        run["final_test_r2"],
        run["final_test_loss"],
    )
    plain = predict_source(model, test)  # the same rows unweighted: other figures (the test can fail)
    assert plain.rmse != done.rmse and plain.r2 != done.r2
    assert pq.read_table(tmp_path / "p.parquet").column_names == ["row", "prediction"]  # the weight is no output


def test_weighted_predict_of_a_classifiers_test_rows_is_the_runs_final_figures(tmp_path):
    x, y = friedman1()
    w = np.random.default_rng(3).uniform(0.2, 4.0, size=N)
    columns = {**{f"f{j}": x[:, j] for j in range(10)}, "label": (y > np.median(y)).astype(np.int64), "w": w}
    src = write_csv(tmp_path / "c.csv", columns)
    run = train(
        overrides={
            "data.source": src,
            "data.label_column": "label",
            "data.weight_column": "w",
            "train.rounds": 3,
            "model.hidden": [16],
            "mappers": 2,
        },
        out=tmp_path / "run",
    ).summary
    test = _test_rows_csv(tmp_path, columns, "test.csv")
    from nnlib.model.predict import predict_source

    model = load_model(tmp_path / "run")
    done = predict_source(model, test, ["data.weight_column=w"])
    assert (done.accuracy, done.loss) == (run["final_test_accuracy"], run["final_test_loss"])
    _, test_idx = _split(N, 0.2, 0)
    hit = model.predict(x[test_idx]) == columns["label"][test_idx]
    assert done.accuracy == pytest.approx(w[test_idx][hit].sum() / w[test_idx].sum(), rel=1e-12)
    assert done.accuracy != hit.mean()  # unweighted it would be another figure: the test can fail


@pytest.mark.parametrize(
    "sets,extra,expected",
    [
        (["data.weight_column=weights"], {}, "nnlib: error: data.weight_column: {test} has no column 'weights' "),
        (
            ["data.weight_column=w"],
            {"w": "neg"},
            "weight column 'w' (data.weight_column) must hold finite numbers >= 0, got -1.0 at sample 3",
        ),
        (
            ["data.weight_column=w"],
            {"w": "null"},
            "weight column 'w' (data.weight_column) has an empty (null) cell at sample 5; every row needs a weight",
        ),
        (
            ["data.weight_column=w"],
            {"w": "zero"},
            "nnlib: error: DATA {test} (data.weight_column 'w'): every weight is 0; at least one row must weigh more",
        ),
        (
            ["data.weight_column=target"],
            {},
            "data.weight_column, data.validation_column, the key and the label "
            "column(s) must be different columns, got 'target' twice",
        ),
    ],
)
def test_a_bad_weight_column_in_predict_is_one_line(tmp_path, capsys, sets, extra, expected):
    src, w = weighted_csv(tmp_path)
    train(overrides={**QUICK, "train.rounds": 1, "data.source": src, "data.weight_column": "w"}, out=tmp_path / "run")
    if extra.get("w") == "neg":
        w = w.copy()
        w[3] = -1.0
    elif extra.get("w") == "null":
        w = [None if i == 5 else v for i, v in enumerate(w)]
    elif extra.get("w") == "zero":
        w = np.zeros(N)
    test = write_csv(tmp_path / "test.csv", _columns(w))
    capsys.readouterr()
    argv = ["predict", str(tmp_path / "run"), test, "--out", str(tmp_path / "p.parquet")]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected.format(test=test) in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.parquet").exists()


def test_a_weight_column_on_a_source_without_columns_is_one_line(tmp_path, capsys):
    x, y = friedman1()
    np.savez(tmp_path / "f.npz", x=x, y=y)
    train(overrides={**QUICK, "train.rounds": 1, "data.source": str(tmp_path / "f.npz")}, out=tmp_path / "run")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "f.npz"), "--set", "data.weight_column=w"]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"nnlib: error: data.weight_column: {tmp_path / 'f.npz'} has no columns (only CSV and Parquet "
        "sources have a weight column), got 'w'\n"
    )


# ---- nnlib predict --set engine=spark of a regressor -----------------------------------------------------------


def _by_key(path, key: str = "row") -> dict:
    table = pq.read_table(path)
    order = np.argsort(table.column(key).to_numpy())
    return {name: table.column(name).to_numpy()[order] for name in table.column_names}


@pytest.mark.slow
def test_a_regressor_predicts_on_spark_as_locally_to_the_bit(spark, tmp_path, capsys):
    src, w = weighted_csv(tmp_path)
    run = train(overrides={**QUICK, "data.source": src, "data.weight_column": "w"}, out=tmp_path / "run").summary
    test = _test_rows_csv(tmp_path, _columns(w), "test.csv")
    capsys.readouterr()
    printed = {}
    for engine in ("local", "spark"):
        assert (
            main(
                [
                    "predict",
                    str(tmp_path / "run"),
                    test,
                    "--set",
                    f"engine={engine}",
                    "--set",
                    "data.weight_column=w",
                    "--out",
                    str(tmp_path / f"{engine}.parquet"),
                ]
            )
            == 0
        )
        printed[engine] = capsys.readouterr().out.split("; predictions in")[0]
    assert (
        printed["spark"]
        == printed["local"]
        == (
            f"predict: {N // 5} rows; RMSE {run['final_test_rmse']:.6g}, MAE {run['final_test_mae']:.6g}, "
            f"R² {run['final_test_r2']:.4f}, loss {run['final_test_loss']:.4f}"
        )
    )
    local, on_spark = _by_key(tmp_path / "local.parquet"), _by_key(tmp_path / "spark.parquet")
    assert list(on_spark) == ["row", "prediction"] and spark.sparkContext.defaultParallelism > 1
    assert np.array_equal(local["row"], on_spark["row"])
    assert np.array_equal(local["prediction"].view(np.uint64), on_spark["prediction"].view(np.uint64))
    from nnlib.engines.spark.predict import predict_spark

    done = predict_spark(tmp_path / "run", test, ["engine=spark", "data.weight_column=w"])
    assert (done.rmse, done.mae, done.r2, done.loss) == (
        run["final_test_rmse"],
        run["final_test_mae"],
        run["final_test_r2"],
        run["final_test_loss"],
    )


@pytest.mark.slow
def test_several_targets_on_spark_a_column_each_as_locally(spark, tmp_path, capsys):
    x, y = friedman1()
    columns = {
        **{f"f{j}": x[:, j] for j in range(10)},
        "a": y,
        "b": np.sin(3 * x[:, 0]) + x[:, 5],
        "id": np.arange(N) * 7 + 1,
    }
    src = write_csv(tmp_path / "two.csv", columns)
    overrides = {**QUICK, "data.source": src, "data.label_columns": ["a", "b"], "data.drop_columns": ["id"]}
    del overrides["data.label_column"]
    train(overrides=overrides, out=tmp_path / "run")
    from nnlib.engines.spark.predict import predict_spark
    from nnlib.model.predict import predict_source

    local = predict_source(load_model(tmp_path / "run"), src, ["data.key_column=id"], str(tmp_path / "l.parquet"))
    on_spark = predict_spark(tmp_path / "run", src, ["engine=spark", "data.key_column=id"], str(tmp_path / "s.parquet"))
    assert (on_spark.rows, on_spark.rmse, on_spark.mae, on_spark.r2, on_spark.loss) == (
        local.rows,
        local.rmse,
        local.mae,
        local.r2,
        local.loss,
    )
    a, b = _by_key(tmp_path / "l.parquet", "id"), _by_key(tmp_path / "s.parquet", "id")
    assert list(b) == ["id", "prediction_a", "prediction_b"]
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    np.testing.assert_array_equal(
        np.stack([a["prediction_a"], a["prediction_b"]], axis=1),
        load_model(tmp_path / "run").predict(x)[np.argsort(columns["id"])],
    )
    # without the targets: the predictions alone, no figures
    del columns["a"], columns["b"]
    bare = write_csv(tmp_path / "bare.csv", columns)
    done = predict_spark(tmp_path / "run", bare, ["engine=spark", "data.key_column=id"])
    assert (done.rows, done.rmse, done.r2) == (N, None, None)


@pytest.mark.slow
def test_a_weighted_classifier_predicts_on_spark_as_locally(spark, tmp_path):
    x, y = friedman1()
    w = np.random.default_rng(3).uniform(0.2, 4.0, size=N)
    columns = {**{f"f{j}": x[:, j] for j in range(10)}, "label": (y > np.median(y)).astype(np.int64), "w": w}
    src = write_csv(tmp_path / "c.csv", columns)
    train(
        overrides={
            "data.source": src,
            "data.label_column": "label",
            "data.weight_column": "w",
            "train.rounds": 2,
            "model.hidden": [16],
        },
        out=tmp_path / "run",
    )
    from nnlib.engines.spark.predict import predict_spark
    from nnlib.model.predict import predict_source

    local = predict_source(load_model(tmp_path / "run"), src, ["data.weight_column=w"])
    on_spark = predict_spark(tmp_path / "run", src, ["engine=spark", "data.weight_column=w"])
    assert on_spark.rows == local.rows == N
    # the weights are added in another order across Spark's tasks: the same figure, to rounding
    assert on_spark.accuracy == pytest.approx(local.accuracy, rel=1e-12)
    assert on_spark.loss == pytest.approx(local.loss, rel=1e-6)
    hit = load_model(tmp_path / "run").predict(x) == columns["label"]
    assert local.accuracy == pytest.approx(w[hit].sum() / w.sum(), rel=1e-12) != hit.mean()


@pytest.mark.slow
def test_a_regressor_predicts_on_spark_connect_as_locally(spark, connect, connect_server, tmp_path):
    from nnlib.engines.spark.predict import predict_spark
    from nnlib.model.predict import predict_source

    src, w = weighted_csv(tmp_path)
    train(overrides={**QUICK, "data.source": src, "data.weight_column": "w"}, out=tmp_path / "run")
    local = predict_source(load_model(tmp_path / "run"), src, ["data.weight_column=w"], str(tmp_path / "l.parquet"))
    with on("connect"):
        remote = predict_spark(
            tmp_path / "run",
            src,
            ["engine=spark", f"spark.remote={connect_server.url}", "data.weight_column=w"],
            str(tmp_path / "c.parquet"),
        )
    assert (remote.rows, remote.rmse, remote.mae, remote.r2, remote.loss) == (
        local.rows,
        local.rmse,
        local.mae,
        local.r2,
        local.loss,
    )
    a, b = _by_key(tmp_path / "l.parquet"), _by_key(tmp_path / "c.parquet")
    assert np.array_equal(a["prediction"].view(np.uint64), b["prediction"].view(np.uint64))


def test_a_classifiers_bad_weight_column_in_predict_is_one_line(tmp_path, capsys):
    x, y = friedman1()
    columns = {**{f"f{j}": x[:, j] for j in range(10)}, "label": (y > np.median(y)).astype(np.int64), "w": np.zeros(N)}
    src = write_csv(tmp_path / "c.csv", columns)
    assert (
        main(
            [
                "run",
                "--out",
                str(tmp_path / "run"),
                "--quiet",
                "--set",
                f"data.source={src}",
                "--set",
                "data.label_column=label",
                "--set",
                "data.drop_columns=[w]",
                "--set",
                "train.rounds=1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    for weight, expected in (
        ("weights", f"data.weight_column: {src} has no column 'weights' (columns are "),
        ("w", f"DATA {src} (data.weight_column): every labelled row weighs 0; at least one row must weigh more"),
    ):
        out = tmp_path / "p.csv"
        assert (
            main(["predict", str(tmp_path / "run"), src, "--set", f"data.weight_column={weight}", "--out", str(out)])
            == 2
        )
        err = capsys.readouterr().err
        assert err.startswith(f"nnlib: error: {expected}") and err.count("\n") == 1, err
        assert not out.exists() and not list(tmp_path.glob(".p.csv.tmp*"))
