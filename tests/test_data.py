"""Every data source reads to the same arrays; partitions cover the data once."""

import gzip
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nnlib.config import load_config
from nnlib.data.dataset import ShardFiller, ShardSource, load_dataset
from nnlib.data.partition import partition
from nnlib.data.rows import TEST, TRAIN, VAL, RowPlan
from nnlib.errors import DataError


def _xy(n=30, f=4, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50, size=(n, f)).astype(np.float64), np.arange(n) % k


def _data_cfg(**kw):
    return load_config(None, [f"data.{k}={v}" for k, v in kw.items()]).data


def write_csv(path, x, y):
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join([*(f"{v:g}" for v in xi), str(yi)]) for xi, yi in zip(x, y)]
    path.write_text("\n".join([header, *rows]) + "\n")


def write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@pytest.fixture
def sources(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    write_csv(tmp_path / "d.csv", x, y)
    cols = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    pq.write_table(pa.table({**cols, "label": y}), tmp_path / "d.parquet")
    pq.write_table(pa.table({"pixels": x.tolist(), "label": y}), tmp_path / "list.parquet")
    images = x.reshape(-1, 2, 2).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, 0x08)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y.astype(np.uint8), 0x08)
    write_idx(tmp_path / "raw-images-idx3-ubyte", images, 0x08)
    write_idx(tmp_path / "raw-labels-idx1-ubyte", y.astype(np.uint8), 0x08)
    return tmp_path, x, y


@pytest.mark.parametrize(
    "name,extra",
    [
        ("d.npz", {}),
        ("d.csv", {}),
        ("train-images-idx3-ubyte.gz", {}),
        ("raw-images-idx3-ubyte", {}),
    ],
)
def test_every_format_reads_the_same_data(sources, name, extra):
    folder, x, y = sources
    reference = load_dataset(_data_cfg(source=folder / "d.npz"), seed=1)
    data = load_dataset(_data_cfg(source=folder / name, **extra), seed=1)
    np.testing.assert_array_equal(data.x_train, reference.x_train)
    np.testing.assert_array_equal(data.y_test, reference.y_test)
    assert data.n_classes == 3


def test_image_sources_know_their_shape_and_others_take_it_from_the_config(sources):
    folder, _, _ = sources
    assert load_dataset(_data_cfg(source=folder / "train-images-idx3-ubyte.gz"), seed=1).image_shape == (1, 2, 2)
    assert load_dataset(_data_cfg(source="digits"), seed=1).image_shape == (1, 8, 8)
    assert load_dataset(_data_cfg(source=folder / "d.npz"), seed=1).image_shape is None
    assert load_dataset(_data_cfg(source=folder / "d.npz", image_shape=[4, 1, 1]), seed=1).image_shape == (4, 1, 1)


def test_npz_with_its_own_test_set(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "t.npz", x=x[:20], y=y[:20], x_test=x[20:], y_test=y[20:])
    data = load_dataset(_data_cfg(source=tmp_path / "t.npz"), seed=0)
    assert len(data.y_train) == 20 and len(data.y_test) == 10


def test_standardisation_uses_training_statistics_only():
    data = load_dataset(_data_cfg(source="digits"), seed=0)
    assert np.abs(data.x_train.mean(axis=0)).max() < 1e-5
    stds = data.x_train.std(axis=0)
    assert np.all((np.abs(stds - 1) < 1e-4) | (stds == 0))
    assert np.abs(data.x_test.mean(axis=0)).max() > 1e-3  # not refitted on the test part


def test_digits_split_sizes():
    data = load_dataset(_data_cfg(source="digits", test_fraction=0.25), seed=0)
    assert len(data.y_train) + len(data.y_test) == 1797
    assert len(data.y_test) == round(1797 * 0.25)
    assert data.n_features == 64 and data.n_classes == 10


