"""Spark reads a Parquet source in its executors: the survey, the held-out rows, the shards.

Nothing here brings training rows to the driver. Each row's position is its
file's offset (files sorted by path) plus Parquet's own row index in the
file (``_metadata.row_index``), so it gets the role and shard that any other
reader gives it (:mod:`nnlib.data.rows`). The survey is one pass of
``mapInArrow`` whose per-block tallies the driver merges in position order;
the training rows (and a large held-out set's rows, which the mappers then
score) travel to their shard by Spark's shuffle (``repartition(mappers, key)``,
partition ``i`` = shard ``i``) as float32 blocks, each copied into place in
arrays of the shard's final size inside the task that keeps them
(:class:`nnlib.data.dataset.ShardFiller`).

A DataFrame can be a source too (:meth:`SparkReader.add_frame`, the
estimator of :mod:`nnlib.spark`): its rows are numbered by partition, then
by their order in the partition (the order ``zipWithIndex`` gives), and the
same code reads it, with the partition in the place of the file.
"""

from __future__ import annotations

import pickle
from typing import Iterator

import numpy as np

from nnlib.data.dataset import RowKeyed, Shard, ShardFiller
from nnlib.data.rows import RowFiller, RowPlan, merge_in_order
from nnlib.data.tables import ParquetSource, table_arrays
from nnlib.engines.spark.session import java_root_cause
from nnlib.errors import DataError, error_from_text, python_failed

# a row's part (a Parquet file's path, or a DataFrame's partition index) and its index in that part
_FILE, _ROW = "_nnlib_file", "_nnlib_row"
FRAME_SCHEME = "dataframe://"  # the data.source of a DataFrame given to SparkReader.add_frame




def part_name(part) -> str:
    """How messages name a part: a file's path, or ``partition N`` of a DataFrame."""
    return part if isinstance(part, str) else f"partition {part}"


def split_parts(batch, offsets: dict) -> Iterator[tuple[str, int, np.ndarray, object]]:
    """``(part name, index in the part of its first row here, positions int64, the rows as an Arrow table
    without _FILE and _ROW)`` for each part (file or partition) in an Arrow batch; a batch can span parts.
    ``offsets``: each part's first position."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = batch.column(_FILE)
    data = pa.Table.from_batches([batch]).drop_columns([_FILE, _ROW])
    for part in pc.unique(parts).to_pylist():
        mask = pc.equal(parts, part)
        rows = pc.filter(batch.column(_ROW), mask).to_numpy().astype(np.int64)
        yield part_name(part), int(rows[0]), rows + offsets[part], data.filter(mask)


def _batches(table: ParquetSource, offsets: dict, batches) -> Iterator[tuple[np.ndarray, ...]]:
    """``(positions, x float64, y)`` of each part's rows in each Arrow batch."""
    for batch in batches:
        for name, first_row, positions, data in split_parts(batch, offsets):
            x, y = table_arrays(data, name, table.key, table.label_column, table.features_column, first_row,
                                table.key_column, table.chosen_columns, table.dropped_columns)
            yield positions, x, y


