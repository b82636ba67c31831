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

A Parquet source whose files Spark lists as local paths (``file:``: one
machine, or a filesystem every node mounts at the same path) is read by
pyarrow in the executor tasks instead (:class:`ArrowSource`): Spark lists
the files (``binaryFile``, no schema inferred), one small job reads their
footers, and every later pass is ``mapInArrow`` over a ``range`` of units
(runs of row groups of one file), each task reading its units' row groups
with pyarrow, as the local reader does. Spark's own reader turns every
column into Catalyst rows and back into Arrow, pass after pass, at a cost
per column far above the data's size: a 600 x 12,000 float32 file took
minutes before the first round (``bench/wide.py``). Any other source (a
DataFrame, ``hdfs://``, ``s3a://``) is read by Spark; one that has more than
:data:`WIDE_COLUMNS` feature columns gets one warning line naming that cost
and the ways round it, before the first pass.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nnlib.data.dataset import RowKeyed, Shard, ShardFiller
from nnlib.data.rows import RowFiller, RowPlan, kept_rows, merge_in_order
from nnlib.data.tables import ParquetSource
from nnlib.engines.spark.session import is_connect, java_root_cause, local_schema
from nnlib.errors import DataError, error_from_text, first_line, python_failed

# a row's part (a Parquet file's path, or a DataFrame's partition index) and its index in that part
_FILE, _ROW = "_nnlib_file", "_nnlib_row"
FRAME_SCHEME = "dataframe://"  # the data.source of a DataFrame given to SparkReader.add_frame
WIDE_COLUMNS = 1000  # feature columns past which Spark's own reader is warned of (its cost grows per column)
UNIT_BYTES = 64 << 20  # a unit of an ArrowSource: row groups of one file up to this many uncompressed bytes
READ_TASKS = 64  # the most tasks a pass over an ArrowSource's units takes
TASK_BLOCK_ROWS = 10_000  # rows a task reads at a time (the default of spark.sql.execution.arrow.maxRecordsPerBatch)
BLOCK_VALUES = 1 << 23  # values of a block read by pyarrow at most (64 MB of float64), whatever the width


def _warn_on_stderr(message: str) -> None:
    print(f"nnlib: warning: {message}", file=sys.stderr)


def local_path(uri: str) -> str | None:
    """The local path of a ``file:`` URI as Spark lists it; None for any other scheme."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    parsed = urlparse(uri)
    return url2pathname(parsed.path) if parsed.scheme == "file" else None


@dataclass(frozen=True)
class ArrowSource(ParquetSource):
    """A Parquet source whose files (local paths, sorted by path as the local reader sorts them) the executor
    tasks read with pyarrow. ``units``: ``(file index, first row group, end row group, first row in the file)``
    of each unit a task reads; ``schema``: the files' Arrow schema (every file's is the same)."""

    units: tuple[tuple[int, int, int, int], ...] = ()
    schema: Any = None  # a pyarrow.Schema


def _units(groups: list[list[tuple[int, int]]]) -> tuple[tuple[int, int, int, int], ...]:
    """Runs of row groups of one file, each up to :data:`UNIT_BYTES` (at least one group): ``groups`` holds
    each file's ``(rows, uncompressed bytes)`` per row group."""
    units = []
    for f, file_groups in enumerate(groups):
        start = first = row = size = 0
        for g, (rows, nbytes) in enumerate(file_groups):
            if g > start and size + nbytes > UNIT_BYTES:
                units.append((f, start, g, first))
                start, first, size = g, row, 0
            size += nbytes
            row += rows
        if row > first:
            units.append((f, start, len(file_groups), first))
    return tuple(units)


