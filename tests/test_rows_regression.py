"""Regression targets, sample weights and a validation column through the row-keyed reader.

The oracle is :func:`nnlib.data.dataset.load_columns`, which reads a source
whole: the same rows as a CSV file through it and as Parquet through the
row-keyed reader (pyarrow here; Spark's executors reading the files with
pyarrow, Spark's own reader, and a DataFrame given to the reader) give the
same statistics, test and validation sets and shards, and the same weights.
The features are float32 values (the reader keeps raw rows as float32 until
it standardises them, as for classification) and the training rows arrive
in one block, so the statistics, and with them the weights, are equal bit
for bit; over several blocks they are merged (Chan's update) and equal to
rounding.
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_regression import friedman1, write_csv

from nnlib.config import load_config
from nnlib.data.dataset import ShardSource, load_columns, load_dataset, load_row_keyed
from nnlib.data.tables import LocalReader
from nnlib.errors import DataError

N = 400
SEED = 5


def rows(n: int = N, seed: int = 0):
    """Friedman's first function with float32-exact features, two targets, weights and validation flags."""
    x, y = friedman1(n, seed)
    x = x.astype(np.float32).astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    y2 = 0.5 * y + rng.normal(size=n)
    w = rng.integers(0, 4, n).astype(np.float64) * 0.5
    v = rng.uniform(size=n) < 0.25
    return x, y, y2, w, v


def columns(x, y, y2, w, v) -> dict:
    """The feature columns f0..f9, the targets, a class label (``cls``: above the median), weights, flags."""
    return {
        **{f"f{j}": x[:, j] for j in range(x.shape[1])},
        "target": y,
        "t2": y2,
        "cls": (y > np.median(y)).astype(np.int64),
        "w": w,
        "val": v,
    }


def write_parquet(folder, cols: dict, cuts=(N,)) -> str:
    """``cols`` as Parquet files ``part-0.parquet``, ... holding the rows up to each cut."""
    folder.mkdir(parents=True)
    lo = 0
    for i, hi in enumerate(cuts):
        part = {k: c.slice(lo, hi - lo) if isinstance(c, pa.Array) else np.asarray(c)[lo:hi] for k, c in cols.items()}
        pq.write_table(pa.table(part), folder / f"part-{i}.parquet")
        lo = hi
    return str(folder)


@pytest.fixture
def sources(tmp_path):
    data = rows()
    cols = columns(*data)
    return (
        data,
        write_csv(tmp_path / "r.csv", cols),
        write_parquet(tmp_path / "one", cols),
        write_parquet(tmp_path / "three", cols, (130, 131, N)),
    )


CASES = {
    "regression": ["model.task=regression", "data.label_column=target", "data.drop_columns=[t2,cls,w,val]"],
    "two targets, weights, validation column": [
        "model.task=regression",
        "data.label_columns=[target,t2]",
        "data.weight_column=w",
        "data.validation_column=val",
        "data.drop_columns=[cls]",
    ],
    "weights, validation fraction": [
        "model.task=regression",
        "data.label_column=target",
        "data.weight_column=w",
        "data.validation_fraction=0.2",
        "data.drop_columns=[t2,cls,val]",
        "data.standardize_target=false",
    ],
    "weighted classification, validation column": [
        "data.label_column=cls",
        "data.weight_column=w",
        "data.validation_column=val",
        "data.drop_columns=[target,t2]",
    ],
}


def cfg(source: str, case: str, extra=()):
    return load_config(None, [f"data.source={source}", "mappers=3", *CASES[case], *extra])


