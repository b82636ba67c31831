"""The torch backend's fast round against its definition: torch.optim step by step, and loss_and_grad + optimizer.step.

The fast loop (:meth:`nnlib.core.torch_mlp.TorchModel.train_steps`) trains on
one flat tensor over the numpy vector with an in-place flat optimizer; here it
must equal a hand-written torch loop (separate parameter tensors,
``torch.optim.SGD/Adam/AdamW``) and nnlib's own step-by-step loop on the same
batches, to float32 tolerance, and every engine must equal the local one bit
for bit with it.
"""

import numpy as np
import pytest
from conftest import needs_torch, small_config

from nnlib.core.cnn import ConvSpec
from nnlib.core.mlp import ModelSpec
from nnlib.core.optim import SGD, Adam
from nnlib.core.params import LayerSpec, Layout, init_params, unpack
from nnlib.core.train import LocalSchedule, batch_indices, local_sgd
from nnlib.driver import run

pytestmark = needs_torch
QUIET = dict(log=lambda _msg: None)

RULES = {  # ours, and torch.optim's class name and arguments
    "sgd": (SGD(), ("SGD", {})),
    "momentum-nesterov-decay": (SGD(0.9, True, 0.01), ("SGD", dict(momentum=0.9, nesterov=True, weight_decay=0.01))),
    "adam-decay": (Adam(weight_decay=0.01), ("Adam", dict(weight_decay=0.01))),
    "adamw": (Adam(0.8, 0.99, 1e-6, 0.05, True), ("AdamW", dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05))),
}
SPECS = {
    "mlp": ModelSpec(LayerSpec((12, 9, 4)), "tanh"),
    "cnn": ModelSpec(ConvSpec((2, 7, 6), (3, 4), 3, 4), "relu"),
}


def _problem(spec, n=70):
    rng = np.random.default_rng(4)
    n_in = spec.layers.sizes[0] if isinstance(spec.layers, LayerSpec) else int(np.prod(spec.layers.image_shape))
    return rng.normal(size=(n, n_in)).astype(np.float32), rng.integers(0, 4, n)


