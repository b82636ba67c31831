"""model.task=regression, data.weight_column and data.validation_column on the local engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnlib.api import train
from nnlib.cli import main
from nnlib.data.dataset import _split
from nnlib.model.model import load_model
from nnlib.model.predict import predict_source

N = 500


def friedman1(n: int = N, seed: int = 0, noise: float = 1.0):
    """scikit-learn's make_friedman1 (10 features, 5 informative), drawn with numpy."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 10))
    y = (
        10 * np.sin(np.pi * x[:, 0] * x[:, 1])
        + 20 * (x[:, 2] - 0.5) ** 2
        + 10 * x[:, 3]
        + 5 * x[:, 4]
        + noise * rng.normal(size=n)
    )
    return x, y


def write_csv(path, columns: dict) -> str:
    names = list(columns)
    n = len(columns[names[0]])
    lines = [",".join(names)]
    for i in range(n):
        lines.append(",".join(_cell(columns[c][i]) for c in names))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


def friedman_csv(tmp_path, name="f.csv", **extra) -> str:
    x, y = friedman1()
    columns = {f"f{j}": x[:, j] for j in range(10)}
    columns["target"] = y
    columns.update(extra)
    return write_csv(tmp_path / name, columns)


REG = {
    "model.task": "regression",
    "data.label_column": "target",
    "mappers": 2,
    "train.rounds": 8,
    "train.lr": 0.05,
    "train.batch_size": 16,
    "model.hidden": [32],
}


def test_a_regression_run_learns_and_its_model_reproduces_the_final_rmse(tmp_path):
    src = friedman_csv(tmp_path)
    run = train(overrides={**REG, "data.source": src}, out=tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["task"] == "regression" and s["targets"] == ["target"]
    assert s["final_test_r2"] > 0.6, s  # a constant predictor scores 0
    header = (tmp_path / "run" / "rounds.csv").read_text().splitlines()[0]
    assert header.startswith("round,test_r2,test_rmse,test_mae,test_loss,train_loss")
    # the run's own test rows, raw, in their order: the model file scores them to the bit
    x, y = friedman1()
    _, test_idx = _split(N, 0.2, 0)
    model = load_model(tmp_path / "run")
    done = model.regression_metrics(x[test_idx], y[test_idx])
    assert done.rmse == s["final_test_rmse"] and done.mae == s["final_test_mae"] and done.r2 == s["final_test_r2"]
    assert done.loss == s["final_test_loss"]
    assert model.score(x[test_idx], y[test_idx]) == s["final_test_r2"]
    p = model.predict(x[test_idx])
    assert p.dtype == np.float64 and p.shape == (len(test_idx),)
    assert np.sqrt(np.mean((p - y[test_idx]) ** 2)) == pytest.approx(s["final_test_rmse"], rel=1e-12)
    # nnlib predict on a CSV of those rows: the same figures, and one prediction column
    test_csv = write_csv(tmp_path / "test.csv", {**{f"f{j}": x[test_idx, j] for j in range(10)}, "target": y[test_idx]})
    pred = predict_source(model, test_csv, out=str(tmp_path / "p.csv"))
    assert pred.rmse == s["final_test_rmse"] and pred.r2 == s["final_test_r2"] and pred.mae == s["final_test_mae"]
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == '"row","prediction"' and len(lines) == len(test_idx) + 1
    np.testing.assert_array_equal(np.array([float(v.split(",")[1]) for v in lines[1:]]), p)
    with pytest.raises(Exception, match="is a regressor .* use predict"):
        model.predict_proba(x[:2])
    assert run.summary["final_test_rmse"] == s["final_test_rmse"]


def test_npz_and_parquet_sources_and_the_refused_export(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = friedman1()
    np.savez(tmp_path / "f.npz", x=x, y=y)
    pq.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(10)}, "target": y}), tmp_path / "f.parquet")
    csv = friedman_csv(tmp_path)
    finals = {}
    for name, src in (("npz", tmp_path / "f.npz"), ("parquet", tmp_path / "f.parquet"), ("csv", csv)):
        train(overrides={**REG, "data.source": str(src)}, out=tmp_path / name)
        finals[name] = json.loads((tmp_path / name / "summary.json").read_text())["final_test_rmse"]
    assert finals["npz"] == finals["parquet"] == finals["csv"]  # the same rows, whatever the file
    assert load_model(tmp_path / "npz").target_names == ["y"]


