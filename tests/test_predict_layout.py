"""A source's layout against the model at ``nnlib predict``, and errors that name where a bad value came from.

A model trained on one list column (``data.features_column``, as
``NNClassifier``'s are) meets a file of separate columns, and the reverse; a
file has columns the model never saw or lacks some; a row holds another
number of features. Each is one line naming the file's real columns, what the
model was trained on and the setting that reads the file, told from the
file's footer or header before any engine starts (on ``engine=spark``, before
the JVM), and nothing is written. The oracle for every fix the line suggests
is the prediction of the same rows in the model's own layout.

The config's errors name the source of the value they weigh: ``--set``, the
conf file (the one of an ``extends`` chain that set it), the API's
``overrides``, ``SPARK_REMOTE``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import nnlib
from nnlib.cli import main
from nnlib.config import load_config
from nnlib.driver import run
from nnlib.errors import ConfigError
from nnlib.outputs import RunDir
from test_data import write_idx

QUICK = ["engine=local", "mappers=2", "train.rounds=1", "train.local_epochs=1", "model.hidden=[8]", "seed=3"]
N = 3  # features


def _x_y(n=120):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, N)) * 10.0 + 50.0
    return x, (x[:, 0] > 50.0).astype(np.int64) + 2 * (x[:, 1] > 50.0)


def _list_table(x, y, name="features") -> pa.Table:
    return pa.table({name: pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]), "label": y})


def _columns_table(x, y, names=("a", "b", "c")) -> pa.Table:
    return pa.table({**{name: x[:, i] for i, name in enumerate(names)}, "label": y})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two models of the same rows: one trained on a list column 'features', one on the columns a, b, c; and
    the folder holding the rows in both layouts (``list.parquet``, ``abc.parquet``)."""
    tmp = tmp_path_factory.mktemp("layout")
    x, y = _x_y()
    pq.write_table(_list_table(x, y), tmp / "list.parquet")
    pq.write_table(_columns_table(x, y), tmp / "abc.parquet")
    quiet = dict(log=lambda _: None, warn=lambda _: None)
    run(
        load_config(None, [*QUICK, f"data.source={tmp / 'list.parquet'}", "data.features_column=features"]),
        RunDir(tmp / "list-run"),
        **quiet,
    )
    run(load_config(None, [*QUICK, f"data.source={tmp / 'abc.parquet'}"]), RunDir(tmp / "abc-run"), **quiet)
    return tmp, x, y


def one_line(capsys, *args) -> str:
    """The one error line of ``nnlib ARGS`` (exit status 2)."""
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("nnlib: error: "), captured.err
    return captured.err.strip()


def predictions(capsys, model: Path, data: Path, out: Path, *sets: str) -> pa.Table:
    args = [a for item in sets for a in ("--set", item)]
    assert main(["predict", str(model), str(data), "--out", str(out), *args]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return pq.read_table(out)


def _as_format(table: pa.Table, folder: Path, name: str, fmt: str) -> Path:
    """``table`` written as a Parquet file, a Parquet dataset (two files) or a CSV file."""
    if fmt == "parquet":
        pq.write_table(table, folder / f"{name}.parquet")
        return folder / f"{name}.parquet"
    if fmt == "dataset":
        (folder / name).mkdir()
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), folder / name / "part-0.parquet")
        pq.write_table(table.slice(half), folder / name / "part-1.parquet")
        return folder / name
    pacsv.write_csv(table, folder / f"{name}.csv")
    return folder / f"{name}.csv"


