"""The bad-input catalogue (README, "Bad input"): every case exits 2 with one line and writes nothing.

Each case builds its inputs in a temporary folder and returns the arguments
of ``nnlib run``; the message must name the key or file, say what is
allowed, and show what was given.
"""

import csv
import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import small_config
from test_data import write_idx

from nnlib.cli import main
from nnlib.data.dataset import ShardSource
from nnlib.driver import prepare, run_round
from nnlib.engines.local import LocalEngine
from nnlib.errors import DataError, DivergenceError, EngineError, error_from_text, hint, root_cause
from nnlib.outputs import RunDir

QUICK = ["--set", "engine=local", "--set", "train.rounds=1", "--set", "mappers=2", "--quiet"]


def S(*items):
    return [a for item in items for a in ("--set", item)]


def npz(tmp, name="d.npz", **arrays):
    rng = np.random.default_rng(0)
    base = {"x": rng.normal(size=(40, 3)), "y": np.arange(40) % 2}
    base.update(arrays)
    np.savez(tmp / name, **base)
    return str(tmp / name)


def data(path):
    return S(f"data.source={path}")


def csv_file(tmp, text):
    (tmp / "d.csv").write_text(text)
    return data(tmp / "d.csv")


def x_with(value):
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[5, 1] = value
    return x


