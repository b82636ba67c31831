"""data.shard_storage=disk: the disk-backed arrays against numpy, and every engine's weights against memory storage."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_mrjob, on, saved_params, small_config

from nnlib.config import DataConfig
from nnlib.data.dataset import Shard
from nnlib.data.disk import DiskArray, ShardStore, shard_store, sweep
from nnlib.driver import run
from nnlib.errors import DataError, NnlibError

ROOT = Path(__file__).resolve().parent.parent
QUIET = {"log": lambda _msg: None, "warn": lambda _msg: None}


def stored(tmp_path, array: np.ndarray) -> DiskArray:
    path = tmp_path / f"a{len(list(tmp_path.iterdir()))}.npy"
    np.save(path, array)
    return DiskArray.open(str(path))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("nnlib-shards-"))


# ----------------------------------------------------------------------------------- the array, numpy the oracle

ARRAYS = {
    "features": np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32),
    "labels": np.random.default_rng(1).integers(0, 10, 50),
    "targets": np.random.default_rng(2).normal(size=(50, 3)),
    "weights": np.random.default_rng(3).random(50),
}
KEYS = {
    "int": 7,
    "negative int": -1,
    "numpy int": np.int64(49),
    "slice": slice(3, 20),
    "open slice": slice(None),
    "negative slice": slice(-10, -2),
    "empty slice": slice(30, 10),
    "stepped slice": slice(1, 40, 3),
    "reversed slice": slice(None, None, -2),
    "permutation": np.random.default_rng(4).permutation(50),
    "repeats": np.array([5, 5, 6, 7, 8, 2, 2]),
    "negatives": np.array([-1, 0, -50, 3]),
    "list": [9, 10, 11, 40],
    "empty": np.array([], np.int64),
    "mask": np.random.default_rng(5).random(50) > 0.5,
    "2-d index": np.array([[1, 2], [3, 40]]),
    "row and column": (np.array([4, 1, 9]), 2),
}


@pytest.fixture(params=["read by rows", "held whole"])
def reading(request, monkeypatch):
    """Both ways a DiskArray reads: positioned reads per run of rows, and a small file held whole."""
    import nnlib.data.shard_files

    if request.param == "read by rows":
        monkeypatch.setattr(nnlib.data.shard_files, "BUFFER_BYTES", 0)
    return request.param


@pytest.mark.parametrize("name", ARRAYS)
@pytest.mark.parametrize("key", KEYS)
def test_indexing_equals_numpy(tmp_path, reading, name, key):
    array = ARRAYS[name]
    index = KEYS[key]
    if isinstance(index, tuple) and array.ndim == 1:
        pytest.skip("a column index needs rows of more than one value")
    disk = stored(tmp_path, array)
    got, expected = disk[index], array[index]
    assert np.asarray(got).dtype == expected.dtype and np.shape(got) == expected.shape
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_a_slice_reads_nothing_and_indexes_within_itself(tmp_path, reading):
    array = ARRAYS["features"]
    disk = stored(tmp_path, array)
    part = disk[10:30]
    assert isinstance(part, DiskArray) and len(part) == 20 and part.shape == (20, 7) and part.dtype == np.float32
    idx = np.array([19, 0, 5, 5])
    np.testing.assert_array_equal(part[idx], array[10:30][idx])
    np.testing.assert_array_equal(part[2:8][[0, 5]], array[10:30][2:8][[0, 5]])


@pytest.mark.parametrize("index", [50, -51, np.array([0, 50]), np.array([-51])])
def test_out_of_range_is_an_index_error_as_in_numpy(tmp_path, reading, index):
    disk, array = stored(tmp_path, ARRAYS["weights"]), ARRAYS["weights"]
    with pytest.raises(IndexError):
        array[index]
    with pytest.raises(IndexError):
        disk[index]


def test_sum_and_pickle(tmp_path, reading):
    w = ARRAYS["weights"]
    disk = stored(tmp_path, w)
    assert disk.sum(dtype=np.float64) == np.sum(w, dtype=np.float64)  # read whole: no stored sum here
    assert np.sum(disk[5:20], dtype=np.float64) == np.sum(w[5:20], dtype=np.float64)
    again = pickle.loads(pickle.dumps(disk[5:20]))
    np.testing.assert_array_equal(np.asarray(again), w[5:20])


def test_a_store_gives_back_the_same_rows_and_the_numpy_sum_of_the_weights(tmp_path):
    x, y, w = ARRAYS["features"], ARRAYS["labels"], ARRAYS["weights"]
    held = {2: (x[:5] + 1, y[:5])}
    store = ShardStore(DataConfig(shard_storage="disk", scratch_dir=str(tmp_path)), tag="t")
    (shard,) = store.keep([Shard(3, x, y, held, w)])
    assert isinstance(shard.x, DiskArray) and shard.n_samples == 50 and shard.index == 3
    for got, expected in ((shard.x, x), (shard.y, y), (shard.w, w)):
        np.testing.assert_array_equal(np.asarray(got), expected)
    assert np.sum(shard.w, dtype=np.float64) == np.sum(w, dtype=np.float64)  # answered from the stored sum
    found = store.find(3)  # as another worker of the same executor finds it
    np.testing.assert_array_equal(np.asarray(found.x), x)
    np.testing.assert_array_equal(found.held_out[2][0], held[2][0])
    assert store.find(4) is None
    store.remove()
    assert leftovers(tmp_path) == []
    np.testing.assert_array_equal(shard.x[[1, 2]], x[[1, 2]])  # open files read on after the folder is gone


def test_memory_storage_keeps_the_shards_as_they_are():
    store = shard_store(DataConfig())
    shards = [Shard(0, ARRAYS["features"], ARRAYS["labels"])]
    assert store.keep(shards) is shards and store.folder is None


def test_a_killed_runs_folder_is_removed_and_a_live_ones_kept(tmp_path):
    from nnlib.data.disk import owner_line

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    folders = {
        "dead": f"nnlib-shards-{dead_pid}-abc",
        "live": f"nnlib-shards-{os.getpid()}-def",
        "reused pid": f"nnlib-shards-{os.getpid()}-ghi",
        "other host": f"nnlib-shards-{dead_pid}-jkl",
        "no owner file": f"nnlib-shards-{dead_pid}-mno",
    }
    for folder in folders.values():
        (tmp_path / folder / "shard-0").mkdir(parents=True)
    owners = {
        "dead": owner_line(dead_pid),
        "live": owner_line(os.getpid()),
        "reused pid": owner_line(os.getpid()).rsplit(" ", 1)[0] + " 1",  # the pid, started at another time
        "other host": "another-host " + owner_line(dead_pid).split(" ", 1)[1],
    }
    for what, line in owners.items():
        (tmp_path / folders[what] / "owner").write_text(line + "\n")
    (tmp_path / "unrelated").mkdir()
    assert sweep(str(tmp_path)) == sorted(str(tmp_path / folders[w]) for w in ("dead", "reused pid"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [folders[w] for w in ("live", "other host", "no owner file")] + ["unrelated"]
    )


def test_a_stores_folder_names_its_owner(tmp_path):
    from nnlib.data.disk import owner_line

    store = ShardStore(DataConfig(shard_storage="disk", scratch_dir=str(tmp_path)))
    store.keep([Shard(0, ARRAYS["features"], ARRAYS["labels"])])
    assert (Path(store.folder) / "owner").read_text() == owner_line(os.getpid()) + "\n"
    assert sweep(str(tmp_path)) == [] and Path(store.folder).is_dir()  # this process runs: its folder stays
    store.remove()


# ----------------------------------------------------------------------------------- the same weights as memory


def disk_config(config, scratch: Path):
    return config.model_copy(
        update={"data": config.data.model_copy(update={"shard_storage": "disk", "scratch_dir": str(scratch)})}
    )


@pytest.fixture
def weighted_npz(tmp_path):
    """A 300-row, 6-feature, 3-class .npz with sample weights and float targets."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    path = tmp_path / "weighted.npz"
    np.savez(path, x=x, y=y, w=rng.uniform(0.1, 3.0, 300), t=x @ rng.normal(size=(6, 2)))
    return path