@pytest.mark.parametrize("fmt", ["parquet", "dataset", "csv"])
def test_a_list_column_model_on_separate_columns_names_them_and_the_setting_that_reads_them(
    runs, tmp_path, capsys, fmt
):
    tmp, x, y = runs
    data = _as_format(_columns_table(x, y), tmp_path, "abc", fmt)
    out = tmp_path / "p.parquet"
    err = one_line(capsys, "predict", str(tmp / "list-run"), str(data), "--out", str(out))
    assert "has no list column 'features' (data.features_column)" in err
    assert "columns are ['a', 'b', 'c', 'label']" in err  # the file's real columns, label included
    assert "the model was trained on the list column 'features' of 3 values a row" in err
    assert err.endswith("--set data.features_column=null")
    assert not out.exists()
    # the setting it names reads the file, and gives the predictions of the same rows in the model's layout
    fixed = predictions(capsys, tmp / "list-run", data, out, "data.features_column=null")
    same = predictions(capsys, tmp / "list-run", tmp / "list.parquet", tmp_path / "q.parquet")
    assert fixed.column("prediction").equals(same.column("prediction"))
    assert fixed.column("probability").equals(same.column("probability"))


def test_a_model_of_named_columns_on_a_list_column_names_the_setting_that_reads_it(runs, tmp_path, capsys):
    tmp, x, y = runs
    pq.write_table(_list_table(x, y, "vec"), tmp_path / "vec.parquet")
    err = one_line(
        capsys, "predict", str(tmp / "abc-run"), str(tmp_path / "vec.parquet"), "--out", str(tmp_path / "p.parquet")
    )
    assert "missing ['a', 'b', 'c'], not in the model ['vec']" in err
    assert "the model was trained on the 3 columns ['a', 'b', 'c']" in err
    assert err.endswith("--set data.features_column=vec")
    fixed = predictions(
        capsys, tmp / "abc-run", tmp_path / "vec.parquet", tmp_path / "p.parquet", "data.features_column=vec"
    )
    same = predictions(capsys, tmp / "abc-run", tmp / "abc.parquet", tmp_path / "q.parquet")
    assert fixed.column("probability").equals(same.column("probability"))


def test_columns_the_model_never_saw_or_lacks_are_named_with_what_reads_the_file(runs, tmp_path, capsys):
    tmp, x, y = runs
    wide = _columns_table(x, y).append_column("d", pa.array(np.arange(len(y), dtype=np.float64)))
    pacsv.write_csv(wide, tmp_path / "wide.csv")
    err = one_line(capsys, "predict", str(tmp / "abc-run"), str(tmp_path / "wide.csv"))
    assert "missing [], not in the model ['d']" in err and err.endswith("--set data.drop_columns=[d]")
    fixed = predictions(capsys, tmp / "abc-run", tmp_path / "wide.csv", tmp_path / "p.parquet", "data.drop_columns=[d]")
    same = predictions(capsys, tmp / "abc-run", tmp / "abc.parquet", tmp_path / "q.parquet")
    assert fixed.column("probability").equals(same.column("probability"))
    # the label under another name is a column the model never saw: the line says how to name it
    pq.write_table(_columns_table(x, y).rename_columns(["a", "b", "c", "target"]), tmp_path / "target.parquet")
    err = one_line(capsys, "predict", str(tmp / "abc-run"), str(tmp_path / "target.parquet"))
    assert "not in the model ['target']" in err and "--set data.label_column=" in err
    pq.write_table(_columns_table(x[:, :2], y, ("a", "b")), tmp_path / "ab.parquet")
    err = one_line(capsys, "predict", str(tmp / "abc-run"), str(tmp_path / "ab.parquet"))
    assert "missing ['c'], not in the model []" in err and "trained on the 3 columns ['a', 'b', 'c']" in err