def test_synthetic_is_seeded_and_sized():
    cfg = _data_cfg(source="synthetic", n_samples=500, n_features=7, n_classes=4)
    a, b = load_dataset(cfg, seed=3), load_dataset(cfg, seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.n_features == 7 and a.n_classes == 4 and len(a.y_train) + len(a.y_test) == 500
    assert not np.array_equal(a.x_train, load_dataset(cfg, seed=4).x_train)


@pytest.mark.parametrize("scheme", ["random", "stratified", "contiguous"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_partition_covers_every_sample_once(scheme, k):
    y = np.arange(100) % 4
    parts = partition(y, k, scheme, seed=0)
    assert len(parts) == k
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert max(map(len, parts)) - min(map(len, parts)) <= (4 if scheme == "stratified" else 1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(y, k, scheme, seed=0)))


def test_stratified_keeps_class_proportions():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    for part in partition(y, 5, "stratified", seed=0):
        assert np.bincount(y[part], minlength=3).tolist() == [12, 6, 2]


def test_contiguous_keeps_file_order():
    parts = partition(np.zeros(10, int), 3, "contiguous", seed=0)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_shards_rebuilt_one_at_a_time_equal_shards_built_together():
    cfg = _data_cfg(source="digits")
    source = ShardSource(cfg, seed=0, mappers=4)
    together = source.build([0, 1, 2, 3])
    for shard in together:
        alone = source.build([shard.index])[0]
        np.testing.assert_array_equal(alone.x, shard.x)
        np.testing.assert_array_equal(alone.y, shard.y)


def _parquet_parts(folder, x, y, cuts):
    """``(x, y)`` written as one Parquet file per run of rows between ``cuts``, names sorting in row order."""
    folder.mkdir()
    bounds = [0, *cuts, len(y)]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        cols = {f"f{j}": x[a:b, j] for j in range(x.shape[1])}
        pq.write_table(pa.table({**cols, "label": y[a:b]}), folder / f"part-{i:05d}.parquet")
    return folder


def row_keyed_oracle(x, y, seed, mappers, test_fraction=0.2, validation_fraction=0.0):
    """What a row-keyed source must give, computed with numpy on the whole arrays: roles and shards from
    RowPlan, statistics by ``mean``/``std`` of the training rows."""
    plan = RowPlan(seed, mappers, len(y), test_fraction, validation_fraction)
    pos = np.arange(len(y))
    role, shard = plan.roles(pos), plan.shards(pos)
    train = role == TRAIN
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    std[std == 0] = 1
    z = ((x.astype(np.float32).astype(np.float64) - mean) / std).astype(np.float32)
    return {
        "x_test": z[role == TEST],
        "y_test": y[role == TEST],
        "x_val": z[role == VAL],
        "shards": [(z[train & (shard == k)], y[train & (shard == k)]) for k in range(mappers)],
    }


def _check_against_oracle(data, shards, oracle):
    np.testing.assert_array_equal(data.x_test, oracle["x_test"])
    np.testing.assert_array_equal(data.y_test, oracle["y_test"])
    for shard, (x, y) in zip(shards, oracle["shards"]):
        np.testing.assert_array_equal(shard.x, x)
        np.testing.assert_array_equal(shard.y, y)


def test_a_parquet_dataset_of_several_files_equals_the_same_data_as_one_npz(tmp_path):
    x, y = _xy(n=300)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    folder = _parquet_parts(tmp_path / "ds", x, y, [7, 8, 200])
    (folder / "_SUCCESS").write_text("")  # what Spark leaves beside its parts
    pq.write_table(pa.table({**{f"f{j}": x[:, j] for j in range(x.shape[1])}, "label": y}), tmp_path / "one.parquet")
    oracle = row_keyed_oracle(*(np.load(tmp_path / "d.npz")[k] for k in "xy"), seed=2, mappers=3)
    for source in (folder, f"{folder}/part-*.parquet", tmp_path / "one.parquet"):
        data = load_dataset(_data_cfg(source=source), seed=2, mappers=3)
        assert data.x_train is None and data.n_train == sum(len(s[1]) for s in oracle["shards"])
        shards = ShardSource(_data_cfg(source=source), 2, 3, data.rows).build([0, 1, 2])
        _check_against_oracle(data, shards, oracle)
        assert data.shard_sizes(3, "random", 2, 0.5) == [len(s[1]) for s in oracle["shards"]]


def test_a_parquet_dataset_keeps_its_validation_rows_apart(tmp_path):
    x, y = _xy(n=400)
    folder = _parquet_parts(tmp_path / "ds", x, y, [100])
    data = load_dataset(_data_cfg(source=folder, validation_fraction=0.25), seed=5, mappers=2)
    oracle = row_keyed_oracle(x, y, seed=5, mappers=2, validation_fraction=0.25)
    np.testing.assert_array_equal(data.x_val, oracle["x_val"])
    assert 60 < len(data.y_val) < 140 and data.n_train + len(data.y_val) + len(data.y_test) == 400


def test_shards_of_a_parquet_dataset_built_one_at_a_time_equal_shards_built_together(tmp_path):
    x, y = _xy(n=200)
    cfg = _data_cfg(source=_parquet_parts(tmp_path / "ds", x, y, [50, 120]))
    data = load_dataset(cfg, seed=0, mappers=4)
    source = ShardSource(cfg, 0, 4, data.rows)
    for shard in source.build([0, 1, 2, 3]):
        alone = source.build([shard.index])[0]
        np.testing.assert_array_equal(alone.x, shard.x)


def test_a_shard_filled_from_blocks_in_any_order_equals_the_shard_read_in_order(tmp_path):
    x, y = _xy(n=300)
    cfg = _data_cfg(source=_parquet_parts(tmp_path / "ds", x, y, [40, 41, 180]), validation_fraction=0.2)
    data = load_dataset(cfg, seed=3, mappers=3)
    rows = replace(data.rows, mapper_roles=(TRAIN, VAL, TEST))  # keep the held-out rows too
    in_order = ShardSource(cfg, 3, 3, rows).build([1])[0]
    blocks = [b for pos, xs, ys in rows.table.blocks() for b in ((pos[i::7], xs[i::7], ys[i::7]) for i in range(7))]
    filler = ShardFiller(1, rows)
    for k in np.random.default_rng(0).permutation(len(blocks)):
        filler.add(*blocks[k])
    shuffled = filler.finish()
    np.testing.assert_array_equal(shuffled.x, in_order.x)
    oracle = row_keyed_oracle(x, y, seed=3, mappers=3, validation_fraction=0.2)
    np.testing.assert_array_equal(shuffled.x, oracle["shards"][1][0])
    shard = RowPlan(3, 3, 300, 0.2, 0.2).shards(np.arange(300))
    test_rows = np.flatnonzero(RowPlan(3, 3, 300, 0.2, 0.2).roles(np.arange(300)) == TEST)
    np.testing.assert_array_equal(shuffled.held_out[TEST][1], y[test_rows[shard[test_rows] == 1]])
    assert set(shuffled.held_out) == {TEST, VAL} and in_order.held_out[VAL][0].shape[1] == x.shape[1]


def test_a_shard_missing_rows_is_an_error_naming_the_source(tmp_path):
    x, y = _xy(n=200)
    cfg = _data_cfg(source=_parquet_parts(tmp_path / "ds", x, y, [100]))
    rows = load_dataset(cfg, seed=0, mappers=2).rows
    filler = ShardFiller(0, rows)
    pos, xs, ys = next(rows.table.blocks())  # the first file only
    filler.add(pos, xs, ys)
    with pytest.raises(
        DataError,
        match=rf"data.source {tmp_path / 'ds'}: shard 0 received \d+ of its \d+ "
        r"training rows \(did the dataset change while the run read it\?\)",
    ):
        filler.finish()


def test_a_contiguous_shard_reads_only_the_files_of_its_run(tmp_path):
    x, y = _xy(n=300)
    folder = _parquet_parts(tmp_path / "ds", x, y, [100, 200])
    cfg = _data_cfg(source=folder, partition="contiguous")
    data = load_dataset(cfg, seed=0, mappers=3)
    expected = ShardSource(cfg, 0, 3, data.rows).build([0, 1, 2])
    (folder / "part-00002.parquet").write_bytes(b"not parquet any more")  # shard 2's file, after the survey
    np.testing.assert_array_equal(ShardSource(cfg, 0, 3, data.rows).build([0])[0].x, expected[0].x)
    with pytest.raises(DataError, match="part-00002.parquet is not a readable parquet file"):
        ShardSource(cfg, 0, 3, data.rows).build([2])


def test_a_test_label_no_training_row_has_is_refused(tmp_path):
    x, y = _xy(n=300)
    test = RowPlan(0, 1, 300, 0.2, 0.0).roles(np.arange(300)) == TEST
    y[np.flatnonzero(test)[0]] = y.max() + 5
    with pytest.raises(
        DataError,
        match=rf"data.source .*: labels must be in 0..{y[~test].max()} \(the training "
        rf"labels\), got {y.max()} in its test or validation rows",
    ):
        load_dataset(_data_cfg(source=_parquet_parts(tmp_path / "ds", x, y, [100])), seed=0)


def test_a_parquet_dataset_with_a_list_column_reads_as_the_columns_do(tmp_path):
    x, y = _xy()
    (tmp_path / "ds").mkdir()
    for i, (a, b) in enumerate([(0, 10), (10, len(y))]):
        pq.write_table(pa.table({"pixels": x[a:b].tolist(), "label": y[a:b]}), tmp_path / "ds" / f"p{i}.parquet")
    cols = load_dataset(_data_cfg(source=_parquet_parts(tmp_path / "cols", x, y, [10])), seed=0)
    lists = load_dataset(_data_cfg(source=tmp_path / "ds", features_column="pixels"), seed=0)
    np.testing.assert_array_equal(lists.x_test, cols.x_test)
    np.testing.assert_array_equal(lists.rows.mean, cols.rows.mean)


def test_a_parquet_source_refuses_partitions_that_need_every_label(tmp_path):
    x, y = _xy()
    with pytest.raises(
        DataError,
        match="data.partition: stratified needs every training label at once; "
        "data.source .* use one of random, contiguous",
    ):
        load_dataset(_data_cfg(source=_parquet_parts(tmp_path / "ds", x, y, [10]), partition="stratified"), seed=0)


def test_a_bad_value_in_a_parquet_dataset_names_its_file_and_row(tmp_path):
    x, y = _xy()
    x[25, 1] = np.nan
    folder = _parquet_parts(tmp_path / "ds", x, y, [20])
    with pytest.raises(
        DataError,
        match=rf"data.source {folder}/part-00001.parquet: features must be finite, "
        r"got nan at sample 5, feature 1",
    ):
        load_dataset(_data_cfg(source=folder), seed=0)


def test_a_corrupted_file_in_a_parquet_dataset_is_one_line_naming_it(tmp_path):
    x, y = _xy()
    folder = _parquet_parts(tmp_path / "ds", x, y, [10, 20])
    bad = folder / "part-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=rf"data.source: {bad} is not a readable parquet file"):
        load_dataset(_data_cfg(source=folder), seed=0)
    pq.write_table(pa.table({"other": y[:3], "label": y[:3]}), bad)
    with pytest.raises(DataError, match=rf"data.source: {bad} has columns .* every file of a dataset needs the same"):
        load_dataset(_data_cfg(source=folder), seed=0)


def test_split_search_refuses_a_parquet_source(tmp_path):
    from nnlib.errors import ConfigError
    from nnlib.experiments.search import prepare_search

    x, y = _xy()
    config = load_config(None, [f"data.source={_parquet_parts(tmp_path / 'ds', x, y, [10])}"])
    with pytest.raises(ConfigError, match="split-search needs the training set in one process"):
        prepare_search(config)


def test_a_test_source_is_the_test_set_and_every_source_row_trains(tmp_path):
    x, y = _xy(n=60)
    xt, yt = _xy(n=20, seed=1)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=xt, y=yt)
    folder = _parquet_parts(tmp_path / "train", x, y, [25])
    _parquet_parts(tmp_path / "test", xt, yt, [5])
    mean, std = x.mean(axis=0), x.std(axis=0)
    expected = ((xt - mean) / std).astype(np.float32)
    in_memory = load_dataset(_data_cfg(source=tmp_path / "train.npz", test_source=tmp_path / "test.npz"), seed=0)
    row_keyed = load_dataset(_data_cfg(source=folder, test_source=tmp_path / "test"), seed=0, mappers=2)
    for data in (in_memory, row_keyed):
        np.testing.assert_allclose(data.x_test, expected, rtol=1e-6)
        np.testing.assert_array_equal(data.y_test, yt)
        assert data.n_train == 60
    with pytest.raises(DataError, match=r"data.test_source .*test.npz: test set has 2 features, training set has 4"):
        np.savez(tmp_path / "test.npz", x=xt[:, :2], y=yt)
        load_dataset(_data_cfg(source=folder, test_source=tmp_path / "test.npz"), seed=0)
