"""Readers for the in-memory sources (digits, synthetic, .npz, .csv, IDX), and what a Parquet source shares.

Each reader returns raw arrays ``(x, y)`` or, where the file carries its own
test set, ``(x, y, x_test, y_test)``. Checking the values (finite features,
integer labels, matching feature counts) is done once, by
:mod:`nnlib.data.checks`, for every source alike. Parquet sources are read
block by block (:mod:`nnlib.data.tables`) with the listing
(:func:`parquet_files`) and the Arrow conversion (:func:`table_to_arrays`)
kept here. Any problem with a file is raised as a one-line
:class:`DataError` naming the file.
"""

from __future__ import annotations

import glob
import gzip
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from nnlib.errors import DataError, first_line

FILE_SUFFIXES = (".npz", ".csv", ".parquet", "IDX (e.g. train-images-idx3-ubyte[.gz])")
BUILTIN = ("digits", "synthetic")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: 1797 samples, 64 features, 10 classes.

    Read straight from the file scikit-learn ships (what its ``load_digits``
    reads), without importing scikit-learn itself: a short-lived worker such as
    a Hadoop map task then starts in a fraction of the time.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source: 'digits' needs scikit-learn (pip install scikit-learn)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def make_synthetic(n_samples: int, n_features: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded Gaussian blobs: one centre per class, unit noise around it.

    Centres lie about 2.8 apart whatever the number of features (their
    coordinates scale with ``1/sqrt(n_features)``), so the classes overlap a
    little and the task stays learnable but not trivial at any width.
    """
    rng = np.random.default_rng([seed, 0x5E7])
    centres = rng.normal(0.0, 2.0 / np.sqrt(n_features), size=(n_classes, n_features))
    y = rng.integers(0, n_classes, size=n_samples)
    x = centres[y] + rng.normal(size=(n_samples, n_features))
    return x, y


def check_exists(path: Path, key: str) -> None:
    if not path.exists():
        raise DataError(f"{key}: file {path} does not exist")
    if not path.is_file():
        raise DataError(f"{key}: {path} is not a file")


def read_npz(path: Path, key: str, need_labels: bool = True):
    """``.npz`` with arrays ``x``, ``y`` and optionally ``x_test``, ``y_test`` (pickle disabled).

    ``need_labels=False`` (data to predict on): ``y`` may be missing, and is then None.
    """
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:  # fh: closed even if np.load fails
            names = set(f.files)
            if "x" not in names or (need_labels and "y" not in names):
                wanted = "arrays 'x' and 'y'" if need_labels else "an array 'x'"
                raise DataError(f"{key}: {path} must hold {wanted}, found {sorted(names)}")
            arrays = [f["x"], f["y"] if "y" in names else None]
            if {"x_test", "y_test"} <= names:
                arrays += [f["x_test"], f["y_test"]]
            return tuple(arrays)
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise DataError(f"{key}: {path} holds object arrays, which are not read (pickle is disabled)") from None
        raise DataError(f"{key}: {path} is not a readable .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{key}: {path} is not a readable .npz file ({exc})") from None


# a first column of these names is an index pandas wrote (``df.to_csv(path)``: an empty header over 0..n-1;
# read back by pandas: "Unnamed: 0"; ``df.to_parquet`` of a non-range index: "__index_level_0__")
PANDAS_INDEX_NAMES = ("", "Unnamed: 0", "__index_level_0__")
SHOWN_COLUMNS = 50  # an error lists at most this many column names, and says how many more there are
_warned_index: set[str] = set()


def pandas_index_column(names: list[str]) -> str | None:
    """The name of the first column when it is an index pandas wrote (``PANDAS_INDEX_NAMES``), else None."""
    return names[0] if names and names[0] in PANDAS_INDEX_NAMES else None


def columns_text(names: list[str]) -> str:
    """``columns are [...]`` for an error: every name, or the first ``SHOWN_COLUMNS`` and how many more."""
    if len(names) <= SHOWN_COLUMNS:
        return f"columns are {list(names)}"
    return f"columns are {list(names[:SHOWN_COLUMNS])} and {len(names) - SHOWN_COLUMNS} more"


def feature_columns(
    names: Sequence[str],
    label_column: str | None,
    key_column: str | None = None,
    chosen: Sequence[str] | None = None,
    dropped: Sequence[str] = (),
) -> list[str]:
    """The feature columns of a table without a features column: ``chosen`` (``data.feature_columns``) in its
    order, else every column but the label, the key, ``dropped`` (``data.drop_columns``) and an index pandas
    wrote (``pandas_index_column``), in the table's order.

    Raises :class:`DataError` naming a chosen or dropped column the table lacks, or a chosen column that is
    the label or the key.
    """
    names = list(names)
    for what, listed in (("data.feature_columns", chosen or ()), ("data.drop_columns", dropped)):
        for name in listed:
            if name not in names:
                raise DataError(f"{what}: no column '{name}' ({columns_text(names)})")
            if what == "data.feature_columns" and name in (label_column, key_column):
                raise DataError(f"{what}: '{name}' is the label or key column, not a feature")
    if chosen is not None:
        return list(chosen)
    index = pandas_index_column(names)
    return [name for name in names if name not in (label_column, key_column, *dropped) and name != index]


def warn_pandas_index(
    names: list[str], path: Path, key: str, chosen: Sequence[str] | None = None, dropped: Sequence[str] = ()
) -> None:
    """Say once per file and process that a pandas index column is left out of the features (stderr); not when
    ``data.feature_columns`` or ``data.drop_columns`` say which columns are features."""
    index = pandas_index_column(list(names))
    if index is not None and chosen is None and index not in dropped and str(path) not in _warned_index:
        _warned_index.add(str(path))
        shown = "an empty header" if index == "" else f"the header '{index}'"
        print(
            f"nnlib: warning: {key}: {path}'s first column, with {shown}, is an index pandas wrote "
            "(df.to_csv without index=False); it is left out of the features",
            file=sys.stderr,
            flush=True,
        )


def table_to_arrays(
    table,
    path: Path,
    key: str,
    label_column: str | None,
    features_column: str | None,
    key_column: str | None = None,
    chosen: Sequence[str] | None = None,
    dropped: Sequence[str] = (),
):
    """``(x float64, y)`` of an Arrow table; ``label_column=None`` (data to predict on): ``y`` is None.

    The features are ``features_column`` (a list column), else every column
    but the label and ``key_column`` (a row key, not a feature), in order.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    y = None
    if label_column is not None:
        if label_column not in table.column_names:
            raise DataError(
                f"{key}: {path} has no label column '{label_column}' "
                f"(set data.label_column; {columns_text(table.column_names)})"
            )
        y_col = table.column(label_column)
        if y_col.null_count:
            raise DataError(f"{key}: {path} column '{label_column}' has {y_col.null_count} empty cells")
        if not (pa.types.is_integer(y_col.type) or pa.types.is_floating(y_col.type)):
            raise DataError(f"{key}: {path} label column '{label_column}' must be numeric, got {y_col.type}")
        y = y_col.to_numpy()
    if features_column is not None:
        if features_column not in table.column_names:
            raise DataError(
                f"{key}: {path} has no features column '{features_column}' ({columns_text(table.column_names)})"
            )
        col = table.column(features_column)
        if not (
            pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)
        ):
            raise DataError(f"{key}: {path} features column '{features_column}' must hold lists, got {col.type}")
        col = col.combine_chunks()
        if len(col) == 0:
            return np.zeros((0, 1)), y
        span = pc.min_max(pc.list_value_length(col))
        if col.null_count or span["min"] != span["max"]:
            raise DataError(f"{key}: {path} features column '{features_column}' has rows of different lengths")
        values = pc.list_flatten(col)
        if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)) or values.null_count:
            raise DataError(f"{key}: {path} features column '{features_column}' holds non-numeric values")
        return values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(col), -1), y
    if key_column is not None and key_column not in table.column_names:
        raise DataError(
            f"{key}: {path} has no key column '{key_column}' (set data.key_column; {columns_text(table.column_names)})"
        )
    columns = []
    for name in feature_columns(table.column_names, label_column, key_column, chosen, dropped):
        col = table.column(name)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise DataError(
                f"{key}: {path} column '{name}' must be numeric, got {col.type} "
                f"(non-numeric cells); leave it out of the features with --set data.drop_columns=[{name}]"
            )
        if col.null_count:
            raise DataError(f"{key}: {path} column '{name}' has {col.null_count} empty cells")
        columns.append(col.to_numpy().astype(np.float64))
    if not columns:
        raise DataError(f"{key}: {path} has no feature columns besides '{label_column}'")
    return np.stack(columns, axis=1), y


