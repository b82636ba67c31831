"""How an epoch draws a shard's rows: exact sampling's permutation, the block shuffle (data.shuffle), and the
disk reader that serves a round's batches a window at a time (nnlib.data.shard_files.BatchReader)."""

import numpy as np
import pytest
from conftest import needs_mrjob, small_config

import nnlib.core.train
import nnlib.data.shard_files
from nnlib.core.train import Batches, Blocks, LocalSchedule, epoch_batches, local_sgd, permutation
from nnlib.data.shard_files import BatchReader, DiskArray, write_npy
from nnlib.driver import run
from nnlib.rounds.mapper import shard_rng, sync_batch_iter, sync_batch_sizes_of, sync_batches

QUIET = {"log": lambda _msg: None, "warn": lambda _msg: None}


def stored(tmp_path, array: np.ndarray, name: str = "a") -> DiskArray:
    path = tmp_path / f"{name}.npy"
    write_npy(str(path), array)
    return DiskArray.open(str(path))


def disk_config(config, scratch, **data):
    return config.model_copy(
        update={"data": config.data.model_copy(update={"shard_storage": "disk", "scratch_dir": str(scratch), **data})}
    )


@pytest.fixture
def weighted_npz(tmp_path):
    """A 300-row, 6-feature, 3-class .npz with sample weights."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    path = tmp_path / "weighted.npz"
    np.savez(path, x=x, y=y, w=rng.uniform(0.1, 3.0, 300))
    return path


def with_shuffle(config, shuffle: str):
    return config.model_copy(update={"data": config.data.model_copy(update={"shuffle": shuffle})})


# ----------------------------------------------------------------------------------- exact sampling's order


@pytest.mark.parametrize("n", [1, 2, 31, 1000, 65_537])
def test_the_int32_permutation_is_numpys_permutation_and_leaves_the_same_state(n):
    a, b = np.random.default_rng([3, n]), np.random.default_rng([3, n])
    mine, numpys = permutation(n, a), b.permutation(n)
    assert mine.dtype == np.int32
    np.testing.assert_array_equal(mine, numpys)
    assert a.integers(2**62) == b.integers(2**62)  # the generator moved on the same way


@pytest.mark.parametrize(
    "schedule", [LocalSchedule(8, 3), LocalSchedule(8, local_steps=11), LocalSchedule(7, 2, shuffle="block")]
)
@pytest.mark.parametrize("n", [0, 1, 5, 33, 200])
def test_a_rounds_sizes_are_known_before_it_is_drawn_and_it_is_drawn_once(n, schedule):
    batches = Batches(n, schedule, np.random.default_rng(1))
    sizes = list(batches.sizes)
    drawn = list(batches)
    assert [len(b) for b in drawn] == sizes == [len(b) for b in batches.sizes and drawn]
    with pytest.raises(RuntimeError, match="drawn once"):
        list(batches)


def test_exact_batches_are_the_old_batches():
    """Before the lazy draw, a round was rng.permutation(n) per epoch, cut into batches: the same arrays."""
    rng, old = np.random.default_rng(4), np.random.default_rng(4)
    got = list(Batches(50, LocalSchedule(8, local_steps=17), rng))
    expected = []
    while len(expected) < 17:
        order = old.permutation(50)
        expected += [order[s : s + 8] for s in range(0, 50, 8)]
    assert len(got) == 17
    for g, e in zip(got, expected, strict=False):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("shuffle", ["exact", "block"])
def test_sync_batches_drawn_lazily_are_the_lists(shuffle):
    lazy = list(sync_batch_iter(45, 8, 20, 7, np.random.default_rng(2), shuffle, Blocks(5, 15)))
    assert [len(b) for b in lazy] == sync_batch_sizes_of(45, 8, 20, 7)
    if shuffle == "exact":
        for a, b in zip(lazy, sync_batches(45, 8, 20, 7, np.random.default_rng(2)), strict=True):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------- the block shuffle

BLOCKS = Blocks(block_rows=10, window_rows=40)


@pytest.mark.parametrize("n", [1, 9, 10, 95, 400, 1003])
def test_each_block_epoch_is_a_permutation_of_the_shard(n):
    rng = np.random.default_rng(0)
    for _ in range(3):
        batches = list(epoch_batches(n, 16, rng, "block", BLOCKS))
        assert [len(b) for b in batches] == [min(16, n - s) for s in range(0, n, 16)]
        np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(n))


def test_the_block_shuffle_is_seeded_by_seed_round_and_shard():
    def epoch(seed, round_index, shard):
        return np.concatenate(list(epoch_batches(1000, 16, shard_rng(seed, round_index, shard), "block", BLOCKS)))

    np.testing.assert_array_equal(epoch(7, 2, 1), epoch(7, 2, 1))
    for other in [(7, 3, 1), (7, 2, 0), (8, 2, 1)]:
        assert not np.array_equal(epoch(7, 2, 1), epoch(*other))


def test_a_block_epoch_takes_its_rows_a_window_of_whole_blocks_at_a_time():
    """Each window's rows (40 here) come from 4 blocks of 10 consecutive rows: what a disk shard reads is a few
    sequential runs per window, and the order holds one window's indices, not the shard's."""
    batches = list(epoch_batches(400, 8, np.random.default_rng(5), "block", BLOCKS))
    rows = np.concatenate(batches)
    for lo in range(0, 400, 40):
        window = np.sort(rows[lo : lo + 40])
        blocks = np.unique(window // 10)
        assert len(blocks) == 4
        np.testing.assert_array_equal(window, (blocks[:, None] * 10 + np.arange(10)).ravel())
    assert not np.array_equal(rows, np.sort(rows))  # shuffled within the windows
    assert not all(np.all(np.diff(np.sort(b)) == 1) for b in batches)  # a batch mixes blocks


def test_block_sizes_follow_the_rows_bytes():
    wide, narrow = Blocks.of(784 * 4 + 8), Blocks.of(64 * 4 + 8)
    for blocks, row in ((wide, 784 * 4 + 8), (narrow, 64 * 4 + 8)):
        assert blocks.block_rows * row <= nnlib.core.train.BLOCK_BYTES < (blocks.block_rows + 1) * row
        assert blocks.window_rows % blocks.block_rows == 0
        assert blocks.window_rows * row <= nnlib.core.train.WINDOW_BYTES


# ----------------------------------------------------------------------------------- the reader


@pytest.fixture
def shard(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 6)).astype(np.float32)
    y = rng.integers(0, 5, 1000)
    w = rng.random(1000)
    return (x, y, w), (stored(tmp_path, x, "x"), stored(tmp_path, y, "y"), stored(tmp_path, w, "w"))


@pytest.mark.parametrize("shuffle", ["exact", "block"])
@pytest.mark.parametrize("buffer_rows", [1, 50, 5000])
def test_the_reader_serves_each_batch_as_indexing_does_and_holds_at_most_its_window(shard, shuffle, buffer_rows):
    (x, y, w), disk = shard
    row = 6 * 4 + 8 + 8
    batches = list(Batches(1000, LocalSchedule(32, 2, shuffle=shuffle), np.random.default_rng(3), row))
    reader = BatchReader(list(disk), buffer_rows * row)
    served = list(reader(batches))
    assert len(served) == len(batches)
    for idx, (xb, yb, wb) in zip(batches, served, strict=True):
        for got, array in ((xb, x), (yb, y), (wb, w)):
            assert got.dtype == array.dtype
            np.testing.assert_array_equal(got, array[idx])
    assert reader.window_rows == buffer_rows
    assert reader.peak_rows <= max(buffer_rows, 32)  # a window holds at least one batch
    assert reader.peak_rows > min(buffer_rows, 1000) - 32  # filled to within a batch of the bound


@pytest.mark.parametrize("gap", [0, 24, 10**6])
@pytest.mark.parametrize("chunk", [24, 200, 1 << 22])
def test_reading_sorted_rows_equals_numpy_whatever_the_gap_and_chunk(tmp_path, monkeypatch, gap, chunk):
    monkeypatch.setattr(nnlib.data.shard_files, "CHUNK_BYTES", chunk)
    array = np.random.default_rng(1).normal(size=(500, 3, 2))
    disk = stored(tmp_path, array)
    rng = np.random.default_rng(2)
    for _ in range(10):
        idx = np.unique(rng.integers(0, 500, rng.integers(1, 400)))
        got, reads = disk.read_sorted(idx, gap)
        np.testing.assert_array_equal(got, array[idx])
        assert 1 <= reads <= len(idx)
        part, _ = disk[100:400].read_sorted(idx[idx < 300], gap)
        np.testing.assert_array_equal(part, array[100:400][idx[idx < 300]])


def test_the_block_shuffle_reads_a_few_runs_where_exact_reads_row_by_row(tmp_path, monkeypatch):
    monkeypatch.setattr(nnlib.data.shard_files, "GAP_BYTES", 4 * 1024)  # rows within 4 rows share a read
    x = stored(tmp_path, np.zeros((10_000, 256), np.float32))  # rows of 1 KiB
    reads = {}
    for shuffle in ("exact", "block"):
        batches = Batches(10_000, LocalSchedule(32, 1, shuffle=shuffle), np.random.default_rng(3), 1024)
        batches.blocks = Blocks(100, 300)
        reader = BatchReader([x], 300 * 1024)
        for _ in reader(batches):
            pass
        reads[shuffle] = reader.reads
    # block: a window is 3 blocks of 100 rows, 3 runs, plus the rows of the batch that takes the end of the
    # previous window (fewer than a batch, a read each); exact: a window's ~300 rows are scattered over the
    # 10,000, a read each
    windows = 10_000 // 300 + 1
    assert reads["block"] <= windows * (3 + 31)
    assert reads["exact"] > 10_000 * 0.8  # a few rows fall within 4 rows of another


# ----------------------------------------------------------------------------------- whole runs


SMALL_BUFFERS = {"READ_BUFFER_BYTES": 30_000, "CHUNK_BYTES": 2_000}  # ~100 digits rows a window, chunks of ~7 rows

CASES = {
    "average": (),
    "weights": ("WEIGHTED", "combine=weighted"),
    "gradient": ("combine=gradient", "train.momentum=0.9"),
    "local steps": ("train.local_steps=13", "data.partition=quantity_skew"),
    "cnn": ("model.type=cnn", "model.channels=[4]", "model.kernel=3"),
}


def case_config(case, weighted_npz):
    sets = list(CASES[case])
    if "WEIGHTED" in sets:
        sets = [f"data.source={weighted_npz}", "data.weight_column=w", *sets[1:]]
    return small_config(*sets)


@pytest.mark.parametrize("shuffle", ["exact", "block"])
@pytest.mark.parametrize("case", CASES)
def test_local_disk_read_in_small_windows_equals_memory_bit_for_bit(tmp_path, weighted_npz, monkeypatch, case, shuffle):
    for name, value in SMALL_BUFFERS.items():
        monkeypatch.setattr(nnlib.data.shard_files, name, value)
    monkeypatch.setattr(nnlib.core.train, "BLOCK_BYTES", 2_000)  # blocks of a few rows, windows of many blocks
    monkeypatch.setattr(nnlib.core.train, "WINDOW_BYTES", 20_000)
    config = with_shuffle(case_config(case, weighted_npz), shuffle)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    memory = run(config, **QUIET)
    disk = run(disk_config(config, scratch), **QUIET)
    np.testing.assert_array_equal(disk.params, memory.params)
    assert [r["train_loss"] for r in disk.rounds] == [r["train_loss"] for r in memory.rounds]
    assert list(scratch.iterdir()) == []


def test_the_block_shuffle_trains_other_batches_than_exact(monkeypatch):
    monkeypatch.setattr(nnlib.core.train, "BLOCK_BYTES", 2_000)
    config = small_config()
    exact, block = run(config, **QUIET), run(with_shuffle(config, "block"), **QUIET)
    assert not np.array_equal(exact.params, block.params)
    # digits, 2 rounds, blocks of 7 rows in windows of ~60: it learns about as well
    assert block.summary["final_test_accuracy"] > exact.summary["final_test_accuracy"] - 0.1


@needs_mrjob
def test_mrjob_block_shuffle_on_disk_equals_memory(tmp_path):
    """The shuffle travels in the mrjob payload (its wire format) and orders the rows as in memory."""
    from nnlib.engines.mrjob.engine import MrjobEngine

    config = with_shuffle(small_config("mappers=2"), "block")
    memory = run(config, **QUIET)
    mr_config = disk_config(config, tmp_path).model_copy(update={"engine": "mrjob"})
    result = run(mr_config, engine=MrjobEngine(mr_config, "inline"), **QUIET)
    np.testing.assert_array_equal(result.params, memory.params)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stage", "jobs"])
def test_spark_block_shuffle_on_disk_equals_memory(spark, tmp_path, mode):
    from test_engines import spark_engine

    config = with_shuffle(small_config("mappers=2", "train.local_steps=9"), "block")
    memory = run(config, **QUIET)
    sp_config = disk_config(config, tmp_path).model_copy(update={"engine": "spark"})
    result = run(sp_config, engine=spark_engine(mode), **QUIET)
    np.testing.assert_array_equal(result.params, memory.params)


# ----------------------------------------------------------------------------------- the torch backend's loop


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("sync_steps", [False, True])
def test_the_torch_loop_on_a_disk_shard_equals_memory_bit_for_bit(shard, monkeypatch, weighted, sync_steps):
    pytest.importorskip("torch")
    from nnlib.core.backends import get_backend
    from nnlib.core.mlp import ModelSpec
    from nnlib.core.optim import SGD
    from nnlib.core.params import LayerSpec, init_params

    monkeypatch.setattr(nnlib.data.shard_files, "READ_BUFFER_BYTES", 40 * 100)  # windows of 100 rows
    (x, y, w), (dx, dy, dw) = shard
    spec = ModelSpec(LayerSpec((6, 8, 5)), "relu", "cross_entropy", 0.0)
    backend = get_backend("torch", spec)
    params = init_params(spec.layers, 0)
    schedule = LocalSchedule(16, local_steps=70) if sync_steps else LocalSchedule(16, 2)
    got = [
        local_sgd(
            backend,
            params,
            None,
            SGD(),
            *arrays[:2],
            schedule,
            0.05,
            np.random.default_rng(9),
            sample_weight=arrays[2] if weighted else None,
        )
        for arrays in ((x, y, w), (dx, dy, dw))
    ]
    np.testing.assert_array_equal(got[1].params, got[0].params)
    assert got[1].train_loss == got[0].train_loss and got[1].steps == got[0].steps
    assert not np.array_equal(got[0].params, params)


@pytest.mark.parametrize("sets", [(), ("WEIGHTED", "combine=gradient")], ids=["plain", "weights-gradient"])
def test_a_torch_run_from_disk_shards_equals_memory_bit_for_bit(tmp_path, weighted_npz, monkeypatch, sets):
    """The whole run with model.backend=torch on the local engine, a window of a few batches at a time
    (tests/test_disk_shards.py runs the torch backend on mrjob and Spark too)."""
    pytest.importorskip("torch")
    monkeypatch.setattr(nnlib.data.shard_files, "READ_BUFFER_BYTES", 30_000)
    sets = [f"data.source={weighted_npz}", "data.weight_column=w", *sets[1:]] if "WEIGHTED" in sets else list(sets)
    config = small_config("model.backend=torch", "mappers=2", *sets)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    memory = run(config, **QUIET)
    result = run(disk_config(config, scratch), **QUIET)
    np.testing.assert_array_equal(result.params, memory.params)
    assert list(scratch.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("combine", ["average", "gradient"])
def test_mpi_block_shuffle_on_disk_equals_memory(tmp_path, combine):
    """Two MPI ranks, data.shuffle=block: the disk run trains the memory run's weights (local and synchronous
    rounds), and other weights than exact sampling: each shard (16,000 rows x 64) is 5 blocks (a shard within
    one block, ~4,000 such rows, gets one window's permutation: exact sampling's order)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import saved_params

    root = Path(__file__).resolve().parent.parent
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        TMPDIR=str(tmp_path),
        OMPI_MCA_rmaps_base_oversubscribe="1",
    )
    (tmp_path / "scratch").mkdir()
    outs = {}
    for storage, shuffle in (("memory", "block"), ("disk", "block"), ("disk", "exact")):
        out = tmp_path / f"{storage}-{shuffle}"
        sets = {
            "data.source": "synthetic",
            "data.n_samples": "40000",
            "data.n_features": "64",
            "model.hidden": "[16]",
            "train.rounds": "2",
            "combine": combine,
            "mappers": "2",
            "data.shard_storage": storage,
            "data.shuffle": shuffle,
            "data.scratch_dir": str(tmp_path / "scratch"),
        }
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2", "--oversubscribe", sys.executable]
        cmd += ["jobs/mpi_model_avg.py", "conf/default.yaml", "--out", str(out), "--quiet"]
        cmd += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
        proc = subprocess.run(cmd, cwd=root, env=env, check=False, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[storage, shuffle] = saved_params(out)
    np.testing.assert_array_equal(outs["disk", "block"], outs["memory", "block"])
    assert not np.array_equal(outs["disk", "block"], outs["disk", "exact"])
    assert list((tmp_path / "scratch").iterdir()) == []