def test_a_feature_count_the_model_does_not_take_is_one_line_in_every_format(runs, tmp_path, capsys):
    tmp, x, y = runs
    wide = np.hstack([x, x[:, :1]])
    pq.write_table(_list_table(wide, y), tmp_path / "list4.parquet")
    err = one_line(capsys, "predict", str(tmp / "list-run"), str(tmp_path / "list4.parquet"))
    assert "features column 'features' holds 4 values a row, the model takes 3" in err
    np.savez(tmp_path / "x4.npz", x=wide)
    err = one_line(capsys, "predict", str(tmp / "list-run"), str(tmp_path / "x4.npz"))
    assert "x4.npz has 4 features, the model takes 3; the model was trained on the list column 'features'" in err
    err = one_line(capsys, "predict", str(tmp / "abc-run"), "digits")
    assert "DATA digits has 64 features, the model takes 3; the model was trained on the 3 columns" in err
    write_idx(tmp_path / "t-images-idx3-ubyte", np.zeros((5, 2, 2), np.uint8), 0x08)
    err = one_line(capsys, "predict", str(tmp / "abc-run"), str(tmp_path / "t-images-idx3-ubyte"))
    assert "t-images-idx3-ubyte has 4 features, the model takes 3" in err
    # a features column of numbers, not lists: the separate columns are named, with the setting that reads them
    pq.write_table(_columns_table(x, y, ("features", "b", "c")), tmp_path / "numbers.parquet")
    err = one_line(capsys, "predict", str(tmp / "list-run"), str(tmp_path / "numbers.parquet"))
    assert "features column 'features' (data.features_column) must hold lists" in err
    assert err.endswith("to read its 3 columns ['features', 'b', 'c'] as the features, --set data.features_column=null")
    # an .npz file of the model's width is read whatever the model's columns were called (it has no names)
    np.savez(tmp_path / "x3.npz", x=x, y=y)
    fixed = predictions(capsys, tmp / "list-run", tmp_path / "x3.npz", tmp_path / "p.parquet")
    same = predictions(capsys, tmp / "list-run", tmp / "list.parquet", tmp_path / "q.parquet")
    assert fixed.column("probability").equals(same.column("probability"))


@pytest.mark.parametrize("column", ["prediction", "probability"])
def test_a_key_column_named_as_a_column_predict_writes_is_refused(runs, tmp_path, capsys, column):
    tmp, x, y = runs
    table = _columns_table(x, y).append_column(column, pa.array(np.arange(len(y))))
    pq.write_table(table, tmp_path / "keyed.parquet")
    out = tmp_path / "p.parquet"
    err = one_line(
        capsys,
        "predict",
        str(tmp / "abc-run"),
        str(tmp_path / "keyed.parquet"),
        "--set",
        f"data.key_column={column}",
        "--out",
        str(out),
    )
    assert f"data.key_column: '{column}' is also a column nnlib predict writes" in err
    assert "--set data.key_column=null" in err and not out.exists()


@pytest.mark.slow
def test_an_input_column_named_prediction_is_not_written_over_the_models(runs, tmp_path, capsys):
    """Predict writes the key, prediction and probability alone: an input's own 'prediction' column (not the
    key) is neither kept nor mixed with the model's."""
    tmp, x, y = runs
    theirs = (y + 1) % 4
    table = _columns_table(x, y)
    pq.write_table(table.append_column("prediction", pa.array(theirs)), tmp_path / "scored.parquet")
    written = predictions(
        capsys, tmp / "abc-run", tmp_path / "scored.parquet", tmp_path / "p.parquet", "data.drop_columns=[prediction]"
    )
    assert written.column_names == ["row", "prediction", "probability"]
    same = predictions(capsys, tmp / "abc-run", tmp / "abc.parquet", tmp_path / "q.parquet")
    assert written.column("prediction").equals(same.column("prediction"))
    assert not np.array_equal(written.column("prediction").to_numpy(), theirs)


