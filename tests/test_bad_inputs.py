"""The bad-input catalogue (README, "Bad input"): every case exits 2 with one line and writes nothing.

Each case builds its inputs in a temporary folder and returns the arguments
of ``nnlib run``; the message must name the key or file, say what is
allowed, and show what was given.
"""

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data import write_idx

from nnlib.cli import main

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


def idx_pair(tmp, images, labels):
    write_idx(tmp / "t-images-idx3-ubyte.gz", images, 0x08)
    if labels is not None:
        write_idx(tmp / "t-labels-idx1-ubyte.gz", labels, 0x08)
    return data(tmp / "t-images-idx3-ubyte.gz")


# (id, builder(tmp) -> extra args, expected fragment of the one-line message)
CATALOGUE = [
    ("unknown-key", lambda t: S("mapers=3"), "unknown config key 'mapers'; did you mean 'mappers'?"),
    ("unknown-key-wrong-section", lambda t: S("lr=0.1"), "unknown config key 'lr'; did you mean 'train.lr'?"),
    ("unknown-key-in-file", lambda t: [(t / "c.yaml").write_text("trian:\n  lr: 0.1\n") and str(t / "c.yaml")],
     "c.yaml: unknown config key 'trian'; did you mean 'train'"),
    ("wrong-type", lambda t: S("train.rounds=two"),
     "config key 'train.rounds': Input should be a valid integer, got 'two'"),
    ("wrong-type-list", lambda t: S("model.hidden=64"),
     "config key 'model.hidden': Input should be a valid list, got 64"),
    ("zero-lr", lambda t: S("train.lr=0"), "config key 'train.lr': Input should be greater than 0, got 0"),
    ("negative-lr", lambda t: S("train.lr=-0.5"), "config key 'train.lr': Input should be greater than 0, got -0.5"),
    ("batch-size-0", lambda t: S("train.batch_size=0"),
     "config key 'train.batch_size': Input should be greater than or equal to 1, got 0"),
    ("mappers-0", lambda t: S("mappers=0"), "config key 'mappers': Input should be greater than or equal to 1, got 0"),
    ("mappers-more-than-samples", lambda t: S("mappers=5000"),
     "mappers must be <= the number of training samples (1438), got 5000"),
    ("unknown-choice", lambda t: S("engine=hadoop"),
     "config key 'engine': Input should be 'local', 'spark', 'mrjob' or 'mpi', got 'hadoop'"),
    ("hidden-size-0", lambda t: S("model.hidden=[0]"), "model.hidden: every layer size must be >= 1, got [0]"),
    ("test-fraction-1", lambda t: S("data.test_fraction=1"),
     "config key 'data.test_fraction': Input should be less than 1, got 1"),
    ("set-without-value", lambda t: ["--set", "mappers"],
     "--set expects key=value (e.g. --set mappers=4), got 'mappers'"),
    ("gradient-on-spark-jobs", lambda t: S("engine=spark", "spark.mode=jobs", "combine=gradient"),
     "combine=gradient syncs every mini-batch and needs spark.mode=stage, got spark.mode=jobs"),
    ("missing-conf", lambda t: [str(t / "nope.yaml")], "nope.yaml: no such file"),
    ("invalid-yaml", lambda t: [(t / "c.yaml").write_text("train:\n  lr: [\n") and str(t / "c.yaml")],
     "c.yaml: not valid YAML at line"),
    ("extends-cycle", lambda t: [(t / "c.yaml").write_text("extends: c.yaml\n") and str(t / "c.yaml")],
     "'extends: c.yaml' makes a cycle"),
    ("missing-data-file", lambda t: data(t / "none.npz"), "data.source: file {t}/none.npz does not exist"),
    ("data-path-is-a-folder", lambda t: data(t), "data.source: {t} holds no .parquet files"),
    ("unknown-extension", lambda t: [(t / "d.txt").write_text("1,2\n") and None] and data(t / "d.txt"),
     "data.source: unknown kind of data source '{t}/d.txt'; allowed: digits, synthetic, .npz, .csv, .parquet"),
    ("csv-ragged-rows", lambda t: csv_file(t, "a,b,label\n1,2,0\n3,1\n4,5,1\n"),
     "d.csv is not a well-formed CSV file (CSV parse error: Expected 3 columns, got 2"),
    ("csv-non-numeric", lambda t: csv_file(t, "a,b,label\n1,2,0\n3,x,1\n4,5,1\n"),
     "d.csv column 'b' must be numeric, got string (non-numeric cells)"),
    ("csv-no-label-column", lambda t: csv_file(t, "a,b,c\n1,2,0\n3,1,1\n"),
     "d.csv has no label column 'label' (set data.label_column; columns are ['a', 'b', 'c'])"),
    ("nan-feature", lambda t: data(npz(t, x=x_with(np.nan))),
     "features must be finite, got nan at sample 5, feature 1"),
    ("inf-feature", lambda t: data(npz(t, x=x_with(np.inf))),
     "features must be finite, got inf at sample 5, feature 1"),
    ("non-integer-labels", lambda t: data(npz(t, y=np.arange(40) % 2 + 0.5)),
     "labels must be integers 0..n_classes-1, got 0.5 at sample 0"),
    ("negative-labels", lambda t: data(npz(t, y=np.arange(40) % 2 - 1)),
     "labels must be integers 0..n_classes-1, got -1 at sample 0"),
    ("test-label-out-of-range", lambda t: data(npz(t, x_test=np.zeros((4, 3)), y_test=np.array([0, 1, 7, 0]))),
     "labels must be in 0..1 (the training labels), got 7 at sample 2"),
    ("single-class", lambda t: data(npz(t, y=np.zeros(40, int))),
     "the training set holds a single class (0); at least 2 are needed"),
    ("test-feature-count", lambda t: data(npz(t, x_test=np.zeros((4, 5)), y_test=np.array([0, 1, 1, 0]))),
     "test set has 5 features, training set has 3"),
    ("npz-missing-arrays", lambda t: [np.savez(t / "d.npz", a=np.zeros(3))] and data(t / "d.npz"),
     "d.npz must hold arrays 'x' and 'y', found ['a']"),
    ("npz-object-arrays", lambda t: data(npz(t, y=np.array([1, "a"] * 20, dtype=object))),
     "holds object arrays, which are not read (pickle is disabled)"),
    ("truncated-npz", lambda t: truncated(t, "d.npz", lambda p: npz(t)), "d.npz is not a readable .npz file"),
    ("truncated-parquet", lambda t: truncated(t, "d.parquet", lambda p: pq.write_table(
        pa.table({"a": np.arange(40.0), "label": np.arange(40) % 2}), p)), "d.parquet is not a readable parquet file"),
    ("idx-bad-magic", lambda t: [(t / "t-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")]
     and data(t / "t-images-idx3-ubyte"), "t-images-idx3-ubyte is not an IDX file (bad magic number)"),
    ("idx-truncated", lambda t: [(t / "t-images-idx3-ubyte.gz").write_bytes(gzip.compress(
        bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 5))] and data(t / "t-images-idx3-ubyte.gz"),
     "is truncated or padded: shape (10,) needs 18 bytes, file has 13"),
    ("idx-labels-missing", lambda t: idx_pair(t, np.zeros((4, 2, 2), np.uint8), None),
     "data.labels: file {t}/t-labels-idx1-ubyte.gz does not exist"),
    ("finished-run-in-out", finished_run, "already holds a finished run (summary.json); choose another directory "
                                          "or pass --overwrite"),
    ("corrupted-checkpoint", corrupted_checkpoint, "checkpoint {t}/done/checkpoints/round-00001.npz is corrupted"),
    ("resume-with-other-config", changed_resume,
     "the config differs from the run's in train.batch_size; only train.rounds may change"),
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


def test_catalogue_and_readme_table_list_the_same_41_cases():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("### Bad input", 1)[1].split("\n## ", 1)[0]
    in_readme = re.findall(r"^\| `([a-z0-9-]+)` \|", table, re.M)
    assert sorted(in_readme) == sorted(case_id for case_id, _, _ in CATALOGUE)
    assert len(set(in_readme)) == len(in_readme) == 41