def unit_tables(table: ArrowSource, ids, columns: list[str] | None) -> Iterator[tuple[str, int, int, object]]:
    """``(file, index in the file of its first row, position of its first row, Arrow table of the rows)`` of
    each block of the units ``ids``, read with pyarrow; ``columns`` None: every column. A file pyarrow cannot
    read is one DataError line naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = table.offsets
    width = len(columns) if columns is not None else max(len(table.column_names), 1)
    # blocks as small as Spark's own Arrow batches keep a worker's temporaries (float64 copies for the checks)
    # to a few MB: a worker under spark.executor.pyspark.memory also holds its shard
    batch_rows = max(1, min(TASK_BLOCK_ROWS, BLOCK_VALUES // width))
    for i in ids:
        f, lo, hi, first = table.units[i]
        name = table.files[f]
        try:
            parquet = pq.ParquetFile(name)
            # one thread: pyarrow's decoding threads each reserve a malloc arena of address space, which
            # spark.executor.pyspark.memory (RLIMIT_AS) counts; a 640 MB worker ran out on 16 MB row groups
            for batch in parquet.iter_batches(
                batch_size=batch_rows, row_groups=list(range(lo, hi)), columns=columns, use_threads=False
            ):
                yield name, first, int(offsets[f]) + first, pa.Table.from_batches([batch])
                first += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            raise DataError(f"{table.key}: {name} is not a readable parquet file ({first_line(exc)})") from None


def unit_ids(batches) -> Iterator[int]:
    """The unit ids of a task's input (a ``range`` frame's ``id`` column)."""
    for batch in batches:
        yield from batch.column(0).to_pylist()


def _arrow_blocks(table: ArrowSource, batches) -> Iterator[tuple[np.ndarray, ...]]:
    """``(positions, x float64, y)`` of the rows of the units in a task's input, as the local reader checks them
    (``(positions, x, y, w, v)`` for a source that carries targets, weights or flags)."""
    for name, first_row, first, data in unit_tables(table, unit_ids(batches), table.columns()):
        arrays = table.block(data, name, first_row)
        yield (np.arange(first, first + len(arrays[0]), dtype=np.int64), *arrays)


def _footers(paths: list[str], key: str):
    """A task reading the footers of the files its ids index in ``paths``: one row ``(index, pickled (row
    groups' (rows, bytes), Arrow schema))`` a file."""

    def task(batches):
        import pyarrow as pa
        import pyarrow.parquet as pq

        for i in unit_ids(batches):
            try:
                meta = pq.ParquetFile(paths[i]).metadata
                schema = meta.schema.to_arrow_schema()
            except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
                raise DataError(f"{key}: {paths[i]} is not a readable parquet file ({first_line(exc)})") from None
            groups = [
                (meta.row_group(g).num_rows, meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups)
            ]
            yield pa.RecordBatch.from_pydict({"file": [i], "blob": [pickle.dumps((groups, schema))]})

    return task


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
    """``(positions, x float64, y)`` of each part's rows in each Arrow batch (``(positions, x, y, w, v)`` for a
    source that carries targets, weights or flags)."""
    for batch in batches:
        for name, first_row, positions, data in split_parts(batch, offsets):
            yield (positions, *table.block(data, name, first_row))


def spark_path(session, source: str) -> str:
    """``source`` as Spark's reader should get it: a relative path, on a classic session whose default
    filesystem is the local one, made absolute against this process's working folder. The JVM resolves a
    relative path against its own folder, which an ``os.chdir`` after the session started (a notebook, a
    program calling :func:`nnlib.train`) does not move. A URI, an absolute path, a path on another default
    filesystem (HDFS: relative to the user's home there) and any path on Spark Connect (the server's
    filesystem, not this process's) are left as they are."""
    if "://" in source or ":" in source.split("/", 1)[0] or os.path.isabs(source):
        return source
    jsc = None if is_connect(session) else getattr(getattr(session, "sparkContext", None), "_jsc", None)
    if jsc is None:
        return source
    try:
        default_fs = jsc.hadoopConfiguration().get("fs.defaultFS") or "file:///"
    except Exception:  # noqa: BLE001  - a session whose JVM is gone: Spark's reader says why
        return source
    return os.path.abspath(source) if default_fs.startswith("file:") else source


class SparkReader:
    """How the Spark engines read a row-keyed source: Spark's readers in the executors."""

    def __init__(self, session, collect_held_out_mb: float = 64.0, warn=None, local_by_pyarrow: bool = True):
        self._session = session  # a function returning the engine's SparkSession (started on first use)
        # False: local (file:) files too are read by Spark's own reader, as hdfs:// and s3a:// files are
        self.local_by_pyarrow = local_by_pyarrow
        self.warn = warn or _warn_on_stderr  # the one-line warning of a wide source read by Spark's reader
        self.passes: list[str] = []  # each pass over a source's rows, by who read them: "pyarrow" or "spark"
        # held-out rows beyond this stay with the mappers, which score them (spark.collect_held_out_mb)
        self.collect_limit_bytes: float | None = collect_held_out_mb * 2**20
        self._frames: dict[str, Any] = {}  # data.source -> a DataFrame given as the source (add_frame)
        # what source_frame and _frame built on a given DataFrame, by (data.source, ...): a Spark Connect session
        # asks its server for each new DataFrame's columns (a round trip), and every pass reads the same frame
        self._framed: dict[tuple, Any] = {}

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
        for key in [k for k in self._framed if k[0] == source]:
            del self._framed[key]

    def source_frame(self, source: str, key: str = "data.source"):
        """The rows of ``source`` as Spark's DataFrame, with each row's part (``_FILE``) and index in it
        (``_ROW``): a DataFrame given to :meth:`add_frame` (part: the partition index), else a Parquet
        source read by Spark's reader (part: the file's path). A path Spark cannot read is one DataError line."""
        from pyspark.sql import functions as F

        frame = self._frames.get(source)
        if frame is not None:
            if (source,) not in self._framed:
                part = F.spark_partition_id()
                # monotonically_increasing_id() is the partition index shifted left by 33 bits plus the row's index
                index = F.monotonically_increasing_id() - F.shiftleft(part.cast("long"), 33)
                self._framed[(source,)] = frame.select("*", part.alias(_FILE), index.alias(_ROW))
            return self._framed[(source,)]
        session = self._session()
        try:
            df = session.read.option("recursiveFileLookup", "true").parquet(spark_path(session, source))
        except Exception as exc:  # noqa: BLE001  - AnalysisException, Py4JJavaError: the path or scheme
            raise DataError(f"{key}: Spark cannot read {source} ({java_root_cause(exc)})") from None
        return df.select("*", F.col("_metadata.file_path").alias(_FILE), F.col("_metadata.row_index").alias(_ROW))

    def _frame(self, table: ParquetSource, df=None):
        memo = (table.source, table.label_column, table.features_column, tuple(table.columns() or ()))
        if memo in self._framed:  # a DataFrame source's columns, checked at its first pass
            return self._framed[memo]
        df = self.source_frame(table.source, table.key) if df is None else df
        names = [c for c in df.columns if c not in (_FILE, _ROW)]
        for column in (table.label_column, table.features_column):
            if column is not None and column not in names:
                raise DataError(f"{table.key}: {table.source} has no column '{column}' (columns are {names[:10]})")
        framed = df.select(*(table.columns() or names), _FILE, _ROW)
        if table.source in self._frames:
            self._framed[memo] = framed
        return framed

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

    def arrow_source(self, source: str, key: str = "data.source") -> ArrowSource | None:
        """``source``'s files as Spark lists them (``binaryFile``: no schema inferred, nothing read) with their
        footers read by pyarrow in one small job, as an :class:`ArrowSource` (no label or features column
        set); None where the executors read it through Spark (a DataFrame, files that are not ``file:``).
        A path Spark cannot list is one DataError line, a file pyarrow cannot read another naming it."""
        if source in self._frames or not self.local_by_pyarrow:
            return None
        session = self._session()
        try:
            listing = session.read.format("binaryFile").option("recursiveFileLookup", "true")
            uris = listing.load(spark_path(session, source)).inputFiles()
        except Exception as exc:  # noqa: BLE001  - AnalysisException, Py4JJavaError: the path or scheme
            raise DataError(f"{key}: Spark cannot read {source} ({java_root_cause(exc)})") from None
        found = [local_path(uri) for uri in uris]
        if not found or None in found:
            return None  # no files (Spark's reader says why), or a filesystem only Spark reaches
        paths = sorted(p for p in found if p is not None)  # the order of the local reader (sources.parquet_files)
        ids = session.range(0, len(paths), 1, numPartitions=min(len(paths), READ_TASKS))
        rows = self.run_job(
            lambda: ids.mapInArrow(_footers(paths, key), local_schema("file long, blob binary")).collect(),
            f"listing {source}",
            source,
            key,
        )
        footers = dict((row[0], pickle.loads(row[1])) for row in rows)
        groups, schema = [footers[i][0] for i in range(len(paths))], footers[0][1]
        for i, path in enumerate(paths):
            other = footers[i][1]
            if not other.equals(schema):
                raise DataError(
                    f"{key}: {path} has columns {other.names[:10]} of other types than {paths[0]}'s "
                    f"{schema.names[:10]}; every file of a dataset needs the same schema"
                )
        file_rows = tuple(sum(n for n, _ in g) for g in groups)
        if sum(file_rows) == 0:
            raise DataError(f"{key}: {source} is empty (its Parquet files hold no rows)")
        return ArrowSource(
            source,
            tuple(paths),
            file_rows,
            "",
            None,
            key,
            column_names=tuple(schema.names),
            units=_units(groups),
            schema=schema,
        )

    def units_frame(self, table: ArrowSource):
        """A DataFrame of one ``id`` column, the indices of ``table.units`` (at most :data:`READ_TASKS`
        partitions): what a pass over an :class:`ArrowSource` maps (:func:`unit_tables`)."""
        n = len(table.units)
        return self._session().range(0, n, 1, numPartitions=min(n, READ_TASKS))

    def open(self, source: str, label_column: str, features_column: str | None) -> ParquetSource:
        """The files (or a DataFrame's partitions) and their row counts, as Spark lists them."""
        arrow = self.arrow_source(source)
        if arrow is not None:
            for column in (label_column, features_column):
                if column is not None and column not in arrow.column_names:
                    raise DataError(
                        f"data.source: {source} has no column '{column}' (columns are {list(arrow.column_names)[:10]})"
                    )
            return replace(arrow, label_column=label_column, features_column=features_column)
        probe = ParquetSource(source, (), (), label_column, features_column)
        whole = self.source_frame(source)
        frame = self._frame(probe, whole)
        if features_column is None:
            self.warn_if_wide(len(frame.columns) - 3, source)  # less the label, _FILE and _ROW
        parts, rows = self.part_rows(frame, source)
        names = whole.columns
        return ParquetSource(
            source,
            parts,
            rows,
            label_column,
            features_column,
            column_names=tuple(c for c in names if c not in (_FILE, _ROW)),
        )

    def warn_if_wide(self, n_features: int, source: str, key: str = "data.source") -> None:
        """One warning line when Spark's own reader is to read more than :data:`WIDE_COLUMNS` feature columns
        (its cost per pass grows with the columns far faster than with the data's size), before it does."""
        if n_features > WIDE_COLUMNS:
            self.warn(
                f"{key}: {source} has {n_features:,} feature columns, read by Spark's own reader, whose "
                "every pass over the rows costs time per column far above the data's size (minutes for "
                "12,000 columns); store the features as one list column (data.features_column), put the "
                "files where every executor reads them as local paths (file:, which pyarrow reads), or "
                "use another engine (engine=local, mpi)"
            )

    def _offsets(self, table: ParquetSource) -> dict:
        return dict(zip(table.files, (int(o) for o in table.offsets), strict=True))

    def _pass(self, table: ParquetSource, blocks_to_batches, schema: str):
        """A DataFrame of ``blocks_to_batches(blocks)`` over every row of ``table``, where ``blocks`` are
        ``(positions, x float64, y)``: pyarrow's reads of an :class:`ArrowSource`'s units, else Spark's rows."""
        self.passes.append("pyarrow" if isinstance(table, ArrowSource) else "spark")
        if isinstance(table, ArrowSource):
            return self.units_frame(table).mapInArrow(
                lambda batches: blocks_to_batches(_arrow_blocks(table, batches)), local_schema(schema)
            )
        offsets = self._offsets(table)
        return self._frame(table).mapInArrow(
            lambda batches: blocks_to_batches(_batches(table, offsets, batches)), local_schema(schema)
        )

    def survey(self, table: ParquetSource, plan: RowPlan):
        def tally_blocks(blocks):
            import pyarrow as pa

            tallies = [plan.tally(*block) for block in blocks]
            yield pa.RecordBatch.from_pydict({"blob": [pickle.dumps(tallies)]})

        df = self._pass(table, tally_blocks, "blob binary")
        blobs = self.run_job(lambda: df.collect(), f"surveying {table.source}", table.source)
        return merge_in_order([t for row in blobs for t in pickle.loads(row.blob)])

    def rows(self, table: ParquetSource, plan: RowPlan, role: int, n_features: int):
        """``(x float32, y)`` of every row with ``role`` (``(x, y, w)`` for a weighted source), brought to the
        driver one partition at a time and put in place (the driver holds the rows once, plus one partition's
        blocks)."""

        def keep(blocks):
            import pyarrow as pa

            for pos, x, y, *carried in blocks:
                mine = plan.block_roles(pos, carried[1] if carried else None) == role
                if mine.any():
                    part = kept_rows(mine, pos, x, y, carried[0] if carried else None)
                    yield pa.RecordBatch.from_pydict({"blob": [pickle.dumps(part)]})

        filler = RowFiller(plan.positions(None, (role,)), n_features, table.y_tail, table.weighted)

        def fill():
            for row in self._pass(table, keep, "blob binary").toLocalIterator():
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

        def split_by_shard(blocks):
            import pyarrow as pa

            for block in blocks:
                for k, part in plan.by_shard(rows.mapper_roles, *block):
                    yield pa.RecordBatch.from_pydict({"shard": [k], "blob": [pickle.dumps(part)]})

        mappers = plan.mappers
        keys = F.array(*(F.lit(v).cast("long") for v in shard_keys(mappers)))
        split = self._pass(table, split_by_shard, "shard long, blob binary")
        return (
            split.withColumn(_KEY, F.element_at(keys, F.col("shard").cast("int") + 1))
            .repartition(mappers, _KEY)
            .drop(_KEY)
        )


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


def shard_from_records(index: int, records, rows: RowKeyed, data=None) -> Shard:
    """Shard ``index`` from its shuffled ``(shard, blob)`` records, each block put in place as it arrives
    (under ``data.shard_storage: disk``, ``data`` the run's DataConfig: written to the executor's scratch
    folder as it arrives, so the task holds one block, not the shard)."""
    filler = ShardFiller(index, rows, data)
    try:
        for shard, blob in records:
            if shard != index:
                raise RuntimeError(f"shard {shard}'s rows reached task {index}")
            filler.add(*pickle.loads(blob))
        return filler.finish()
    except BaseException:
        filler.discard()  # nothing half-written stays
        raise