def assert_same_data(got, want, exact: bool):
    """Two Datasets of the same rows: statistics (bit for bit with ``exact``), held-out sets, sizes."""
    same = (
        np.testing.assert_array_equal
        if exact
        else (lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12))
    )
    assert got.task == want.task and got.target_names == want.target_names
    assert (got.n_train, got.n_test, got.n_val) == (want.n_train, want.n_test, want.n_val)
    for name in ("mean", "std", "target_mean", "target_std"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            same(a, b)
    for name in ("y_test_raw", "y_val_raw", "w_test", "w_val"):  # the rows themselves: always exact
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b)
    for name in ("x_test", "y_test", "x_val", "y_val"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and a.shape == b.shape, name
            same(a, b) if exact else np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def assert_same_shards(got, want, exact: bool):
    assert [s.n_samples for s in got] == [s.n_samples for s in want]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.w, b.w) if b.w is not None else None
        assert (a.w is None) == (b.w is None)
        if exact:
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.y, b.y)
        else:
            np.testing.assert_allclose(a.x, b.x, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(a.y, b.y, rtol=1e-9, atol=1e-9)


def shards(data, config):
    return ShardSource(config.data, config.seed, config.mappers, data.rows, config.model.task).build([0, 1, 2])


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("folder", ["one", "three"])
def test_the_local_reader_reads_what_load_columns_reads(sources, case, folder):
    """One file (the training rows in one block): bit for bit; three files: the statistics to rounding."""
    _, csv, one, three = sources
    want_cfg = cfg(csv, case)
    want = load_columns(want_cfg.data, SEED, want_cfg.model.task)
    got_cfg = cfg(one if folder == "one" else three, case)
    got = load_row_keyed(got_cfg.data, SEED, 3, LocalReader(), got_cfg.model.task)
    assert got.rows is not None and got.x_train is None  # the training rows stay with the mappers
    assert got.mean_weight == pytest.approx(want.mean_weight, rel=1e-12) if want.weighted else got.mean_weight is None
    assert_same_data(got, want, exact=folder == "one")
    want_shards = ShardSource(want_cfg.data, SEED, 3, None, want_cfg.model.task).build([0, 1, 2])
    got_shards = ShardSource(got_cfg.data, SEED, 3, got.rows, got_cfg.model.task).build([0, 1, 2])
    assert_same_shards(got_shards, want_shards, exact=folder == "one")


def test_a_test_source_is_read_whole_beside_a_row_keyed_training_source(sources, tmp_path):
    data, csv, one, _ = sources
    x, y, y2, w, v = rows(90, seed=7)
    test_csv = write_csv(tmp_path / "t.csv", columns(x, y, y2, w, v))
    case = "two targets, weights, validation column"
    want = load_columns(cfg(csv, case, [f"data.test_source={test_csv}"]).data, SEED, "regression")
    got = load_row_keyed(cfg(one, case, [f"data.test_source={test_csv}"]).data, SEED, 3, LocalReader(), "regression")
    assert got.n_test == 90 and got.fingerprint[1] == want.fingerprint[1]
    assert got.fingerprint[0] == want.fingerprint[0]  # the same rows: the digest a checkpoint records
    assert_same_data(got, want, exact=True)


def test_a_list_label_column_is_several_targets_named_by_their_index(tmp_path):
    x, y, y2, w, _ = rows()
    folder = tmp_path / "lists"
    folder.mkdir()
    pq.write_table(
        pa.table({"features": list(x), "label": list(np.stack([y, y2], axis=1)), "w": w}), folder / "part-0.parquet"
    )
    config = load_config(
        None,
        [f"data.source={folder}", "data.features_column=features", "model.task=regression", "data.weight_column=w"],
    )
    got = load_row_keyed(config.data, SEED, 2, LocalReader(), "regression")
    assert got.target_names == ("label_0", "label_1") and got.y_test.shape == (got.n_test, 2)
    csv = write_csv(tmp_path / "l.csv", {**{f"f{j}": x[:, j] for j in range(10)}, "a": y, "b": y2, "w": w})
    want = load_columns(
        load_config(
            None, [f"data.source={csv}", "model.task=regression", "data.label_columns=[a,b]", "data.weight_column=w"]
        ).data,
        SEED,
        "regression",
    )
    np.testing.assert_array_equal(got.target_mean, want.target_mean)
    np.testing.assert_array_equal(got.y_test, want.y_test)
    np.testing.assert_array_equal(got.x_test, want.x_test)


def _bad(tmp_path, cols: dict, case: str, extra=()):
    folder = write_parquet(tmp_path / "bad", cols)
    config = cfg(folder, case, extra)
    with pytest.raises(DataError) as caught:
        load_row_keyed(config.data, SEED, 3, LocalReader(), config.model.task)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_targets_weights_and_flags_are_one_line_naming_file_column_and_sample(tmp_path):
    x, y, y2, w, v = rows()
    base = columns(x, y, y2, w, v)
    case = "two targets, weights, validation column"
    nan_target = y2.copy()
    nan_target[7] = np.nan
    assert _bad(tmp_path / "a", {**base, "t2": nan_target}, case).endswith(
        "part-0.parquet: target column 't2' must be finite, got nan at sample 7"
    )
    null_target = pa.array([None if i == 9 else float(t) for i, t in enumerate(y)])
    assert "target column 'target' has an empty (null) value at sample 9" in _bad(
        tmp_path / "b", {**base, "target": null_target}, case
    )
    text = pa.array([str(t) for t in y])
    assert "target column 'target' must be numeric, got string" in _bad(tmp_path / "c", {**base, "target": text}, case)
    negative = w.copy()
    negative[11] = -1.0
    assert "weight column 'w' (data.weight_column) must hold finite numbers >= 0, got -1.0 at sample 11" in _bad(
        tmp_path / "d", {**base, "w": negative}, case
    )
    inf = w.copy()
    inf[3] = np.inf
    assert "got inf at sample 3" in _bad(tmp_path / "e", {**base, "w": inf}, case)
    assert "validation column 'val' (data.validation_column) must be boolean (true/false), got int64" in _bad(
        tmp_path / "f", {**base, "val": v.astype(np.int64)}, case
    )
    null_flag = pa.array([None if i == 4 else bool(f) for i, f in enumerate(v)])
    assert "validation column 'val' (data.validation_column) has an empty (null) value at sample 4" in _bad(
        tmp_path / "g", {**base, "val": null_flag}, case
    )


def test_weights_and_flags_that_leave_no_training_are_refused_as_load_columns_refuses_them(tmp_path):
    x, y, y2, w, v = rows()
    base = columns(x, y, y2, w, v)
    case = "two targets, weights, validation column"
    assert "data.validation_column 'val' marks no training row (0 of" in _bad(
        tmp_path / "a", {**base, "val": np.zeros(N, bool)}, case
    )
    assert "data.validation_column 'val' marks every training row" in _bad(
        tmp_path / "b", {**base, "val": np.ones(N, bool)}, case
    )
    zero = np.where(v, 1.0, 0.0)  # only the validation rows weigh: no training row does
    assert "data.weight_column 'w': every training row weighs 0; at least one must weigh more" in _bad(
        tmp_path / "c", {**base, "w": zero}, case
    )
    # load_columns says the same of the same rows
    csv = write_csv(tmp_path / "z.csv", {**base, "w": zero})
    with pytest.raises(DataError, match="every training row weighs 0"):
        load_columns(cfg(csv, case).data, SEED, "regression")


def test_the_routing_reads_a_local_file_whole_and_a_uri_row_by_row(sources):
    _, _, one, _ = sources
    config = cfg(one, "regression")
    assert load_dataset(config.data, SEED, 3, task="regression").rows is None  # load_columns: bit for bit
    with pytest.raises(DataError, match="is a URI, which only engine=spark reads"):
        load_dataset(config.data.model_copy(update={"source": f"file://{one}"}), SEED, 3, task="regression")


# ----------------------------------------------------------------------------------------------- on Spark


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("by_pyarrow", [True, False], ids=["executors-pyarrow", "spark-reader"])
def test_spark_reads_a_parquet_uri_as_load_columns_reads_the_csv(spark, sources, case, by_pyarrow):
    from nnlib.engines.spark.reader import SparkReader

    _, csv, one, _ = sources
    want_cfg = cfg(csv, case)
    want = load_columns(want_cfg.data, SEED, want_cfg.model.task)
    reader = SparkReader(lambda: spark, local_by_pyarrow=by_pyarrow)
    got_cfg = cfg(f"file://{one}", case)
    got = load_dataset(got_cfg.data, SEED, 3, reader, got_cfg.model.task)
    assert reader.passes and set(reader.passes) == {"pyarrow" if by_pyarrow else "spark"}
    assert got.rows is not None
    assert_same_data(got, want, exact=True)
    records = reader.shards(got.rows).collect()
    from nnlib.engines.spark.reader import shard_from_records

    got_shards = [
        shard_from_records(k, [(r.shard, r.blob) for r in records if r.shard == k], got.rows) for k in range(3)
    ]
    assert_same_shards(
        got_shards, ShardSource(want_cfg.data, SEED, 3, None, want_cfg.model.task).build([0, 1, 2]), exact=True
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "case,combine",
    [
        ("two targets, weights, validation column", "average"),
        ("weights, validation fraction", "average"),
        ("weighted classification, validation column", "average"),
        ("weights, validation fraction", "gradient"),
    ],
)
def test_a_run_on_a_parquet_uri_read_by_spark_trains_the_local_csv_runs_weights(spark, sources, case, combine):
    """``combine=gradient``: synchronous rounds normalise each batch loss by the mean training weight, which
    the survey gives the driver's payload (the training weights stay with the mappers)."""
    from nnlib.api import train
    from test_engines import spark_engine

    _, csv, one, _ = sources
    quick = [
        "train.rounds=3",
        "train.batch_size=16",
        "model.hidden=[8]",
        "train.lr=0.05",
        f"seed={SEED}",
        f"combine={combine}",
    ]
    local = train(cfg(csv, case, quick), write=False, warn=lambda _: None)
    engine = spark_engine("stage")
    engine.reader.local_by_pyarrow = False  # Spark's own reader, as for hdfs:// and s3a://
    on_spark = train(
        cfg(f"file://{one}", case, [*quick, "engine=spark"]), engine=engine, write=False, warn=lambda _: None
    )
    assert engine.reader.passes and set(engine.reader.passes) == {"spark"}
    np.testing.assert_array_equal(on_spark.model.params, local.model.params)
    score = "rmse" if "classification" not in case else "accuracy"
    assert on_spark.rounds[-1][f"test_{score}"] == local.rounds[-1][f"test_{score}"]
    assert on_spark.rounds[-1]["val_loss"] == local.rounds[-1]["val_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stage", "jobs"])