def read_csv_table(path: Path, key: str):
    """A CSV file with a header row as an Arrow table; a malformed file is one line naming it."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        if path.stat().st_size == 0:
            raise DataError(f"{key}: {path} is empty (0 bytes; a CSV source needs a header row and data rows)")
        table = pacsv.read_csv(path)
    except pa.ArrowInvalid as exc:
        raise DataError(f"{key}: {path} is not a well-formed CSV file ({first_line(exc)})") from None
    except OSError as exc:
        raise DataError(f"{key}: {path} cannot be read ({exc})") from None
    if table.num_rows == 0:
        raise DataError(f"{key}: {path} is empty (a header row and no data rows)")
    return table


def csv_columns(path: Path, key: str) -> list[str]:
    """The column names of a CSV file's header row (its first block alone is read)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        with pacsv.open_csv(path) as reader:
            return reader.schema.names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{key}: {path} is not a well-formed CSV file ({first_line(exc)})") from None


def read_csv(
    path: Path,
    key: str,
    label_column: str,
    key_column: str | None = None,
    chosen: Sequence[str] | None = None,
    dropped: Sequence[str] = (),
):
    """CSV with a header row; the column ``label_column`` holds the labels, all others but ``key_column`` are
    features."""
    table = read_csv_table(path, key)
    warn_pandas_index(table.column_names, path, key, chosen, dropped)
    return table_to_arrays(table, path, key, label_column, None, key_column, chosen, dropped)