def truncated(tmp, name, write):
    path = tmp / name
    write(path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return data(path)


def finished_run(tmp):
    assert main(["run", *QUICK, "--out", str(tmp / "done")]) == 0
    return ["--out", str(tmp / "done")]


def corrupted_checkpoint(tmp):
    assert main(["run", *QUICK, "--out", str(tmp / "done")]) == 0
    (tmp / "done" / "checkpoints" / "round-00001.npz").write_bytes(b"PK\x03\x04 not a zip")
    return ["--resume", str(tmp / "done"), *S("train.rounds=2")]


def changed_resume(tmp):
    assert main(["run", *QUICK, "--out", str(tmp / "done")]) == 0
    return ["--resume", str(tmp / "done"), *S("train.batch_size=8")]


def rows_csv(path, n=200, big_at=None, labels=None):
    """A CSV of ``n`` rows ``a,b,label`` (labels: ``a > 0``, or ``labels``); ``big_at``: that row's ``a`` is 1e+39,
    finite in float64 but not in float32."""
    x = np.random.default_rng(0).normal(size=(n, 2))
    y = (x[:, 0] > 0).astype(int) if labels is None else np.asarray(labels)
    lines = [f"{a!r},{b!r},{c}" for (a, b), c in zip(x.tolist(), y.tolist())]
    if big_at is not None:
        lines[big_at] = "1e+39," + lines[big_at].split(",", 1)[1]
    path.write_text("a,b,label\n" + "\n".join(lines) + "\n")
    return str(path)


def parquet(tmp, name="d.parquet", x=None, y=None):
    x = np.random.default_rng(0).normal(size=(40, 3)) if x is None else x
    y = np.arange(len(x)) % 2 if y is None else y
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": y}), tmp / name)
    return str(tmp / name)


def standardised_past_float32(tmp):
    # a training column of 0 and 1e-150 has a std of 5e-151: a test value of 1 standardises to 2e+150
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[:, 0] = np.arange(40) % 2 * 1e-150
    return data(npz(tmp, x=x, x_test=np.ones((4, 3)), y_test=np.array([0, 1, 1, 0])))


def trained_then_changed(tmp, source_args, change):
    """Train 2 rounds, then ``change()`` an input in place; the arguments of the resume that must refuse it."""
    assert main(["run", *QUICK, *source_args, *S("train.rounds=2"), "--out", str(tmp / "done")]) == 0
    change()
    return ["--resume", str(tmp / "done"), *S("train.rounds=4")]


def flip_csv(path):
    lines = path.read_text().splitlines()
    path.write_text(
        "\n".join([lines[0], *(f"{ln.rsplit(',', 1)[0]},{1 - int(ln.rsplit(',', 1)[1])}" for ln in lines[1:])]) + "\n"
    )


def idx_pair(tmp, images, labels):
    write_idx(tmp / "t-images-idx3-ubyte.gz", images, 0x08)
    if labels is not None:
        write_idx(tmp / "t-labels-idx1-ubyte.gz", labels, 0x08)
    return data(tmp / "t-images-idx3-ubyte.gz")


# (id, builder(tmp) -> extra args, expected fragment of the one-line message)
CATALOGUE = [
    ("unknown-key", lambda t: S("mapers=3"), "unknown config key 'mapers'; did you mean 'mappers'?"),
    ("unknown-key-wrong-section", lambda t: S("lr=0.1"), "unknown config key 'lr'; did you mean 'train.lr'?"),
    (
        "unknown-key-in-file",
        lambda t: [(t / "c.yaml").write_text("trian:\n  lr: 0.1\n") and str(t / "c.yaml")],
        "c.yaml: unknown config key 'trian'; did you mean 'train'",
    ),
    (
        "wrong-type",
        lambda t: S("train.rounds=two"),
        "config key 'train.rounds': Input should be a valid integer, got 'two'",
    ),
    (
        "wrong-type-list",
        lambda t: S("model.hidden=64"),
        "config key 'model.hidden': Input should be a valid list, got 64",
    ),
    ("zero-lr", lambda t: S("train.lr=0"), "config key 'train.lr': Input should be greater than 0, got 0"),
    ("negative-lr", lambda t: S("train.lr=-0.5"), "config key 'train.lr': Input should be greater than 0, got -0.5"),
    (
        "batch-size-0",
        lambda t: S("train.batch_size=0"),
        "config key 'train.batch_size': Input should be greater than or equal to 1, got 0",
    ),
    ("mappers-0", lambda t: S("mappers=0"), "config key 'mappers': Input should be greater than or equal to 1, got 0"),
    (
        "mappers-more-than-samples",
        lambda t: S("mappers=5000"),
        "mappers must be <= the number of training samples (1438), got 5000",
    ),
    (
        "unknown-choice",
        lambda t: S("engine=hadoop"),
        "config key 'engine': Input should be 'local', 'spark', 'mrjob' or 'mpi', got 'hadoop'",
    ),
    ("hidden-size-0", lambda t: S("model.hidden=[0]"), "model.hidden: every layer size must be >= 1, got [0]"),
    (
        "test-fraction-1",
        lambda t: S("data.test_fraction=1"),
        "config key 'data.test_fraction': Input should be less than 1, got 1",
    ),
    (
        "set-without-value",
        lambda t: ["--set", "mappers"],
        "--set expects key=value (e.g. --set mappers=4), got 'mappers'",
    ),
    (
        "bad-spark-master",
        lambda t: S("engine=spark", "spark.master=bogus"),
        "spark.master: must be local, local[N], local[*], local[N,F], spark://HOST:PORT, yarn or k8s://HOST:PORT, "
        "got 'bogus'",
    ),
    ("missing-conf", lambda t: [str(t / "nope.yaml")], "nope.yaml: no such file"),
    (
        "invalid-yaml",
        lambda t: [(t / "c.yaml").write_text("train:\n  lr: [\n") and str(t / "c.yaml")],
        "c.yaml: not valid YAML at line",
    ),
    (
        "extends-cycle",
        lambda t: [(t / "c.yaml").write_text("extends: c.yaml\n") and str(t / "c.yaml")],
        "'extends: c.yaml' makes a cycle",
    ),
    ("missing-data-file", lambda t: data(t / "none.npz"), "data.source: file {t}/none.npz does not exist"),
    ("data-path-is-a-folder", lambda t: data(t), "data.source: {t} holds no .parquet files"),
    (
        "unknown-extension",
        lambda t: [(t / "d.txt").write_text("1,2\n") and None] and data(t / "d.txt"),
        "data.source: unknown kind of data source '{t}/d.txt'; allowed: digits, synthetic, .npz, .csv, .parquet",
    ),
    (
        "csv-ragged-rows",
        lambda t: csv_file(t, "a,b,label\n1,2,0\n3,1\n4,5,1\n"),
        "d.csv is not a well-formed CSV file (CSV parse error: Expected 3 columns, got 2",
    ),
    (
        "csv-non-numeric",
        lambda t: csv_file(t, "a,b,label\n1,2,0\n3,x,1\n4,5,1\n"),
        "d.csv column 'b' must be numeric, got string (non-numeric cells); leave it out of the features with "
        "--set data.drop_columns=[b]",
    ),
    (
        "csv-no-label-column",
        lambda t: csv_file(t, "a,b,c\n1,2,0\n3,1,1\n"),
        "d.csv has no label column 'label' (set data.label_column; columns are ['a', 'b', 'c'])",
    ),
    (
        "nan-feature",
        lambda t: data(npz(t, x=x_with(np.nan))),
        "features must be finite, got nan at sample 5, feature 1",
    ),
    (
        "inf-feature",
        lambda t: data(npz(t, x=x_with(np.inf))),
        "features must be finite, got inf at sample 5, feature 1",
    ),
    (
        "non-integer-labels",
        lambda t: data(npz(t, y=np.arange(40) % 2 + 0.5)),
        "labels must be integers 0..n_classes-1, got 0.5 at sample 0",
    ),
    (
        "negative-labels",
        lambda t: data(npz(t, y=np.arange(40) % 2 - 1)),
        "labels must be integers 0..n_classes-1, got -1 at sample 0",
    ),
    (
        "test-label-out-of-range",
        lambda t: data(npz(t, x_test=np.zeros((4, 3)), y_test=np.array([0, 1, 7, 0]))),
        "labels must be in 0..1 (the training labels), got 7 at sample 2",
    ),
    (
        "single-class",
        lambda t: data(npz(t, y=np.zeros(40, int))),
        "the training set holds a single class (0); at least 2 are needed",
    ),
    (
        "test-feature-count",
        lambda t: data(npz(t, x_test=np.zeros((4, 5)), y_test=np.array([0, 1, 1, 0]))),
        "test set has 5 features, training set has 3",
    ),
    (
        "npz-missing-arrays",
        lambda t: [np.savez(t / "d.npz", a=np.zeros(3))] and data(t / "d.npz"),
        "d.npz must hold arrays 'x' and 'y', found ['a']",
    ),
    (
        "npz-object-arrays",
        lambda t: data(npz(t, y=np.array([1, "a"] * 20, dtype=object))),
        "holds object arrays, which are not read (pickle is disabled)",
    ),
    ("truncated-npz", lambda t: truncated(t, "d.npz", lambda p: npz(t)), "d.npz is not a readable .npz file"),
    (
        "truncated-parquet",
        lambda t: truncated(
            t, "d.parquet", lambda p: pq.write_table(pa.table({"a": np.arange(40.0), "label": np.arange(40) % 2}), p)
        ),
        "d.parquet is not a readable parquet file",
    ),
    (
        "idx-bad-magic",
        lambda t: [(t / "t-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")] and data(t / "t-images-idx3-ubyte"),
        "t-images-idx3-ubyte is not an IDX file (bad magic number)",
    ),
    (
        "idx-truncated",
        lambda t: (
            [
                (t / "t-images-idx3-ubyte.gz").write_bytes(
                    gzip.compress(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 5)
                )
            ]
            and data(t / "t-images-idx3-ubyte.gz")
        ),
        "is truncated or padded: shape (10,) needs 18 bytes, file has 13",
    ),
    (
        "idx-labels-missing",
        lambda t: idx_pair(t, np.zeros((4, 2, 2), np.uint8), None),
        "data.labels: file {t}/t-labels-idx1-ubyte.gz does not exist",
    ),
    (
        "finished-run-in-out",
        finished_run,
        "already holds a finished run (summary.json); choose another directory or pass --overwrite",
    ),
    ("corrupted-checkpoint", corrupted_checkpoint, "checkpoint {t}/done/checkpoints/round-00001.npz is corrupted"),
    (
        "resume-with-other-config",
        changed_resume,
        "the config differs from the run's in train.batch_size (the run has 32, given 8); only train.rounds may change",
    ),
    # values finite in float64 but not in float32, in every source format, and after standardising
    (
        "csv-test-past-float32",
        lambda t: data(rows_csv(t / "train.csv")) + S(f"data.test_source={rows_csv(t / 'test.csv', 40, big_at=3)}"),
        "data.test_source {t}/test.csv: features must be finite in float32 (|value| <= 3.403e+38), got 1e+39 at "
        "sample 3, feature 0 ('a'); rescale that column",
    ),
    (
        "csv-past-float32",
        lambda t: data(rows_csv(t / "d.csv", big_at=7)),
        "data.source {t}/d.csv: features must be finite in float32 (|value| <= 3.403e+38), got 1e+39 at sample 7, "
        "feature 0 ('a')",
    ),
    (
        "npz-past-float32",
        lambda t: data(npz(t, x=x_with(1e39))),
        "features must be finite in float32 (|value| <= 3.403e+38), got 1e+39 at sample 5, feature 1",
    ),
    (
        "parquet-past-float32",
        lambda t: data(parquet(t, x=x_with(-1e39))),
        "data.source {t}/d.parquet: features must be finite in float32 (|value| <= 3.403e+38), got -1e+39 at "
        "sample 5, feature 1 ('b')",
    ),
    (
        "idx-past-float32",
        lambda t: (
            [write_idx(t / "t-labels-idx1-ubyte.gz", np.arange(40, dtype=np.uint8) % 2, 0x08)]
            and [write_idx(t / "t-images-idx3-ubyte.gz", x_with(1e39).reshape(40, 3, 1).astype(">f8"), 0x0E)]
            and data(t / "t-images-idx3-ubyte.gz")
        ),
        "t-images-idx3-ubyte.gz: features must be finite in float32 (|value| <= 3.403e+38), got 1e+39 at sample 5, "
        "feature 1",
    ),
    (
        "past-float32-once-standardised",
        standardised_past_float32,
        "data.source {t}/d.npz (test part): sample 0, feature 0 is past float32's range once standardised",
    ),
    # label ids that are not class indices
    (
        "label-ids-not-indices",
        lambda t: data(rows_csv(t / "d.csv", 120, labels=[0, 500000, 999999] * 40)),
        "labels must be class indices 0..K-1, got 3 distinct labels (0, 500000, 999999) up to 999999, which would "
        "make a 1,000,000-unit output layer; remap them to 0..2",
    ),
    (
        "parquet-label-ids",
        lambda t: data(parquet(t, y=np.arange(40) % 2 * 70000)),
        "data.source {t}/d.parquet: labels must be class indices 0..K-1, got 2 distinct labels (0, 70000) up to 70000",
    ),
    # resume on data that changed since the checkpoint, whatever the format
    (
        "resume-on-changed-data",
        lambda t: trained_then_changed(t, data(rows_csv(t / "d.csv")), lambda: flip_csv(t / "d.csv")),
        "data.source {t}/d.csv has changed since the checkpoint round-00002.npz",
    ),
    (
        "resume-on-changed-parquet",
        lambda t: trained_then_changed(t, data(parquet(t)), lambda: parquet(t, y=1 - np.arange(40) % 2)),
        "data.source {t}/d.parquet has changed since the checkpoint round-00002.npz",
    ),
    (
        "resume-on-changed-test-source",
        lambda t: trained_then_changed(
            t,
            data(rows_csv(t / "d.csv")) + S(f"data.test_source={rows_csv(t / 'test.csv', 40)}"),
            lambda: flip_csv(t / "test.csv"),
        ),
        "data.test_source {t}/test.csv has changed since the checkpoint",
    ),
    # an input error writes nothing, says what to change, and an empty input says so
    (
        "parquet-more-mappers-than-rows",
        lambda t: data(parquet(t)) + S("mappers=16"),
        "holds no training rows (27 training rows drawn over mappers=16 leave 3 shard(s) empty); use fewer mappers",
    ),
    (
        "test-fraction-leaves-no-training",
        lambda t: data(npz(t, x=np.zeros((2, 3)), y=np.array([0, 1]))) + S("data.test_fraction=0.9"),
        "data.test_fraction: 0.9 of 2 samples leaves no training data; lower",
    ),
    ("csv-empty", lambda t: csv_file(t, ""), "d.csv is empty (0 bytes"),
    ("csv-header-only", lambda t: csv_file(t, "a,b,label\n"), "d.csv is empty (a header row and no data rows)"),
    (
        "npz-empty",
        lambda t: data(npz(t, x=np.zeros((0, 3)), y=np.zeros(0, int))),
        "d.npz: holds no samples (it is empty)",
    ),
    (
        "parquet-empty",
        lambda t: data(parquet(t, x=np.zeros((0, 3)))),
        "d.parquet is empty (its Parquet files hold no rows)",
    ),
    (
        "idx-empty",
        lambda t: idx_pair(t, np.zeros((0, 2, 2), np.uint8), np.zeros(0, np.uint8)),
        "t-images-idx3-ubyte.gz is empty (an IDX file of 0 items)",
    ),
]


@pytest.mark.parametrize("build,expected", [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_bad_input(tmp_path, capsys, build, expected):
    extra = build(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    capsys.readouterr()
    out_args = [] if any(a in ("--out", "--resume") for a in extra) else ["--out", str(tmp_path / "run")]
    code = main(["run", *QUICK, *extra, *out_args])
    err = capsys.readouterr().err
    assert code == 2
    assert expected.format(t=tmp_path) in err, err
    assert err.count("\n") == 1 and err.startswith("nnlib: error: ") and "Traceback" not in err
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed
    assert not (tmp_path / "run").exists()


def test_catalogue_and_readme_table_list_the_same_cases():
    import re

    page = Path(__file__).resolve().parent.parent / "docs" / "pages" / "reference" / "bad-input.md"
    table = page.read_text().split("# Bad input", 1)[1].split("\n## ", 1)[0]
    in_readme = re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.M)
    tested = [case_id for case_id, _, _ in CATALOGUE + ENGINE_CASES] + HANDLED + list(ELSEWHERE)
    assert sorted(in_readme) == sorted(tested)
    assert len(set(in_readme)) == len(in_readme)


# Cases nnlib handles rather than refuses (README, "Bad input": the rows marked "handled"), each tested here
# (gradient-on-spark-jobs: spark.mode=jobs runs synchronous rounds, tests/test_spark_connect.py)
HANDLED = ["missing-class", "uneven-shards-synchronous", "gradient-on-spark-jobs"]
# Cases held by a test in another file (real MLflow stores, Spark sessions, spark-submit and nnlib run
# subprocesses): each README row names the test that holds it, which must exist
ELSEWHERE = {
    "scratch-dir-full-while-building": "test_disk_shards.py::test_a_write_that_fails_while_a_parquet_shard_is_built_is_one_error_and_leaves_nothing",
    "spark-negative-weightcol": "test_spark_regression_ml.py::test_bad_columns_and_models_are_one_line",
    "spark-weightcol-in-conf": "test_spark_regression_ml.py::test_bad_columns_and_models_are_one_line",
    "spark-task-in-conf": "test_spark_regression_ml.py::test_bad_columns_and_models_are_one_line",
    "spark-model-of-other-task": "test_spark_regression_ml.py::test_bad_columns_and_models_are_one_line",
    "spark-load-other-model-class": "test_spark_regression_ml.py::test_bad_columns_and_models_are_one_line",
    "scratch-dir-missing": "test_disk_shards.py::test_a_bad_scratch_dir_is_one_line_naming_it",
    "scratch-dir-a-file": "test_disk_shards.py::test_a_bad_scratch_dir_is_one_line_naming_it",
    "scratch-dir-full": "test_disk_shards.py::test_a_write_that_fails_is_one_error_naming_the_folder_and_leaves_nothing",
    "shard-storage-auto-budget": "test_shard_storage_auto.py::test_a_spark_setting_that_is_not_a_size_is_one_line",
    "scratch-dir-read-only": "test_scratch_dir_errors.py::test_a_read_only_scratch_folder_is_one_line",
    "row-keyed-nan-target": "test_rows_regression.py::test_bad_targets_weights_and_flags_are_one_line_naming_file_column_and_sample",
    "row-keyed-negative-weight": "test_rows_regression.py::test_bad_targets_weights_and_flags_are_one_line_naming_file_column_and_sample",
    "row-keyed-null-flag": "test_rows_regression.py::test_bad_targets_weights_and_flags_are_one_line_naming_file_column_and_sample",
    "row-keyed-zero-training-weights": "test_rows_regression.py::test_weights_and_flags_that_leave_no_training_are_refused_as_load_columns_refuses_them",
    "weightcol-not-numeric": "test_rows_regression.py::test_training_frame_refuses_a_weight_or_flag_column_of_the_wrong_type",
    "validation-indicator-not-boolean": "test_rows_regression.py::test_training_frame_refuses_a_weight_or_flag_column_of_the_wrong_type",
    "report-mixed-tasks": "test_regression_report.py::test_a_report_mixing_regression_and_classification_runs_is_one_line",
    "sweep-mixed-tasks": "test_regression_report.py::test_a_sweep_mixing_tasks_or_asking_a_regression_for_a_target_accuracy_is_one_line",
    "sweep-target-accuracy-regression": "test_regression_report.py::test_a_sweep_mixing_tasks_or_asking_a_regression_for_a_target_accuracy_is_one_line",
    "predict-weight-column-missing": "test_regression_report.py::test_a_bad_weight_column_in_predict_is_one_line",
    "predict-negative-weight": "test_regression_report.py::test_a_bad_weight_column_in_predict_is_one_line",
    "predict-null-weight": "test_regression_report.py::test_a_bad_weight_column_in_predict_is_one_line",
    "predict-zero-weights": "test_regression_report.py::test_a_classifiers_bad_weight_column_in_predict_is_one_line",
    "predict-weight-no-columns": "test_regression_report.py::test_a_weight_column_on_a_source_without_columns_is_one_line",
    "ragged-list-targets": "test_regression.py::test_a_parquet_list_column_of_targets_trains_as_its_targets_in_columns",
    "mlflow-run-deleted-mid-run": "test_side_channels.py::test_an_mlflow_run_deleted_mid_run_is_one_warning_and_the_run_completes",
    "mlflow-server-unreachable": "test_side_channels.py::test_an_unreachable_tracking_server_is_one_line_within_seconds_before_training",
    "train-inside-callers-mlflow-run": "test_side_channels.py::test_inside_the_callers_mlflow_run_nnlib_logs_a_child_run_and_leaves_the_settings_as_found",
    "out-in-use-by-another-run": "test_outputs_safety.py::test_a_folder_another_run_holds_is_refused_naming_its_pid_and_host",
    "write-past-file-size-limit": "test_outputs_safety.py::test_a_checkpoint_past_the_file_size_limit_is_one_line_and_resume_goes_on",
    "spark-output-column-exists": "test_spark_columns.py::test_transform_refuses_an_output_column_the_dataframe_has_before_any_job",
    "spark-transform-nan": "test_spark_columns.py::test_a_nan_at_transform_names_the_column_and_the_rows_partition_and_offset",
    "spark-predict-nan": "test_spark_columns.py::test_cli_predict_on_spark_names_the_column_and_the_files_row_with_no_spark_lines",
    "predict-key-is-an-output-column": "test_predict_layout.py::test_a_key_column_named_as_a_column_predict_writes_is_refused",
    "predict-list-column-model-on-columns": "test_predict_layout.py::test_a_list_column_model_on_separate_columns_names_them_and_the_setting_that_reads_them",
    "predict-columns-model-on-a-list-column": "test_predict_layout.py::test_a_model_of_named_columns_on_a_list_column_names_the_setting_that_reads_it",
    "predict-extra-column": "test_predict_layout.py::test_columns_the_model_never_saw_or_lacks_are_named_with_what_reads_the_file",
    "predict-feature-count": "test_predict_layout.py::test_a_feature_count_the_model_does_not_take_is_one_line_in_every_format",
    "predict-spark-layout-before-jvm": "test_predict_layout.py::test_on_spark_a_layout_mismatch_is_found_before_the_jvm_starts_with_the_local_line",
    "run-features-column-missing": "test_predict_layout.py::test_training_on_a_missing_or_wrong_features_column_names_the_files_columns_before_any_engine_starts",
    "test-source-other-columns": "test_predict_layout.py::test_on_spark_the_other_checks_a_footer_answers_come_before_the_jvm_starts",
    "set-value-blamed-on-set": "test_predict_layout.py::test_a_bad_value_from_set_is_blamed_on_set_not_on_the_conf_file",
    "conf-value-blamed-on-its-file": "test_predict_layout.py::test_a_bad_value_from_the_file_is_blamed_on_the_file_that_set_it",
    "spark-master-no-port": "test_spark_causes.py::test_a_master_url_spark_would_refuse_is_one_line_with_its_form",
    "spark-master-not-a-master": "test_spark_causes.py::test_a_port_that_answers_but_is_no_spark_master_is_one_line_within_the_stated_wait",
    "spark-master-no-executor": "test_spark_causes.py::test_a_master_with_no_worker_is_one_line_naming_the_wait_and_its_setting",
    "spark-remote-not-connect": "test_spark_causes.py::test_a_connect_url_nobody_answers_is_one_line_with_the_cause",
    "spark-jvm-refuses-setting": "test_spark_causes.py::test_a_setting_spark_submit_refuses_is_one_line_with_its_cause",
    "non-numeric-target": "test_regression.py::test_bad_input_is_one_line[non-numeric-target]",
    "null-target": "test_regression.py::test_bad_input_is_one_line[null-target]",
    "inf-target": "test_regression.py::test_bad_input_is_one_line[inf-target]",
    "fractional-label": "test_regression.py::test_bad_input_is_one_line[fractional-label]",
    "negative-weight": "test_regression.py::test_bad_input_is_one_line[negative-weight]",
    "null-weight": "test_regression.py::test_bad_input_is_one_line[null-weight]",
    "inf-weight": "test_regression.py::test_bad_input_is_one_line[inf-weight]",
    "zero-weights": "test_regression.py::test_bad_input_is_one_line[zero-weights]",
    "integer-validation-column": "test_regression.py::test_bad_input_is_one_line[integer-validation-column]",
    "validation-marks-none": "test_regression.py::test_bad_input_is_one_line[validation-marks-none]",
    "validation-marks-all": "test_regression.py::test_bad_input_is_one_line[validation-marks-all]",
    "cross-entropy-regression": "test_regression.py::test_bad_input_is_one_line[cross-entropy-regression]",
    "stratified-regression": "test_regression.py::test_bad_input_is_one_line[stratified-regression]",
    "label-skew-regression": "test_regression.py::test_bad_input_is_one_line[label-skew-regression]",
    "split-regression": "test_regression.py::test_bad_input_is_one_line[split-regression]",
    "target-accuracy-regression": "test_regression.py::test_bad_input_is_one_line[target-accuracy-regression]",
    "validation-column-and-fraction": "test_regression.py::test_bad_input_is_one_line[validation-column-and-fraction]",
    "label-columns-classification": "test_regression.py::test_bad_input_is_one_line[label-columns-classification]",
    "spark-wide-source": "test_spark_wide.py::test_a_wide_dataframe_read_by_spark_is_warned_of_in_one_line_before_its_first_pass",
}


def test_each_case_tested_elsewhere_names_a_test_that_exists():
    here = Path(__file__).resolve().parent
    for case_id, where in ELSEWHERE.items():
        file, name = where.split("::")
        name, _, case = name.partition("[")  # a parametrised test's case id, which that file must hold
        text = (here / file).read_text()
        assert f"def {name}(" in text and (not case or f'"{case[:-1]}"' in text), (case_id, where)


@pytest.mark.parametrize("source", ["npz", "parquet"])
def test_missing_class_warns_and_trains(tmp_path, capsys, source):
    y = np.array([0, 1, 3, 1] * 10)  # class 2 never occurs: the model has 4 outputs, one never a target
    path = npz(tmp_path, y=y) if source == "npz" else parquet(tmp_path, y=y)
    assert main(["run", *QUICK, *data(path), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "1 class(es) in 0..3 never occur in the training set (2); the model still gets an output for each" in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_classes"] == 4


def test_uneven_shards_in_synchronous_rounds_train_on_every_row(tmp_path):
    # the peers' report: 8 mappers on quantity-skewed digits took the smallest shard's 2 steps each (accuracy 0.30)
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                *S(
                    "engine=local",
                    "data.partition=quantity_skew",
                    "data.skew_alpha=0.2",
                    "mappers=8",
                    "combine=gradient",
                    "train.rounds=3",
                ),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    rows = [r for r in csv.DictReader((out / "mapper_times.csv").open()) if r["round"] == "1"]
    sizes, steps = [int(r["n_samples"]) for r in rows], [int(r["steps"]) for r in rows]
    assert min(sizes) < 32 < 10 * 32 < max(sizes)  # uneven indeed: 1 to 798 samples, batches of 32
    assert steps == [2 * -(-n // 32) for n in sizes]  # each mapper's every row, in each of its 2 local epochs
    # measured 0.9721 (2026-11-29); even shards (data.partition=random) reach 0.9025 in the same 3 rounds
    assert json.loads((out / "summary.json").read_text())["final_test_accuracy"] > 0.95


def test_a_non_finite_score_stops_the_run(tmp_path):
    setup = prepare(small_config(), warn=lambda _m: None)
    engine = LocalEngine()
    engine.start(ShardSource(setup.config.data, setup.config.seed, setup.config.mappers))
    with pytest.raises(DivergenceError, match=r"round 1: test_loss is inf \(the weights are finite but too large"):
        run_round(engine, setup.first, setup.reducer, lambda _params: {"test_loss": np.inf, "test_accuracy": 0.5})


def test_every_summary_is_strict_json(tmp_path):
    RunDir(tmp_path / "run").write_summary({"loss": float("nan"), "losses": [np.float64(np.inf), 1.5]})

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    text = (tmp_path / "run" / "summary.json").read_text()
    assert json.loads(text, parse_constant=refuse) == {"loss": None, "losses": [None, 1.5]}


# Engine failures whose cause Spark and mrjob bury under their own traces: one line with the root cause
SPARK_START_UP = (
    "WARNING: Using incubator modules",
    "Setting default log level",
    "To adjust logging level",
    "Setting Spark log level",  # the JVM's and Spark's start-up lines, printed by every Spark run
    "Picked up JAVA_TOOL_OPTIONS",
)  # every JVM's, where that variable is set (as .ci/run does)
ROOT = Path(__file__).resolve().parent.parent


def bare_python(tmp_path) -> str:
    """A Python of this version with no packages at all (a fresh venv): no nnlib, numpy, pydantic."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    return str(tmp_path / "bare" / "bin" / "python")


def other_minor_python() -> str | None:
    """A Python of another minor version than this one, if the machine has one (pyenv's, or on PATH)."""
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.*/bin/python3")))
    candidates += [p for m in range(8, 15) if (p := shutil.which(f"python3.{m}"))]
    for path in candidates:
        probe = subprocess.run([path, "-c", "import sys; print(sys.version_info[1])"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() not in ("", str(sys.version_info[1])):
            return path
    return None


def ragged_features(tmp_path) -> str:
    feats = [[1.0, 2.0, 3.0]] * 60
    feats[17] = [1.0, 2.0]
    pq.write_table(pa.table({"features": feats, "label": np.arange(60) % 2}), tmp_path / "ragged.parquet")
    return str(tmp_path / "ragged.parquet")


SPARK = ["engine=spark", "mappers=2", "train.rounds=1"]
# (id, builder(tmp) -> (extra --set items, environment changes), expected fragment of the one line)
ENGINE_CASES = [
    (
        "spark-python-without-deps",
        lambda t: (SPARK, {"PYSPARK_PYTHON": bare_python(t)}),
        "spark: starting the mappers failed: ModuleNotFoundError: No module named '",
    ),
    (
        "spark-python-other-minor-version",
        lambda t: (SPARK, {"PYSPARK_PYTHON": other_minor_python()}),
        "[PYTHON_VERSION_MISMATCH] Python in worker has different version",
    ),
    (
        "spark-executor-data-error",
        lambda t: ([*SPARK, f"data.source={ragged_features(t)}", "data.features_column=features"], {}),
        "ragged.parquet features column 'features' has rows of different lengths",
    ),
    (
        "mrjob-python-without-deps",
        lambda t: (
            [
                "engine=mrjob",
                "mrjob.runner=local",
                "mappers=2",
                "train.rounds=1",
                f'mrjob.args=["--python-bin", "{bare_python(t)}"]',
            ],
            {},
        ),
        "mrjob (local runner): round 1 failed: ModuleNotFoundError: No module named '",
    ),
]
HINTS = {
    "spark-python-without-deps": "the workers' Python cannot import",
    "mrjob-python-without-deps": "the workers' Python cannot import",
    "spark-python-other-minor-version": "must have the driver's minor version",
}


@pytest.mark.slow
@pytest.mark.parametrize("build,expected", [c[1:] for c in ENGINE_CASES], ids=[c[0] for c in ENGINE_CASES])
def test_engine_failure_is_one_line_with_its_root_cause(tmp_path, request, build, expected):
    sets, env = build(tmp_path)
    if None in env.values():
        pytest.skip(
            "no Python of another minor version on this machine (the hint is tested on Spark's own text "
            "in test_root_cause_of_engine_errors)"
        )
    proc = subprocess.run(
        [sys.executable, "-m", "nnlib", "run", *S(*sets), "--out", str(tmp_path / "run"), "--quiet"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("nnlib: error: ") and expected in lines[-1], proc.stderr[-3000:]
    assert HINTS.get(request.node.callspec.id, "") in lines[-1]
    # nothing else: no executor trace, no mrjob "probable cause" block (the JVM's start-up lines aside)
    assert all(line.startswith(SPARK_START_UP) for line in lines[:-1]), proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


SPARK_TRACE = """py4j.protocol.Py4JJavaError: An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 0.0 failed 1 times, most recent failure: Lost task 1.0 in stage 0.0 (TID 1) (localhost executor driver): org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
  File "/opt/spark/python/lib/pyspark.zip/pyspark/worker_util.py", line 75, in read_command
    command = serializer.loads(file)
              ^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/nnlib/data/dataset.py", line 14, in <module>
    import numpy as np
ModuleNotFoundError: No module named 'numpy'
 SQLSTATE: 38000
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:1097)
\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2935)
Caused by: org.apache.spark.api.python.PythonException: [PYTHON_EXCEPTION] An exception was thrown from the Python worker
"""
MISMATCH = """: org.apache.spark.SparkException: Job aborted due to stage failure: Lost task 0.0: org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/opt/spark/python/lib/pyspark.zip/pyspark/worker.py", line 3080, in main
    raise PySparkRuntimeError(
pyspark.errors.exceptions.base.PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.10 than that in driver: 3.11, PySpark cannot run with different minor versions.
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:1097)
"""
MRJOB_CAUSE = """
Probable cause of failure:

+ /usr/bin/python3 model_avg.py --step-num=0 --mapper --nnlib-conf config.yaml
Traceback (most recent call last):
  File "/tmp/model_avg/step/000/mapper/00000/wd/model_avg.py", line 29, in <module>
    from nnlib.config import load_config
ModuleNotFoundError: No module named 'pydantic'

(from lines 8-13 of /tmp/model_avg/step/000/mapper/00000/stderr)
Step 1 of 1 failed: Command '['/bin/sh', '-ex', 'setup-wrapper.sh']' returned non-zero exit status 1.
"""
RESULT_SIZE = (
    "org.apache.spark.SparkException: Job aborted due to stage failure: Total size of serialized results "
    "of 3 tasks (1100.0 MiB) is bigger than spark.driver.maxResultSize (1024.0 MiB)\n\tat org.apache.spark"
)


@pytest.mark.parametrize(
    "text,cause,remedy",
    [
        (SPARK_TRACE, "ModuleNotFoundError: No module named 'numpy'", "the workers' Python cannot import numpy"),
        (
            MISMATCH,
            "PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.10",
            "must have the driver's minor version",
        ),
        (MRJOB_CAUSE, "ModuleNotFoundError: No module named 'pydantic'", "--python-bin in mrjob.args"),
        (RESULT_SIZE, "is bigger than spark.driver.maxResultSize (1024.0 MiB)", "{spark.driver.maxResultSize: 4g}"),
        (
            'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: weights of shape (3,)\n',
            "ValueError: weights of shape (3,)",
            None,
        ),
    ],
    ids=["spark-import", "spark-version", "mrjob-probable-cause", "spark-result-size", "plain-traceback"],
)
def test_root_cause_of_engine_errors(text, cause, remedy):
    error = error_from_text(text, "spark", "round 2")
    message = str(error)
    assert isinstance(error, EngineError) and message.startswith("spark: round 2 failed: ") and cause in message
    assert "\n" not in message and "at org.apache" not in message
    if remedy is None:
        assert hint(root_cause(text)) == ""
    else:
        assert remedy in message


def test_an_nnlib_error_in_a_worker_comes_back_as_itself():
    text = SPARK_TRACE.replace(
        "ModuleNotFoundError: No module named 'numpy'", "nnlib.errors.DataError: data.source: d.parquet is empty"
    )
    error = error_from_text(text, "spark", "round 1")
    assert isinstance(error, DataError) and str(error) == "data.source: d.parquet is empty"


@pytest.mark.slow
def test_spark_reads_the_same_checks_and_fingerprint(spark, tmp_path, capsys):
    # Spark's executors read a Parquet source: the float32 check names the column, and the survey's digest
    # refuses a resume on changed labels, as the local reader does (the catalogue's Parquet cases)
    on_spark = S("engine=spark", "spark.mode=jobs")
    assert (
        main(
            [
                "run",
                *QUICK,
                *on_spark,
                *data(parquet(tmp_path, "big.parquet", x=x_with(-1e39))),
                "--out",
                str(tmp_path / "big"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.endswith(
            "big.parquet: features must be finite in float32 (|value| <= 3.403e+38), got -1e+39 at "
            "sample 5, feature 1 ('b'); rescale that column\n"
        )
        and err.count("\n") == 1
    )
    assert not (tmp_path / "big").exists()
    resume = trained_then_changed(
        tmp_path, [*on_spark, *data(parquet(tmp_path))], lambda: parquet(tmp_path, y=1 - np.arange(40) % 2)
    )
    capsys.readouterr()
    assert main(["run", *QUICK, *on_spark, *resume]) == 2
    err = capsys.readouterr().err
    assert f"data.source {tmp_path}/d.parquet has changed since the checkpoint round-00002.npz" in err
    assert err.count("\n") == 1
