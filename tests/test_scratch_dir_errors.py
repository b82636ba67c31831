"""A scratch folder that fills up or is read-only, on a real file system: a 1 MiB tmpfs mounted in a mount
namespace of the test's own (``unshare -rm``), which goes with it. Each is one line naming the folder and the
setting that moves it, with nothing of the shard left; on Spark the executor's mapper says it."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TAIL = (
    "; data.shard_storage=disk writes each mapper's shard there: set data.scratch_dir to a writable local "
    "folder with room, or data.shard_storage=memory"
)


def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _can_mount(), reason="needs unshare -rm and a tmpfs mount (a user namespace)")


def in_tmpfs(tmp_path: Path, options: str, *sets: str) -> tuple[int, list[str], list[str]]:
    """``nnlib run`` with ``data.scratch_dir`` on a 1 MiB tmpfs mounted with ``options`` (``ro`` after a
    remount): its exit code, its stderr lines, and what the tmpfs holds after it."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cmd = [sys.executable, "-m", "nnlib", "run", "--out", str(tmp_path / "out"), "--quiet"]
    for item in ("data.shard_storage=disk", f"data.scratch_dir={scratch}", "train.rounds=1", *sets):
        cmd += ["--set", item]
    remount = f"mount -o remount,ro {scratch} && " if options == "ro" else ""
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {scratch} && {remount}"
        f'{{ "$@" 2>{tmp_path / "err"}; echo $? >{tmp_path / "rc"}; }}; ls -A {scratch} >{tmp_path / "left"}'
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *cmd], cwd=ROOT, timeout=300, check=True)
    return (
        int((tmp_path / "rc").read_text()),
        (tmp_path / "err").read_text().splitlines(),
        (tmp_path / "left").read_text().split(),
    )


BIG = ("data.source=synthetic", "data.n_samples=20000", "data.n_features=64", "mappers=1")  # a 4 MiB shard


def test_a_full_scratch_folder_is_one_line_and_leaves_nothing(tmp_path):
    code, err, left = in_tmpfs(tmp_path, "rw", *BIG)
    assert code == 2
    assert len(err) == 1
    assert re.fullmatch(
        rf"nnlib: error: data\.scratch_dir: {re.escape(str(tmp_path / 'scratch'))} is full "
        rf"\(writing shard 0, \d+\.\d MiB\){re.escape(TAIL)}",
        err[0],
    ), err
    assert left == []
    assert not (tmp_path / "out").exists()


def test_a_read_only_scratch_folder_is_one_line(tmp_path):
    code, err, left = in_tmpfs(tmp_path, "ro")
    assert code == 2
    assert err == [f"nnlib: error: data.scratch_dir: {tmp_path / 'scratch'} is not writable{TAIL}"]
    assert left == []


@pytest.mark.slow
def test_a_full_scratch_folder_on_a_spark_executor_is_the_mappers_one_line(tmp_path):
    code, err, left = in_tmpfs(tmp_path, "rw", *BIG[:3], "mappers=2", "engine=spark", "spark.master=local[2]")
    assert code == 2
    lines = [line for line in err if line.startswith("nnlib: ")]
    assert len(lines) == 1, err
    assert re.fullmatch(
        rf"nnlib: error: mapper [01]: data\.scratch_dir: {re.escape(str(tmp_path / 'scratch'))} is full "
        rf"\(writing shard [01], \d+\.\d MiB\){re.escape(TAIL)}",
        lines[0],
    ), err
    assert left == []
