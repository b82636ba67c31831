"""Using a trained model: the model file, the Model API, nnlib predict and nnlib export.

The oracle for every prediction is the run itself: a run scores its own
test set, and the saved model must score the same rows, given raw, to the
same bit (the standardisation applied inside).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from conftest import needs, needs_torch

needs_onnx = needs("onnxruntime", "onnx")
from nnlib.cli import main
from nnlib.config import load_config
from nnlib.core.backends import get_backend
from nnlib.core.params import to_named
from nnlib.data.rows import TEST, RowPlan
from nnlib.data.sources import load_digits
from nnlib.driver import run
from nnlib.errors import DataError
from nnlib.model.file import HEADER, MEAN
from nnlib.model.model import CHUNK_ROWS, Model
from nnlib.model.predict import predict_source
from nnlib.outputs import RunDir, load_model

QUICK = ["engine=local", "mappers=2", "train.rounds=2", "train.local_epochs=1", "model.hidden=[16]", "seed=3"]
SCALE, SHIFT = 1000.0, 7000.0  # raw features far from standardised: a model that skips the scaling fails


def _raw_digits():
    """Digits on a raw scale (x * 1000 + 7000), as float64."""
    x, y = load_digits()
    return x * SCALE + SHIFT, y


def _table(x, y, ids=None) -> pa.Table:
    cols = {f"px{i}": x[:, i] for i in range(x.shape[1])}
    if ids is not None:
        cols = {"id": ids, **cols}
    return pa.table({**cols, "label": y})


def _train(tmp_path, name: str, *overrides: str) -> tuple[dict, object]:
    out = tmp_path / name
    result = run(load_config(None, [*QUICK, *overrides]), RunDir(out), log=lambda _: None, warn=lambda _: None)
    return result.summary, out


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run on a raw-scale CSV with a string key column, its test set a second CSV file."""
    tmp = tmp_path_factory.mktemp("csv")
    x, y = _raw_digits()
    ids = np.array([f"r{i:04d}" for i in range(len(y))])
    pacsv.write_csv(_table(x[:1400], y[:1400], ids[:1400]), tmp / "train.csv")
    pacsv.write_csv(_table(x[1400:], y[1400:], ids[1400:]), tmp / "test.csv")
    summary, out = _train(
        tmp, "run", f"data.source={tmp / 'train.csv'}", f"data.test_source={tmp / 'test.csv'}", "data.key_column=id"
    )
    return summary, out, tmp


@pytest.fixture(scope="module")
def parquet_run(tmp_path_factory):
    """A run on a raw-scale Parquet dataset of three files, its test rows drawn by the row hash."""
    tmp = tmp_path_factory.mktemp("parquet")
    x, y = _raw_digits()
    (tmp / "data").mkdir()
    for i, (lo, hi) in enumerate(((0, 600), (600, 1200), (1200, len(y)))):
        pq.write_table(_table(x[lo:hi], y[lo:hi]), tmp / "data" / f"part-{i}.parquet")
    summary, out = _train(tmp, "run", f"data.source={tmp / 'data'}")
    return summary, out, tmp


def test_a_csv_run_scores_its_test_set_again_to_the_bit(csv_run):
    summary, out, tmp = csv_run
    model = Model.load(out)
    test = pacsv.read_csv(tmp / "test.csv")
    x = np.stack([test.column(f"px{i}").to_numpy() for i in range(64)], axis=1)
    y = test.column("label").to_numpy()
    assert model.score(x, y) == summary["final_test_accuracy"] < 1
    loss, _ = model.evaluate(x, y)
    assert loss == pytest.approx(summary["final_test_loss"], rel=1e-6)
    # the standardisation matters: the same network on unscaled rows scores otherwise
    raw = get_backend("numpy", model.file.spec()).evaluate(model.params, x.astype(np.float32), y)[1]
    assert raw != summary["final_test_accuracy"]
    header = model.header
    assert header["preprocessing"]["feature_columns"] == [f"px{i}" for i in range(64)]  # the key is no feature
    assert header["preprocessing"]["key_column"] == "id" and header["n_features"] == 64


def test_predict_on_the_test_csv_gives_the_accuracy_and_keeps_the_key(csv_run, tmp_path):
    summary, out, tmp = csv_run
    done = predict_source(Model.load(out), str(tmp / "test.csv"), [], str(tmp_path / "p.parquet"))
    assert (done.rows, done.accuracy) == (397, summary["final_test_accuracy"])
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["id", "prediction", "probability"]
    assert table.column("id").to_pylist()[:2] == ["r1400", "r1401"]
    proba = np.array(table.column("probability").to_pylist(), np.float32)
    assert proba.shape == (397, 10) and np.allclose(proba.sum(axis=1), 1, atol=1e-6)
    assert (proba.argmax(axis=1) == table.column("prediction").to_numpy()).all()