def reference_logits(spec, arrays, x):
    """The network written out with torch functions on separate tensors (the definition, not nnlib's module)."""
    import torch.nn.functional as F

    if isinstance(spec.layers, ConvSpec):
        conv = spec.layers
        h = x.reshape(-1, *conv.image_shape)
        for i in range(len(conv.channels)):
            h = F.max_pool2d(F.relu(F.conv2d(h, arrays[2 * i], arrays[2 * i + 1], padding=conv.kernel // 2)), 2)
        return h.flatten(1) @ arrays[-2] + arrays[-1]
    h = x
    for i in range(len(arrays) // 2):
        h = h @ arrays[2 * i] + arrays[2 * i + 1]
        if i < len(arrays) // 2 - 1:
            h = h.tanh()
    return h


def torch_optim_round(spec, rule, w0, x, y, batches, lr):
    """One round by hand: ``torch.optim.<rule>`` on separate parameter tensors; the weights and the optimizer."""
    import torch
    import torch.nn.functional as F

    name, kwargs = rule
    params = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in unpack(w0, spec.layers)]
    opt = getattr(torch.optim, name)(params, lr, **kwargs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for idx in batches:
        opt.zero_grad()
        F.cross_entropy(reference_logits(spec, params, xt[idx]), yt[idx]).backward()
        opt.step()
    return np.concatenate([p.detach().numpy().ravel() for p in params]), opt, params


@pytest.mark.parametrize("model", SPECS)
@pytest.mark.parametrize("rule", RULES)
def test_a_torch_round_equals_torch_optim_on_the_same_batches(model, rule):
    from nnlib.core.backends import get_backend

    spec, (ours, theirs) = SPECS[model], RULES[rule]
    x, y = _problem(spec)
    w0 = init_params(spec.layers, 1)
    schedule = LocalSchedule(batch_size=8, local_epochs=2)
    update = local_sgd(
        get_backend("torch", spec), w0, ours.init_state(w0), ours, x, y, schedule, 0.05, np.random.default_rng(9)
    )
    batches = batch_indices(len(y), schedule, np.random.default_rng(9))  # the same rng: the same order
    expected, opt, params = torch_optim_round(spec, theirs, w0, x, y, batches, 0.05)
    assert update.steps == len(batches) == 18
    assert np.abs(update.params - w0).max() > 1e-3  # it trained
    np.testing.assert_allclose(update.params, expected, rtol=1e-5, atol=2e-6)
    # the state travels in nnlib's layout: momentum, or Adam's (m, v, step count) blocks
    state = [opt.state[p] for p in params]
    if isinstance(ours, SGD) and ours.momentum:
        np.testing.assert_allclose(
            update.opt_state,
            np.concatenate([s["momentum_buffer"].numpy().ravel() for s in state]),
            rtol=1e-5,
            atol=1e-6,
        )
    if isinstance(ours, Adam):
        m, v, t = update.opt_state.reshape(3, -1)
        np.testing.assert_allclose(m, np.concatenate([s["exp_avg"].numpy().ravel() for s in state]), atol=1e-6)
        np.testing.assert_allclose(
            v, np.concatenate([s["exp_avg_sq"].numpy().ravel() for s in state]), rtol=1e-5, atol=1e-9
        )
        assert set(t) == {18.0}


class _StepByStep:
    """A backend without ``train_steps``: local_sgd then runs its definition, loss_and_grad and optimizer.step."""

    def __init__(self, backend):
        self.loss_and_grad = backend.loss_and_grad


@pytest.mark.parametrize("case", ["momentum-l2-fedprox", "adam-uneven-counts", "adamw-scaled-output", "cnn-nesterov"])
def test_the_fast_round_equals_the_step_by_step_round(case):
    from nnlib.core.backends import get_backend

    layers = LayerSpec((12, 9, 4))
    spec, optimizer, mu = ModelSpec(layers, "relu", "cross_entropy", l2=0.02), SGD(0.9), 0.3
    if case == "adam-uneven-counts":
        spec, optimizer, mu = ModelSpec(layers, "sigmoid", "squared"), Adam(weight_decay=0.01), 0.0
    elif case == "adamw-scaled-output":
        spec, optimizer, mu = ModelSpec(layers, "tanh", output_scale=2.0), Adam(decoupled=True, weight_decay=0.1), 0.0
    elif case == "cnn-nesterov":
        spec, optimizer, mu = ModelSpec(SPECS["cnn"].layers, "relu", l2=0.01), SGD(0.5, True, 0.01), 0.1
    x, y = _problem(spec)
    w0 = init_params(spec.layers, 2)
    state = optimizer.init_state(w0)
    if isinstance(optimizer, Adam):  # a state from earlier rounds; one set of entries has its own step count
        rng = np.random.default_rng(0)
        m, v, t = state.reshape(3, -1)
        m[:], v[:], t[:] = rng.normal(0, 0.01, m.size), rng.uniform(0, 1e-4, v.size), 3
        if case == "adam-uneven-counts":
            t[:40] = 7
    backend = get_backend("torch", spec)
    args = (optimizer, x, y, LocalSchedule(batch_size=16, local_epochs=2), 0.05)
    fast = local_sgd(backend, w0, state, *args, np.random.default_rng(3), proximal_mu=mu)
    slow = local_sgd(_StepByStep(backend), w0, state, *args, np.random.default_rng(3), proximal_mu=mu)
    assert np.abs(fast.params - w0).max() > 1e-3
    np.testing.assert_allclose(fast.params, slow.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.opt_state, slow.opt_state, rtol=1e-5, atol=1e-7)
    assert fast.train_loss == pytest.approx(slow.train_loss, rel=1e-6)
    if case == "adam-uneven-counts":
        assert set(fast.opt_state.reshape(3, -1)[2]) == {3.0 + 10, 7.0 + 10}
    assert np.array_equal(w0, init_params(spec.layers, 2))  # the caller's vector is not touched


def test_the_flat_vector_is_the_modules_parameters_and_its_gradient_lands_in_one_flat_tensor():
    import torch

    from nnlib.core.backends import get_backend

    spec = SPECS["cnn"]
    backend = get_backend("torch", spec)
    w = init_params(spec.layers, 0)
    flat, grad = torch.from_numpy(w), torch.zeros(w.size)
    module = backend.bind(flat, grad)
    for p, (start, stop, shape) in zip(module.parameters(), spec.layers.offsets):
        assert p.data_ptr() == flat.data_ptr() + 4 * start and tuple(p.shape) == shape
    x, y = _problem(spec, n=5)
    z = module(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(z, torch.from_numpy(y)).backward()
    np.testing.assert_allclose(grad.numpy(), backend.loss_and_grad(w, x, y)[1], rtol=1e-5, atol=1e-7)
    w[spec.layers.offsets[-1][0] :] += 1.0  # the last bias, through numpy: the module sees it
    np.testing.assert_allclose(module(torch.from_numpy(x)).detach().numpy(), z.detach().numpy() + 1.0, atol=1e-5)


class _NormLayout(Layout):
    """Linear(5, 4) as (out, in), BatchNorm1d(4)'s weight and bias, then its running mean and variance."""

    def shapes(self):
        return [(4, 5), (4,), (4,), (4,), (4,), (4,)]


def test_any_module_trains_on_the_flat_vector_its_float_buffers_travel_with_it():
    import torch
    from torch import nn

    from nnlib.core.torch_mlp import TorchModel

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4))

    class Normed(TorchModel):
        def make_module(self):
            return make()

    layout = _NormLayout()
    backend = Normed(ModelSpec(layout))
    reference = make()
    w0 = np.concatenate(
        [
            t.detach().numpy().ravel()
            for t in [*reference.parameters(), reference[1].running_mean, reference[1].running_var]
        ]
    ).astype(np.float32)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 5)).astype(np.float32), rng.integers(0, 4, 40)
    batches = batch_indices(40, LocalSchedule(8), np.random.default_rng(2))
    w = w0.copy()
    backend.train_steps(w, SGD(0.9).init_state(w), SGD(0.9), x, y, batches, 0.1)
    opt = torch.optim.SGD(reference.parameters(), 0.1, momentum=0.9)
    for idx in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(reference(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])).backward()
        opt.step()
    expected = np.concatenate(
        [
            t.detach().numpy().ravel()
            for t in [*reference.parameters(), reference[1].running_mean, reference[1].running_var]
        ]
    )
    assert np.abs(w[-8:] - w0[-8:]).max() > 1e-2  # the running statistics moved, in the flat vector
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
    reference.eval()  # scoring uses eval mode: the running statistics, not the batch's
    np.testing.assert_allclose(
        backend.predict_logits(w, x).numpy(), reference(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match=r"the module's parameters and floating buffers have shapes"):

        class Wrong(TorchModel):
            def make_module(self):
                return nn.Linear(5, 3)

        Wrong(ModelSpec(layout))


def test_torch_backend_runs_give_the_same_weights_every_time_and_learn():
    config = small_config("model.backend=torch", "train.optimizer=adam", "train.lr=0.01", "train.rounds=3")
    first, second = run(config, **QUIET), run(config, **QUIET)
    np.testing.assert_array_equal(first.params, second.params)
    assert first.rounds[-1]["test_accuracy"] > 0.8


MPI_CASES = [
    (
        "--set",
        "model.backend=torch",
        "--set",
        "mappers=2",
        "--set",
        "model.type=cnn",
        "--set",
        "model.channels=[4,6]",
        "--set",
        "train.momentum=0.9",
    ),
    (
        "--set",
        "model.backend=torch",
        "--set",
        "mappers=2",
        "--set",
        "combine=ist",
        "--set",
        "model.hidden=[17,9]",
        "--set",
        "train.optimizer=adam",
        "--set",
        "train.lr=0.01",
    ),
    (
        "--set",
        "model.backend=torch",
        "--set",
        "mappers=2",
        "--set",
        "train.proximal_mu=0.1",
        "--set",
        "train.optimizer=adamw",
        "--set",
        "train.weight_decay=0.01",
        "--set",
        "train.lr=0.01",
    ),
]


@pytest.mark.slow  # mpiexec
@pytest.mark.parametrize("sets", MPI_CASES, ids=["cnn-momentum", "ist-adam", "fedprox-adamw"])
def test_mpi_equals_the_local_engine_on_the_torch_backend(tmp_path, sets):
    from conftest import saved_params
    from test_mpi import local_params, mpirun

    proc, out = mpirun(tmp_path, 2, *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(saved_params(out), local_params(*sets))


@pytest.mark.slow  # a JVM
def test_spark_stage_equals_the_local_engine_on_the_torch_backend(spark):
    from nnlib.engines.spark.engine import SparkStageEngine
    from nnlib.engines.spark.session import SessionSettings

    config = small_config(
        "mappers=4",
        "model.backend=torch",
        "model.type=cnn",
        "model.channels=[4,6]",
        "model.kernel=3",
        "train.optimizer=adamw",
        "train.weight_decay=0.01",
        "train.lr=0.01",
    )
    local = run(config, **QUIET)
    on_spark = run(
        config.model_copy(update={"engine": "spark"}), engine=SparkStageEngine(SessionSettings("local[4]")), **QUIET
    )
    np.testing.assert_array_equal(on_spark.params, local.params)
