"""``data.shard_storage: auto``: memory or disk for a run's shards, chosen by the driver against a memory budget.

The budget per mapper is ``data.memory_per_mapper_mb``, else, on Spark,
``spark.executor.pyspark.memory`` (from ``spark.conf`` or the session's own
settings: spark-submit's ``--conf``, spark-defaults.conf, a caller's
session); with neither, a run keeps its shards in memory.

A shard's size is known on the driver before any mapper starts, on every
source: a source read whole is loaded and partitioned there, and a
row-keyed (Parquet) source is surveyed there (:func:`nnlib.driver.prepare`).
Its bytes are what storage moves to disk: the training rows' float32
features, their labels (int64) or targets (float64 per output) and their
weights (float64). Held-out rows that the mappers keep and score stay in
memory with either storage.

The rule: disk when the largest shard passes half of what the budget
leaves past a Python worker's fixed cost (:data:`FIXED_MB`). The fixed
cost is counted as Spark counts the budget, in address space
(``spark.executor.pyspark.memory`` is an ``RLIMIT_AS``): a Python worker
with numpy, pyarrow and nnlib maps about 290-330 MB before it holds a row
(one BLAS thread; measured with /proc/self/status' VmSize), one with torch
about 640 MB. Half of the rest, because a shard kept in memory costs more
than its bytes: a mapper's peak above its fixed cost is about 1.1 times its
shard while training and 1.4 to 1.8 times while it builds a Parquet shard
(bench/README.md, "Disk shards"), and the shard's size is an estimate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nnlib.errors import ConfigError

PYSPARK_MEMORY = "spark.executor.pyspark.memory"
FIXED_MB = {"numpy": 320.0, "torch": 640.0}  # a Python worker's address space before it holds a row (MiB)
SHARE_OF_REST = 0.5  # of the budget past the fixed cost, what a shard kept in memory may take

# Spark's size suffixes (JavaUtils.byteStringAs); a bare number is MiB for spark.executor.pyspark.memory
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)b?\s*$", re.IGNORECASE)
_MIB_PER = {"k": 1 / 1024, "": 1.0, "m": 1.0, "g": 1024.0, "t": 1024.0**2, "p": 1024.0**3}


def size_mb(text: str) -> float | None:
    """A Spark size setting (``640m``, ``2g``, ``1024``: MiB when bare) in MiB; None when it is not one."""
    match = _SIZE.match(str(text))
    if match is None:
        return None
    return float(match.group(1)) * _MIB_PER[match.group(2).lower()]


def readable(n_bytes: float) -> str:
    """``n_bytes`` as ``12 MB``, ``0.3 MB`` or ``1.2 GB`` (MB = 2**20 bytes, as the budget counts)."""
    mb = n_bytes / 2**20
    if mb >= 1024:
        return f"{mb / 1024:.1f} GB"
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.1f} MB"


@dataclass(frozen=True)
class Budget:
    """A memory budget per mapper in MiB, and the setting it was read from (``key=value`` as written)."""

    mb: float
    setting: str


def budget(config, session_setting=None) -> Budget | None:
    """The run's memory budget per mapper: ``data.memory_per_mapper_mb``, else (engine ``spark``)
    ``spark.executor.pyspark.memory`` from ``spark.conf``, else ``session_setting()`` (the value the
    engine's session holds, a string, or None); None without any. Raises :class:`ConfigError` for a
    ``spark.executor.pyspark.memory`` that is not a size."""
    if config.data.memory_per_mapper_mb is not None:
        return Budget(
            float(config.data.memory_per_mapper_mb), f"data.memory_per_mapper_mb={config.data.memory_per_mapper_mb:g}"
        )
    if config.engine != "spark":
        return None
    value = config.spark.conf.get(PYSPARK_MEMORY)
    if value is None and session_setting is not None:
        value = session_setting()
    if value is None:
        return None
    mb = size_mb(value)
    if mb is None or mb <= 0:
        raise ConfigError(
            f"data.shard_storage=auto reads the memory budget per mapper from {PYSPARK_MEMORY}, which holds "
            f"{value!r}: set a size (640m, 2g) there, or data.memory_per_mapper_mb"
        )
    return Budget(mb, f"{PYSPARK_MEMORY}={value}")


def shard_bytes(rows: int, n_features: int, n_outputs: int, regression: bool, weighted: bool) -> int:
    """What a shard of ``rows`` training rows holds: float32 features, int64 labels or float64 targets (one per
    output), float64 weights when ``weighted``."""
    per_row = 4 * n_features + (8 * n_outputs if regression else 8) + (8 if weighted else 0)
    return rows * per_row


def memory_limit_bytes(b: Budget, backend: str) -> float:
    """The largest shard kept in memory under ``b``: :data:`SHARE_OF_REST` of the budget past the fixed cost."""
    return max(0.0, b.mb - FIXED_MB.get(backend, FIXED_MB["numpy"])) * SHARE_OF_REST * 2**20


@dataclass(frozen=True)
class Choice:
    """The storage ``auto`` chose (``memory`` or ``disk``) and the run's one line saying why."""

    storage: str
    line: str


def choose(config, shard_sizes, n_features: int, n_outputs: int, regression: bool, weighted: bool, b: Budget | None):
    """:class:`Choice` for ``config`` (``data.shard_storage: auto``), its shards of ``shard_sizes`` training rows,
    under budget ``b`` (None: no budget, memory)."""
    largest = shard_bytes(max(shard_sizes, default=0), n_features, n_outputs, regression, weighted)
    shard = f"the largest shard is ~{readable(largest)}"
    if b is None:
        return Choice(
            "memory",
            f"shards: memory ({shard}; no memory budget per mapper to weigh it against: set "
            "data.memory_per_mapper_mb, or spark.executor.pyspark.memory on Spark)",
        )
    backend = config.model.backend
    limit = memory_limit_bytes(b, backend)
    fixed = FIXED_MB.get(backend, FIXED_MB["numpy"])
    why = (
        f"{b.setting} keeps shards up to {readable(limit)} in memory: half of what is left past a "
        f"{backend} worker's ~{fixed:.0f} MB"
        if limit > 0
        else f"{b.setting} is not above a {backend} worker's ~{fixed:.0f} MB, so no shard is kept in memory"
    )
    if largest > limit:
        return Choice("disk", f"shards: disk ({shard}; {why})")
    return Choice("memory", f"shards: memory ({shard}; {why})")


def resolved(config, dataset, engine=None, log=print):
    """``config.data`` with ``shard_storage: auto`` resolved to ``memory`` or ``disk`` for ``dataset`` (the
    driver's :class:`nnlib.data.dataset.Dataset`: its shard sizes, widths, weights), the choice said in one
    line to ``log``. ``engine`` may name the budget its session holds (``python_memory_setting()``, Spark's).
    Raises :class:`ConfigError` when the chosen storage does not go with the rest of ``config`` (as the same
    setting written out would)."""
    from nnlib.config import build_config

    data = config.data
    sizes = dataset.shard_sizes(config.mappers, data.partition, config.seed, data.skew_alpha)
    choice = choose(
        config,
        sizes,
        dataset.n_features,
        dataset.n_outputs,
        dataset.regression,
        dataset.weighted,
        budget(config, getattr(engine, "python_memory_setting", None)),
    )
    tree = config.to_dict()
    tree["data"]["shard_storage"] = choice.storage
    try:
        build_config(tree, (), "data.shard_storage=auto")
    except ConfigError as exc:
        raise ConfigError(f"{choice.line}; and {str(exc).split(': ', 1)[1]}") from None
    log(choice.line)
    return data.model_copy(update={"shard_storage": choice.storage})