def test_a_parquet_run_scores_its_test_rows_again_to_the_bit(parquet_run, tmp_path):
    summary, out, tmp = parquet_run
    model = Model.load(out)
    x, y = _raw_digits()
    test = RowPlan(3, 2, len(y), 0.2, 0.0).roles(np.arange(len(y))) == TEST
    assert test.sum() == summary["n_test"]
    assert model.score(x[test], y[test]) == summary["final_test_accuracy"] < 1
    assert model.header["preprocessing"]["feature_columns"] == [f"px{i}" for i in range(64)]
    # nnlib predict streams the dataset; its rows are numbered as training numbers them
    done = predict_source(model, str(tmp / "data"), [], str(tmp_path / "p.csv"))
    assert done.rows == len(y)
    written = pacsv.read_csv(tmp_path / "p.csv")
    assert written.column("row").to_pylist() == list(range(len(y)))
    prediction = written.column("prediction").to_numpy()
    assert (prediction[test] == y[test]).mean() == summary["final_test_accuracy"]
    assert json.loads(written.column("probability")[0].as_py())[0] == pytest.approx(
        float(model.predict_proba(x[:1])[0, 0]), rel=1e-6
    )


def test_a_parquet_key_column_is_no_feature_and_comes_back_with_the_predictions(tmp_path):
    x, y = _raw_digits()
    (tmp_path / "data").mkdir()
    ids = np.arange(len(y), dtype=np.int64) * 7 + 100000  # far from any pixel: as a feature it would show
    for i, (lo, hi) in enumerate(((0, 900), (900, len(y)))):
        pq.write_table(_table(x[lo:hi], y[lo:hi], ids[lo:hi]), tmp_path / "data" / f"part-{i}.parquet")
    summary, out = _train(tmp_path, "run", f"data.source={tmp_path / 'data'}", "data.key_column=id")
    model = Model.load(out)
    assert summary["n_features"] == 64 and model.feature_columns == [f"px{i}" for i in range(64)]
    test = RowPlan(3, 2, len(y), 0.2, 0.0).roles(np.arange(len(y))) == TEST
    assert model.score(x[test], y[test]) == summary["final_test_accuracy"]
    predict_source(model, str(tmp_path / "data"), [], str(tmp_path / "p.parquet"))
    written = pq.read_table(tmp_path / "p.parquet")
    assert written.column_names == ["id", "prediction", "probability"]
    assert np.array_equal(written.column("id").to_numpy(), ids)
    assert np.array_equal(written.column("prediction").to_numpy(), model.predict(x))


def test_predictions_come_in_chunks_that_join_up(csv_run):
    _, out, tmp = csv_run
    model = Model.load(out)
    x, _ = _raw_digits()
    reps = CHUNK_ROWS // len(x) + 2  # more rows than one chunk
    big = np.tile(x, (reps, 1))
    assert len(big) > CHUNK_ROWS
    assert np.array_equal(model.predict(big), np.tile(model.predict(x), reps))


def test_a_cnn_takes_rows_or_images(tmp_path):
    summary, out = _train(tmp_path, "cnn", "model.type=cnn", "model.channels=[4]", "train.rounds=1")
    model = Model.load(out)
    x, y = load_digits()
    proba = model.predict_proba(x)
    assert np.array_equal(model.predict_proba(x.reshape(-1, 8, 8)), proba)
    assert np.array_equal(model.predict_proba(x.reshape(-1, 1, 8, 8)), proba)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-6) and proba.dtype == np.float32
    with pytest.raises(DataError, match=r"shape \(n, 64\) or images \(n, 1, 8, 8\), got \(3, 7\)"):
        model.predict(np.zeros((3, 7)))


def test_save_and_load_give_the_same_model(csv_run, tmp_path):
    _, out, _ = csv_run
    model = Model.load(out)
    saved = Model.load(model.save(tmp_path / "copy.npz"))
    x, _ = _raw_digits()
    assert saved.header == model.header and np.array_equal(saved.params, model.params)
    assert np.array_equal(saved.file.mean, model.file.mean) and saved.file.mean.dtype == np.float64
    assert np.array_equal(saved.predict_proba(x), model.predict_proba(x))
    assert list(load_model(tmp_path / "copy.npz")) == list(model.weights)  # the weights alone, for old readers


