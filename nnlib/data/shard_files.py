"""The files of disk shards (``data.shard_storage: disk``): arrays of rows in ``.npy`` files, written and read
by positioned writes and reads, and the scratch folders that hold them.

:class:`DiskArray` reads a stored array's rows by index; :class:`RowsFile`
writes a file of a final shape by rows as they arrive and
:class:`BuildFolder` holds a shard's files while it is built (the row-keyed
readers, :class:`nnlib.data.dataset.ShardFiller`); :func:`scratch_root` and
:func:`sweep` place and clean the folders. The stores that keep shards are
in :mod:`nnlib.data.disk`, whose docstring describes the whole.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import weakref
from pathlib import Path

import numpy as np

from nnlib.config import DataConfig
from nnlib.errors import DataError, first_line

FOLDER_PREFIX = "nnlib-shards-"
_FOLDER = re.compile(r"^nnlib-shards-\d+-")


BUFFER_BYTES = 16 << 20  # a stored array this small is read whole once when indexed, then indexed in memory


class _File:
    """An open ``.npy`` file: its descriptor and where its data begins. Closed when the last array over it goes.

    A file of at most ``BUFFER_BYTES`` of data (labels, weights, a small
    shard's features) is read whole at its first indexing and kept
    (:meth:`held`): a positioned read per row costs the same for an 8-byte
    label as for a row of features. Training does not index: it reads
    through :class:`BatchReader`, whose window holds the labels and weights
    with the features, so what it holds does not grow with the shard.
    """

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered .npy files are not read by rows")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.fd = os.open(path, os.O_RDONLY)
        self._close = weakref.finalize(self, os.close, self.fd)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._held: np.ndarray | None = None

    def held(self) -> np.ndarray | None:
        """The whole array when it is at most ``BUFFER_BYTES`` (read at the first call), else None."""
        if self._held is None and self.nbytes <= BUFFER_BYTES:
            whole = np.empty(self.shape, self.dtype)
            if self.nbytes:
                _read_all(self.fd, _bytes_of(whole), self.offset, self.path)
            self._held = whole
        return self._held

    def close(self) -> None:
        self._close()


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous ``array`` as one flat writable view (no copy)."""
    # numpy's stubs make ndarray a Buffer from Python 3.12 on only
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


class DiskArray:
    """A read-only array of rows in a ``.npy`` file, indexed like numpy along the first axis.

    ``a[i]`` (an int) is row ``i``; ``a[idx]`` (an int array or list, or a
    boolean mask of ``len(a)``) is an ndarray ``(len(idx), *row shape)`` read
    with one positioned read per run of consecutive rows; ``a[lo:hi]`` is a
    :class:`DiskArray` over those rows (nothing is read), and a slice with a
    step is read like its index array. ``np.asarray(a)`` reads the whole
    array. ``a.sum(dtype=...)`` over a whole stored array answers from the
    sum taken when it was written (the same bits as numpy's sum of the
    array in memory), else reads the rows. Raises ``IndexError`` for an
    index out of range, as numpy does.
    """

    def __init__(self, file: _File, start: int = 0, stop: int | None = None, total: dict | None = None):
        self._file = file
        self._start = start
        self._stop = file.shape[0] if stop is None else stop
        self._row_shape = file.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * file.dtype.itemsize
        self._total = total or {}  # dtype name -> np.sum of the whole stored array (only on the whole view)
        self.built_in: str | None = None  # the BuildFolder it was written in, until a store keeps it

    @classmethod
    def open(cls, path: str, total: dict | None = None) -> DiskArray:
        """The array stored at ``path`` (an ``.npy`` file, C order)."""
        return cls(_File(path), total=total)

    def __reduce__(self):
        return _reopen, (self._file.path, self._start, self._stop, self._total)

    @property
    def path(self) -> str:
        return self._file.path

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._stop - self._start, *self._row_shape)

    @property
    def dtype(self) -> np.dtype:
        return self._file.dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self._row_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return len(self) * self._row_bytes

    def __len__(self) -> int:
        return self._stop - self._start

    def __repr__(self) -> str:
        return f"DiskArray({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype=None, copy=None):
        rows = self._read_runs(np.arange(len(self), dtype=np.int64))
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)

    def sum(self, axis=None, dtype=None, out=None, **kwargs):
        whole = self._start == 0 and self._stop == self._file.shape[0]
        if axis is None and out is None and not kwargs and whole and np.dtype(dtype or self.dtype).name in self._total:
            return self._total[np.dtype(dtype or self.dtype).name]
        return np.asarray(self).sum(axis=axis, dtype=dtype, out=out, **kwargs)

    def __getitem__(self, key):
        if isinstance(key, tuple):  # rows first, then numpy's indexing of the rest
            if not key:
                return np.asarray(self)
            rows = self[key[0]]
            rest = (slice(None),) + key[1:] if not isinstance(key[0], (int, np.integer)) else key[1:]
            return np.asarray(rows)[rest]
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis 0 with size {n}")
            return self._read_runs(np.array([i % n], np.int64))[0]
        if isinstance(key, slice):
            lo, hi, step = key.indices(n)
            if step == 1:
                return DiskArray(
                    self._file, self._start + lo, self._start + max(lo, hi), self._total if (lo, hi) == (0, n) else None
                )
            return self._read_runs(np.arange(lo, hi, step, dtype=np.int64))
        idx = np.asarray(key)
        if idx.dtype.kind == "b":
            if idx.shape != (n,):
                raise IndexError(f"boolean index of shape {idx.shape} does not match the rows ({n},)")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu":
            raise IndexError("only integers, slices, integer arrays and boolean masks index a DiskArray")
        if idx.ndim != 1:
            return self[idx.reshape(-1)].reshape(*idx.shape, *self._row_shape)
        if not idx.size:
            return self._read_runs(idx.astype(np.int64))
        lo, hi = int(idx.min()), int(idx.max())
        if lo < -n or hi >= n:
            raise IndexError(f"index {lo if lo < -n else hi} is out of bounds for axis 0 with size {n}")
        if lo < 0:
            idx = np.where(idx < 0, idx + n, idx)
        return self._read_runs(idx.astype(np.int64, copy=False))

    def _read_runs(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (in range, int64) into a new array: one positioned read per run of consecutive rows."""
        held = self._file.held()
        if held is not None:
            return held[idx + self._start if self._start else idx]
        out = np.empty((len(idx), *self._row_shape), self.dtype)
        if not len(idx) or not self._row_bytes:
            return out
        view = _bytes_of(out)
        size, base = self._row_bytes, self._file.offset + self._start * self._row_bytes
        follows = idx[1:] - idx[:-1] == 1
        if not follows.any():  # no two rows in a row (a shuffled batch): one read per row, kept lean
            fd, read, offsets = self._file.fd, os.pread, (idx * size + base).tolist()
            rows = b"".join([read(fd, size, at) for at in offsets])  # faster than preadv into slices
            if len(rows) == len(view):
                view[:] = rows
            else:  # a short read (rare on a local file): row by row, to the end of each
                for i, at in enumerate(offsets):
                    _read_all(fd, view[i * size : (i + 1) * size], at, self.path)
            return out
        starts = [0, *(np.flatnonzero(~follows) + 1).tolist()]
        for a, b in zip(starts, [*starts[1:], len(idx)], strict=True):
            _read_all(self._file.fd, view[a * size : b * size], base + int(idx[a]) * size, self.path)
        return out

    def batch_rows(self, batches, *others):
        """``(self[idx], *(other[idx] for other in others))`` for each index array of ``batches``, in order, read
        a window of batches at a time (:class:`BatchReader`; an ``other`` of None gives None)."""
        return BatchReader([self, *others])(batches)

    def read_sorted(self, idx: np.ndarray, gap_bytes: int | None = None) -> tuple[np.ndarray, int]:
        """Rows ``idx`` (sorted, distinct, in range, int64) into a new array, and the positioned reads it took.

        Rows closer than ``gap_bytes`` (default ``GAP_BYTES``) are read
        together, the rows between them included and dropped, at most
        ``CHUNK_BYTES`` at a time (a chunk buffer); rows farther apart are
        read one positioned read each. A window of consecutive rows (a block
        shuffle's) is so one read per ``CHUNK_BYTES``.
        """
        out = np.empty((len(idx), *self._row_shape), self.dtype)
        size = self._row_bytes
        if not len(idx) or not size:
            return out, 0
        gap = GAP_BYTES if gap_bytes is None else gap_bytes
        fd, base, view = self._file.fd, self._file.offset + self._start * size, _bytes_of(out)
        # a new run where the gap to the previous row is too wide, or the run would pass a chunk
        breaks = np.flatnonzero((idx[1:] - idx[:-1] - 1) * size > gap) + 1
        starts, stops = [0, *breaks.tolist()], [*breaks.tolist(), len(idx)]
        reads = 0
        single: list[int] = []  # rows read alone
        rows_view = out.reshape(len(idx), -1).view(np.uint8)  # (rows, bytes of a row)
        max_rows = max(1, CHUNK_BYTES // size)
        chunk: np.ndarray | None = None
        for a, b in zip(starts, stops, strict=True):
            if b - a == 1:
                single.append(a)
                continue
            lo = a
            while lo < b:  # the run's rows, a chunk's span at a time
                first = int(idx[lo])
                hi = lo + int(np.searchsorted(idx[lo:b], first + max_rows))
                hi = min(max(hi, lo + 1), b)
                span = int(idx[hi - 1]) - first + 1
                if span == hi - lo:  # consecutive rows: straight into place
                    _read_all(fd, view[lo * size : hi * size], base + first * size, self.path)
                else:
                    if chunk is None:
                        chunk = np.empty(max_rows * size, np.uint8)
                    part = chunk[: span * size]
                    _read_all(fd, memoryview(part), base + first * size, self.path)  # type: ignore[arg-type]
                    rows_view[lo:hi] = part.reshape(span, size)[idx[lo:hi] - first]
                reads += 1
                lo = hi
        if single:
            at = (idx[single] * size + base).tolist()
            data = b"".join([os.pread(fd, size, o) for o in at])  # faster than preadv into slices
            if len(data) == len(single) * size:
                rows_view[single] = np.frombuffer(data, np.uint8).reshape(len(single), size)
            else:  # a short read (rare on a local file): row by row, to the end of each
                for i, o in zip(single, at, strict=True):
                    _read_all(fd, view[i * size : (i + 1) * size], o, self.path)
            reads += len(single)
        return out, reads


READ_BUFFER_BYTES = 16 << 20  # a disk shard's rows read at once for training: about 100 batches of 784 floats
GAP_BYTES = 16 << 10  # rows this close are read in one positioned read with what lies between (cheaper than two)
CHUNK_BYTES = 4 << 20  # the most bytes one read of several rows takes (its buffer)


class BatchReader:
    """Serves a round's mini-batches of a disk shard, reading a window of batches at a time.

    ``arrays``: the shard's arrays of one length (``DiskArray``, an
    ndarray, or None). Called with the round's index arrays, it takes the
    next batches while their rows fit in ``buffer_bytes`` (at least one
    batch), reads the window's distinct rows of each DiskArray in file order
    (:meth:`DiskArray.read_sorted`: one positioned read per run of close
    rows), then serves each batch's rows in the batch's order: the same
    rows, bit for bit, as indexing each array with the batch. What it holds
    is one window's rows and indices, whatever the shard's size:
    :attr:`window_rows` bounds the rows, :attr:`peak_rows` is the most it
    held, :attr:`reads` the positioned reads it made.
    """

    def __init__(self, arrays, buffer_bytes: int | None = None):
        self.arrays = arrays
        self.buffer_bytes = READ_BUFFER_BYTES if buffer_bytes is None else buffer_bytes
        row = sum(
            int(np.prod(a.shape[1:], dtype=np.int64)) * np.dtype(a.dtype).itemsize for a in arrays if a is not None
        )
        self.window_rows = max(1, self.buffer_bytes // max(row, 1))
        self.peak_rows = 0
        self.reads = 0

    def __call__(self, batches):
        """Each batch's rows, in order; ``batches``: index arrays, or a :class:`nnlib.core.train.Batches`
        (whose ``windows`` groups them: a block shuffle's window is read whole)."""
        windows = getattr(batches, "windows", None)
        groups = windows(self.window_rows) if windows is not None else self._groups(batches)
        for group in groups:
            yield from self._serve(group)

    def _groups(self, batches):
        """Consecutive batches of at most :attr:`window_rows` rows together (at least one batch)."""
        window: list[np.ndarray] = []
        held = 0
        for idx in batches:
            if window and held + len(idx) > self.window_rows:
                yield window
                window, held = [], 0
            window.append(idx)
            held += len(idx)
        if window:
            yield window

    def _serve(self, window: list[np.ndarray]):
        wanted = np.concatenate(window).astype(np.int64, copy=False)
        rows, where = np.unique(wanted, return_inverse=True)  # sorted and distinct: the reads go forward
        read: list[np.ndarray | None] = []
        for a in self.arrays:
            if a is None:
                read.append(None)
            elif isinstance(a, DiskArray):
                got, reads = a.read_sorted(rows)
                self.reads += reads
                read.append(got)
            else:
                read.append(a[rows])
        self.peak_rows = max(self.peak_rows, len(rows))
        del rows
        lo = 0
        for idx in window:
            at = where[lo : lo + len(idx)]
            lo += len(idx)
            yield tuple(None if r is None else r[at] for r in read)


def _read_all(fd: int, buffer: memoryview, at: int, path: str) -> None:
    """Fill ``buffer`` from byte ``at`` of ``fd``: a read may return less than asked (past 2 GiB on Linux)."""
    lo = 0
    while lo < len(buffer):
        got = os.preadv(fd, [buffer[lo:]], at + lo)
        if got <= 0:
            raise OSError(errno.EIO, f"{path}: the file ended at byte {at + lo}, before its rows did")
        lo += got


WRITE_BYTES = 16 << 20  # bytes per write: a failed write (a full disk) is seen with its errno, close to where


def write_npy(path: str, array: np.ndarray) -> None:
    """``array`` (C order) as an ``.npy`` file, written in pieces through ``os.write``-level calls, so that a
    full disk raises ``OSError`` with its errno (numpy's ``tofile`` loses it)."""
    array = np.ascontiguousarray(array)
    with open(path, "wb", buffering=0) as f:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
        data = _bytes_of(array)
        for piece in (memoryview(header.getvalue()), data):
            lo = 0
            while lo < len(piece):
                lo += f.write(piece[lo : lo + WRITE_BYTES])


def _write_all(fd: int, data: memoryview, at: int) -> None:
    """Write ``data`` at byte ``at`` of ``fd``: a write may take less than given."""
    lo = 0
    while lo < len(data):
        lo += os.pwrite(fd, data[lo : lo + WRITE_BYTES], at + lo)


class RowsFile:
    """An ``.npy`` file of a final ``shape`` written by rows, in any order, as they arrive.

    The header for the whole shape is written first and the file sized
    (sparse: nothing is allocated until a row is written); ``f[where] =
    values`` (``where``: int row indices, ``values``: ``(len(where), *row
    shape)``, cast to the file's dtype as numpy's assignment casts) writes
    with one positioned write per run of consecutive rows. Nothing is
    mapped (``spark.executor.pyspark.memory`` limits address space).
    ``read(lo, hi)`` and ``write(lo, rows)`` serve rewriting it block by
    block. Raises ``OSError`` (with its errno: a full disk) as writes fail.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        )
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._close = weakref.finalize(self, os.close, self.fd)
        _write_all(self.fd, memoryview(header.getvalue()), 0)
        self.offset = len(header.getvalue())
        os.ftruncate(self.fd, self.offset + self.shape[0] * self.row_bytes)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, where, values) -> None:
        where = np.asarray(where, np.int64).reshape(-1)
        values = np.ascontiguousarray(values, self.dtype).reshape(len(where), *self.shape[1:])
        if not len(where) or not self.row_bytes:
            return
        if len(where) > 1 and (where[1:] < where[:-1]).any():
            order = np.argsort(where, kind="stable")
            where, values = where[order], np.ascontiguousarray(values[order])
        view, size = _bytes_of(values), self.row_bytes
        starts = [0, *(np.flatnonzero(where[1:] - where[:-1] != 1) + 1).tolist(), len(where)]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            _write_all(self.fd, view[a * size : b * size], self.offset + int(where[a]) * size)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo..hi-1`` as a new array."""
        out = np.empty((hi - lo, *self.shape[1:]), self.dtype)
        if hi > lo and self.row_bytes:
            _read_all(self.fd, _bytes_of(out), self.offset + lo * self.row_bytes, self.path)
        return out

    def write(self, lo: int, rows: np.ndarray) -> None:
        """Rows ``lo..lo+len(rows)-1`` replaced by ``rows`` (cast to the file's dtype)."""
        rows = np.ascontiguousarray(rows, self.dtype)
        _write_all(self.fd, _bytes_of(rows), self.offset + lo * self.row_bytes)

    def blocks(self, block_bytes: int = WRITE_BYTES):
        """``(lo, hi)`` runs of rows of about ``block_bytes`` (at least one row), covering the file."""
        step = max(1, block_bytes // max(self.row_bytes, 1))
        for lo in range(0, self.shape[0], step):
            yield lo, min(lo + step, self.shape[0])

    def close(self) -> None:
        self._close()


BUILT = "shard"  # a build folder's subfolder holding the shard's files, renamed whole into a store


class BuildFolder:
    """The scratch folder a row-keyed shard is written into as it is built (``data.shard_storage: disk``).

    ``<root>/nnlib-shards-<pid>-build-<random>/shard/{x,y,w}.npy`` under
    :func:`scratch_root`, its ``owner`` this process, so :func:`sweep`
    removes it once a killed process leaves it. :meth:`ShardStore.keep`
    moves the ``shard`` folder into the store's folder (a rename: the files
    are not written twice); a build folder not kept is removed when its
    shard's arrays are let go, on :meth:`remove`, or at exit. A root that is
    missing, not a folder or unwritable, and a write that fails (a full
    disk), raise :class:`DataError` naming the root and ``data.scratch_dir``.
    """

    def __init__(self, data: DataConfig, index: int):
        self.data, self.index = data, index
        self.root = _writable_root(data)
        self.folder = os.path.join(self.root, f"{FOLDER_PREFIX}{os.getpid()}-build-{secrets.token_hex(6)}")
        self.files: list[RowsFile] = []
        self.nbytes = 0  # of the files begun: what a failed write names
        try:
            os.mkdir(self.folder, 0o700)
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
            Path(self.folder, OWNER_FILE).write_text(owner_line(os.getpid()) + "\n")
            os.mkdir(os.path.join(self.folder, BUILT), 0o700)
        except OSError as exc:
            raise self.error(exc) from None

    def array(self, name: str, shape: tuple[int, ...], dtype) -> RowsFile:
        """A new file ``<name>.npy`` of ``shape`` and ``dtype``, written by rows."""
        self.nbytes += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        try:
            self.files.append(RowsFile(os.path.join(self.folder, BUILT, f"{name}.npy"), shape, dtype))
        except OSError as exc:
            raise self.error(exc) from None
        return self.files[-1]

    def error(self, exc: OSError) -> DataError:
        """The one-line error of a failed write, naming the root and ``data.scratch_dir``; the folder removed."""
        self.remove()
        return _scratch_error(
            self.root, self.data, f"{_problem(exc)} (writing shard {self.index}, {self.nbytes / 2**20:.1f} MiB)"
        )

    def opened(self) -> dict[str, DiskArray]:
        """The written files closed and opened as :class:`DiskArray` (by name), each marked ``built_in`` this
        folder; the folder is then removed when the last of them goes (unless a store has kept it)."""
        for f in self.files:
            f.close()
        arrays = {os.path.basename(f.path)[:-4]: DiskArray.open(f.path) for f in self.files}
        folder = self.folder
        self._cleanup.detach()
        for array in arrays.values():
            array.built_in = folder
        weakref.finalize(arrays["x"], shutil.rmtree, folder, True)
        return arrays

    def remove(self) -> None:
        for f in self.files:
            f.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _reopen(path, start, stop, total):
    return DiskArray(_File(path), start, stop, total)


def scratch_root(data: DataConfig) -> str:
    """Where the shard folders go: ``data.scratch_dir``, else Spark's first local dir, else the temp folder."""
    if data.scratch_dir is not None:
        return data.scratch_dir
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    if not dirs and "pyspark" in sys.modules:  # in a process that runs Spark's driver: spark.local.dir, if set
        with contextlib.suppress(Exception):
            from pyspark import SparkContext

            sc = SparkContext._active_spark_context  # pyspark's own handle on the running context
            if sc is not None:
                dirs = [d for d in sc.getConf().get("spark.local.dir", "").split(",") if d]
    return dirs[0] if dirs else tempfile.gettempdir()


OWNER_FILE = "owner"  # "<host> <pid> <start time>" of the process whose life a shard folder shares


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (field 22 of /proc/PID/stat, in clock ticks since boot); None without it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after the command's ")", the fields start at the 3rd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def owner_line(pid: int) -> str:
    """The owner file's line for process ``pid`` of this host."""
    return f"{socket.gethostname()} {pid} {_start_time(pid) or '-'}"


def _owner_gone(folder: str) -> bool:
    """True when the folder's owner ran on this host and has ended: its pid is not running, or a later process
    took the pid (another start time). A folder of another host (a scratch dir shared between machines or
    containers) or without an owner file is not judged."""
    try:
        host, pid, started = Path(folder, OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return False
    if started != "-" and _start_time(int(pid)) is not None:
        return _start_time(int(pid)) != started
    return not _alive(int(pid))


def sweep(root: str) -> list[str]:
    """Remove the shard folders under ``root`` whose owning process is gone (a killed run's); their paths."""
    removed = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if _FOLDER.match(name) and _owner_gone(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def _scratch_error(root: str, data: DataConfig, problem: str) -> DataError:
    default = "" if data.scratch_dir is not None else " (unset: Spark's local dir or the temporary folder)"
    return DataError(
        f"data.scratch_dir: {root}{default} {problem}; data.shard_storage=disk writes each mapper's "
        "shard there: set data.scratch_dir to a writable local folder with room, or "
        "data.shard_storage=memory"
    )


def _writable_root(data: DataConfig) -> str:
    """:func:`scratch_root`, refused (:class:`DataError`) when it is missing, not a folder or unwritable."""
    root = scratch_root(data)
    if not os.path.isdir(root):
        raise _scratch_error(root, data, "does not exist or is not a folder")
    if not os.access(root, os.W_OK | os.X_OK):
        raise _scratch_error(root, data, "is not writable")
    return root


def _problem(exc: OSError) -> str:
    """What a failed write says of the scratch folder."""
    return {
        errno.ENOSPC: "is full",
        errno.EDQUOT: "is over its quota",
        errno.EACCES: "is not writable",
        errno.EROFS: "is read-only",
        errno.ENOENT: "was removed",
    }.get(exc.errno or 0) or f"could not be written to ({exc.strerror or first_line(exc)})"
