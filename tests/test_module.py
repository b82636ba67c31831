"""model.type: module, a user's torch.nn.Module: engines bit for bit, a torch.optim oracle, BatchNorm's running
statistics averaged, resume, the model file, devices and one-line errors."""

import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import saved_params, small_config

torch = pytest.importorskip("torch")

from nnlib.config import load_config  # noqa: E402
from nnlib.core.train import LocalSchedule, batch_indices  # noqa: E402
from nnlib.data.dataset import ShardSource, load_dataset  # noqa: E402
from nnlib.driver import prepare, run  # noqa: E402
from nnlib.errors import ConfigError  # noqa: E402
from nnlib.engines.local import InProcessCollective  # noqa: E402
from nnlib.rounds.mapper import shard_rng, sync_batches, sync_shards, train_shard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
QUIET = dict(log=lambda _msg: None, warn=lambda _msg: None)
MODULE = ["model.type=module", "model.module=user_models.tiny:make"]


def module_config(*overrides: str):
    return small_config(*MODULE, *overrides)


def cli(*args, cwd=ROOT, env=None):
    return subprocess.run(
        [sys.executable, "-m", "nnlib", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_the_flat_vector_is_parameters_then_floating_buffers():
    config = module_config()
    setup = prepare(config)
    layers = setup.first.model.layers
    assert layers.names() == [
        "1.weight",
        "1.bias",
        "2.weight",
        "2.bias",
        "4.weight",
        "4.bias",
        "2.running_mean",
        "2.running_var",
    ]  # no 2.num_batches_tracked (an integer)
    assert layers.n_params == 64 * 16 + 16 + 16 + 16 + 16 * 10 + 10 + 16 + 16
    torch.manual_seed(config.seed)
    from user_models.tiny import make

    module = make()
    expected = [t.detach().numpy().ravel() for t in module.parameters()] + [
        module[2].running_mean.numpy(),
        module[2].running_var.numpy(),
    ]
    np.testing.assert_array_equal(setup.first.params, np.concatenate(expected))
    mask = layers.weight_mask()
    assert mask.sum() == 64 * 16 + 16 * 10  # L2 on the two weight matrices only, not BatchNorm's or the buffers


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_mapper_equals_a_torch_optim_sgd_loop(momentum):
    config = module_config("mappers=1", "train.rounds=2", "train.local_epochs=2", f"train.momentum={momentum}")
    result = run(config, **QUIET)

    # the oracle: the same module, data order and update rule, written as a plain torch training loop
    from user_models.tiny import make

    data = load_dataset(config.data, config.seed)
    torch.manual_seed(config.seed)
    module = make().train()
    opt = torch.optim.SGD(module.parameters(), lr=config.train.lr, momentum=momentum)
    x, y = torch.from_numpy(data.x_train).reshape(-1, 1, 8, 8), torch.from_numpy(data.y_train)
    schedule = LocalSchedule(config.train.batch_size, config.train.local_epochs)
    for r in range(config.train.rounds):
        for idx in batch_indices(len(data.y_train), schedule, shard_rng(config.seed, r, 0)):
            i = torch.from_numpy(idx)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(module(x[i]), y[i]).backward()
            opt.step()
    oracle = np.concatenate(
        [t.detach().numpy().ravel() for t in module.parameters()]
        + [module[2].running_mean.numpy(), module[2].running_var.numpy()]
    )
    # float tolerance: torch.optim's momentum step rounds lr * v inside one fused add, nnlib's apart, and 180
    # steps carry the last-bit differences along
    np.testing.assert_allclose(result.params, oracle, rtol=0, atol=2e-6 if momentum == 0 else 3e-4)
    assert not np.array_equal(oracle, prepare(config).first.params)


def test_batch_norm_running_statistics_are_averaged_over_the_mappers():
    config = module_config("mappers=2", "train.rounds=1")
    setup = prepare(config)
    shards = ShardSource(config.data, config.seed, config.mappers).build([0, 1])
    mine = [train_shard(s, setup.first).params for s in shards]
    result = run(config, **QUIET)
    n = setup.first.model.layers.n_weights
    b0, b1 = mine[0][n:], mine[1][n:]
    assert not np.array_equal(b0, b1) and not np.array_equal(b0, setup.first.params[n:])
    # closed form: the combined running mean and variance are the two mappers' halves added
    np.testing.assert_allclose(result.params[n:], (b0.astype(np.float64) + b1) / 2, rtol=0, atol=1e-7)
    np.testing.assert_allclose(result.params[:n], (mine[0][:n].astype(np.float64) + mine[1][:n]) / 2, rtol=0, atol=1e-7)


def test_a_synchronous_round_equals_torch_optim_on_shared_weights_with_each_mappers_own_statistics():
    # 2 mappers, momentum and weight decay: the decay moves the weights, never BatchNorm's statistics
    config = module_config(
        "mappers=2", "combine=gradient", "train.rounds=1", "train.momentum=0.9", "train.weight_decay=0.01"
    )
    payload = prepare(config).first
    shards = ShardSource(config.data, config.seed, config.mappers).build([0, 1])
    combined, _ = sync_shards(shards, payload, InProcessCollective())

    # the oracle: two copies of the module; every step both take the shared weights, each runs a training
    # forward on its own batch (updating its own running statistics), and torch.optim.SGD steps the weights on
    # the batch-size-weighted mean gradient; at the end the statistics are averaged by shard size
    from user_models.tiny import make

    torch.manual_seed(config.seed)
    nets = [make().train(), make().train()]
    nets[1].load_state_dict(nets[0].state_dict())
    shared = list(nets[0].parameters())
    opt = torch.optim.SGD(shared, lr=config.train.lr, momentum=0.9, weight_decay=0.01)
    plan = payload.plan
    batches = [
        sync_batches(
            s.n_samples,
            plan.local.batch_size,
            len(plan.sync_lrs),
            plan.steps_per_epoch,
            shard_rng(config.seed, 0, s.index),
        )
        for s in shards
    ]
    for step, lr in enumerate(plan.sync_lrs):
        total = sum(len(b[step]) for b in batches)
        grads = []
        for net, shard, b in zip(nets, shards, batches):
            with torch.no_grad():
                for mine, weight in zip(net.parameters(), shared):
                    mine.copy_(weight)
            if len(b[step]):
                loss = torch.nn.functional.cross_entropy(
                    net(torch.from_numpy(shard.x[b[step]])), torch.from_numpy(shard.y[b[step]])
                )
                grads.append([g * (len(b[step]) / total) for g in torch.autograd.grad(loss, list(net.parameters()))])
        for weight, *parts in zip(shared, *grads):
            weight.grad = sum(parts)
        opt.param_groups[0]["lr"] = lr
        opt.step()
    n = sum(s.n_samples for s in shards)
    statistics = [
        sum(getattr(net[2], name).double() * (s.n_samples / n) for net, s in zip(nets, shards)).numpy()
        for name in ("running_mean", "running_var")
    ]
    oracle = np.concatenate([t.detach().numpy().ravel() for t in shared] + statistics)
    assert not np.array_equal(nets[0][2].running_mean, nets[1][2].running_mean)
    assert np.abs(combined.params - payload.params)[payload.model.layers.n_weights :].min() > 0  # every one moved
    np.testing.assert_allclose(combined.params, oracle, rtol=0, atol=1e-5)  # measured 3.6e-7


def test_one_mapper_synchronous_rounds_of_a_batchnorm_module_equal_local_rounds():
    base = ("mappers=1", "train.rounds=2", "train.momentum=0.5", "train.weight_decay=0.01")
    averaged = run(module_config(*base, "combine=average"), **QUIET)
    synced = run(module_config(*base, "combine=gradient"), **QUIET)
    n = prepare(module_config(*base)).first.model.layers.n_weights
    assert synced.params.size > n
    # torch's fused update in the local round against numpy's steps: last-bit differences, carried along
    np.testing.assert_allclose(synced.params, averaged.params, rtol=0, atol=1e-5)  # measured 2.4e-7
    assert synced.summary["final_test_accuracy"] == pytest.approx(averaged.summary["final_test_accuracy"], abs=0.01)


@pytest.mark.parametrize("rule", ["sum", "sum_updates", "weighted"])
def test_the_sums_add_the_weights_and_average_the_statistics(rule):
    config = module_config("mappers=3", "train.rounds=1", f"combine={rule}", "data.partition=quantity_skew")
    setup = prepare(config)
    shards = ShardSource(config.data, config.seed, config.mappers).build([0, 1, 2])
    n_samples = np.array([s.n_samples for s in shards], np.float64)
    assert len(set(n_samples)) == 3  # the weighted mean differs from the plain one
    mine = np.array([train_shard(s, setup.first).params.astype(np.float64) for s in shards])
    result = run(config, **QUIET)
    n, start = setup.first.model.layers.n_weights, setup.first.params.astype(np.float64)
    weights = {
        "sum": mine.sum(axis=0),
        "sum_updates": start + (mine - start).sum(axis=0),
        "weighted": n_samples @ mine / n_samples.sum(),
    }[rule]
    statistics = n_samples @ mine / n_samples.sum() if rule == "weighted" else mine.mean(axis=0)
    np.testing.assert_allclose(result.params[:n], weights[:n], rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.params[n:], statistics[n:], rtol=0, atol=1e-6)


def test_the_server_step_moves_the_weights_and_leaves_the_averaged_statistics():
    config = module_config("mappers=2", "train.rounds=1", "server.lr=1.5")
    setup = prepare(config)
    shards = ShardSource(config.data, config.seed, config.mappers).build([0, 1])
    mine = [train_shard(s, setup.first).params.astype(np.float64) for s in shards]
    result = run(config, **QUIET)
    n, start = setup.first.model.layers.n_weights, setup.first.params.astype(np.float64)
    average = (mine[0] + mine[1]) / 2
    # FedAvg's server step with lr 1.5 on the weights: start - 1.5 * (start - average); the statistics averaged
    np.testing.assert_allclose(result.params[:n], start[:n] - 1.5 * (start[:n] - average[:n]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.params[n:], average[n:], rtol=0, atol=1e-7)


def test_mrjob_inline_equals_the_local_engine():
    pytest.importorskip("mrjob")
    local = run(module_config(), **QUIET).params
    inline = run(module_config("engine=mrjob", "mrjob.runner=inline"), **QUIET).params
    np.testing.assert_array_equal(inline, local)


@pytest.mark.slow
def test_spark_stage_mrjob_local_and_mpi_equal_the_local_engine(tmp_path):
    sets = [s for item in MODULE + ["mappers=2", "train.rounds=2"] for s in ("--set", item)]
    env = dict(
        os.environ,
        PYTHONPATH=str(TESTS),
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        TMPDIR=str(tmp_path),
    )
    local = run(load_config(None, [s for s in sets if s != "--set"]), **QUIET).params
    for engine in (
        ["engine=spark", "spark.master=local[2]"],
        ["engine=mrjob", "mrjob.runner=local"],
        ["engine=mpi", "mpi.args=[--oversubscribe]"],
    ):
        out = tmp_path / engine[0]
        proc = cli("run", *sets, *[s for e in engine for s in ("--set", e)], "--out", str(out), "--quiet", env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        np.testing.assert_array_equal(saved_params(out), local, err_msg=engine[0])


@pytest.mark.slow
def test_a_synchronous_round_of_a_batchnorm_module_on_spark_and_mpi_equals_the_local_engine(tmp_path):
    # a synchronous round, then an averaging one: the statistics' mean is one more collective call (the Spark
    # tasks' mesh, the Spark driver's hub, MPI's Allreduce), and every engine holds the same bits
    sets = [s for item in MODULE + ["mappers=2", "train.rounds=2", "train.sync_rounds=1"] for s in ("--set", item)]
    env = dict(
        os.environ,
        PYTHONPATH=str(TESTS),
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        TMPDIR=str(tmp_path),
    )
    local = run(load_config(None, [s for s in sets if s != "--set"]), **QUIET).params
    for engine in (
        ["engine=spark", "spark.master=local[2]"],
        ["engine=spark", "spark.master=local[2]", "spark.collective=driver"],
        ["engine=mpi", "mpi.args=[--oversubscribe]"],
    ):
        out = tmp_path / "-".join(engine).replace("/", "_")
        proc = cli("run", *sets, *[s for e in engine for s in ("--set", e)], "--out", str(out), "--quiet", env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        np.testing.assert_array_equal(saved_params(out), local, err_msg=" ".join(engine))


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full = run(module_config("train.rounds=3"), **QUIET).params
    proc = cli(
        "run",
        *[
            s
            for item in MODULE + ["train.rounds=2", "mappers=3", "train.local_epochs=1", "model.hidden=[16]", "seed=7"]
            for s in ("--set", item)
        ],
        "--out",
        str(tmp_path / "r"),
        "--quiet",
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not np.array_equal(saved_params(tmp_path / "r"), full)  # two rounds of three
    proc = cli(
        "run",
        "--resume",
        str(tmp_path / "r"),
        "--set",
        "train.rounds=3",
        "--quiet",
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(saved_params(tmp_path / "r"), full)


def test_model_file_round_trip_predict_and_torch_export(tmp_path):
    import nnlib
    from nnlib.model.export import export, load_torch

    config = module_config()
    result = run(config, **QUIET)
    from nnlib.model.file import write

    write(tmp_path / "model.npz", result.model)
    model = nnlib.load_model(tmp_path / "model.npz")
    assert model.header["architecture"]["module"] == "user_models.tiny:make"
    assert list(model.weights)[-2:] == ["2.running_mean", "2.running_var"]
    data = load_dataset(config.data, config.seed)
    from sklearn.datasets import load_digits

    digits = load_digits()
    proba = model.predict_proba(digits.data)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert model.score(digits.data, digits.target) > 0.8
    # the run's own test rows, standardised as the run did: the run's final accuracy to the bit
    from nnlib.core.backends import get_backend

    scorer = get_backend("torch", result.model and model.file.spec())
    assert scorer.evaluate(model.params, data.x_test, data.y_test)[1] == result.summary["final_test_accuracy"]
    export(model, "torch", tmp_path / "m.pt")
    module = load_torch(tmp_path / "m.pt")
    with torch.no_grad():
        got = module(torch.from_numpy(digits.data[:50].astype(np.float32))).numpy()
    np.testing.assert_allclose(got, proba[:50], atol=1e-5)
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert "2.running_mean" in saved["state_dict"]  # the module's own names
    pytest.importorskip("onnxruntime")
    import onnxruntime

    export(model, "onnx", tmp_path / "m.onnx")  # checked against nnlib's probabilities before it is written
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    probabilities, prediction = session.run(None, {"features": digits.data[:50].astype(np.float32)})
    np.testing.assert_allclose(probabilities, proba[:50], atol=1e-5)
    np.testing.assert_array_equal(prediction, model.predict(digits.data[:50]))


def test_a_submodule_named_meta_keeps_its_weights_in_the_model_file(tmp_path):
    import nnlib
    from nnlib.model.file import write

    result = run(small_config("model.type=module", "model.module=user_models.named:Meta", "train.rounds=1"), **QUIET)
    write(tmp_path / "model.npz", result.model)
    model = nnlib.load_model(tmp_path / "model.npz")
    assert list(model.weights) == ["meta.weight", "meta.bias", "head.weight", "head.bias"]
    np.testing.assert_array_equal(model.params, result.params)
    from nnlib.outputs import load_model

    assert list(load_model(tmp_path / "model.npz")) == list(model.weights)


def test_nnlib_predict_on_a_module_run(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    sets = [s for item in MODULE + ["train.rounds=1", "mappers=2"] for s in ("--set", item)]
    assert cli("run", *sets, "--out", str(tmp_path / "r"), "--quiet", env=env).returncode == 0
    proc = cli("predict", str(tmp_path / "r"), "digits", "--out", str(tmp_path / "p.csv"), env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 100


def test_a_missing_callable_names_the_closest_or_up_to_ten_of_the_modules_callables(monkeypatch):
    from nnlib.core.module_spec import import_callable

    def message(path):
        with pytest.raises(ConfigError) as missing:
            import_callable(path)
        return str(missing.value).split("; ", 1)[1]

    assert message("collections:ordereddict") == "did you mean 'OrderedDict'?"
    assert message("user_models.tiny:TinyNet") == "its classes and functions: make, not_a_module"
    # those defined in the module first, then what it imports (json's errors and codecs live in json.decoder)
    assert message("json:zzz") == (
        "its classes and functions: detect_encoding, dump, dumps, load, loads, "
        "JSONDecodeError, JSONDecoder, JSONEncoder"
    )
    many = types.ModuleType("many_models")
    for i in range(12):
        setattr(many, f"net{i:02d}", lambda: None)
    many.depth, many._private = 3, lambda: None
    monkeypatch.setitem(sys.modules, "many_models", many)
    assert message("many_models:zzz") == (
        "its classes and functions: " + ", ".join(f"net{i:02d}" for i in range(10)) + ", ... (12 in all)"
    )


@pytest.mark.parametrize(
    "sets, message",
    [
        (
            ["model.module=no_such_pkg.models:make"],
            "nnlib: error: model.module: cannot import 'no_such_pkg.models' (No module named 'no_such_pkg'); looked on "
            "sys.path, the working directory {cwd}: put its folder on PYTHONPATH (on Spark ship it with submit.sh "
            "--py-files)",
        ),
        (
            ["model.module=user_models.tiny:mak"],
            "nnlib: error: model.module: module user_models.tiny ({file}) has no attribute 'mak'; did you mean 'make'?",
        ),
        (
            ["model.module=user_models.tiny:TinyNet"],
            "nnlib: error: model.module: module user_models.tiny ({file}) has "
            "no attribute 'TinyNet'; its classes and functions: make, not_a_module",
        ),
        (
            ["model.module=user_models.tiny:not_a_module"],
            "nnlib: error: model.module: user_models.tiny:not_a_module returned a int, not a torch.nn.Module",
        ),
        (
            ["model.module=user_models.tiny:make", "combine=ist"],
            "nnlib: error: --set: combine=ist splits an MLP's hidden units and needs model.type=mlp, got model.type=module",
        ),
        (["model.module=user_models.tiny:make", "combine=split"], None),
        (
            ["model.module=user_models.tiny:make", "model.backend=numpy"],
            "nnlib: error: --set: model.type=module trains a torch.nn.Module and needs model.backend=torch (its default), "
            "got model.backend='numpy'",
        ),
        (
            ["model.module=user_models.tiny:make", "train.device=cuda"],
            "nnlib: error: train.device=cuda: this process sees no CUDA GPU",
        ),
        (
            ["model.module=user_models.named:Meta", "model.kwargs={stats: true}"],
            "nnlib: error: model.module: "
            "user_models.named:Meta has an array named 'meta.mean', a name the model file keeps for itself (meta.header, "
            "meta.mean, meta.std); rename that parameter, buffer or submodule",
        ),
        (
            ["model.module=user_models.tiny:make", "model.kwargs={n_classes: 3}"],
            "nnlib: error: model.module: "
            "user_models.tiny:make must map a (2, 1, 8, 8) batch to (2, 10) outputs (one per class), got (2, 3)",
        ),
    ],
)
def test_bad_module_settings_are_one_line_and_write_nothing(tmp_path, sets, message):
    if "cuda" in " ".join(sets) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "r"
    proc = cli(
        "run",
        "--set",
        "model.type=module",
        *[s for item in sets for s in ("--set", item)],
        "--out",
        str(out),
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    if message is None:
        assert lines[0].startswith("nnlib: error: ") and "model.type=module" in lines[0]
    elif "{cwd}" in message or "{file}" in message:
        assert lines[0] == message.format(cwd=ROOT, file=TESTS / "user_models" / "tiny.py")
    else:
        assert lines[0].startswith(message), lines[0]
    assert not out.exists()


def test_pick_device():
    from nnlib.core.torch_module import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda" and pick_device("cuda").type == "cuda"
    else:
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="^train.device=cuda: this process sees no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ConfigError, match="train.device must be one of cpu, cuda, auto, got 'tpu'"):
        pick_device("tpu")


@pytest.mark.parametrize(
    "overrides",
    [
        ("train.momentum=0.9",),
        ("train.optimizer=adamw", "train.lr=0.01", "model.l2=0.001"),
        ("combine=gradient", "train.momentum=0.5"),
    ],
    ids=["sgd", "adamw-l2", "sync"],
)
def test_training_on_a_device_copies_there_and_back_to_the_same_weights(overrides):
    """The device path (weights, state, shard and integer buffers copied to ``train_device()`` each round and
    back) on the one device here, the CPU: the same bits as training in place on the host arrays."""
    from nnlib.core.backends import get_backend

    config = module_config("mappers=2", "train.rounds=2", *overrides)
    in_place = run(config, **QUIET)
    backend = get_backend("torch", prepare(config).first.model)
    backend._device, backend._device_chosen = torch.device("cpu"), True  # copy to the CPU as to a GPU
    moves = []
    backend._place_other_buffers = lambda module, device: moves.append(device)
    try:
        copied = run(config, **QUIET)
    finally:
        backend._device_chosen = False
        del backend._place_other_buffers
    assert len(moves) >= 2 * 2 * 2  # to the device and back, every round, on both mappers
    np.testing.assert_array_equal(copied.params, in_place.params)
    assert [r["train_loss"] for r in copied.rounds] == pytest.approx(
        [r["train_loss"] for r in in_place.rounds], rel=1e-12
    )