@pytest.mark.parametrize("targets", [["a"], ["a", "b"]])
def test_onnx_and_torch_exports_predict_in_the_targets_units(tmp_path, targets):
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from nnlib.model.export import export, load_torch

    x, y = friedman1()
    cols = {f"f{j}": x[:, j] for j in range(10)}
    src = write_csv(tmp_path / "t.csv", {**cols, "a": y, "b": 1000 + 50 * x[:, 6]})
    train(
        overrides={
            **REG,
            "train.rounds": 2,
            "data.source": src,
            "data.label_columns": targets,
            "data.drop_columns": [c for c in ("a", "b") if c not in targets],
        },
        out=tmp_path / "run",
    )
    model = load_model(tmp_path / "run")
    expected = model.predict(x[:50]).reshape(50, -1)
    export(model, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"features": x[:50].astype(np.float32)})
    assert got.dtype == np.float64 and got.shape == (50, len(targets))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    export(model, "torch", tmp_path / "m.pt")
    with torch.no_grad():
        out = load_torch(tmp_path / "m.pt")(torch.from_numpy(x[:50]).float()).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    assert np.abs(expected[:, -1]).mean() > 10  # the outputs are in the targets' units, not standardised


def test_a_users_module_regresses_and_exports(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    import onnxruntime as ort
    from pathlib import Path

    from nnlib.model.export import export

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    src = friedman_csv(tmp_path)
    run = train(
        overrides={
            **REG,
            "data.source": src,
            "model.type": "module",
            "model.backend": "torch",
            "model.module": "user_models.regressor:make",
        },
        out=tmp_path / "run",
    )
    assert run.summary["final_test_r2"] > 0.3
    model = load_model(tmp_path / "run")
    x, y = friedman1()
    export(model, "onnx", tmp_path / "m.onnx")
    (got,) = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"features": x[:20].astype(np.float32)}
    )
    np.testing.assert_allclose(got[:, 0], model.predict(x[:20]), rtol=1e-5, atol=1e-4)


