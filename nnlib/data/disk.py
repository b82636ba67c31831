"""Shards kept on local disk (``data.shard_storage: disk``) and read back by rows.

A mapper's shard (features, labels or targets, sample
weights) is written once to a scratch folder as ``.npy`` files when it has
been built, and training reads a window of mini-batches at a time
(:class:`nnlib.data.shard_files.BatchReader`: the window's distinct rows in
file order, close rows in one positioned read, ``os.preadv``), then serves
each batch's rows in its order. The arrays read are the arrays written, row
for row, so the mini-batches and the trained weights are the same bits as
with ``memory`` storage.

What a mapper then holds through the rounds: one window of rows
(``READ_BUFFER_BYTES``, 16 MiB, of features, labels and weights together),
the epoch's order of its rows, and its held-out rows (``Shard.held_out``,
scored once a round). The order is what ``data.shuffle`` costs: ``exact``
holds the epoch's permutation of row indices (4 bytes a row: exact sampling
needs it, with either storage); ``block`` holds one shuffle window's indices
and one int64 per block of ~1 MiB of rows, whatever the shard's size
(:func:`nnlib.core.train.block_windows`), and reads each window as whole
blocks. A row-keyed (Parquet) shard is written as it is
built (:class:`BuildFolder`, :class:`RowsFile`): each arriving block's rows
go to their places in the files, and the features are standardised block
by block, so a mapper's peak while building is its fixed cost plus a block
(and 8 bytes a row: the shard's positions, and its weights once, for their
sum). A shard read whole (``.npz``, CSV) is cut in memory first, then
written.

The files are not memory-mapped: ``spark.executor.pyspark.memory`` limits a
Python worker's address space, and a mapping of a large shard counts in it
whole.

The scratch folder of a process is ``<root>/nnlib-shards-<pid>-<tag>``,
``root`` being ``data.scratch_dir``, else the first of Spark's local dirs
(``SPARK_LOCAL_DIRS``, which Spark gives its Python workers, or
``spark.local.dir``), else the system's temporary folder. The pid is the
process whose life the files share (the mapper's, or a Spark executor's
Python daemon for ``spark.mode: jobs``), written with its host and start
time in the folder's ``owner`` file; a later :class:`ShardStore` on the
same root removes the folders whose owner ran on this host and has ended,
which is what a killed run leaves behind (:func:`sweep`). Folders of other
hosts or containers sharing the root are left alone.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil

import numpy as np

from nnlib.config import DataConfig
from nnlib.data.dataset import Shard
from nnlib.data.shard_files import (  # noqa: F401  - the files' names, used from here too
    BUFFER_BYTES,
    BUILT,
    FOLDER_PREFIX,
    OWNER_FILE,
    WRITE_BYTES,
    BuildFolder,
    DiskArray,
    RowsFile,
    _problem,
    _scratch_error,
    _writable_root,
    owner_line,
    scratch_root,
    sweep,
    write_npy,
)


class ShardStore:
    """One process's scratch folder of disk shards (``data.shard_storage: disk``).

    :meth:`keep` writes shards there and gives them back disk-backed;
    :meth:`remove` deletes the folder (the engines call it when they stop:
    at the end of a run, on failure, on Ctrl-C and SIGTERM). Creating a
    store removes what killed runs left under the same root (:func:`sweep`).

    ``tag`` names the folder (default: random); ``owner`` is the pid whose
    life the folder shares (default: this process). A store with a fixed
    ``tag`` and ``owner`` (Spark's jobs mode: the run's token and the
    executor) finds shards that another process of the same owner wrote
    (:meth:`find`). A scratch root that is missing, not a folder,
    unwritable or full raises :class:`DataError` naming it and
    ``data.scratch_dir``.
    """

    kind = "disk"

    def __init__(self, data: DataConfig, tag: str | None = None, owner: int | None = None):
        self.data = data
        self.root = _writable_root(data)
        sweep(self.root)
        self.owner = owner = os.getpid() if owner is None else owner
        self.folder = os.path.join(self.root, f"{FOLDER_PREFIX}{owner}-{tag or secrets.token_hex(6)}")

    def _claim(self) -> None:
        """Write the folder's owner file (once; the processes of one owner write the same line)."""
        path = os.path.join(self.folder, OWNER_FILE)
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
            with open(tmp, "w") as f:
                f.write(owner_line(self.owner) + "\n")
            os.replace(tmp, path)

    def _shard_folder(self, index: int) -> str:
        return os.path.join(self.folder, f"shard-{index}")

    def keep(self, shards: list[Shard]) -> list[Shard]:
        """``shards`` written to the folder, each given back with its ``x``, ``y`` (and ``w``) on disk.

        Held-out rows (``Shard.held_out``, scored once a round) stay in
        memory, and are written too for :meth:`find`. A shard already
        written by this folder's owner is read back as it is, not written
        again."""
        return [self.find(s.index) or self._write(s) for s in shards]

    def find(self, index: int) -> Shard | None:
        """Shard ``index`` from the folder when a process wrote it whole, else None (its held-out rows are read
        into memory)."""
        folder = self._shard_folder(index)
        if not os.path.isdir(folder):
            return None
        held_out = {}
        for name in sorted(os.listdir(folder)):
            if name.startswith("held-") and name.endswith("-x.npy"):
                role = int(name.split("-")[1])
                held_out[role] = tuple(
                    np.load(os.path.join(folder, f"held-{role}-{a}.npy"), allow_pickle=False) for a in "xy"
                )
        return self._open(index, folder, held_out)

    def _write(self, shard: Shard) -> Shard:
        final = self._shard_folder(shard.index)
        tmp = f"{final}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        arrays = {"x": shard.x, "y": shard.y, **({} if shard.w is None else {"w": shard.w})}
        built = getattr(shard.x, "built_in", None)  # written as it was built (BuildFolder): moved, not copied
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            self._claim()
            if built is not None:
                try:
                    os.rename(os.path.join(built, BUILT), tmp)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    shutil.copytree(os.path.join(built, BUILT), tmp)  # another filesystem: copied once
                shutil.rmtree(built, ignore_errors=True)
            else:
                os.mkdir(tmp, 0o700)
                for name, array in arrays.items():
                    write_npy(os.path.join(tmp, f"{name}.npy"), array)
            for role, (hx, hy) in sorted(shard.held_out.items()):  # read back whole by another process's find
                np.save(os.path.join(tmp, f"held-{role}-x.npy"), hx, allow_pickle=False)
                np.save(os.path.join(tmp, f"held-{role}-y.npy"), hy, allow_pickle=False)
            if shard.w is not None:  # the whole sum, as train.py takes it, so it is not read back for that
                np.save(os.path.join(tmp, "w_sum.npy"), np.array([np.sum(shard.w, dtype=np.float64)]))
            try:
                os.rename(tmp, final)  # whole or not at all: a reader in another process never sees a part
            except OSError:
                if not os.path.isdir(final):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process of the owner wrote it first
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if built is not None:
                shutil.rmtree(built, ignore_errors=True)
            problem = _problem(exc)
            size = (
                sum(np.asarray(a).nbytes if not isinstance(a, DiskArray) else a.nbytes for a in arrays.values()) / 2**20
            )
            raise _scratch_error(
                self.root, self.data, f"{problem} (writing shard {shard.index}, {size:.1f} MiB)"
            ) from None
        return self._open(shard.index, final, shard.held_out)

    def _open(self, index: int, folder: str, held_out: dict) -> Shard:
        x = DiskArray.open(os.path.join(folder, "x.npy"))
        y = DiskArray.open(os.path.join(folder, "y.npy"))
        w = None
        if os.path.exists(os.path.join(folder, "w.npy")):
            total = float(np.load(os.path.join(folder, "w_sum.npy"))[0])
            w = DiskArray.open(os.path.join(folder, "w.npy"), {"float64": total})
        # the DiskArrays stand in for the arrays: indexed like them, read on demand
        return Shard(index, x, y, held_out, w)  # type: ignore[arg-type]

    def remove(self) -> None:
        """Delete the folder (arrays already handed out keep reading the files they opened, as Unix allows)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class MemoryStore:
    """``data.shard_storage: memory``: the shards stay as they are built."""

    kind = "memory"
    folder = None

    def keep(self, shards: list[Shard]) -> list[Shard]:
        return shards

    def find(self, index: int) -> Shard | None:
        return None

    def remove(self) -> None:
        pass


def shard_store(data: DataConfig, tag: str | None = None, owner: int | None = None) -> ShardStore | MemoryStore:
    """Where a worker keeps its shards under ``data.shard_storage``: see :class:`ShardStore`."""
    if data.shard_storage == "disk":
        return ShardStore(data, tag, owner)
    return MemoryStore()


def kept(shards: list[Shard], store) -> list[Shard]:
    """``store.keep(shards)``; on any error the store is removed first (nothing half-written stays)."""
    try:
        return store.keep(shards)
    except BaseException:
        store.remove()
        raise
