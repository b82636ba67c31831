"""The mrjob engine with mrjob's real inline and local runners, against the local engine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_mrjob, saved_params, small_config

from nnlib.cli import main
from nnlib.config import load_config
from nnlib.driver import run
from nnlib.engines.mrjob.engine import MrjobEngine
from nnlib.engines.mrjob.wire import decode_array

ROOT = Path(__file__).resolve().parent.parent
QUIET = dict(log=lambda _msg: None)


@pytest.mark.parametrize(
    "sets",
    [
        ("combine=average",),
        ("combine=ist",),
        ("combine=split",),
        ("combine=average", "train.optimizer=adam", "train.lr=0.01"),
        ("model.type=cnn", "model.channels=[4]", "model.kernel=3"),
        ("data.partition=label_skew", "train.proximal_mu=0.1", "server.momentum=0.5"),
    ],
    ids=["average", "ist", "split", "adam", "cnn", "fedprox"],
)
@needs_mrjob
@pytest.mark.parametrize("runner", ["inline", pytest.param("local", marks=pytest.mark.slow)])
def test_mrjob_equals_local_engine(runner, sets):
    config = small_config("mappers=3", "train.rounds=2", "train.momentum=0.5", *sets)
    reference = run(config, **QUIET)
    mr_config = config.model_copy(update={"engine": "mrjob"})
    engine = MrjobEngine(mr_config, runner)
    result = run(mr_config, engine=engine, **QUIET)
    # bit for bit: every map task trains as the local engine's mapper does, and the reducer sums in mapper order
    np.testing.assert_array_equal(result.params, reference.params)
    assert engine.map_tasks == [3, 3]  # exactly one map task per shard, every round
    assert len(result.mapper_rows) == 6
    assert [r["n_samples"] for r in result.mapper_rows] == [r["n_samples"] for r in reference.mapper_rows]
    if runner == "local":  # map tasks are separate processes
        assert len({r["pid"] for r in result.mapper_rows}) == 6 and os.getpid() not in {
            r["pid"] for r in result.mapper_rows
        }


@needs_mrjob
@pytest.mark.slow
def test_cli_mrjob_run_writes_the_usual_outputs(tmp_path):
    out = tmp_path / "run"
    args = [
        "run",
        str(ROOT / "conf/default.yaml"),
        "--set",
        "engine=mrjob",
        "--set",
        "mappers=3",
        "--set",
        "train.rounds=2",
        "--set",
        "mrjob.runner=local",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    local = run(load_config(ROOT / "conf/default.yaml", ["engine=local", "mappers=3", "train.rounds=2"]), **QUIET)
    assert summary["engine"] == "mrjob" and summary["final_test_accuracy"] == local.summary["final_test_accuracy"]
    np.testing.assert_array_equal(saved_params(out), local.params)
    assert len((out / "mapper_times.csv").read_text().splitlines()) == 1 + 6
    rounds = (out / "rounds.csv").read_text().splitlines()
    assert len(rounds) == 3 and "overhead_seconds" in rounds[0]


def test_bad_runner_is_a_one_line_error(tmp_path, capsys):
    assert main(["run", "--set", "engine=mrjob", "--set", "mrjob.runner=yarn", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config key 'mrjob.runner': Input should be 'inline', 'local', 'hadoop' or 'emr', got 'yarn'" in err
    assert err.count("\n") == 1


@needs_mrjob
@pytest.mark.slow
def test_job_file_runs_on_its_own_for_one_round(tmp_path):
    shards = tmp_path / "shards.txt"
    shards.write_text("0\n1\n2\n")
    conf = tmp_path / "conf.yaml"
    conf.write_text("mappers: 3\nmodel:\n  hidden: [16]\nseed: 7\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "jobs/mr_model_avg.py", "-r", "local", "--nnlib-conf", str(conf), str(shards)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [line.split("\t", 1) for line in proc.stdout.splitlines()]
    combined = next(json.loads(v) for k, v in records if json.loads(k) == "combined")
    mappers = [json.loads(v) for k, v in records if json.loads(k) == "mapper"]
    assert [m["mapper"] for m in mappers] == [0, 1, 2]

    one_round = run(load_config(conf, ["train.rounds=1"]), **QUIET)
    np.testing.assert_array_equal(decode_array(combined["params"]), one_round.params)


@pytest.mark.slow
def test_unimportable_mrjob_names_the_python_version(tmp_path):
    code = (
        "import sys; sys.modules['mrjob'] = None; from nnlib.cli import main; "
        f"sys.exit(main(['run', '--set', 'engine=mrjob', '--out', {str(tmp_path / 'o')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    version = ".".join(map(str, sys.version_info[:3]))
    assert f"cannot be imported on Python {version}" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_a_payload_file_carries_every_field_of_the_model_spec(tmp_path):
    """mrjob's tasks read the round's payload from an .npz file: every ModelSpec field (a regression run's task
    and Huber threshold among them) comes back as it was sent, each set away from its default."""
    import dataclasses

    from nnlib.data.dataset import run_dataset
    from nnlib.engines.mrjob.wire import payload_from_file, payload_to_bytes
    from nnlib.rounds.payload import first_payload

    config = small_config()
    payload = first_payload(config, run_dataset(config))
    model = dataclasses.replace(
        payload.model, activation="tanh", loss="huber", l2=0.25, output_scale=2.0, task="regression", huber_delta=0.5
    )
    defaults = {f.name: f.default for f in dataclasses.fields(model) if f.name != "layers"}
    assert all(getattr(model, name) != value for name, value in defaults.items())  # every field is tested
    path = tmp_path / "payload.npz"
    path.write_bytes(payload_to_bytes(dataclasses.replace(payload, model=model)))
    assert payload_from_file(path).model == model


def test_a_mapper_result_line_carries_every_field():
    """A map task's result travels as a JSON line: its stats, weights, optimizer state and the shard's total
    sample weight (in its stats: combine=weighted under data.weight_column) come back as they were sent."""
    import dataclasses

    from nnlib.engines.mrjob.wire import decode_result, encode_result
    from nnlib.rounds.payload import MapperResult, MapperStats

    stats = MapperStats(**{f.name: 1 for f in dataclasses.fields(MapperStats)})
    stats = dataclasses.replace(stats, weight_sum=12.5)
    sent = MapperResult(stats, np.arange(4, dtype=np.float32), np.ones(4, np.float32))
    back = decode_result(json.loads(json.dumps(encode_result(sent))))
    assert back.stats == sent.stats and back.stats.combine_size == 12.5
    np.testing.assert_array_equal(back.params, sent.params)
    np.testing.assert_array_equal(back.opt_state, sent.opt_state)