def test_a_dataframe_with_a_vector_label_weights_and_flags_trains_as_its_csv(spark, tmp_path, mode):
    from pyspark.ml.linalg import Vectors

    from nnlib.api import train
    from nnlib.engines.spark.ml import training_frame
    from test_engines import spark_engine

    x, y, y2, w, v = rows()
    pdf = [(Vectors.dense(x[i]), Vectors.dense([y[i], y2[i]]), float(w[i]), bool(v[i])) for i in range(N)]
    df = spark.createDataFrame(pdf, ["features", "label", "weight", "is_val"]).coalesce(1)
    frame = training_frame(df, "features", "label", weight="weight", validation="is_val")
    quick = [
        "train.rounds=3",
        "train.batch_size=16",
        "model.hidden=[8]",
        "train.lr=0.05",
        f"seed={SEED}",
        "mappers=3",
        "model.task=regression",
    ]
    csv = write_csv(
        tmp_path / "d.csv",
        {**{f"f{j}": x[:, j] for j in range(10)}, "label_0": y, "label_1": y2, "weight": w, "is_val": v},
    )
    local = train(
        load_config(
            None,
            [
                *quick,
                f"data.source={csv}",
                "data.label_columns=[label_0,label_1]",
                "data.weight_column=weight",
                "data.validation_column=is_val",
            ],
        ),
        write=False,
        warn=lambda _: None,
    )
    engine = spark_engine(mode)
    source = engine.reader.add_frame(frame, "rows")
    try:
        on_spark = train(
            load_config(
                None,
                [
                    *quick,
                    "engine=spark",
                    f"data.source={source}",
                    "data.features_column=features",
                    "data.label_column=label",
                    "data.weight_column=weight",
                    "data.validation_column=is_val",
                ],
            ),
            engine=engine,
            write=False,
            warn=lambda _: None,
        )
    finally:
        engine.reader.remove_frame(source)
        frame.unpersist()
    assert on_spark.model.target_names == ["label_0", "label_1"]
    np.testing.assert_array_equal(on_spark.model.params, local.model.params)
    assert on_spark.rounds[-1]["test_rmse"] == local.rounds[-1]["test_rmse"]