def test_a_weights_only_file_reads_for_its_weights_and_refuses_to_predict(csv_run, tmp_path, capsys):
    _, out, _ = csv_run
    model = Model.load(out)
    old = tmp_path / "old.npz"
    np.savez(old, **to_named(model.params, model.file.spec().layers))  # what nnlib wrote before the header
    weights_only = Model.load(old)
    assert weights_only.file.header is None and np.array_equal(weights_only.params, model.params)
    with pytest.raises(DataError, match="holds weights only"):
        weights_only.predict(np.zeros((1, 64)))
    assert main(["predict", str(old), "digits", "--out", str(tmp_path / "p.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds weights only" in err and not (tmp_path / "p.parquet").exists()


def test_a_file_that_is_not_an_nnlib_model_is_one_line(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(DataError, match="is not an nnlib model file .no meta.header and no layer0.weight"):
        Model.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not an .npz archive"):
        Model.load(tmp_path / "text.npz")
    np.savez(tmp_path / "alien.npz", **{HEADER: np.array(json.dumps({"format": "other"}))})
    with pytest.raises(DataError, match="format 'other'"):
        Model.load(tmp_path / "alien.npz")
    with pytest.raises(DataError, match="no such run directory or model file"):
        Model.load(tmp_path / "missing")


def test_a_damaged_model_file_is_refused(csv_run, tmp_path):
    _, out, _ = csv_run
    arrays = dict(np.load(out / "model.npz"))
    arrays[MEAN] = arrays[MEAN][:3]
    np.savez(tmp_path / "short.npz", **arrays)
    with pytest.raises(DataError, match=r"meta.mean must be a \(64,\) array"):
        Model.load(tmp_path / "short.npz")


def test_labels_the_model_never_saw_are_refused(csv_run):
    _, out, _ = csv_run
    model = Model.load(out)
    x, y = _raw_digits()
    y = y.copy()
    y[5] = 12
    with pytest.raises(DataError, match="label 12 at sample 5 is not one of the model's classes 0..9"):
        model.score(x, y)


@needs_onnx
@needs_torch
def test_onnx_gives_the_models_probabilities(csv_run, tmp_path):
    import onnxruntime as ort

    from nnlib.model.export import export

    _, out, tmp = csv_run
    model = Model.load(out)
    path = export(model, "onnx", tmp_path / "m.onnx")
    x = _raw_digits()[0].astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 64]
    probabilities, prediction = session.run(None, {"features": x})
    assert np.abs(probabilities - model.predict_proba(x)).max() <= 1e-5
    assert np.array_equal(prediction, model.predict(x))


@needs_torch
def test_an_export_that_cannot_be_written_is_one_line_naming_out_and_leaves_nothing(csv_run, tmp_path):
    from nnlib.errors import OutputError
    from nnlib.model.export import export

    _, out, _ = csv_run
    not_a_folder = tmp_path / "plain-file"
    not_a_folder.write_text("x")
    with pytest.raises(OutputError, match=r"^--out: cannot write .*plain-file/m\.pt: "):
        export(Model.load(out), "torch", not_a_folder / "m.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain-file"]


@needs_torch
def test_torch_gives_the_models_probabilities(csv_run, tmp_path):
    import torch

    from nnlib.model.export import export, load_torch

    _, out, _ = csv_run
    model = Model.load(out)
    module = load_torch(export(model, "torch", tmp_path / "m.pt"))
    x = _raw_digits()[0].astype(np.float32)
    with torch.no_grad():
        probabilities = module(torch.from_numpy(x)).numpy()
    assert np.abs(probabilities - model.predict_proba(x)).max() <= 1e-5


@needs_onnx
@needs_torch
def test_a_cnn_exports_to_onnx_and_torch(tmp_path):
    import onnxruntime as ort
    import torch

    from nnlib.model.export import export, load_torch

    _, out = _train(
        tmp_path, "cnn", "model.type=cnn", "model.channels=[4,8]", "model.activation=tanh", "train.rounds=1"
    )
    model = Model.load(out)
    x = load_digits()[0].astype(np.float32)
    session = ort.InferenceSession(str(export(model, "onnx", tmp_path / "c.onnx")), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(None, {"features": x})[0] - model.predict_proba(x)).max() <= 1e-5
    with torch.no_grad():
        probabilities = load_torch(export(model, "torch", tmp_path / "c.pt"))(torch.from_numpy(x)).numpy()
    # torch picks its float32 convolution kernels by CPU (tests/test_cnn.py: up to 2.6e-5 of the largest
    # gradient entry on one CPU), so its probabilities get a looser bound than onnxruntime's
    assert np.abs(probabilities - model.predict_proba(x)).max() <= 1e-4


def _one_line_error(capsys, *args) -> str:
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nnlib: error: ")
    return err


def test_cli_predict_and_export(csv_run, tmp_path, capsys):
    summary, out, tmp = csv_run
    assert main(["predict", str(out), str(tmp / "test.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    said = capsys.readouterr().out
    assert f"397 rows; accuracy {summary['final_test_accuracy']:.4f}" in said
    assert pacsv.read_csv(tmp_path / "p.csv").column_names == ["id", "prediction", "probability"]
    assert main(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0
    err = _one_line_error(capsys, "export", str(out), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert "exists; choose another file or pass --overwrite" in err
    err = _one_line_error(capsys, "export", str(out), "--format", "keras", "--out", str(tmp_path / "m.k"))
    assert "--format must be one of onnx, torch, got 'keras'" in err and not (tmp_path / "m.k").exists()


def test_cli_predict_refuses_bad_input_in_one_line_and_writes_nothing(csv_run, tmp_path, capsys):
    _, out, tmp = csv_run
    test = pacsv.read_csv(tmp / "test.csv")
    p = tmp_path / "p.parquet"
    pacsv.write_csv(test.rename_columns(["id", "pixel0", *test.column_names[2:]]), tmp_path / "renamed.csv")
    err = _one_line_error(capsys, "predict", str(out), str(tmp_path / "renamed.csv"), "--out", str(p))
    assert "columns differ from the model's: missing ['px0'], not in the model ['pixel0']" in err
    np.savez(tmp_path / "narrow.npz", x=np.zeros((4, 5)))
    err = _one_line_error(capsys, "predict", str(out), str(tmp_path / "narrow.npz"), "--out", str(p))
    assert "has 5 features, the model takes 64" in err
    labels = test.column("label").to_numpy().copy()
    labels[3] = 10
    pacsv.write_csv(test.set_column(65, "label", pa.array(labels)), tmp_path / "unseen.csv")
    err = _one_line_error(capsys, "predict", str(out), str(tmp_path / "unseen.csv"), "--out", str(p))
    assert "label 10 at sample 3 is not one of the model's classes 0..9" in err
    err = _one_line_error(capsys, "predict", str(out), str(tmp / "test.csv"), "--set", "data.key_column=name")
    assert "has no column 'name'" in err
    err = _one_line_error(capsys, "predict", str(out), str(tmp / "test.csv"), "--set", "train.lr=1")
    assert "nnlib predict reads only" in err and "got 'train.lr'" in err
    err = _one_line_error(capsys, "predict", str(out), str(tmp / "test.csv"), "--out", str(tmp_path / "p.txt"))
    assert "must end in .parquet or .csv" in err
    err = _one_line_error(capsys, "predict", str(tmp / "test.csv"), "digits")
    assert "is not an nnlib model file" in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["narrow.npz", "renamed.csv", "unseen.csv"]


@pytest.mark.slow
def test_onnx_without_its_packages_is_one_line_and_writes_nothing(csv_run, tmp_path):
    _, out, _ = csv_run
    code = (
        "import sys; sys.modules['onnx'] = None; from nnlib.cli import main; "
        f"sys.exit(main(['export', {str(out)!r}, '--format', 'onnx', '--out', {str(tmp_path / 'm.onnx')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "pip install 'nnlib[onnx]'" in done.stderr and not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_import_nnlib_is_cheap_and_load_model_comes_on_first_use(csv_run):
    _, out, _ = csv_run
    code = (
        "import sys, nnlib; assert 'numpy' not in sys.modules, 'numpy at import'; "
        f"m = nnlib.load_model({str(out)!r}); assert 'pyspark' not in sys.modules; print(m.n_classes)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "10", done.stderr


@pytest.mark.slow
def test_the_console_script_predicts_and_exports(csv_run, tmp_path):
    _, out, _ = csv_run
    done = subprocess.run(
        [sys.executable, "-m", "nnlib", "predict", str(out), "digits", "--out", str(tmp_path / "p.parquet")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "1797 rows; accuracy" in done.stdout, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "nnlib", "export", str(out), "--format", "torch", "--out", str(tmp_path / "m.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and (tmp_path / "m.pt").exists(), done.stderr