LOCAL_CASES = {
    "average": (),
    "gradient": ("combine=gradient", "train.momentum=0.9"),
    "ist": ("combine=ist", "model.hidden=[16,12]"),
    "local steps": ("train.local_steps=7", "combine=weighted", "data.partition=quantity_skew"),
    "cnn": ("model.type=cnn", "model.channels=[4]", "model.kernel=3"),
    "held-out scored": ("data.validation_fraction=0.2", "train.patience=1"),
}


@pytest.mark.parametrize("case", LOCAL_CASES)
def test_local_disk_equals_memory_bit_for_bit(tmp_path, monkeypatch, case):
    import nnlib.data.shard_files

    monkeypatch.setattr(nnlib.data.shard_files, "BUFFER_BYTES", 0)  # every row read from the file
    config = small_config(*LOCAL_CASES[case])
    memory = run(config, **QUIET)
    disk = run(disk_config(config, tmp_path), **QUIET)
    np.testing.assert_array_equal(disk.params, memory.params)
    assert [r["train_loss"] for r in disk.rounds] == [r["train_loss"] for r in memory.rounds]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "sets",
    [
        ("data.weight_column=w",),
        ("data.weight_column=w", "combine=gradient"),
        ("data.weight_column=w", "model.task=regression"),
    ],
    ids=["weights", "weights-gradient", "weights-regression"],
)
def test_local_disk_equals_memory_with_weights_and_targets(tmp_path, weighted_npz, monkeypatch, sets):
    import nnlib.data.shard_files

    monkeypatch.setattr(nnlib.data.shard_files, "BUFFER_BYTES", 0)  # every row read from the file
    if "model.task=regression" in sets:  # the .npz's two float targets as y
        with np.load(weighted_npz) as f:
            arrays = {"x": f["x"], "y": f["t"], "w": f["w"]}
        np.savez(weighted_npz, **arrays)
    config = small_config(f"data.source={weighted_npz}", *sets)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    memory = run(config, **QUIET)
    disk = run(disk_config(config, scratch), **QUIET)
    np.testing.assert_array_equal(disk.params, memory.params)
    assert leftovers(scratch) == []