@pytest.mark.slow
def test_training_frame_refuses_a_weight_or_flag_column_of_the_wrong_type(spark):
    from nnlib.engines.spark.ml import training_frame

    df = spark.createDataFrame([([1.0, 2.0], 1.0, "a", 1)], ["features", "label", "weight", "flag"])
    with pytest.raises(
        DataError,
        match=r"^weightCol: column 'weight' must hold numbers \(sample weights >= 0\), "
        r"got string$",
    ):
        training_frame(df, "features", "label", weight="weight")
    with pytest.raises(DataError, match=r"^validationIndicatorCol: column 'flag' must hold booleans"):
        training_frame(df, "features", "label", validation="flag")
    with pytest.raises(DataError, match=r"^weightCol: the DataFrame has no column 'nope'"):
        training_frame(df, "features", "label", weight="nope")


@pytest.mark.slow
def test_a_dataframes_bad_weight_fails_the_run_in_one_line_naming_partition_row_and_column(spark):
    from nnlib.api import train
    from nnlib.engines.spark.ml import training_frame
    from test_engines import spark_engine

    x, y, _, w, _ = rows(60)
    w[17] = -2.0
    df = spark.createDataFrame(
        [(x[i].tolist(), float(y[i]), float(w[i])) for i in range(60)], ["features", "label", "weight"]
    ).coalesce(1)
    frame = training_frame(df, "features", "label", weight="weight")
    engine = spark_engine("stage")
    source = engine.reader.add_frame(frame, "bad")
    try:
        with pytest.raises(DataError) as caught:
            train(
                load_config(
                    None,
                    [
                        "engine=spark",
                        f"data.source={source}",
                        "data.features_column=features",
                        "model.task=regression",
                        "data.weight_column=weight",
                        "train.rounds=1",
                    ],
                ),
                engine=engine,
                write=False,
                warn=lambda _: None,
            )
    finally:
        engine.reader.remove_frame(source)
        frame.unpersist()
    assert str(caught.value) == (
        "data.source partition 0: weight column 'weight' (data.weight_column) must hold "
        "finite numbers >= 0, got -2.0 at sample 17"
    )