def _spark_child(command: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``nnlib COMMAND ARGS --set engine=spark`` in a child process that says afterwards whether pyspark was
    ever imported (a JVM cannot have started without it)."""
    code = (
        "import sys; from nnlib.cli import main; rc = main(sys.argv[1:]); "
        "print('pyspark imported' if 'pyspark' in sys.modules else 'no pyspark'); sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, command, *args, "--set", "engine=spark"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env_extra or {})},
        timeout=300,
    )


def _spark_predict(*args: str, env_extra: dict | None = None) -> tuple[subprocess.CompletedProcess, None]:
    return _spark_child("predict", *args, env_extra=env_extra), None


@pytest.mark.slow
def test_on_spark_a_layout_mismatch_is_found_before_the_jvm_starts_with_the_local_line(runs, tmp_path, capsys):
    tmp, x, y = runs
    data = _as_format(_columns_table(x, y), tmp_path, "abc", "csv")
    local = one_line(capsys, "predict", str(tmp / "list-run"), str(data))
    for source in (data, tmp / "abc.parquet"):
        proc, _ = _spark_predict(str(tmp / "list-run"), str(source), "--out", str(tmp_path / "p.parquet"))
        assert proc.returncode == 2
        assert proc.stdout.strip() == "no pyspark"  # nor a JVM: the check ran from the file's header or footer
        assert proc.stderr.count("\n") == 1 and "--set data.features_column=null" in proc.stderr
    assert proc.stderr.strip() == local.replace(str(data), str(tmp / "abc.parquet"))
    proc, _ = _spark_predict(str(tmp / "abc-run"), "digits")
    assert proc.returncode == 2 and proc.stdout.strip() == "no pyspark"
    assert "DATA digits has 64 features, the model takes 3" in proc.stderr
    write_idx(tmp / "t-images-idx3-ubyte", np.zeros((5, 2, 2), np.uint8), 0x08)  # from the IDX header alone
    proc, _ = _spark_predict(str(tmp / "abc-run"), str(tmp / "t-images-idx3-ubyte"))
    (tmp / "t-images-idx3-ubyte").unlink()
    assert proc.returncode == 2 and proc.stdout.strip() == "no pyspark"
    assert "t-images-idx3-ubyte has 4 features, the model takes 3" in proc.stderr
    np.savez(tmp / "x4.npz", x=np.zeros((5, 4)))  # from the .npz file's array header
    proc, _ = _spark_predict(str(tmp / "abc-run"), str(tmp / "x4.npz"))
    (tmp / "x4.npz").unlink()
    assert proc.returncode == 2 and proc.stdout.strip() == "no pyspark"
    assert "x4.npz has 4 features, the model takes 3" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc.csv"]  # nothing written


@pytest.mark.slow
def test_on_spark_a_column_named_as_nnlibs_own_is_refused_before_the_jvm_starts(runs, tmp_path):
    tmp, x, y = runs
    pq.write_table(
        _columns_table(x, y).append_column("_nnlib_row", pa.array(np.arange(len(y)))), tmp_path / "own.parquet"
    )
    proc, _ = _spark_predict(str(tmp / "abc-run"), str(tmp_path / "own.parquet"))
    assert proc.returncode == 2 and proc.stdout.strip() == "no pyspark"
    assert "column '_nnlib_row' takes a name nnlib keeps for its own columns on Spark" in proc.stderr


@pytest.mark.slow
def test_on_spark_a_uri_is_checked_by_spark_with_the_same_words_and_the_fix_gives_the_local_predictions(
    spark, runs, tmp_path, capsys
):
    tmp, x, y = runs
    uri = (tmp / "abc.parquet").absolute().as_uri()  # a URI: only Spark reads it, so Spark's schema is checked
    err = one_line(capsys, "predict", str(tmp / "list-run"), uri, "--set", "engine=spark")
    assert f"DATA {uri} has no list column 'features' (data.features_column)" in err
    assert "columns are ['a', 'b', 'c', 'label']" in err and err.endswith("--set data.features_column=null")
    out = tmp_path / "spark.parquet"
    assert (
        main(
            [
                "predict",
                str(tmp / "list-run"),
                uri,
                "--set",
                "engine=spark",
                "--set",
                "data.features_column=null",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("*.parquet"))]).sort_by("row")
    same = predictions(capsys, tmp / "list-run", tmp / "list.parquet", tmp_path / "q.parquet")
    assert written.column("prediction").to_pylist() == same.column("prediction").to_pylist()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["local", "mrjob", "spark"])
def test_training_on_a_missing_or_wrong_features_column_names_the_files_columns_before_any_engine_starts(
    runs, tmp_path, capsys, engine
):
    tmp, x, y = runs
    quick = [
        a for item in ("mappers=2", "train.rounds=1", f"data.source={tmp / 'abc.parquet'}") for a in ("--set", item)
    ] + ["--quiet", "--out", str(tmp_path / "r")]
    lines = []
    for column in ("features", "a"):  # no such column; a column of numbers, not lists
        args = [*quick, "--set", f"data.features_column={column}"]
        if engine == "spark":
            proc = _spark_child("run", *args)
            assert proc.returncode == 2 and proc.stdout.strip() == "no pyspark", proc.stderr
            assert proc.stderr.count("\n") == 1
            lines.append(proc.stderr.strip())
        else:
            lines.append(one_line(capsys, "run", "--set", f"engine={engine}", *args))
    assert "has no list column 'features' (data.features_column) to read the features from" in lines[0]
    assert "holds no lists in its features column 'a' (data.features_column), but numbers" in lines[1]
    for line in lines:
        assert "its columns are ['a', 'b', 'c', 'label']" in line
        assert line.endswith(
            "to read its 3 columns ['a', 'b', 'c'] as the features, leave data.features_column unset (null)"
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_on_spark_the_other_checks_a_footer_answers_come_before_the_jvm_starts(runs, tmp_path):
    """Columns chosen, dropped or keyed that the files lack, and a test set that is missing or of another
    layout: each is one line from the files' footers, with no JVM started (they came after Spark's start)."""
    tmp, x, y = runs
    pq.write_table(_columns_table(x, y, ("a", "b", "z")), tmp_path / "abz.parquet")
    cases = [
        ("data.feature_columns=[a,zz]", "data.feature_columns: no column 'zz' (columns are ['a', 'b', 'c', 'label'])"),
        ("data.drop_columns=[zz]", "data.drop_columns: no column 'zz'"),
        ("data.key_column=id", "has no key column 'id' (set data.key_column; columns are ['a', 'b', 'c', 'label'])"),
        (f"data.test_source={tmp_path / 'missing.parquet'}", "data.test_source: file "),
        (f"data.test_source={tmp_path / 'missing.csv'}", "data.test_source: file "),
        (
            f"data.test_source={tmp / 'list.parquet'}",
            "column 'features' holds lists, not numbers; to read it as the features, set data.features_column=features",
        ),
        (
            f"data.test_source={tmp_path / 'abz.parquet'}",
            "abz.parquet's feature columns ['a', 'b', 'z'] are not data.source's ['a', 'b', 'c']",
        ),
        ("model.type=cnn", "--set: model.type=cnn needs the image shape of data.source "),
    ]
    for item, said in cases:
        proc = _spark_child(
            "run",
            "--set",
            f"data.source={tmp / 'abc.parquet'}",
            "--set",
            item,
            "--set",
            "mappers=2",
            "--set",
            "train.rounds=1",
            "--quiet",
            "--out",
            str(tmp_path / "r"),
        )
        assert proc.returncode == 2 and proc.stdout.strip() == "no pyspark", (item, proc.stderr)
        assert proc.stderr.count("\n") == 1 and said in proc.stderr, (item, proc.stderr)
    assert not (tmp_path / "r").exists()


def test_on_mpi_a_missing_source_or_column_is_found_before_mpiexec_starts_the_ranks(runs, tmp_path, capsys):
    """The launcher named is no program: a check made by the ranks would be preceded by the failed launch."""
    tmp, x, y = runs
    pacsv.write_csv(_columns_table(x, y), tmp_path / "abc.csv")
    launcher = [
        "--set",
        "engine=mpi",
        "--set",
        f"mpi.launcher=[{tmp_path / 'no-mpiexec'}]",
        "--set",
        "mappers=2",
        "--quiet",
        "--out",
        str(tmp_path / "r"),
    ]
    cases = [
        (f"data.source={tmp_path / 'missing.csv'}", "data.source: file "),
        (
            f"data.source={tmp_path / 'abc.csv'}",
            "has no label column 'y' (set data.label_column; columns are ['a', 'b', 'c', 'label'])",
        ),
        (f"data.source={tmp / 'abc.parquet'}", "has no label column 'y'"),
    ]
    for item, said in cases:
        err = one_line(capsys, "run", *launcher, "--set", item, "--set", "data.label_column=y")
        assert said in err and "no-mpiexec" not in err, err
    err = one_line(capsys, "run", *launcher, "--set", f"data.source={tmp_path / 'abc.csv'}")
    assert "no-mpiexec" in err  # with a good source, the launcher is the next thing to fail
    assert not (tmp_path / "r").exists()


# --- where a bad value came from ---------------------------------------------------------------------------


def _conf(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_a_bad_value_from_set_is_blamed_on_set_not_on_the_conf_file(tmp_path, capsys):
    conf = _conf(tmp_path, "run.yaml", "engine: spark\nmappers: 2\n")
    err = one_line(capsys, "run", str(conf), "--set", "spark.master=foo", "--out", str(tmp_path / "r"))
    assert err.startswith("nnlib: error: --set: spark.master: must be local") and "got 'foo'" in err
    err = one_line(capsys, "run", str(conf), "--set", "train.optimizer=nesterov", "--out", str(tmp_path / "r"))
    assert err == "nnlib: error: --set: train.optimizer=nesterov needs train.momentum > 0, got 0"
    assert not (tmp_path / "r").exists()


def test_a_bad_value_from_the_file_is_blamed_on_the_file_that_set_it(tmp_path, capsys):
    base = _conf(tmp_path, "base.yaml", "spark:\n  master: foo\n")
    child = _conf(tmp_path, "child.yaml", "extends: base.yaml\nmappers: 2\n")
    out = ["--out", str(tmp_path / "r")]
    err = one_line(capsys, "run", str(child), "--set", "train.rounds=1", *out)
    assert err.startswith(f"nnlib: error: {base}: spark.master: must be local")
    conf = _conf(tmp_path, "nesterov.yaml", "train:\n  optimizer: nesterov\n")
    err = one_line(capsys, "run", str(conf), "--set", "mappers=2", *out)
    assert err == f"nnlib: error: {conf}: train.optimizer=nesterov needs train.momentum > 0, got 0"
    # the two values it weighs come from two places: both are named
    err = one_line(capsys, "run", str(conf), "--set", "train.momentum=0", *out)
    assert err.startswith(f"nnlib: error: {conf} and --set: train.optimizer=nesterov")
    err = one_line(capsys, "run", str(_conf(tmp_path, "bad.yaml", "train:\n  rounds: 0\n")), *out)
    assert err.startswith(f"nnlib: error: {tmp_path / 'bad.yaml'}: config key 'train.rounds'")
    assert not (tmp_path / "r").exists()


def test_a_bad_value_from_the_apis_overrides_is_blamed_on_overrides(tmp_path):
    conf = _conf(tmp_path, "run.yaml", "mappers: 2\n")
    with pytest.raises(ConfigError, match=r"^overrides: spark\.master: must be local") as caught:
        nnlib.train(conf, overrides={"spark.master": "foo"}, out=tmp_path / "r")
    assert str(conf) not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^overrides: unknown config key 'trian\.lr'; did you mean 'train\.lr'"):
        nnlib.train(conf, overrides={"trian.lr": 0.1}, out=tmp_path / "r")
    with pytest.raises(ConfigError, match=rf"^{conf}: spark\.master"):
        nnlib.train(
            _conf(tmp_path, "run.yaml", "spark:\n  master: yarn-cluster\n"),
            overrides={"mappers": 2},
            out=tmp_path / "r",
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_spark_connect_server_from_the_environment_is_blamed_on_spark_remote_the_variable(runs, tmp_path):
    tmp, _, _ = runs
    proc, _ = _spark_predict(str(tmp / "abc-run"), str(tmp / "abc.parquet"), env_extra={"SPARK_REMOTE": "foo"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "nnlib: error: SPARK_REMOTE (environment variable): must be sc://HOST:PORT "
        "(a Spark Connect server) or local[N], got 'foo'"
    )