def test_several_targets_predict_a_column_each(tmp_path, capsys):
    x, y = friedman1()
    cols = {f"f{j}": x[:, j] for j in range(10)}
    src = write_csv(tmp_path / "two.csv", {**cols, "a": y, "b": -2 * y + 100 * x[:, 5]})
    train(overrides={**REG, "data.source": src, "data.label_columns": ["a", "b"]}, out=tmp_path / "run")
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["targets"] == ["a", "b"] and s["final_test_r2"] > 0.5
    model = load_model(tmp_path / "run")
    assert model.predict(x[:5]).shape == (5, 2)
    assert main(["predict", str(tmp_path / "run"), src, "--out", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "RMSE" in out and "R²" in out
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == '"row","prediction_a","prediction_b"'


@pytest.mark.parametrize("combine", ["average", "gradient"])
def test_a_row_of_weight_2_trains_as_the_row_taken_twice(tmp_path, combine):
    x, y = friedman1(60)
    t = friedman1(20, seed=1)
    test = write_csv(
        tmp_path / "test.csv", {**{f"f{j}": t[0][:, j] for j in range(10)}, "target": t[1], "w": np.ones(20)}
    )
    common = {
        **REG,
        "mappers": 1,
        "train.rounds": 1,
        "train.batch_size": 100,
        "data.test_source": test,
        "combine": combine,
        "data.weight_column": "w",
        "data.standardize": False,
        "data.standardize_target": False,
    }

    def run(name, rows, weights):
        src = write_csv(
            tmp_path / f"{name}.csv", {**{f"f{j}": x[rows, j] for j in range(10)}, "target": y[rows], "w": weights}
        )
        train(overrides={**common, "data.source": src}, out=tmp_path / name)
        return load_model(tmp_path / name).params

    rows = np.arange(60)
    weighted = run("weighted", rows, np.where(rows == 7, 2.0, 1.0))
    twice = run("twice", np.sort(np.append(rows, 7)), np.ones(61))
    once = run("once", rows, np.ones(60))
    np.testing.assert_allclose(weighted, twice, rtol=1e-5, atol=1e-7)
    assert np.abs(weighted - once).max() > 1e-4  # the weight changes the step


def test_weights_weigh_the_metrics_and_combine_weighted(tmp_path):
    x, y = friedman1()
    w = np.where(np.arange(N) % 2 == 0, 3.0, 1.0)
    src = friedman_csv(tmp_path, w=w)
    base = {**REG, "data.source": src, "combine": "weighted", "train.rounds": 2}
    train(overrides={**base, "data.weight_column": "w"}, out=tmp_path / "w")
    s = json.loads((tmp_path / "w" / "summary.json").read_text())
    _, test_idx = _split(N, 0.2, 0)
    done = load_model(tmp_path / "w").regression_metrics(x[test_idx], y[test_idx], w[test_idx])
    assert done.rmse == pytest.approx(s["final_test_rmse"], rel=1e-12)
    unweighted = load_model(tmp_path / "w").regression_metrics(x[test_idx], y[test_idx])
    assert unweighted.rmse != pytest.approx(done.rmse, rel=1e-9)


def test_a_validation_column_marking_the_fractions_rows_gives_the_same_run(tmp_path):
    train_idx, _ = _split(N, 0.2, 0)
    _, held = _split(len(train_idx), 0.25, 0, 0x7A11)
    flags = np.zeros(N, bool)
    flags[train_idx[held]] = True
    src = friedman_csv(tmp_path, v=flags)
    base = {**REG, "data.source": src, "train.patience": 2, "train.rounds": 6}
    train(overrides={**base, "data.validation_fraction": 0.25, "data.drop_columns": ["v"]}, out=tmp_path / "f")
    train(overrides={**base, "data.validation_column": "v"}, out=tmp_path / "c")
    np.testing.assert_array_equal(load_model(tmp_path / "f").params, load_model(tmp_path / "c").params)

    def table(run):
        lines = (tmp_path / run / "rounds.csv").read_text().splitlines()
        names = lines[0].split(",")
        keep = [i for i, n in enumerate(names) if "seconds" not in n]
        return [[line.split(",")[i] for i in keep] for line in lines]

    assert table("f") == table("c")
    assert "val_r2" in (tmp_path / "c" / "rounds.csv").read_text().splitlines()[0]
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert s["n_val"] == int(flags.sum())


def test_classification_with_weights_all_1_and_with_a_validation_column(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    label = (x[:, 0] + x[:, 1] > 0).astype(int)
    cols = {f"f{j}": x[:, j] for j in range(4)}
    plain = write_csv(tmp_path / "p.csv", {**cols, "label": label})
    weighted = write_csv(tmp_path / "w.csv", {**cols, "label": label, "w": np.ones(200)})
    base = {"mappers": 2, "train.rounds": 2}
    a = train(overrides={**base, "data.source": plain}, out=tmp_path / "a")
    b = train(overrides={**base, "data.source": weighted, "data.weight_column": "w"}, out=tmp_path / "b")
    np.testing.assert_array_equal(load_model(tmp_path / "a").params, load_model(tmp_path / "b").params)
    assert a.summary["final_test_accuracy"] == b.summary["final_test_accuracy"]
    assert a.summary["final_test_loss"] == pytest.approx(b.summary["final_test_loss"], rel=1e-6)
    # a classifier's validation column: the fraction's rows marked give the same early-stopped run
    train_idx, _ = _split(200, 0.2, 0)
    _, held = _split(len(train_idx), 0.2, 0, 0x7A11)
    flags = np.zeros(200, bool)
    flags[train_idx[held]] = True
    marked = write_csv(tmp_path / "v.csv", {**cols, "label": label, "v": flags})
    stop = {**base, "train.rounds": 4, "train.patience": 1}
    f = train(
        overrides={**stop, "data.source": marked, "data.validation_fraction": 0.2, "data.drop_columns": ["v"]},
        out=tmp_path / "f",
    )
    c = train(overrides={**stop, "data.source": marked, "data.validation_column": "v"}, out=tmp_path / "c")
    np.testing.assert_array_equal(load_model(tmp_path / "f").params, load_model(tmp_path / "c").params)
    assert f.summary["n_val"] == c.summary["n_val"] == int(flags.sum())
    assert [r["val_loss"] for r in f.rounds] == [r["val_loss"] for r in c.rounds]


QUICK = ["--set", "train.rounds=1", "--set", "mappers=2", "--quiet"]
R = ["--set", "model.task=regression", "--set", "data.label_column=target"]


def bad_csv(tmp_path, **changes):
    x, y = friedman1(40)
    columns = {f"f{j}": list(x[:, j]) for j in range(3)}
    columns["target"] = list(y)
    columns["w"] = [1.0] * 40
    columns["v"] = [i % 4 == 0 for i in range(40)]
    columns["label"] = [i % 2 for i in range(40)]
    for name, (row, value) in changes.items():
        if row is None:
            columns[name] = value
        else:
            columns[name][row] = value
    return write_csv(tmp_path / "bad.csv", columns)


BAD = [
    (
        "non-numeric-target",
        dict(target=(3, "abc")),
        R + ["--set", "data.drop_columns=[w,v,label]"],
        "target column 'target' must be numeric, got string",
    ),
    (
        "null-target",
        dict(target=(3, None)),
        R + ["--set", "data.drop_columns=[w,v,label]"],
        "target column 'target' has 1 empty (null) cell(s)",
    ),
    (
        "inf-target",
        dict(target=(5, "inf")),
        R + ["--set", "data.drop_columns=[w,v,label]"],
        "target 'target' must be finite, got inf at sample 5",
    ),
    (
        "fractional-label",
        dict(label=(2, 0.5)),
        ["--set", "data.drop_columns=[w,v,target]"],
        "labels must be integers 0..n_classes-1, got 0.5 at sample 2; for numeric targets set model.task=regression",
    ),
    (
        "negative-weight",
        dict(w=(4, -1.0)),
        R + ["--set", "data.weight_column=w", "--set", "data.drop_columns=[v,label]"],
        "weights must be finite numbers >= 0, got -1.0 at sample 4",
    ),
    (
        "null-weight",
        dict(w=(4, None)),
        R + ["--set", "data.weight_column=w", "--set", "data.drop_columns=[v,label]"],
        "weight column 'w' has 1 empty (null) cell(s)",
    ),
    (
        "inf-weight",
        dict(w=(6, "inf")),
        R + ["--set", "data.weight_column=w", "--set", "data.drop_columns=[v,label]"],
        "weights must be finite numbers >= 0, got inf at sample 6",
    ),
    (
        "zero-weights",
        dict(w=(None, [0.0] * 40)),
        R + ["--set", "data.weight_column=w", "--set", "data.drop_columns=[v,label]"],
        "every weight is 0; at least one row must weigh more",
    ),
    (
        "integer-validation-column",
        dict(v=(None, [i % 2 for i in range(40)])),
        R + ["--set", "data.validation_column=v", "--set", "data.drop_columns=[w,label]"],
        "(data.validation_column 'v'): must be boolean (true/false), got dtype int64",
    ),
    (
        "validation-marks-none",
        dict(v=(None, [False] * 40)),
        R + ["--set", "data.validation_column=v", "--set", "data.drop_columns=[w,label]"],
        "data.validation_column 'v' marks no training row (0 of 32)",
    ),
    (
        "validation-marks-all",
        dict(v=(None, [True] * 40)),
        R + ["--set", "data.validation_column=v", "--set", "data.drop_columns=[w,label]"],
        "data.validation_column 'v' marks every training row (32 of 32)",
    ),
    (
        "cross-entropy-regression",
        {},
        R + ["--set", "model.loss=cross_entropy"],
        "model.loss: under model.task=regression one of squared, absolute, huber, got cross_entropy",
    ),
    (
        "stratified-regression",
        {},
        R + ["--set", "data.partition=stratified"],
        "data.partition=stratified deals out class labels and needs model.task=classification",
    ),
    (
        "label-skew-regression",
        {},
        R + ["--set", "data.partition=label_skew"],
        "data.partition=label_skew deals out class labels and needs model.task=classification",
    ),
    (
        "split-regression",
        {},
        R + ["--set", "combine=split", "--set", "train.rounds=2"],
        "combine=split compares its sub-networks by test accuracy, which model.task=regression has not",
    ),
    (
        "target-accuracy-regression",
        {},
        R + ["--set", "train.target_accuracy=0.9"],
        "train.target_accuracy=0.9 is a classifier's test accuracy; model.task=regression has none",
    ),
    (
        "validation-column-and-fraction",
        {},
        R + ["--set", "data.validation_column=v", "--set", "data.validation_fraction=0.1"],
        "data.validation_fraction draws them: use one or the other",
    ),
    (
        "missing-weight-column",
        {},
        R + ["--set", "data.weight_column=nope", "--set", "data.drop_columns=[w,v,label]"],
        "data.weight_column: ",
    ),
    (
        "missing-validation-column",
        {},
        R + ["--set", "data.validation_column=nope", "--set", "data.drop_columns=[w,v,label]"],
        "data.validation_column: ",
    ),
    (
        "missing-target-column",
        {},
        [
            "--set",
            "model.task=regression",
            "--set",
            "data.label_columns=[target,nope]",
            "--set",
            "data.drop_columns=[w,v,label]",
        ],
        "data.label_columns: ",
    ),
    (
        "label-columns-classification",
        {},
        ["--set", "data.label_columns=[target,w]"],
        "data.label_columns (['target', 'w']) are regression targets and need model.task=regression",
    ),
]


@pytest.mark.parametrize("changes, extra, expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_one_line(tmp_path, capsys, changes, extra, expected):
    src = bad_csv(tmp_path, **changes)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["run", *QUICK, "--set", f"data.source={src}", *extra, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err, err
    assert err.count("\n") == 1 and err.startswith("nnlib: error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


@pytest.mark.slow
def test_mlflow_logs_a_regression_runs_metrics(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    src = friedman_csv(tmp_path)
    uri = (tmp_path / "store").as_uri()
    train(
        overrides={
            **REG,
            "train.rounds": 2,
            "data.source": src,
            "tracking": "mlflow",
            "mlflow.tracking_uri": uri,
            "mlflow.experiment": "reg",
        },
        out=tmp_path / "run",
    )
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("reg").experiment_id])
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_r2")] == [1, 2]
    assert run.data.metrics["final.final_test_rmse"] == pytest.approx(s["final_test_rmse"])


@pytest.mark.parametrize("loss", ["absolute", "huber"])
def test_absolute_and_huber_losses_and_their_model_files(tmp_path, loss):
    src = friedman_csv(tmp_path)
    run = train(
        overrides={**REG, "data.source": src, "model.loss": loss, "model.huber_delta": 0.5}, out=tmp_path / "run"
    )
    assert run.summary["final_test_r2"] > 0.5
    x, y = friedman1()
    _, test_idx = _split(N, 0.2, 0)
    model = load_model(tmp_path / "run")
    assert model.file.spec().loss == loss and model.file.spec().huber_delta == 0.5
    done = model.regression_metrics(x[test_idx], y[test_idx])
    assert done.loss == run.summary["final_test_loss"] and done.rmse == run.summary["final_test_rmse"]


def test_nnlib_predict_of_a_regressor(tmp_path, capsys):
    x, y = friedman1()
    np.savez(tmp_path / "f.npz", x=x, y=y)
    train(overrides={**REG, "train.rounds": 2, "data.source": str(tmp_path / "f.npz")}, out=tmp_path / "run")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "f.npz"), "--out", str(tmp_path / "p.parquet")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"predict: {N} rows; RMSE ") and ", R² " in out
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["row", "prediction"]
    np.testing.assert_array_equal(table.column("prediction").to_numpy(), load_model(tmp_path / "run").predict(x))


def test_combine_weighted_weighs_mappers_by_their_total_weight(tmp_path):
    from nnlib.config import load_config
    from nnlib.data.dataset import ShardSource
    from nnlib.driver import prepare
    from nnlib.rounds.mapper import train_shard

    w = np.where(np.arange(N) < 150, 5.0, 1.0)  # contiguous shards: the first mapper's rows weigh more
    src = friedman_csv(tmp_path, w=w)
    overrides = {
        **REG,
        "data.source": src,
        "data.weight_column": "w",
        "combine": "weighted",
        "train.rounds": 1,
        "data.partition": "contiguous",
    }
    train(overrides=overrides, out=tmp_path / "run")
    setup = prepare(load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))
    shards = ShardSource(setup.config.data, 0, 2, task="regression").build([0, 1])
    results = [train_shard(shard, setup.first) for shard in shards]
    totals = np.array([shard.w.sum() for shard in shards])
    assert totals[0] > 2 * totals[1] and [r.stats.combine_size for r in results] == list(totals)
    coefs = totals / totals.sum()
    expected = coefs[0] * results[0].params.astype(np.float64) + coefs[1] * results[1].params
    np.testing.assert_allclose(load_model(tmp_path / "run").params, expected, rtol=1e-5, atol=1e-6)
    by_rows = np.array([len(s.y) for s in shards]) / sum(len(s.y) for s in shards)
    assert np.abs(by_rows[0] * results[0].params + by_rows[1] * results[1].params - expected).max() > 1e-5


def test_an_npz_source_names_its_weight_and_validation_arrays(tmp_path, capsys):
    x, y = friedman1()
    v = np.arange(N) % 5 == 0
    w = 1.0 + (np.arange(N) % 3)
    np.savez(tmp_path / "f.npz", x=x, y=y, w=w, v=v)
    run = train(
        overrides={
            **REG,
            "train.rounds": 2,
            "data.source": str(tmp_path / "f.npz"),
            "data.weight_column": "w",
            "data.validation_column": "v",
            "train.patience": 3,
        },
        out=tmp_path / "run",
    )
    train_idx, _ = _split(N, 0.2, 0)
    assert run.summary["n_val"] == int(v[train_idx].sum()) and run.summary["n_features"] == 10
    assert "val_rmse" in run.rounds[-1]
    code = main(
        [
            "run",
            *QUICK,
            "--set",
            f"data.source={tmp_path / 'f.npz'}",
            "--set",
            "model.task=regression",
            "--set",
            "data.weight_column=weights",
            "--out",
            str(tmp_path / "bad"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "data.weight_column: no array 'weights' (arrays are ['v', 'w', 'x', 'y'])" in err


def test_synchronous_rounds_with_weights_all_1_are_the_unweighted_rounds(tmp_path):
    x, y = friedman1()
    cols = {f"f{j}": x[:, j] for j in range(10)}
    plain = write_csv(tmp_path / "p.csv", {**cols, "target": y})
    ones = write_csv(tmp_path / "o.csv", {**cols, "target": y, "w": np.ones(N)})
    base = {**REG, "combine": "gradient", "train.rounds": 2}
    a = train(overrides={**base, "data.source": plain}, out=tmp_path / "a")
    b = train(overrides={**base, "data.source": ones, "data.weight_column": "w"}, out=tmp_path / "b")
    np.testing.assert_array_equal(load_model(tmp_path / "a").params, load_model(tmp_path / "b").params)
    assert [r["train_loss"] for r in a.rounds] == [r["train_loss"] for r in b.rounds]
    twos = write_csv(tmp_path / "t.csv", {**cols, "target": y, "w": 1.0 + (np.arange(N) % 2)})
    train(overrides={**base, "data.source": twos, "data.weight_column": "w"}, out=tmp_path / "c")
    assert np.abs(load_model(tmp_path / "c").params - load_model(tmp_path / "a").params).max() > 1e-4


def test_a_parquet_list_column_of_targets_trains_as_its_targets_in_columns(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = friedman1(200)
    two = np.stack([y, x[:, 0] * 3 - y], axis=1)
    features = {f"f{j}": x[:, j] for j in range(10)}
    pq.write_table(
        pa.table({**features, "y": pa.array(list(two), type=pa.list_(pa.float64()))}), tmp_path / "l.parquet"
    )
    pq.write_table(pa.table({**features, "a": two[:, 0], "b": two[:, 1]}), tmp_path / "c.parquet")
    common = {**REG, "train.rounds": 2}
    listed = train(
        overrides={**common, "data.source": str(tmp_path / "l.parquet"), "data.label_column": "y"}, out=tmp_path / "lr"
    )
    columns = train(
        overrides={**common, "data.source": str(tmp_path / "c.parquet"), "data.label_columns": ["a", "b"]},
        out=tmp_path / "cr",
    )
    np.testing.assert_array_equal(load_model(tmp_path / "lr").params, load_model(tmp_path / "cr").params)
    assert load_model(tmp_path / "lr").header["targets"]["names"] == ["y_0", "y_1"]
    assert listed.summary["final_test_rmse"] == columns.summary["final_test_rmse"]
    # rows of other lengths: one line naming the column
    ragged = [[1.0, 2.0]] * 199 + [[1.0]]
    pq.write_table(pa.table({**features, "y": pa.array(ragged, type=pa.list_(pa.float64()))}), tmp_path / "r.parquet")
    code = main(
        [
            "run",
            *QUICK,
            *R[:2],
            "--set",
            f"data.source={tmp_path / 'r.parquet'}",
            "--set",
            "data.label_column=y",
            "--out",
            str(tmp_path / "rr"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert (
        "target column 'y' must hold lists of one length (one value per target), got 2 and 1 values at sample "
        "199" in err
    )