class SparkReader:
    """How the Spark engines read a row-keyed source: Spark's readers in the executors."""

    def __init__(self, session, collect_held_out_mb: float = 64.0):
        self._session = session  # a function returning the engine's SparkSession (started on first use)
        # held-out rows beyond this stay with the mappers, which score them (spark.collect_held_out_mb)
        self.collect_limit_bytes = collect_held_out_mb * 2 ** 20
        self._frames: dict[str, object] = {}  # data.source -> a DataFrame given as the source (add_frame)

    def add_frame(self, df, name: str) -> str:
        """Read the DataFrame ``df`` as the source ``dataframe://name`` (its ``data.source``); returns that.

        ``df`` is read once per pass over the rows (the survey, the held-out
        rows, the shards), so it must give the same rows in the same
        partitions every time: persist it first (or read it from files).
        """
        source = FRAME_SCHEME + name
        self._frames[source] = df
        return source

    def remove_frame(self, source: str) -> None:
        self._frames.pop(source, None)

    def source_frame(self, source: str, key: str = "data.source"):
        """The rows of ``source`` as Spark's DataFrame, with each row's part (``_FILE``) and index in it
        (``_ROW``): a DataFrame given to :meth:`add_frame` (part: the partition index), else a Parquet
        source read by Spark's reader (part: the file's path). A path Spark cannot read is one DataError line."""
        from pyspark.sql import functions as F

        frame = self._frames.get(source)
        if frame is not None:
            part = F.spark_partition_id()
            # monotonically_increasing_id() is the partition index shifted left by 33 bits plus the row's index
            index = F.monotonically_increasing_id() - F.shiftleft(part.cast("long"), 33)
            return frame.select("*", part.alias(_FILE), index.alias(_ROW))
        reader = self._session().read
        try:
            df = reader.option("recursiveFileLookup", "true").parquet(source)
        except Exception as exc:  # noqa: BLE001  - AnalysisException, Py4JJavaError: the path or scheme
            raise DataError(f"{key}: Spark cannot read {source} ({java_root_cause(exc)})") from None
        return df.select("*", F.col("_metadata.file_path").alias(_FILE), F.col("_metadata.row_index").alias(_ROW))

    def _frame(self, table: ParquetSource):
        df = self.source_frame(table.source, table.key)
        names = [c for c in df.columns if c not in (_FILE, _ROW)]
        for column in (table.label_column, table.features_column):
            if column is not None and column not in names:
                raise DataError(f"{table.key}: {table.source} has no column '{column}' (columns are "
                                f"{names[:10]})")
        return df.select(*(table.columns() or names), _FILE, _ROW)

    def part_rows(self, df, source: str, key: str = "data.source") -> tuple[tuple, tuple[int, ...]]:
        """``(parts in position order, rows in each)`` of a :meth:`source_frame` (one small aggregate job)."""
        counts = self.run_job(lambda: df.groupBy(_FILE).count().collect(), f"listing {source}", source, key)
        if not counts:
            raise DataError(f"{key}: {source} is empty (it holds no rows)")
        parts = sorted((row[0], row[1]) for row in counts)
        return tuple(f for f, _ in parts), tuple(n for _, n in parts)

    def run_job(self, action, what: str, source: str, key: str = "data.source"):
        """``action()``, a Spark job: an nnlib error raised in an executor is raised again here as itself, and
        any other failure is one line (a file Spark cannot read is a DataError naming ``source``)."""
        try:
            return action()
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001  - an nnlib error raised in an executor comes back as text
            error = error_from_text(str(exc), "spark", what)
            # a Python worker that failed (no numpy in PYSPARK_PYTHON, ...) is its root cause, not the file's
            if isinstance(error, DataError) or getattr(exc, "java_exception", None) is None or python_failed(exc):
                raise error from None
            raise DataError(f"{key}: Spark cannot read {source} ({java_root_cause(exc)})") from None

    def open(self, source: str, label_column: str, features_column: str | None) -> ParquetSource:
        """The files (or a DataFrame's partitions) and their row counts, as Spark lists them."""
        probe = ParquetSource(source, (), (), label_column, features_column)
        parts, rows = self.part_rows(self._frame(probe), source)
        return ParquetSource(source, parts, rows, label_column, features_column)

    def _offsets(self, table: ParquetSource) -> dict:
        return dict(zip(table.files, (int(o) for o in table.offsets)))

    def survey(self, table: ParquetSource, plan: RowPlan):
        offsets = self._offsets(table)

        def tally_blocks(batches):
            import pyarrow as pa

            tallies = [plan.tally(*block) for block in _batches(table, offsets, batches)]
            yield pa.RecordBatch.from_pydict({"blob": [pickle.dumps(tallies)]})

        df = self._frame(table)
        blobs = self.run_job(lambda: df.mapInArrow(tally_blocks, "blob binary").collect(),
                             f"surveying {table.source}", table.source)
        return merge_in_order([t for row in blobs for t in pickle.loads(row.blob)])

    def rows(self, table: ParquetSource, plan: RowPlan, role: int, n_features: int):
        """``(x float32, y)`` of every row with ``role``, brought to the driver one partition at a time and
        put in place (the driver holds the rows once, plus one partition's blocks)."""
        offsets = self._offsets(table)

        def keep(batches):
            import pyarrow as pa

            for pos, x, y in _batches(table, offsets, batches):
                mine = plan.roles(pos) == role
                if mine.any():
                    yield pa.RecordBatch.from_pydict({"blob": [pickle.dumps((pos[mine], x[mine].astype(np.float32),
                                                                             y[mine]))]})

        filler = RowFiller(plan.positions(None, (role,)), n_features)

        def fill():
            for row in self._frame(table).mapInArrow(keep, "blob binary").toLocalIterator():
                filler.add(*pickle.loads(row.blob))

        self.run_job(fill, f"reading {table.source}", table.source)
        return filler.arrays(f"{table.key} {table.source}")[role]

    def shards(self, rows: RowKeyed):
        """A DataFrame of ``(shard long, blob binary)`` rows whose partition ``i`` holds exactly shard ``i``'s
        rows: its training rows, and its part of the held-out rows when the mappers score them.

        DataFrame calls only (no RDD), so it serves classic and Spark Connect
        sessions alike. ``repartition(k, key)`` puts a row in partition
        ``pmod(hash(key), k)`` (Murmur3, seed 42, as SQL's ``hash()``); each
        row's key is the value :func:`shard_keys` picked for its shard, whose
        hash lands it in partition ``shard``.
        """
        from pyspark.sql import functions as F

        table, plan = rows.table, rows.plan
        offsets = self._offsets(table)

        def split_by_shard(batches):
            import pyarrow as pa

            for block in _batches(table, offsets, batches):
                for k, part in plan.by_shard(rows.mapper_roles, *block):
                    yield pa.RecordBatch.from_pydict({"shard": [k], "blob": [pickle.dumps(part)]})

        mappers = plan.mappers
        keys = F.array(*(F.lit(v).cast("long") for v in shard_keys(mappers)))
        split = self._frame(table).mapInArrow(split_by_shard, "shard long, blob binary")
        return (split.withColumn(_KEY, F.element_at(keys, F.col("shard").cast("int") + 1))
                .repartition(mappers, _KEY).drop(_KEY))