def parquet_files(source: str) -> list[Path] | None:
    """The files of a Parquet dataset, in the order that numbers its rows; None if ``source`` is not one.

    A dataset is a directory (every ``*.parquet`` file below it, hidden and
    ``_``-prefixed files left out, as Spark and Hive write them) or a glob
    pattern (``data/part-*.parquet``). Files are taken in the order of their path strings (the order Spark's
    ``_metadata.file_path`` sorts in too).
    """
    path = Path(source)
    if path.is_dir():
        files = [
            f
            for f in path.rglob("*.parquet")
            if not any(part.startswith((".", "_")) for part in f.relative_to(path).parts)
        ]
    elif any(c in source for c in "*?["):
        files = [Path(f) for f in glob.glob(source, recursive=True) if Path(f).is_file()]
    else:
        return None
    return sorted(files, key=str)


_IDX_DTYPES: dict[int, npt.DTypeLike] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path, key: str) -> np.ndarray:
    """One MNIST-style IDX file (raw or gzipped) as an array of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{key}: {path} cannot be read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{key}: {path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{key}: {path} is truncated (header of {header} bytes expected)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{key}: {path} is truncated or padded: shape {dims} needs {expected} bytes, file has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def image_shape(source: str) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a source whose rows are images (digits, 3-d IDX images), else None."""
    if source == "digits":
        return (1, 8, 8)
    path = Path(source)
    if not is_idx(path):
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:  # the header alone; the file was read and checked before
        head = f.read(16)
    if head[3] != 3:
        return None
    return (1, int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big"))


def idx_labels_path(images: Path) -> Path:
    """``train-images-idx3-ubyte[.gz]`` -> ``train-labels-idx1-ubyte[.gz]``."""
    return images.with_name(images.name.replace("images-idx3", "labels-idx1"))


def is_idx(path: Path) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return "-idx" in name and name.endswith("-ubyte")


def read_file(
    path: Path,
    key: str,
    label_column: str = "label",
    labels: str | None = None,
    labels_key: str = "data.labels",
    key_column: str | None = None,
    chosen: Sequence[str] | None = None,
    dropped: Sequence[str] = (),
):
    """Read an in-memory data file (.npz, .csv, IDX) by its extension; returns ``(x, y)`` or
    ``(x, y, x_test, y_test)``. Parquet is read block by block (:mod:`nnlib.data.tables`)."""
    check_exists(path, key)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return read_npz(path, key)
    if suffix == ".csv":
        return read_csv(path, key, label_column, key_column, chosen, dropped)
    if is_idx(path):
        x = read_idx(path, key)
        label_path = Path(labels) if labels else idx_labels_path(path)
        if label_path == path:
            raise DataError(f"{labels_key}: cannot infer the labels file from {path}; set {labels_key}")
        check_exists(label_path, labels_key)
        if x.shape[0] == 0:
            raise DataError(f"{key}: {path} is empty (an IDX file of 0 items)")
        return x.reshape(x.shape[0], -1), read_idx(label_path, labels_key)
    allowed = ", ".join(BUILTIN + FILE_SUFFIXES)
    raise DataError(f"{key}: unknown kind of data source {str(path)!r}; allowed: {allowed}")
