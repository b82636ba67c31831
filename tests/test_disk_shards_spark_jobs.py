"""spark.mode=jobs with data.shard_storage=disk: each shard is written once, in the first round's job, to its
executor's scratch folder, and the later rounds' tasks read those very files (they do not build it again)."""

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config

from nnlib.driver import run


def shard_files(scratch: Path) -> dict[str, tuple[int, int]]:
    """``{run folder/shard-N/x.npy: (inode, modification time in ns)}`` of every shard file under ``scratch``."""
    found = {}
    for folder in scratch.glob("nnlib-shards-*-jobs-*"):
        for x in folder.glob("shard-*/x.npy"):
            st = os.stat(x)
            found[f"{folder.name}/{x.parent.name}"] = (st.st_ino, st.st_mtime_ns)
    return found


@pytest.mark.slow
def test_jobs_mode_writes_each_disk_shard_once_and_reuses_it_every_round(spark, tmp_path):
    from test_engines import spark_engine

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = small_config("mappers=2", "train.rounds=4").model_copy(update={"engine": "spark"})
    disk = config.model_copy(
        update={"data": config.data.model_copy(update={"shard_storage": "disk", "scratch_dir": str(scratch)})}
    )
    seen: list[dict] = []
    result = run(
        disk,
        engine=spark_engine("jobs"),
        log=lambda _m: None,
        warn=lambda _m: None,
        on_round=lambda _r: seen.append(shard_files(scratch)),
    )
    assert len(seen) == 4
    assert sorted(name.split("/")[1] for name in seen[0]) == ["shard-0", "shard-1"]  # one executor: local mode
    assert all(files == seen[0] for files in seen)  # the same files, never rewritten, from round 1 to 4
    assert shard_files(scratch) == {}  # removed at the end
    memory = run(config.model_copy(update={"engine": "local"}), log=lambda _m: None)
    np.testing.assert_array_equal(result.params, memory.params)
