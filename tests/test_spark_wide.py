"""Wide tables on Spark: a Parquet source of thousands of columns is read by pyarrow in the executor tasks.

Spark's own reader costs time per column far above the data's size, pass
after pass (a 600 x 12,000 float32 file took minutes before round 1:
``bench/wide.py``). Local files go through pyarrow in the tasks; what only
Spark reads (a DataFrame, ``hdfs://``) is warned of in one line. The oracle
is the local engine: the same weights and predictions, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_engines import spark_engine

from nnlib.config import load_config
from nnlib.data.dataset import load_dataset
from nnlib.driver import run
from nnlib.engines.spark.reader import WIDE_COLUMNS, ArrowSource, SparkReader
from nnlib.model.model import Model
from nnlib.model.predict import predict_source
from nnlib.outputs import RunDir

pytestmark = pytest.mark.slow  # a SparkSession

ROWS, COLUMNS = 200, 3000
QUICK = [
    "mappers=2",
    "train.rounds=2",
    "train.local_epochs=1",
    "model.hidden=[8]",
    "train.batch_size=32",
    "train.lr=0.05",
    "seed=3",
    "data.validation_fraction=0.1",
]


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    """200 rows x 3,000 float32 columns ``c0..c2999`` of 4 Gaussian blobs and an int64 ``label``, in two files
    (the second of two row groups)."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, 4, ROWS)
    x = (rng.normal(0, 1, (4, COLUMNS))[y] + rng.normal(0, 1, (ROWS, COLUMNS))).astype(np.float32)
    folder = tmp_path_factory.mktemp("wide") / "wide"
    folder.mkdir()
    for i, (lo, hi) in enumerate(((0, 80), (80, ROWS))):
        table = pa.table({**{f"c{j}": x[lo:hi, j] for j in range(COLUMNS)}, "label": y[lo:hi]})
        pq.write_table(table, folder / f"part-{i}.parquet", row_group_size=70)
    return folder, x, y


@pytest.mark.parametrize("mode", ["stage", "jobs"])
def test_a_wide_parquet_source_trains_on_spark_to_the_local_engines_weights_read_by_pyarrow(spark, wide_file, mode):
    folder, _, _ = wide_file
    config = load_config(None, ["engine=local", *QUICK, f"data.source={folder}"])
    local = run(config, log=lambda _: None, warn=lambda _: None)
    warnings = []
    engine = spark_engine(mode, warn=warnings.append)
    on_spark = run(
        config.model_copy(update={"engine": "spark"}), engine=engine, log=lambda _: None, warn=warnings.append
    )
    assert on_spark.summary["n_features"] == local.summary["n_features"] == COLUMNS
    np.testing.assert_array_equal(on_spark.params, local.params)
    assert [r["n_samples"] for r in on_spark.mapper_rows] == [r["n_samples"] for r in local.mapper_rows]
    # the survey, the test rows, the validation rows, the shards: every pass read by pyarrow, none by Spark
    assert engine.reader.passes == ["pyarrow"] * 4
    assert warnings == []


def test_the_pyarrow_reader_numbers_rows_as_the_local_reader_and_keeps_the_schema(spark, wide_file):
    folder, x, _ = wide_file
    cfg = load_config(None, [*QUICK, f"data.source={folder}"]).data
    local = load_dataset(cfg, seed=3, mappers=2)
    reader = SparkReader(lambda: spark)
    on_spark = load_dataset(cfg, seed=3, mappers=2, reader=reader)
    table = on_spark.rows.table
    assert isinstance(table, ArrowSource) and table.file_rows == local.rows.table.file_rows == (80, 120)
    assert table.files == local.rows.table.files  # local paths, in the local reader's order
    assert table.column_names == tuple(f"c{j}" for j in range(COLUMNS)) + ("label",)
    # the second file's two row groups are one unit (far below UNIT_BYTES): a unit per file
    assert table.units == ((0, 0, 2, 0), (1, 0, 2, 0))
    np.testing.assert_array_equal(on_spark.x_test, local.x_test)
    np.testing.assert_array_equal(on_spark.x_val, local.x_val)
    np.testing.assert_array_equal(on_spark.rows.mean, local.rows.mean)
    assert on_spark.feature_names == local.feature_names and len(local.feature_names) == COLUMNS
    assert reader.passes == ["pyarrow"] * 3  # the survey, the test rows, the validation rows


def test_a_wide_dataframe_read_by_spark_is_warned_of_in_one_line_before_its_first_pass(spark, wide_file):
    folder, _, _ = wide_file
    warnings = []
    reader = SparkReader(lambda: spark, warn=warnings.append)
    source = reader.add_frame(spark.read.parquet(str(folder)), "wide")
    table = reader.open(source, "label", None)
    assert table.n_rows == ROWS and reader.passes == []  # warned after counting the rows, before any pass
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"data.source: {source} has {COLUMNS:,} feature columns, read by Spark's own reader")
    assert "data.features_column" in warnings[0] and "engine=local" in warnings[0]
    narrow = reader.add_frame(
        spark.read.parquet(str(folder)).select(*[f"c{j}" for j in range(WIDE_COLUMNS)], "label"), "narrow"
    )
    reader.open(narrow, "label", None)
    assert len(warnings) == 1  # WIDE_COLUMNS feature columns: no warning


def test_nnlib_predict_on_spark_scores_a_wide_file_as_the_local_path_does(spark, wide_file, tmp_path):
    from nnlib.engines.spark.predict import predict_spark

    folder, _, y = wide_file
    out = tmp_path / "run"
    run(
        load_config(None, ["engine=local", *QUICK, f"data.source={folder}"]),
        RunDir(out),
        log=lambda _: None,
        warn=lambda _: None,
    )
    local = predict_source(Model.load(out), str(folder), [], str(tmp_path / "local.parquet"))
    on_spark = predict_spark(out, str(folder), ["engine=spark"], str(tmp_path / "spark.parquet"))
    mine = pa.concat_tables([pq.read_table(p) for p in sorted((tmp_path / "spark.parquet").glob("*.parquet"))])
    theirs = pq.read_table(tmp_path / "local.parquet")
    by_row = lambda t: dict(
        zip(
            t.column("row").to_pylist(),
            zip(
                t.column("prediction").to_pylist(),  # noqa: E731
                t.column("probability").to_pylist(),
            ),
        )
    )
    assert len(by_row(mine)) == ROWS and by_row(mine) == by_row(theirs)
    assert (on_spark.rows, on_spark.accuracy) == (local.rows, local.accuracy) and local.rows == ROWS
    assert on_spark.loss == pytest.approx(local.loss, rel=1e-12)  # the same sums, added in another order