@pytest.mark.slow
def test_a_dataframe_of_three_partitions_trains_the_csv_runs_weights_to_rounding(spark, tmp_path):
    """Three partitions are three blocks: the statistics are merged (Chan's update), equal to numpy's
    whole-array mean and std to rounding, and the weights trained on them equal to 1e-6."""
    from nnlib.api import train
    from nnlib.engines.spark.ml import training_frame
    from test_engines import spark_engine

    x, y, _, w, v = rows()
    records = [(x[i].tolist(), float(y[i]), float(w[i]), bool(v[i])) for i in range(N)]
    # parallelize keeps the order: partition k holds the k-th run of rows, so positions are the CSV's rows
    df = spark.sparkContext.parallelize(records, 3).toDF(["features", "label", "weight", "is_val"])
    assert df.rdd.getNumPartitions() == 3
    frame = training_frame(df, "features", "label", weight="weight", validation="is_val")
    quick = [
        "train.rounds=3",
        "train.batch_size=16",
        "model.hidden=[8]",
        "train.lr=0.05",
        f"seed={SEED}",
        "mappers=3",
        "model.task=regression",
        "data.weight_column=weight",
        "data.validation_column=is_val",
    ]
    csv = write_csv(tmp_path / "d.csv", {**{f"f{j}": x[:, j] for j in range(10)}, "label": y, "weight": w, "is_val": v})
    local = train(load_config(None, [*quick, f"data.source={csv}"]), write=False, warn=lambda _: None)
    engine = spark_engine("stage")
    source = engine.reader.add_frame(frame, "three")
    try:
        on_spark = train(
            load_config(None, [*quick, "engine=spark", f"data.source={source}", "data.features_column=features"]),
            engine=engine,
            write=False,
            warn=lambda _: None,
        )
    finally:
        engine.reader.remove_frame(source)
        frame.unpersist()
    assert on_spark.model.target_names == ["label"]
    np.testing.assert_allclose(on_spark.model.params, local.model.params, rtol=0, atol=1e-6)
    assert on_spark.rounds[-1]["test_rmse"] == pytest.approx(local.rounds[-1]["test_rmse"], rel=1e-6)