_KEY = "_nnlib_shard_key"
_M = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M


def _mix(h1: int, k1: int) -> int:
    k1 = _rotl((k1 * 0xCC9E2D51) & _M, 15) * 0x1B873593 & _M
    h1 = _rotl(h1 ^ k1, 13)
    return (h1 * 5 + 0xE6546B64) & _M


def spark_hash_long(value: int) -> int:
    """Spark SQL's ``hash(value)`` of a long: Murmur3 x86 32-bit, seed 42 (``Murmur3_x86_32.hashLong``), signed."""
    value &= 0xFFFFFFFFFFFFFFFF
    h1 = _mix(_mix(42, value & _M), value >> 32)
    h1 ^= 8
    h1 ^= h1 >> 16
    h1 = (h1 * 0x85EBCA6B) & _M
    h1 ^= h1 >> 13
    h1 = (h1 * 0xC2B2AE35) & _M
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 >= 1 << 31 else h1


def shard_keys(mappers: int) -> list[int]:
    """For each shard ``s`` the smallest long ``v`` with ``pmod(hash(v), mappers) == s``: repartitioning on it
    puts shard ``s`` in partition ``s``."""
    keys: dict[int, int] = {}
    v = 0
    while len(keys) < mappers:
        keys.setdefault(spark_hash_long(v) % mappers, v)
        v += 1
    return [keys[s] for s in range(mappers)]


def shard_from_records(index: int, records, rows: RowKeyed) -> Shard:
    """Shard ``index`` from its shuffled ``(shard, blob)`` records, each block put in place as it arrives."""
    filler = ShardFiller(index, rows)
    for shard, blob in records:
        if shard != index:
            raise RuntimeError(f"shard {shard}'s rows reached task {index}")
        filler.add(*pickle.loads(blob))
    return filler.finish()
