"""The mrjob engine's first step: a Parquet source cut into its shards once, before the rounds.

A map-only Hadoop streaming job. Each input line is the index of one file of
the source; its map task reads that file block by block and writes, for each
shard, the file's rows of that shard (positions, raw float32 features,
labels) to ``<scratch>/shard-<k>/part-<file>.npz``, then emits how many rows
it wrote per shard, which the engine checks against the survey. Every
round's map task then reads only its own shard's directory
(:func:`read_shard`), not the whole source. ``scratch`` is a local folder
(the inline and local runners) or a URI every node can write (``hdfs://``
for ``-r hadoop``), opened with pyarrow's filesystems.

    key/value shapes
      mapper_cut_file: (None, "7") -> ("rows", [file, [rows of shard 0, rows of shard 1, ...]])
"""

from __future__ import annotations

import io
import pickle

import numpy as np
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, RawValueProtocol
from mrjob.step import MRStep

from nnlib.data.dataset import RowKeyed, Shard, ShardFiller


def filesystem(scratch: str):
    """``(pyarrow filesystem, path)`` of a scratch folder or URI."""
    from pyarrow import fs

    if "://" in scratch:
        return fs.FileSystem.from_uri(scratch)
    return fs.LocalFileSystem(), scratch


def shard_folder(scratch: str, shard: int) -> str:
    return f"{scratch.rstrip('/')}/shard-{shard:05d}"


def cut_file(rows: RowKeyed, file: int, scratch: str) -> list[int]:
    """Write file ``file``'s kept rows, one ``.npz`` per shard; return the rows written per shard."""
    pieces: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for block in rows.table.blocks([file]):
        for k, part in rows.plan.by_shard(rows.mapper_roles, *block):
            pieces.setdefault(k, []).append(part)
    fs, root = filesystem(scratch)
    counts = [0] * rows.plan.mappers
    for k, parts in pieces.items():
        folder = shard_folder(root, k)
        fs.create_dir(folder, recursive=True)
        buffer = io.BytesIO()
        # data.weight_column
        weights: dict[str, np.ndarray] = {} if len(parts[0]) < 4 else {"w": np.concatenate([p[3] for p in parts])}
        np.savez(
            buffer,
            pos=np.concatenate([p[0] for p in parts]),
            x=np.concatenate([p[1] for p in parts]),
            y=np.concatenate([p[2] for p in parts]),
            **weights,  # type: ignore[arg-type]  # numpy's stubs: **kwds might fill allow_pickle
        )
        with fs.open_output_stream(f"{folder}/part-{file:05d}.npz") as out:
            out.write(buffer.getvalue())
        counts[k] = sum(len(p[2]) for p in parts)
    return counts


def read_shard(rows: RowKeyed, index: int, scratch: str) -> Shard:
    """Shard ``index`` from its folder in ``scratch``, each file put in place as it is read."""
    from pyarrow import fs as pafs

    fs, root = filesystem(scratch)
    filler = ShardFiller(index, rows)
    for info in fs.get_file_info(pafs.FileSelector(shard_folder(root, index), allow_not_found=True)):
        with fs.open_input_file(info.path) as f, np.load(io.BytesIO(f.read())) as part:
            filler.add(part["pos"], part["x"], part["y"], part["w"] if "w" in part.files else None)
    return filler.finish()


class MRPartition(MRJob):
    INPUT_PROTOCOL = RawValueProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def configure_args(self):
        super().configure_args()
        self.add_file_arg("--rows", required=True, help="the source's row plan and statistics (pickled)")
        self.add_passthru_arg("--scratch", required=True, help="folder or URI the shards are written under")

    def steps(self):
        return [MRStep(mapper=self.mapper_cut_file)]

    def mapper_cut_file(self, _, line):
        with open(self.options.rows, "rb") as f:
            rows = pickle.load(f)
        file = int(line.strip())
        yield "rows", [file, cut_file(rows, file, self.options.scratch)]


if __name__ == "__main__":
    MRPartition.run()