def test_a_failed_run_leaves_no_shard_files(tmp_path):
    config = disk_config(small_config("train.lr=1e30", "train.rounds=3"), tmp_path)
    with pytest.raises(NnlibError, match="NaN|inf|diverge"):
        run(config, **QUIET)
    assert leftovers(tmp_path) == []


def test_the_shard_files_exist_during_the_run(tmp_path):
    """So the tests above that find none after a run can fail: the run does write them, under its pid."""
    from nnlib.data.dataset import ShardSource
    from nnlib.engines.local import LocalEngine

    config = disk_config(small_config(), tmp_path)
    engine = LocalEngine()
    engine.start(ShardSource.of_run(config))
    try:
        names = leftovers(tmp_path)
        assert len(names) == 1 and names[0].startswith(f"nnlib-shards-{os.getpid()}-")
        assert sorted(p.name for p in (tmp_path / names[0]).iterdir()) == ["owner", "shard-0", "shard-1", "shard-2"]
    finally:
        engine.stop()
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------- errors


def nnlib_cli(tmp_path, *sets, env=None):
    cmd = [
        sys.executable,
        "-m",
        "nnlib",
        "run",
        "--out",
        str(tmp_path / "out"),
        "--quiet",
        "--set",
        "train.rounds=1",
        "--set",
        "model.hidden=[8]",
    ]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.run(cmd, cwd=ROOT, check=False, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["missing", "a file"])
def test_a_bad_scratch_dir_is_one_line_naming_it(tmp_path, what):
    scratch = tmp_path / "nowhere"
    if what == "a file":
        scratch.write_text("")
    proc = nnlib_cli(tmp_path, "data.shard_storage=disk", f"data.scratch_dir={scratch}")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"nnlib: error: data.scratch_dir: {scratch} does not exist or is not a folder; "
        "data.shard_storage=disk writes each mapper's shard there: set data.scratch_dir to a "
        "writable local folder with room, or data.shard_storage=memory\n"
    )


