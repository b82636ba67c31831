"""Row-keyed data: each row's role and shard from a seeded hash of its position, and statistics in pieces.

A Parquet source (one file, a directory or a glob of many, or a URI Spark
reads) is never loaded whole by the driver. Each row is keyed by its
*position*: its index in the dataset's file order (files sorted by path,
rows in file order). A seeded hash of ``(seed, position)`` decides

- its role: test (when no ``data.test_source`` is given) with probability
  ``data.test_fraction``, else validation with probability
  ``data.validation_fraction``, else training;
- its shard: ``data.partition=random`` puts it in shard ``floor(u * mappers)``
  for a second hash ``u`` in [0, 1); ``contiguous`` cuts the positions into
  ``mappers`` equal runs.

So every engine, every reader (Spark's executors, an MPI rank, the local
process) and every retry gives a row the same role and shard without seeing
any other row. The fractions and shard sizes hold in expectation, not
exactly. Standardisation statistics are gathered as :class:`Moments` of
blocks of rows, merged in position order (Chan's pairwise update), so any
split of the rows over readers gives the same mean and standard deviation
as numpy's float64 ``mean``/``std`` to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnlib.errors import DataError

TRAIN, VAL, TEST = 0, 1, 2
ROLE_NAMES = {TRAIN: "training", VAL: "validation", TEST: "test"}
ROW_PARTITIONS = ("random", "contiguous")  # the data.partition schemes that need no other row's label
_TEST_SALT, _VAL_SALT, _SHARD_SALT = 0x7E57, 0x7A11, 0x5A4D
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose outputs look independent for nearby inputs."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit_hash(seed: int, salt: int, positions: np.ndarray) -> np.ndarray:
    """A float64 in [0, 1) for each position, uniform and independent across positions, seeds and salts."""
    with np.errstate(over="ignore"):
        base = _mix(np.array([seed], np.uint64) * _GOLDEN ^ np.uint64(salt))
        z = _mix(np.asarray(positions, np.int64).astype(np.uint64) * _GOLDEN ^ base)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class RowPlan:
    """Which role and shard each row has: plain data every reader gets."""

    seed: int
    mappers: int
    n_rows: int  # rows in the whole dataset
    test_fraction: float | None  # None: the test set is data.test_source
    validation_fraction: float
    partition: str = "random"

    def roles(self, positions: np.ndarray, flags: np.ndarray | None = None) -> np.ndarray:
        """``TRAIN``, ``VAL`` or ``TEST`` (int8) for each position (``flags``: used by :class:`FixedPlan` only)."""
        role = np.full(len(positions), TRAIN, np.int8)
        if self.validation_fraction:
            role[unit_hash(self.seed, _VAL_SALT, positions) < self.validation_fraction] = VAL
        if self.test_fraction is not None:
            role[unit_hash(self.seed, _TEST_SALT, positions) < self.test_fraction] = TEST
        return role

    def shards(self, positions: np.ndarray) -> np.ndarray:
        """The shard (int64, 0..mappers-1) of each position; test and validation rows get one too
        (the task that keeps them when they are evaluated where they live)."""
        positions = np.asarray(positions, np.int64)
        if self.partition == "contiguous":
            return positions * self.mappers // self.n_rows
        return np.minimum(
            (unit_hash(self.seed, _SHARD_SALT, positions) * self.mappers).astype(np.int64), self.mappers - 1
        )

    def span(self, shard: int) -> tuple[int, int]:
        """The positions ``[lo, hi)`` that can hold ``shard``'s rows: every row, or the shard's run under
        ``contiguous`` (the positions ``p`` with ``p * mappers // n_rows == shard``)."""
        if self.partition == "contiguous":
            return -(-shard * self.n_rows // self.mappers), -(-(shard + 1) * self.n_rows // self.mappers)
        return 0, self.n_rows

    def positions(self, shard: int | None, roles=(TRAIN,), chunk: int = 1 << 20) -> dict[int, np.ndarray]:
        """For each role in ``roles``, the sorted positions of ``shard``'s rows (every shard's: None) with that role.

        Computed from the plan alone (every position of the shard's span hashed
        once, ``chunk`` at a time), so a reader knows where each arriving row
        belongs before it has seen any: 8 bytes per kept row.
        """
        lo, hi = (0, self.n_rows) if shard is None else self.span(shard)
        found: dict[int, list[np.ndarray]] = {role: [] for role in roles}
        for start in range(lo, hi, chunk):
            pos = np.arange(start, min(start + chunk, hi), dtype=np.int64)
            role = self.roles(pos)
            mine = True if shard is None else self.shards(pos) == shard
            for r, parts in found.items():
                parts.append(pos[mine & (role == r)])
        return {r: np.concatenate(parts) if parts else np.empty(0, np.int64) for r, parts in found.items()}

    def tally(self, pos: np.ndarray, x: np.ndarray, y: np.ndarray, w=None, v=None) -> tuple[int, Tally]:
        """A block's :class:`Tally`, keyed by its first position (for :func:`merge_in_order`)."""
        return int(pos[0]), Tally.of(x, y, self.roles(pos), self.shards(pos), self.mappers, pos)

    def block_roles(self, pos: np.ndarray, v=None) -> np.ndarray:
        """The roles of a block's rows (``v``: its validation flags, which a :class:`FixedPlan` may read)."""
        return self.roles(pos)

    def by_shard(self, roles, pos: np.ndarray, x: np.ndarray, y: np.ndarray, w=None, v=None):
        """``(shard, (positions, x float32, y[, w]))`` for each shard holding rows of ``roles`` in a block
        (``w``, the rows' float64 weights, when the block carries them)."""
        keep = np.isin(self.block_roles(pos, v), np.asarray(roles))
        shard = self.shards(pos)
        for k in np.unique(shard[keep]):
            yield int(k), kept_rows(keep & (shard == k), pos, x, y, w)


def kept_rows(mask: np.ndarray, pos: np.ndarray, x: np.ndarray, y: np.ndarray, w=None) -> tuple:
    """``(positions, x float32, y)`` of a block's rows in ``mask``, and their weights ``w`` when given: what
    :meth:`RowFiller.add` takes, as it travels (pickled) from a reader to the task that keeps the rows."""
    part = (pos[mask], x[mask].astype(np.float32), y[mask])
    return part if w is None else (*part, w[mask])


def _member(sorted_values: np.ndarray | None, positions: np.ndarray) -> np.ndarray:
    """For each position, whether it is in ``sorted_values`` (sorted int64; None: none is)."""
    if sorted_values is None or not len(sorted_values):
        return np.zeros(len(positions), bool)
    place = np.minimum(np.searchsorted(sorted_values, positions), len(sorted_values) - 1)
    return sorted_values[place] == positions


@dataclass(frozen=True, eq=False)
class FixedPlan(RowPlan):
    """Roles and shards drawn as a source read whole draws them (:func:`nnlib.data.dataset.load_columns`), for a
    row-keyed source that carries regression targets, sample weights or a validation column.

    The test rows are ``test_pos`` (the seeded ``_split`` of every position, or none under
    ``data.test_source``), the validation rows ``val_pos`` (the seeded split of the rest, or the rows
    ``data.validation_column`` marks: ``None`` until the survey has found them, which then reads each
    block's flags), and training row ``i`` (in position order) is in shard ``train_shard[i]``
    (:func:`nnlib.data.partition.partition` of the training rows; ``None`` until known). Plain sorted
    positions: every reader gives a row the same role and shard, as for :class:`RowPlan`, at 8 bytes per
    held-out row and 4 per training row.
    """

    test_pos: np.ndarray | None = None  # sorted int64 positions of the test rows
    val_pos: np.ndarray | None = None  # sorted int64 positions of the validation rows; None: by the flags
    train_shard: np.ndarray | None = None  # int32, the shard of each training row in position order
    regression: bool = False  # the labels are float64 targets (their moments are gathered)

    def roles(self, positions: np.ndarray, flags: np.ndarray | None = None) -> np.ndarray:
        positions = np.asarray(positions, np.int64)
        role = np.full(len(positions), TRAIN, np.int8)
        if self.val_pos is not None:
            role[_member(self.val_pos, positions)] = VAL
        elif flags is not None:
            role[np.asarray(flags, bool)] = VAL
        role[_member(self.test_pos, positions)] = TEST  # a marked row drawn for the test set stays a test row
        return role

    def block_roles(self, pos: np.ndarray, v=None) -> np.ndarray:
        return self.roles(pos, v)

    def shards(self, positions: np.ndarray) -> np.ndarray:
        """The shard of each training position (held-out rows, and every row while ``train_shard`` is
        unknown: 0; they are collected to the driver, never scored by the mappers)."""
        positions = np.asarray(positions, np.int64)
        out = np.zeros(len(positions), np.int64)
        if self.train_shard is None:
            return out
        train = self.roles(positions) == TRAIN
        p = positions[train]
        before = (0 if self.test_pos is None else np.searchsorted(self.test_pos, p)) + (
            0 if self.val_pos is None else np.searchsorted(self.val_pos, p)
        )
        out[train] = self.train_shard[p - before]
        return out

    def span(self, shard: int) -> tuple[int, int]:
        return 0, self.n_rows

    def tally(self, pos: np.ndarray, x: np.ndarray, y: np.ndarray, w=None, v=None) -> tuple[int, Tally]:
        role = self.roles(pos, v)
        return int(pos[0]), Tally.of(
            x,
            None if self.regression else y,
            role,
            self.shards(pos),
            self.mappers,
            None,
            targets=y if self.regression else None,
            w=w,
            marked=pos[role == VAL] if self.val_pos is None else None,
            carried=carried_digest(pos, x, y, w, v),
        )


def carried_digest(pos: np.ndarray, x: np.ndarray, y: np.ndarray, w=None, v=None) -> int:
    """:func:`row_digest` of rows with float targets (or labels), weights and flags, all taken as feature
    bits: the digest :func:`nnlib.data.dataset.load_columns` records of the same rows."""
    n = len(x)
    parts = [np.asarray(x, np.float64), np.asarray(y, np.float64).reshape(n, -1)]
    parts += [] if w is None else [np.asarray(w, np.float64)[:, None]]
    parts += [] if v is None else [np.asarray(v)[:, None].astype(np.float64)]
    return row_digest(pos, np.concatenate(parts, axis=1), np.zeros(n, np.int64))


def check_partition(partition: str, source: str) -> None:
    if partition not in ROW_PARTITIONS:
        raise DataError(
            f"data.partition: {partition} needs every training label at once; data.source {source} "
            f"is assigned row by row (a Parquet source): use one of {', '.join(ROW_PARTITIONS)}"
        )


@dataclass
class Moments:
    """Count, mean and sum of squared deviations per feature (float64) of a set of rows."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, np.float64)
        if len(x) == 0:
            return cls(0, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
        mean = x.mean(axis=0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of rows (Chan, Golub and LeVeque's pairwise update)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * (other.n / n), self.m2 + other.m2 + delta**2 * (self.n * other.n / n))

    def std(self) -> np.ndarray:
        """Population standard deviation (numpy's default ``ddof=0``); 1 for constant features."""
        std = np.sqrt(self.m2 / max(self.n, 1))
        std[std == 0] = 1.0
        return std


def row_digest(pos: np.ndarray, x: np.ndarray, y: np.ndarray) -> int:
    """A 64-bit digest of rows (their positions, float64 features and labels), added up over the rows.

    Each row hashes to a uint64 (every feature's bits times its own odd
    multiplier, summed, then mixed with the position and the label); the
    digest is their sum mod 2**64, so blocks of rows merge by addition in any
    order and any split of the rows over readers gives the same digest.
    Any changed value, label or row order changes it (with probability
    about 1 - 2**-64): what ``--resume`` compares to refuse changed data.
    """
    bits = np.ascontiguousarray(x, np.float64).view(np.uint64)
    with np.errstate(over="ignore"):
        multipliers = _mix(np.arange(bits.shape[1], dtype=np.uint64) * _GOLDEN + np.uint64(0xD16E)) | np.uint64(1)
        features = (bits * multipliers).sum(axis=1, dtype=np.uint64)
        key = _mix(np.asarray(pos, np.int64).astype(np.uint64) * _GOLDEN ^ np.asarray(y, np.int64).astype(np.uint64))
        return int(_mix(features ^ key).sum(dtype=np.uint64))


def add_digests(a: int, b: int) -> int:
    return (a + b) % 2**64


@dataclass
class Tally:
    """What a reader learns from its rows: counts by role and shard, labels, training moments, a digest; and
    for a source carrying targets, weights or validation flags (a :class:`FixedPlan`'s), the training
    targets' moments, the training weights' sum and the positions the validation column marks."""

    n_features: int
    mappers: int
    moments: Moments
    role_counts: np.ndarray  # rows per role (TRAIN, VAL, TEST)
    shard_counts: np.ndarray  # training rows per shard
    train_label_max: int = -1
    train_labels_seen: frozenset = frozenset()  # every distinct training label (class indices: a few)
    label_max: int = -1  # over every role: a test label no training row has is refused
    digest: int = 0  # row_digest of every row (every role): what a checkpoint records of the data
    targets: Moments | None = None  # regression: the training rows' float64 targets, (rows, t) columns
    n_targets: int = 0  # regression: 0 for (rows,) targets, else t of (rows, t)
    weight_sum: float | None = None  # data.weight_column: the training rows' weights added up (float64)
    marked: np.ndarray | None = None  # data.validation_column: sorted positions of the rows it makes validate

    @classmethod
    def of(
        cls,
        x: np.ndarray,
        y: np.ndarray | None,
        role: np.ndarray,
        shard: np.ndarray,
        mappers: int,
        pos: np.ndarray | None = None,
        targets: np.ndarray | None = None,
        w: np.ndarray | None = None,
        marked: np.ndarray | None = None,
        carried: int | None = None,
    ) -> Tally:
        """A block's tally; ``y`` None (regression): no label figures, ``targets`` (float64 ``(rows,)`` or
        ``(rows, t)``) gives the target moments instead; ``carried``: the block's digest, given (else
        :func:`row_digest` of ``pos``, ``x``, ``y`` when ``pos`` is)."""
        train = role == TRAIN
        t = cls(
            x.shape[1],
            mappers,
            Moments.of(x[train]),
            np.bincount(role, minlength=3).astype(np.int64),
            np.bincount(shard[train], minlength=mappers).astype(np.int64),
        )
        if y is not None:
            t.label_max = int(y.max()) if len(y) else -1
            if train.any():
                t.train_label_max = int(y[train].max())
                t.train_labels_seen = frozenset(np.unique(y[train]).tolist())
        if targets is not None:
            t.n_targets = 0 if targets.ndim == 1 else targets.shape[1]
            t.targets = Moments.of(targets.reshape(len(targets), -1)[train])
        if w is not None:
            t.weight_sum = float(np.sum(w[train], dtype=np.float64))
        if marked is not None:
            t.marked = np.asarray(marked, np.int64)
        if carried is not None:
            t.digest = carried
        elif pos is not None:
            assert y is not None  # a digested block has its labels
            t.digest = row_digest(pos, x, y)
        return t

    def merge(self, other: Tally) -> Tally:
        if other.n_features != self.n_features:
            raise DataError(f"data.source: parts of the dataset have {self.n_features} and {other.n_features} features")
        if other.n_targets != self.n_targets:
            raise DataError(
                f"data.source: parts of the dataset have {self.n_targets or 1} and {other.n_targets or 1} targets"
            )
        targets = (
            self.targets
            if other.targets is None
            else (other.targets if self.targets is None else self.targets.merge(other.targets))
        )
        weight_sum = (
            self.weight_sum
            if other.weight_sum is None
            else (other.weight_sum if self.weight_sum is None else self.weight_sum + other.weight_sum)
        )
        marked = (
            self.marked
            if other.marked is None
            else (other.marked if self.marked is None else np.concatenate([self.marked, other.marked]))
        )
        return Tally(
            self.n_features,
            self.mappers,
            self.moments.merge(other.moments),
            self.role_counts + other.role_counts,
            self.shard_counts + other.shard_counts,
            max(self.train_label_max, other.train_label_max),
            self.train_labels_seen | other.train_labels_seen,
            max(self.label_max, other.label_max),
            add_digests(self.digest, other.digest),
            targets,
            self.n_targets,
            weight_sum,
            marked,
        )


def merge_in_order(tallies: list[tuple[int, Tally]]) -> Tally:
    """The tallies of blocks keyed by their first position, merged in position order (deterministic)."""
    ordered = [tally for _, tally in sorted(tallies, key=lambda item: item[0])]
    total = ordered[0]
    for tally in ordered[1:]:
        total = total.merge(tally)
    return total


def standardize_into(
    out: np.ndarray, x: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None, chunk: int = 8192
) -> None:
    """``out[:] = float32((float64(x) - mean) / std)`` chunk by chunk (``mean`` None: a plain copy)."""
    for lo in range(0, len(x), chunk):
        block = x[lo : lo + chunk]
        out[lo : lo + chunk] = block if mean is None else (block.astype(np.float64) - mean) / std


class RowFiller:
    """Rows of known positions, filled as their blocks arrive, in any order, from any reader.

    ``expected`` gives, for each role kept, the sorted positions of its rows
    (:meth:`RowPlan.positions`: from the plan alone), so the arrays are
    allocated at their final size first and each arriving block is copied to
    its rows' places and let go: a reader holds the rows once plus one
    block, never a list of blocks and their concatenation. Rows of a block
    that are not expected are passed over.

    ``y_tail`` None: int64 class labels ``(n,)``; ``()``: float64 targets ``(n,)``; ``(t,)``: float64
    targets ``(n, t)``. ``weighted``: the rows' float64 weights are kept too. ``allocate(role, name, shape,
    dtype)`` gives each array (``name`` ``x``, ``y`` or ``w``; default ``np.empty``): anything that takes
    ``a[rows] = values`` as an ndarray does, such as a file written by rows
    (:class:`nnlib.data.shard_files.RowsFile`).
    """

    def __init__(
        self,
        expected: dict[int, np.ndarray],
        n_features: int,
        y_tail: tuple | None = None,
        weighted: bool = False,
        allocate=None,
    ):
        y_dtype = np.int64 if y_tail is None else np.float64
        self.weighted = weighted
        new = allocate or (lambda role, name, shape, dtype: np.empty(shape, dtype))
        self.parts = {
            role: (
                pos,
                new(role, "x", (len(pos), n_features), np.float32),
                new(role, "y", (len(pos), *(y_tail or ())), y_dtype),
                new(role, "w", (len(pos),), np.float64) if weighted else None,
            )
            for role, pos in expected.items()
        }
        self.filled = dict.fromkeys(self.parts, 0)

    def add(self, pos: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, v=None) -> None:
        """Place the expected rows of a block (``positions``, ``x`` float32 or float64, ``y``, and the weights
        ``w`` when kept; ``v``, validation flags, is passed over: the plan has placed those rows)."""
        for role, (expected, xs, ys, ws) in self.parts.items():
            if not len(expected):
                continue
            place = np.minimum(np.searchsorted(expected, pos), len(expected) - 1)
            hit = expected[place] == pos
            if hit.any():
                where = place[hit]
                xs[where], ys[where] = x[hit], y[hit]
                if ws is not None:
                    assert w is not None  # weights are kept only from blocks that carry them
                    ws[where] = w[hit]
                self.filled[role] += int(hit.sum())

    def arrays(self, what: str) -> dict[int, tuple]:
        """``role -> (x float32, y)`` in position order (``(x, y, w float64)`` when weighted); an error naming
        ``what`` when rows are missing (the source changed under the run)."""
        for role, (expected, *_) in self.parts.items():
            if self.filled[role] != len(expected):
                raise DataError(
                    f"{what} received {self.filled[role]} of its {len(expected)} {ROLE_NAMES[role]} "
                    "rows (did the dataset change while the run read it?)"
                )
        return {role: (xs, ys) if ws is None else (xs, ys, ws) for role, (_, xs, ys, ws) in self.parts.items()}
