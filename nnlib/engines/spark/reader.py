"""Spark reads a Parquet source in its executors: the survey, the held-out rows, the shards.

Nothing here brings training rows to the driver. Each row's position is its
file's offset (files sorted by path) plus Parquet's own row index in the
file (``_metadata.row_index``), so it gets the role and shard that any other
reader gives it (:mod:`nnlib.data.rows`). The survey is one pass of
``mapInArrow`` whose per-block tallies the driver merges in position order;
the training rows (and a large held-out set's rows, which the mappers then
score) travel to their shard by Spark's shuffle (``partitionBy(mappers)``,
partition ``i`` = shard ``i``) as float32 blocks, each copied into place in
arrays of the shard's final size inside the task that keeps them
(:class:`nnlib.data.dataset.ShardFiller`).
"""

from __future__ import annotations

import pickle
from typing import Iterator

import numpy as np

from nnlib.data.dataset import RowKeyed, Shard, ShardFiller
from nnlib.data.rows import RowFiller, RowPlan, merge_in_order
from nnlib.data.tables import ParquetSource, table_arrays
from nnlib.errors import DataError, error_from_text, first_line

_FILE, _ROW = "_nnlib_file", "_nnlib_row"


def _spark_error(exc: Exception) -> str:
    """The useful line of an exception from Spark's JVM: its root cause (a Py4JJavaError's own first line
    says nothing; the root cause names the file that could not be read)."""
    java = getattr(exc, "java_exception", None)
    if java is None:
        return first_line(exc)
    while java.getCause() is not None and java.getCause() != java:
        java = java.getCause()
    return first_line(java.toString())


def _batches(table: ParquetSource, offsets: dict[str, int], batches) -> Iterator[tuple[np.ndarray, ...]]:
    """``(positions, x float64, y)`` of each file's rows in each Arrow batch (a batch can span files)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for batch in batches:
        files = batch.column(_FILE)
        data = pa.Table.from_batches([batch]).drop_columns([_FILE, _ROW])
        for name in pc.unique(files).to_pylist():
            mask = pc.equal(files, name)
            rows = pc.filter(batch.column(_ROW), mask).to_numpy()
            x, y = table_arrays(data.filter(mask), name, table.key, table.label_column, table.features_column,
                                int(rows[0]))
            yield rows.astype(np.int64) + offsets[name], x, y


class SparkReader:
    """How the Spark engines read a row-keyed source: Spark's readers in the executors."""

    def __init__(self, session, collect_held_out_mb: float = 64.0):
        self._session = session  # a function returning the engine's SparkSession (started on first use)
        # held-out rows beyond this stay with the mappers, which score them (spark.collect_held_out_mb)
        self.collect_limit_bytes = collect_held_out_mb * 2 ** 20

    def _frame(self, table: ParquetSource):
        from pyspark.sql import functions as F

        reader = self._session().read
        try:
            df = reader.option("recursiveFileLookup", "true").parquet(table.source)
        except Exception as exc:  # noqa: BLE001  - AnalysisException, Py4JJavaError: the path or scheme
            raise DataError(f"{table.key}: Spark cannot read {table.source} ({_spark_error(exc)})") from None
        columns = table.columns() or df.columns
        for column in (table.label_column, table.features_column):
            if column is not None and column not in df.columns:
                raise DataError(f"{table.key}: {table.source} has no column '{column}' (columns are "
                                f"{df.columns[:10]})")
        return df.select(*columns, F.col("_metadata.file_path").alias(_FILE),
                         F.col("_metadata.row_index").alias(_ROW))

    def _run(self, action, what: str, source: str):
        try:
            return action()
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001  - an nnlib error raised in an executor comes back as text
            error = error_from_text(str(exc), "spark", what)
            if isinstance(error, DataError) or getattr(exc, "java_exception", None) is None:
                raise error from None
            raise DataError(f"data.source: Spark cannot read {source} ({_spark_error(exc)})") from None

    def open(self, source: str, label_column: str, features_column: str | None) -> ParquetSource:
        """The files and their row counts, as Spark lists them (one small aggregate job)."""
        probe = ParquetSource(source, (), (), label_column, features_column)
        df = self._frame(probe)
        counts = self._run(lambda: df.groupBy(_FILE).count().collect(), f"listing {source}", source)
        if not counts:
            raise DataError(f"data.source: {source} holds no rows")
        files = sorted((row[0], row[1]) for row in counts)
        return ParquetSource(source, tuple(f for f, _ in files), tuple(n for _, n in files), label_column,
                             features_column)

    def _offsets(self, table: ParquetSource) -> dict[str, int]:
        return dict(zip(table.files, (int(o) for o in table.offsets)))

    def survey(self, table: ParquetSource, plan: RowPlan):
        offsets = self._offsets(table)

        def tally_blocks(batches):
            import pyarrow as pa

            tallies = [plan.tally(*block) for block in _batches(table, offsets, batches)]
            yield pa.RecordBatch.from_pydict({"blob": [pickle.dumps(tallies)]})

        df = self._frame(table)
        blobs = self._run(lambda: df.mapInArrow(tally_blocks, "blob binary").collect(), f"surveying {table.source}",
                          table.source)
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

        self._run(fill, f"reading {table.source}", table.source)
        return filler.arrays(f"{table.key} {table.source}")[role]

    def shards(self, rows: RowKeyed):
        """An RDD whose partition ``i`` holds shard ``i``'s rows as ``(shard, blob)`` records: its training
        rows, and its part of the held-out rows when the mappers score them."""
        table, plan = rows.table, rows.plan
        offsets = self._offsets(table)

        def split_by_shard(batches):
            import pyarrow as pa

            for block in _batches(table, offsets, batches):
                for k, part in plan.by_shard(rows.mapper_roles, *block):
                    yield pa.RecordBatch.from_pydict({"shard": [k], "blob": [pickle.dumps(part)]})

        mappers = plan.mappers
        return (self._frame(table).mapInArrow(split_by_shard, "shard long, blob binary").rdd
                .map(lambda r: (r.shard, r.blob)).partitionBy(mappers, lambda k: k))


def shard_from_records(index: int, records, rows: RowKeyed) -> Shard:
    """Shard ``index`` from its shuffled ``(shard, blob)`` records, each block put in place as it arrives."""
    filler = ShardFiller(index, rows)
    for shard, blob in records:
        if shard != index:
            raise RuntimeError(f"shard {shard}'s rows reached task {index}")
        filler.add(*pickle.loads(blob))
    return filler.finish()