def test_a_write_that_fails_is_one_error_naming_the_folder_and_leaves_nothing(tmp_path):
    # a file size limit makes the write fail as a full disk would, partway through the shard
    code = f"""
import resource, signal
import numpy as np
from nnlib.config import DataConfig
from nnlib.data.dataset import Shard
from nnlib.data.disk import ShardStore, kept
from nnlib.errors import DataError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = ShardStore(DataConfig(shard_storage="disk", scratch_dir={str(tmp_path)!r}))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    kept([Shard(0, np.zeros((1000, 512), np.float32), np.zeros(1000, np.int64))], store)
except DataError as exc:
    print(exc)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.startswith(
        f"data.scratch_dir: {tmp_path} could not be written to (File too large) (writing shard 0, 2.0 MiB); "
    ), proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == []  # the folder made for it is gone too


TORCH_CASES = {
    "mlp": ("model.backend=torch", "train.momentum=0.5"),
    "module": ("model.type=module", "model.module=user_models.tiny:make"),
    "module-gradient": ("model.type=module", "model.module=user_models.tiny:make", "combine=gradient"),
}


TORCH_RUNS = [
    (engine, case)
    for engine in ("local", "mrjob-inline", "spark-stage")
    for case in TORCH_CASES
    if not (engine == "mrjob-inline" and "combine=gradient" in TORCH_CASES[case])  # mrjob: no synchronous rounds
]


@pytest.mark.parametrize(
    ("engine", "case"),
    [pytest.param(*r, marks=[pytest.mark.slow] if r[0] == "spark-stage" else []) for r in TORCH_RUNS],
)
def test_the_torch_backend_trains_from_disk_shards_as_from_memory(spark_if_slow, tmp_path, engine, case):
    """model.backend=torch (an MLP, or the user's nn.Module) reads its batches from the shard files: the
    weights of memory storage, bit for bit, on the local engine, mrjob (whose job checks the configuration
    again) and the Spark stage."""
    pytest.importorskip("torch")
    config = small_config("mappers=2", *TORCH_CASES[case])
    memory = run(config, **QUIET)
    disk = disk_config(config, tmp_path)
    if engine == "local":
        result = run(disk, **QUIET)
    elif engine == "mrjob-inline":
        pytest.importorskip("mrjob")
        from nnlib.engines.mrjob.engine import MrjobEngine

        disk = disk.model_copy(update={"engine": "mrjob"})
        result = run(disk, engine=MrjobEngine(disk, "inline"), **QUIET)
    else:
        from test_engines import spark_engine

        result = run(disk.model_copy(update={"engine": "spark"}), engine=spark_engine("stage"), **QUIET)
    np.testing.assert_array_equal(result.params, memory.params)
    assert leftovers(tmp_path) == []


@pytest.fixture
def spark_if_slow(request):
    """The shared SparkSession for the Spark case only (the others run without starting a JVM)."""
    if "spark" in request.node.name:
        return request.getfixturevalue("spark")
    return None


# ----------------------------------------------------------------------------------- the other engines


@pytest.mark.slow
@pytest.mark.parametrize("combine", ["average", "gradient", "weights"])
def test_mpi_disk_equals_memory_bit_for_bit(tmp_path, weighted_npz, combine):
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    env = dict(
        os.environ,
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        TMPDIR=str(tmp_path),
        OMPI_MCA_rmaps_base_oversubscribe="1",
    )
    outs = {}
    (tmp_path / "scratch").mkdir()
    for storage in ("memory", "disk"):
        out = tmp_path / storage
        cmd = [
            mpiexec,
            "-n",
            "2",
            "--oversubscribe",
            sys.executable,
            "jobs/mpi_model_avg.py",
            "conf/default.yaml",
            "--set",
            "model.hidden=[16]",
            "--set",
            "train.rounds=2",
            *(
                ["--set", f"combine={combine}"]
                if combine != "weights"
                else [
                    "--set",
                    f"data.source={weighted_npz}",
                    "--set",
                    "data.weight_column=w",
                    "--set",
                    "combine=weighted",
                ]
            ),
            "--set",
            "mappers=2",
            "--set",
            f"data.shard_storage={storage}",
            "--set",
            f"data.scratch_dir={tmp_path / 'scratch'}",
            "--out",
            str(out),
            "--quiet",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[storage] = saved_params(out)
    np.testing.assert_array_equal(outs["disk"], outs["memory"])
    assert leftovers(tmp_path / "scratch") == []


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stage", "jobs"])
@pytest.mark.parametrize(
    "sets",
    [("combine=average",), ("combine=gradient", "train.momentum=0.9"), ("data.weight_column=w", "combine=weighted")],
    ids=["average", "gradient", "weights"],
)
def test_spark_disk_equals_memory_bit_for_bit(spark, tmp_path, weighted_npz, mode, sets):
    from test_engines import spark_engine

    source = (f"data.source={weighted_npz}",) if "data.weight_column=w" in sets else ()
    config = small_config("mappers=3", *source, *sets)
    memory = run(config, **QUIET)
    on_spark = run(
        disk_config(config, tmp_path).model_copy(update={"engine": "spark"}), engine=spark_engine(mode), **QUIET
    )
    np.testing.assert_array_equal(on_spark.params, memory.params)
    assert leftovers(tmp_path) == []


@needs_mrjob
@pytest.mark.parametrize("runner", ["inline", pytest.param("local", marks=pytest.mark.slow)])
@pytest.mark.parametrize("weights", [False, True], ids=["plain", "weights"])
def test_mrjob_disk_equals_memory_bit_for_bit(tmp_path, weighted_npz, runner, weights):
    from nnlib.engines.mrjob.engine import MrjobEngine

    source = (f"data.source={weighted_npz}", "data.weight_column=w") if weights else ()
    config = small_config("mappers=3", "train.momentum=0.5", *source)
    memory = run(config, **QUIET)
    mr_config = disk_config(config, tmp_path).model_copy(update={"engine": "mrjob"})
    result = run(mr_config, engine=MrjobEngine(mr_config, runner), **QUIET)
    np.testing.assert_array_equal(result.params, memory.params)
    assert leftovers(tmp_path) == []


def missing_scratch_line(scratch: Path) -> str:
    return (
        f"data.scratch_dir: {scratch} does not exist or is not a folder; data.shard_storage=disk writes each "
        "mapper's shard there: set data.scratch_dir to a writable local folder with room, or "
        "data.shard_storage=memory"
    )


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["spark-stage", "spark-jobs", "spark-connect", "mrjob", "mpi"])
def test_every_engines_workers_keep_their_shards_through_the_store(spark, request, tmp_path, engine):
    """A scratch dir that is missing where the workers run is refused by them: the shards do go through the
    store on every engine (the equality tests above would pass with memory storage too)."""
    scratch = tmp_path / "missing"
    config = disk_config(small_config("mappers=2", "train.rounds=1"), scratch)
    if engine == "mpi":
        mpiexec = str(Path(sys.executable).parent / "mpiexec")
        env = dict(
            os.environ,
            OMPI_ALLOW_RUN_AS_ROOT="1",
            OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
            OMPI_MCA_rmaps_base_oversubscribe="1",
        )
        proc = subprocess.run(
            [
                mpiexec,
                "-n",
                "2",
                "--oversubscribe",
                sys.executable,
                "jobs/mpi_model_avg.py",
                "conf/default.yaml",
                "--set",
                "mappers=2",
                "--set",
                "data.shard_storage=disk",
                "--set",
                f"data.scratch_dir={scratch}",
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ],
            cwd=ROOT,
            env=env,
            check=False,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 2
        assert [ln for ln in proc.stderr.splitlines() if "nnlib" in ln] == [
            f"nnlib: error: {missing_scratch_line(scratch)}"
        ]
        return
    if engine == "mrjob":
        from nnlib.engines.mrjob.engine import MrjobEngine

        config = config.model_copy(update={"engine": "mrjob"})
        chosen = MrjobEngine(config, "inline")
    elif engine == "spark-connect":
        from test_spark_connect import jobs_engine

        request.getfixturevalue("connect")
        config = config.model_copy(update={"engine": "spark"})
        chosen = jobs_engine("connect", request.getfixturevalue("connect_server"))
    else:
        from test_engines import spark_engine

        config = config.model_copy(update={"engine": "spark"})
        chosen = spark_engine(engine.split("-")[1])
    with pytest.raises(DataError) as caught, on("connect" if engine == "spark-connect" else "classic"):
        run(config, engine=chosen, **QUIET)
    assert str(caught.value) in (
        missing_scratch_line(scratch),
        "mapper 0: " + missing_scratch_line(scratch),
        "mapper 1: " + missing_scratch_line(scratch),
    )  # the stage names the mapper


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_stopped_run_leaves_no_shard_files_and_a_killed_ones_go_with_the_next_run(tmp_path, signum):
    import signal
    import time

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "nnlib",
        "run",
        "--out",
        str(tmp_path / "long"),
        "--quiet",
        "--set",
        "mappers=2",
        "--set",
        "train.rounds=2000",
        "--set",
        "model.hidden=[8]",
        "--set",
        "data.shard_storage=disk",
        "--set",
        f"data.scratch_dir={scratch}",
    ]
    # SIGINT at its default: a background job of a non-interactive shell (a CI script) starts with it ignored
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not leftovers(scratch) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers(scratch) == [f"nnlib-shards-{proc.pid}-" + leftovers(scratch)[0].rsplit("-", 1)[1]]
        time.sleep(1.0)  # into the rounds
        proc.send_signal(getattr(signal, signum))
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if signum != "SIGKILL":
        assert proc.returncode in (130, 143), proc.stderr[-2000:]  # stopped, not finished
        assert leftovers(scratch) == []
        return
    assert len(leftovers(scratch)) == 1  # nothing ran to remove it
    again = nnlib_cli(tmp_path, "data.shard_storage=disk", f"data.scratch_dir={scratch}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert leftovers(scratch) == []  # the next run on the same folder removed what the killed one left


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stage", "jobs"])
def test_a_failed_spark_run_leaves_no_shard_files(spark, tmp_path, mode):
    from test_engines import spark_engine

    config = disk_config(small_config("train.lr=1e30", "train.rounds=3"), tmp_path).model_copy(
        update={"engine": "spark"}
    )
    with pytest.raises(NnlibError, match="NaN|inf|diverge"):
        run(config, engine=spark_engine(mode), **QUIET)
    assert leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("where", ["connect", "classic"])
def test_a_parquet_source_with_held_out_rows_on_spark_jobs_from_disk_equals_memory(
    spark, connect, connect_server, digits_file, tmp_path, where
):
    """Spark's jobs mode, on Spark Connect too: a row-keyed source's shards (with the held-out rows the mappers
    score) kept on disk and found again by whichever Python worker a round's task lands on."""
    from test_spark_connect import jobs_engine

    config = small_config(
        "mappers=3",
        f"data.source={digits_file}",
        "data.validation_fraction=0.1",
        "train.momentum=0.9",
        "train.rounds=3",
    )
    memory = run(config, **QUIET)
    engine = jobs_engine(where, connect_server, collect_held_out_mb=0)
    with on(where):
        on_disk = run(disk_config(config, tmp_path).model_copy(update={"engine": "spark"}), engine=engine, **QUIET)
    np.testing.assert_array_equal(on_disk.params, memory.params)
    for mine, theirs in zip(on_disk.rounds, memory.rounds, strict=True):
        assert (mine["test_accuracy"], mine["val_accuracy"]) == (theirs["test_accuracy"], theirs["val_accuracy"])
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------- a row-keyed shard written as it is built


def weighted_parquet(folder: Path, rows: int = 600, features: int = 6, files: int = 2, seed: int = 11) -> Path:
    """``files`` Parquet files of float64 features ``f0..``, an int ``label``, float ``t0``/``t1`` targets and
    weights ``w``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    t = x @ rng.normal(size=(features, 2))
    w = rng.uniform(0.1, 3.0, rows)
    folder.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(np.array_split(np.arange(rows), files)):
        columns = {f"f{i}": x[part, i] for i in range(features)}
        pq.write_table(
            pa.table({**columns, "label": y[part], "t0": t[part, 0], "t1": t[part, 1], "w": w[part]}),
            folder / f"part-{k}.parquet",
            row_group_size=97,
        )  # many small blocks per shard
    return folder


PARQUET_CASES = {
    "plain": ("data.drop_columns=[t0,t1,w]",),
    "held-out scored": (
        "data.drop_columns=[t0,t1,w]",
        "data.validation_fraction=0.2",
        "data.partition=contiguous",
        "combine=gradient",
        "train.momentum=0.9",
    ),
}


@pytest.mark.parametrize("case", PARQUET_CASES)
def test_a_parquet_shard_written_as_it_is_built_equals_memory_bit_for_bit(tmp_path, monkeypatch, case):
    import nnlib.data.shard_files

    monkeypatch.setattr(nnlib.data.shard_files, "BUFFER_BYTES", 0)  # every row read from the file
    built = []
    keep = ShardStore.keep
    monkeypatch.setattr(ShardStore, "keep", lambda self, shards: built.extend(shards) or keep(self, shards))
    config = small_config(f"data.source={weighted_parquet(tmp_path / 'data')}", *PARQUET_CASES[case])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    memory = run(config, **QUIET)
    disk = run(disk_config(config, scratch), **QUIET)
    np.testing.assert_array_equal(disk.params, memory.params)
    assert [r["train_loss"] for r in disk.rounds] == [r["train_loss"] for r in memory.rounds]
    assert len(built) == 3 and all(isinstance(s.x, DiskArray) and s.x.built_in for s in built)  # never in memory
    assert leftovers(scratch) == []


SPARK_PARQUET_CASES = {
    "weights": ("data.weight_column=w", "data.drop_columns=[t0,t1]", "combine=gradient", "train.momentum=0.9"),
    "regression weights": (
        "model.task=regression",
        "data.label_columns=[t0,t1]",
        "data.weight_column=w",
        "data.drop_columns=[label]",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", SPARK_PARQUET_CASES)
def test_a_parquet_shard_built_on_disk_in_the_spark_stage_equals_memory(spark, tmp_path, case):
    """Weights and targets are read row by row from a URI (Spark's executors): each shard is written to the
    executor's scratch folder as its shuffled blocks arrive, and trains to the same bits as in memory."""
    from test_engines import spark_engine

    source = weighted_parquet(tmp_path / "data")
    config = small_config(f"data.source=file://{source}", "engine=spark", *SPARK_PARQUET_CASES[case])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    memory = run(config, engine=spark_engine("stage"), **QUIET)
    disk = run(disk_config(config, scratch), engine=spark_engine("stage"), **QUIET)
    np.testing.assert_array_equal(disk.params, memory.params)
    assert leftovers(scratch) == []


def test_a_built_shard_has_the_bits_of_memory_and_its_folder_goes_with_it(tmp_path):
    from nnlib.data.dataset import ShardSource
    from nnlib.driver import prepare

    source = weighted_parquet(tmp_path / "data")
    config = small_config(f"data.source={source}", "data.drop_columns=[t0,t1,w]")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rows = prepare(config, warn=lambda _msg: None).data.rows
    assert rows is not None
    memory = ShardSource.of_run(config, rows).build([0, 1, 2])
    on_disk = ShardSource.of_run(disk_config(config, scratch), rows).build([0, 1, 2])
    for m, d in zip(memory, on_disk, strict=True):
        assert m.w is None and d.w is None
        for a, b in ((m.x, d.x), (m.y, d.y)):
            assert isinstance(b, DiskArray)
            np.testing.assert_array_equal(np.asarray(b), a)
            assert np.asarray(b).dtype == a.dtype
    assert len(leftovers(scratch)) == 3  # one build folder a shard, until the shard is let go
    del on_disk, d, b
    import gc

    gc.collect()
    assert leftovers(scratch) == []


def test_a_write_that_fails_while_a_parquet_shard_is_built_is_one_error_and_leaves_nothing(tmp_path):
    # a file size limit makes a write fail as a full disk would, while the shard's rows arrive
    source = weighted_parquet(tmp_path / "data", rows=4000)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code = f"""
import resource, signal
from nnlib.config import DataConfig
from nnlib.data.dataset import ShardSource, load_dataset
from nnlib.errors import DataError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
data = DataConfig(source={str(source)!r}, drop_columns=["t0", "t1", "w"], shard_storage="disk",
                  scratch_dir={str(scratch)!r})
rows = load_dataset(data, 0, mappers=1).rows
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    ShardSource(data, 0, 1, rows).build([0])
except DataError as exc:
    print(exc)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.startswith(
        f"data.scratch_dir: {scratch} could not be written to (File too large) (writing shard 0, 0.1 MiB); "
    ), proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert leftovers(scratch) == []
