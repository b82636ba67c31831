"""The losses of both tasks, with sample weights: torch autograd as the oracle, closed forms, and duplication.

Prepare tiny hand-made arrays, execute the loss or one round of local
training, assert against an independent definition: the torch functions
(``F.cross_entropy``, ``F.mse_loss``, ``F.l1_loss``, ``F.huber_loss``) with
``reduction='none'`` and the weighted mean written out, or the same round on
a data set where a row of weight 2 is simply there twice.
"""

import numpy as np
import pytest
from conftest import needs_torch

from nnlib.core import losses, metrics
from nnlib.core.backends import get_backend
from nnlib.core.cnn import ConvSpec
from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.core.optim import SGD, Adam
from nnlib.core.params import LayerSpec, init_params
from nnlib.core.train import LocalSchedule, batch_weight_sums, local_sgd

CASES = [
    ("classification", "cross_entropy"),
    ("classification", "squared"),
    ("regression", "squared"),
    ("regression", "absolute"),
    ("regression", "huber"),
]
DELTA = 0.7


def _targets(task, m, k, rng, dtype=np.float64):
    if task == "classification":
        return rng.integers(0, k, m)
    y = rng.normal(scale=1.5, size=(m, k)).astype(dtype)
    return y[:, 0].copy() if k == 1 else y


def _oracle(task, name, z, y, w=None, weight_sum=None):
    """``(L, dL/dz)`` from torch's own loss functions and autograd, in float64."""
    import torch
    import torch.nn.functional as F

    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    if task == "classification":
        yt = torch.from_numpy(y)
        if name == "cross_entropy":
            per_row = F.cross_entropy(zt, yt, reduction="none")
        else:
            per_row = 0.5 * F.mse_loss(zt, F.one_hot(yt, z.shape[1]).double(), reduction="none").sum(1)
    else:
        yt = torch.tensor(y, dtype=torch.float64).reshape(z.shape)
        per_entry = {
            "squared": lambda: 0.5 * F.mse_loss(zt, yt, reduction="none"),
            "absolute": lambda: F.l1_loss(zt, yt, reduction="none"),
            "huber": lambda: F.huber_loss(zt, yt, reduction="none", delta=DELTA),
        }[name]()
        per_row = per_entry.sum(1)
    wt = torch.ones(len(z), dtype=torch.float64) if w is None else torch.tensor(w, dtype=torch.float64)
    loss = (per_row * wt).sum() / (wt.sum() if weight_sum is None else weight_sum)
    loss.backward()
    return float(loss.detach()), zt.grad.numpy()


@needs_torch
@pytest.mark.parametrize("weighted, weight_sum", [(False, None), (True, None), (True, 7.5)])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("task, name", CASES)
def test_numpy_losses_and_gradients_equal_torch_autograd(task, name, k, weighted, weight_sum):
    if task == "classification" and k == 1:
        k = 2  # a class id needs two classes at least
    rng = np.random.default_rng(k)
    m = 9
    z = rng.normal(scale=1.5, size=(m, k))
    y = _targets(task, m, k, rng)
    w = rng.uniform(0, 3, m) if weighted else None
    loss_fn = losses.loss_function(task, name, DELTA)
    loss, grad = loss_fn(z, y) if w is None else loss_fn(z, y, w, weight_sum)
    want_loss, want_grad = _oracle(task, name, z, y, w, weight_sum)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)
    if task == "regression" and name == "huber":  # both sides of the band are exercised
        r = np.abs(z - y.reshape(m, k))
        assert (r < DELTA).any() and (r > DELTA).any()


@needs_torch
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("task, name", CASES)
def test_the_torch_backends_loss_equals_the_oracle(task, name, weighted):
    import torch

    from nnlib.core.torch_mlp import data_loss

    rng = np.random.default_rng(3)
    z = rng.normal(size=(8, 3))
    y = _targets(task, 8, 3, rng)
    w = rng.uniform(0, 2, 8) if weighted else None
    zt = torch.tensor(z, requires_grad=True)
    loss = data_loss(name, zt, torch.from_numpy(y), None if w is None else torch.from_numpy(w), None, task, DELTA)
    loss.backward()
    want_loss, want_grad = _oracle(task, name, z, y, w)
    assert float(loss.detach()) == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(zt.grad.numpy(), want_grad, rtol=1e-12, atol=1e-15)


def _regression_problem(n=24, n_in=5, t=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_in)).astype(dtype)
    y = (x[:, :t] * 2 + rng.normal(scale=0.5, size=(n, t))).astype(dtype)
    return x, (y[:, 0].copy() if t == 1 else y), rng.uniform(0.2, 3, n).astype(dtype)


@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("name", ["squared", "absolute", "huber"])
def test_the_weighted_regression_gradient_matches_central_differences(name, t):
    x, y, w = _regression_problem(t=t)
    layers = LayerSpec((5, 4, t))
    mlp = NumpyMLP(ModelSpec(layers, "tanh", name, l2=0.02, task="regression", huber_delta=DELTA))
    flat = init_params(layers, 1).astype(np.float64) + 0.01
    _, grad = mlp.loss_and_grad(flat, x, y, sample_weight=w)
    eps = 1e-6
    numeric = np.array(
        [
            (mlp.objective(flat + e, x, y, w) - mlp.objective(flat - e, x, y, w)) / (2 * eps)
            for e in np.eye(flat.size) * eps
        ]
    )
    assert np.abs(grad - numeric).max() < 1e-6 * max(1.0, np.abs(numeric).max())


@needs_torch
@pytest.mark.parametrize("t", [1, 3])
@pytest.mark.parametrize("name", ["squared", "absolute", "huber"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_numpy_and_torch_backends_give_the_same_weighted_regression_loss_and_gradient(model, name, t):
    layers = LayerSpec((16, 6, t)) if model == "mlp" else ConvSpec((1, 4, 4), (3,), 3, t)
    n_in = 16
    spec = ModelSpec(layers, "relu", name, l2=0.01, task="regression", huber_delta=DELTA)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(12, n_in))
    y = rng.normal(size=(12, t)) if t > 1 else rng.normal(size=12)
    w = rng.uniform(0, 2, 12)
    flat = init_params(layers, 2).astype(np.float64)
    outs = [get_backend(b, spec).loss_and_grad(flat, x, y, sample_weight=w, weight_sum=9.0) for b in ("numpy", "torch")]
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-12)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-10, atol=1e-13)
    scores = [get_backend(b, spec).evaluate(flat, x, y, w) for b in ("numpy", "torch")]
    assert scores[0] == pytest.approx(scores[1], rel=1e-10)
    pred = get_backend("numpy", spec).predict(flat, x)
    assert pred.shape == (12, t) and np.array_equal(pred, get_backend("numpy", spec).predict_logits(flat, x))


@needs_torch
@pytest.mark.parametrize("t", [1, 3])
def test_a_users_module_with_t_outputs_trains_as_a_regressor_with_weights(t):
    """A user's nn.Module whose output width is the number of targets: its weighted gradient is autograd's of the
    weighted mean loss written out, and local training lowers that loss."""
    import torch

    from nnlib.core.module_spec import module_spec

    layers = module_spec("user_models.tiny:make", {"hidden": 6, "batch_norm": False, "n_classes": t}, (64,), t)
    spec = ModelSpec(layers, loss="huber", task="regression", huber_delta=DELTA)
    backend = get_backend("torch", spec)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 64)).astype(np.float32)
    y = (x[:, :t] - x[:, t : 2 * t]).astype(np.float32)
    y = y[:, 0].copy() if t == 1 else y
    w = rng.uniform(0.5, 2, 40).astype(np.float32)
    flat = layers.initial_params(0)
    loss, grad = backend.loss_and_grad(flat, x, y, sample_weight=w)
    net = layers.build()
    torch.nn.utils.vector_to_parameters(torch.from_numpy(flat.copy()), net.parameters())
    per_row = torch.nn.functional.huber_loss(
        net(torch.from_numpy(x)), torch.from_numpy(y).reshape(40, t), reduction="none", delta=DELTA
    ).sum(1)
    want = (per_row * torch.from_numpy(w)).sum() / torch.from_numpy(w).sum()
    want.backward()
    assert loss == pytest.approx(float(want.detach()), rel=1e-5)
    np.testing.assert_allclose(
        grad, np.concatenate([p.grad.numpy().ravel() for p in net.parameters()]), rtol=1e-4, atol=1e-6
    )
    update = local_sgd(
        backend,
        flat,
        None,
        SGD(),
        x,
        y,
        LocalSchedule(batch_size=8, local_epochs=5),
        0.05,
        np.random.default_rng(0),
        sample_weight=w,
    )
    assert backend.evaluate(update.params, x, y, w)[0] < backend.evaluate(flat, x, y, w)[0]
    assert update.total_weight == pytest.approx(float(w.astype(np.float64).sum()))


def _spec(task, name, t=3):
    k = t if task == "regression" else 4
    return ModelSpec(LayerSpec((5, 4, k)), "tanh", name, l2=0.01, task=task, huber_delta=DELTA)


def _data(task, n=20, t=3, dtype=np.float64):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 5)).astype(dtype)
    y = rng.integers(0, 4, n) if task == "classification" else rng.normal(size=(n, t)).astype(dtype)
    return x, y


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
@pytest.mark.parametrize("task, name", CASES)
def test_a_row_of_weight_2_equals_the_row_taken_twice(task, name, backend):
    """One mapper, one epoch, one full batch: weights (1, ..., 1, 2) train as the data with that row repeated."""
    spec = _spec(task, name)
    x, y = _data(task)
    w = np.ones(len(y))
    w[6] = 2.0
    x2, y2 = np.concatenate([x, x[6:7]]), np.concatenate([y, y[6:7]])
    flat = init_params(spec.layers, 0).astype(np.float64)
    optimizer = SGD(momentum=0.5)
    weighted = local_sgd(
        get_backend(backend, spec),
        flat,
        optimizer.init_state(flat),
        optimizer,
        x,
        y,
        LocalSchedule(batch_size=len(y)),
        0.3,
        np.random.default_rng(0),
        sample_weight=w,
    )
    twice = local_sgd(
        get_backend(backend, spec),
        flat,
        optimizer.init_state(flat),
        optimizer,
        x2,
        y2,
        LocalSchedule(batch_size=len(y2)),
        0.3,
        np.random.default_rng(0),
    )
    assert not np.allclose(weighted.params, flat)  # it trained
    np.testing.assert_allclose(weighted.params, twice.params, rtol=1e-12, atol=1e-14)
    assert weighted.train_loss == pytest.approx(twice.train_loss, rel=1e-12)
    assert weighted.total_weight == twice.total_weight == len(y2)
    unweighted = local_sgd(
        get_backend(backend, spec),
        flat,
        optimizer.init_state(flat),
        optimizer,
        x,
        y,
        LocalSchedule(batch_size=len(y)),
        0.3,
        np.random.default_rng(0),
    )
    assert np.abs(unweighted.params - twice.params).max() > 1e-6  # the weight matters


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
@pytest.mark.parametrize("task, name", CASES)
def test_weights_all_1_train_as_no_weights_bit_for_bit(task, name, backend):
    """float32, several mini-batches (the last one short), Adam: the same weights, state and loss to the bit
    (torch's cross_entropy takes its unweighted mean in its own summation order: the loss there agrees to
    float32 rounding)."""
    spec = _spec(task, name)
    x, y = _data(task, n=37, dtype=np.float32)
    flat = init_params(spec.layers, 0)
    optimizer = Adam()
    runs = [
        local_sgd(
            get_backend(backend, spec),
            flat,
            optimizer.init_state(flat),
            optimizer,
            x,
            y,
            LocalSchedule(batch_size=8, local_epochs=2),
            0.01,
            np.random.default_rng(3),
            sample_weight=w,
        )
        for w in (None, np.ones(len(y), np.float32))
    ]
    assert runs[0].params.dtype == np.float32
    np.testing.assert_array_equal(runs[0].params, runs[1].params)
    np.testing.assert_array_equal(runs[0].opt_state, runs[1].opt_state)
    if backend == "torch" and name == "cross_entropy":
        assert runs[0].train_loss == pytest.approx(runs[1].train_loss, rel=1e-6)
    else:
        assert runs[0].train_loss == runs[1].train_loss
    assert runs[0].total_weight == runs[1].total_weight == len(y)


@pytest.mark.parametrize("task, name", CASES)
def test_multiplying_every_weight_changes_nothing_and_the_train_loss_is_the_weighted_mean(task, name):
    spec = _spec(task, name)
    x, y = _data(task, n=30)
    w = np.random.default_rng(2).uniform(0, 3, len(y))
    flat = init_params(spec.layers, 0).astype(np.float64)
    runs = [
        local_sgd(
            NumpyMLP(spec),
            flat,
            None,
            SGD(),
            x,
            y,
            LocalSchedule(batch_size=7),
            0.1,
            np.random.default_rng(1),
            sample_weight=c * w,
        )
        for c in (1.0, 8.0)
    ]
    np.testing.assert_allclose(runs[0].params, runs[1].params, rtol=1e-12, atol=1e-14)
    assert runs[0].train_loss == pytest.approx(runs[1].train_loss, rel=1e-12)
    # with lr 0 the round's loss is the weighted mean loss of the starting weights over the epoch's rows
    still = local_sgd(
        NumpyMLP(spec),
        flat,
        None,
        SGD(),
        x,
        y,
        LocalSchedule(batch_size=7),
        0.0,
        np.random.default_rng(1),
        sample_weight=w,
    )
    assert still.train_loss == pytest.approx(NumpyMLP(spec).evaluate(flat, x, y, w)[0], rel=1e-12)


def test_a_batch_steps_by_its_size_times_the_shards_mean_weight():
    w = np.array([1.0, 3.0, 0.0, 4.0])  # mean 2
    assert batch_weight_sums(w, [np.array([0, 1, 2]), np.array([3])]) == [6.0, 2.0]
    assert batch_weight_sums(np.ones(5, np.float32), [np.arange(3), np.arange(2)]) == [3.0, 2.0]
    assert batch_weight_sums(np.zeros(3), [np.arange(3)]) == [0.0]


@pytest.mark.parametrize("task, name", CASES)
def test_zero_weights_give_a_zero_loss_and_gradient(task, name):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 3))
    y = _targets(task, 5, 3, rng)
    loss_fn = losses.loss_function(task, name, DELTA)
    loss, grad = loss_fn(z, y, np.zeros(5))
    assert loss == 0.0 and not grad.any() and grad.shape == z.shape
    w = np.array([0.0, 1.0, 0.0, 2.0, 0.0])  # a zero-weight row does not move the gradient
    _, grad = loss_fn(z, y, w)
    assert not grad[w == 0].any() and grad[w > 0].any()


def test_huber_is_squared_inside_the_band_and_delta_times_absolute_less_a_constant_outside():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(6, 2))
    w = rng.uniform(0.5, 2, 6)
    delta = 0.8
    huber = losses.loss_function("regression", "huber", delta)
    inside = y + rng.uniform(-0.79, 0.79, size=y.shape)  # every |error| < delta
    loss, grad = huber(inside, y, w)
    want_loss, want_grad = losses.squared_error(inside, y, w)
    assert loss == pytest.approx(want_loss, rel=1e-14)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-14)
    signs = rng.choice([-1.0, 1.0], size=y.shape)
    outside = y + signs * rng.uniform(0.81, 4, size=y.shape)  # every |error| > delta
    loss, grad = huber(outside, y, w)
    abs_loss, abs_grad = losses.absolute_error(outside, y, w)
    # per row: sum over the 2 targets of delta * (|r| - delta / 2); the weighted mean of a constant is itself
    assert loss == pytest.approx(delta * abs_loss - 2 * delta**2 / 2, rel=1e-14)
    np.testing.assert_allclose(grad, delta * abs_grad, rtol=1e-14)
    np.testing.assert_allclose(grad, delta * signs * w[:, None] / w.sum(), rtol=1e-14)


def test_squared_regression_keeps_the_classification_convention_half_the_squared_error_summed_over_targets():
    z = np.array([[1.0, 2.0], [0.0, 0.0]])
    y = np.array([[0.0, 0.0], [1.0, -1.0]])
    # rows: (1 + 4) / 2 and (1 + 1) / 2; mean 1.75; with weights 3 and 1: (3 * 2.5 + 1) / 4
    assert losses.squared_error(z, y)[0] == pytest.approx(1.75)
    assert losses.squared_error(z, y, np.array([3.0, 1.0]))[0] == pytest.approx(8.5 / 4)
    assert losses.absolute_error(z, y, np.array([3.0, 1.0]))[0] == pytest.approx((3 * 3 + 2) / 4)
    one_hot = losses.squared_one_hot(np.zeros((3, 2)), np.array([0, 1, 1]))[0]
    assert one_hot == pytest.approx(0.5) == losses.squared_error(np.zeros((3, 1)), np.ones(3))[0]


def test_unknown_tasks_losses_and_deltas_are_refused_by_name():
    with pytest.raises(ValueError, match="task must be one of classification, regression, got 'ranking'"):
        losses.loss_function("ranking", "squared")
    with pytest.raises(
        ValueError, match="loss for task regression must be one of squared, absolute, huber, got 'cross_entropy'"
    ):
        losses.loss_function("regression", "cross_entropy")
    with pytest.raises(ValueError, match="huber_delta must be > 0, got 0"):
        losses.loss_function("regression", "huber", 0)
    with pytest.raises(ValueError, match="loss for task classification"):
        NumpyMLP(ModelSpec(LayerSpec((2, 2)), loss="huber"))


@needs_torch
def test_a_module_of_the_wrong_width_for_the_targets_is_one_line_naming_them():
    from nnlib.core.module_spec import module_spec
    from nnlib.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        module_spec(
            "user_models.tiny:make", {"hidden": 4, "batch_norm": False, "n_classes": 3}, (64,), 2, task="regression"
        )
    assert str(caught.value) == (
        "model.module: user_models.tiny:make must map a (2, 64) batch to (2, 2) outputs (one per target), got (2, 3)"
    )


@needs_torch
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("task, name", CASES)
def test_the_torch_round_with_weights_equals_the_numpy_round(task, name, model):
    """float32, mini-batches, momentum: torch's own loop (train_steps) against numpy's step-by-step loop."""
    k = 3 if task == "regression" else 4
    layers = LayerSpec((16, 6, k)) if model == "mlp" else ConvSpec((1, 4, 4), (3,), 3, k)
    spec = ModelSpec(layers, "relu", name, l2=0.01, task=task, huber_delta=DELTA)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(45, 16)).astype(np.float32)
    y = rng.integers(0, k, 45) if task == "classification" else rng.normal(size=(45, k)).astype(np.float32)
    w = rng.uniform(0, 3, 45).astype(np.float32)
    flat = init_params(layers, 3)
    optimizer = SGD(momentum=0.9)
    outs = [
        local_sgd(
            get_backend(b, spec),
            flat,
            optimizer.init_state(flat),
            optimizer,
            x,
            y,
            LocalSchedule(batch_size=10, local_epochs=2),
            0.05,
            np.random.default_rng(0),
            sample_weight=w,
        )
        for b in ("numpy", "torch")
    ]
    np.testing.assert_allclose(outs[0].params, outs[1].params, atol=1e-5)
    np.testing.assert_allclose(outs[0].opt_state, outs[1].opt_state, atol=1e-5)
    assert outs[0].train_loss == pytest.approx(outs[1].train_loss, rel=1e-5)
    assert np.abs(outs[0].params - flat).max() > 1e-3


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_a_linear_layer_trained_on_the_weighted_squared_loss_reaches_the_weighted_least_squares_fit(backend):
    """One affine layer, full batch, plain gradient descent: the minimiser of sum w_i ||x_i A + b - y_i||^2 is the
    least-squares fit of the rows scaled by sqrt(w_i) (np.linalg.lstsq), which the weights move away from the
    unweighted fit."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = x @ rng.normal(size=(3, 2)) + 0.5 + rng.normal(scale=0.7, size=(60, 2)) * (x[:, :1] > 0)
    w = np.where(x[:, 0] > 0, 0.2, 3.0)
    design = np.hstack([x, np.ones((60, 1))])
    root = np.sqrt(w)[:, None]
    fit = np.linalg.lstsq(design * root, y * root, rcond=None)[0]
    spec = ModelSpec(LayerSpec((3, 2)), loss="squared", task="regression")
    flat = np.zeros(spec.layers.n_params)
    update = local_sgd(
        get_backend(backend, spec),
        flat,
        None,
        SGD(),
        x,
        y,
        LocalSchedule(batch_size=60, local_epochs=100),
        0.75,
        np.random.default_rng(0),
        sample_weight=w,
    )
    np.testing.assert_allclose(update.params, np.concatenate([fit[:3].ravel(), fit[3]]), atol=1e-9)
    plain = np.linalg.lstsq(design, y, rcond=None)[0]
    assert np.abs(plain - fit).max() > 0.05


def test_targets_of_the_wrong_width_are_refused_not_broadcast():
    with pytest.raises(ValueError, match=r"the targets have 1 column\(s\), the network 3 output\(s\)"):
        losses.squared_error(np.zeros((4, 3)), np.zeros(4))
    with pytest.raises(ValueError, match=r"predictions \(4, 3\) and targets \(4, 1\) differ"):
        metrics.regression_sums(np.zeros((4, 3)), np.zeros(4))


def test_a_weighted_mean_of_mappers_by_total_weight():
    """combine: weighted with the mappers' total weights: mapper r holds the vector r with weight r + 1."""
    from nnlib.core.combine import combine

    vectors = [np.full(3, float(r), np.float32) for r in range(4)]
    weights = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(combine("weighted", vectors, weights), np.full(3, (0 + 2 + 6 + 12) / 10), rtol=1e-7)


@pytest.mark.parametrize("task, name", CASES)
def test_mappers_normalised_by_the_global_mean_weight_average_by_batch_size_to_the_union_batch(task, name):
    """A synchronous step: two mappers' gradients, each over its own batch with the denominator
    len(batch) * (mean weight of all rows), averaged with coefficients len(batch) / total, are the gradient of
    the two batches as one."""
    spec = _spec(task, name)
    x, y = _data(task, n=20)
    w = np.random.default_rng(4).uniform(0, 3, 20)
    mean_weight = w.mean()
    parts = [np.arange(0, 7), np.arange(7, 20)]
    mlp = NumpyMLP(spec)
    flat = init_params(spec.layers, 0).astype(np.float64)
    grads = [
        mlp.loss_and_grad(flat, x[p], y[p], sample_weight=w[p], weight_sum=batch_weight_sums(w, [p], mean_weight)[0])[1]
        for p in parts
    ]
    mean = (7 * grads[0] + 13 * grads[1]) / 20
    whole = mlp.loss_and_grad(flat, x, y, sample_weight=w, weight_sum=20 * mean_weight)[1]
    np.testing.assert_allclose(mean, whole, rtol=1e-12, atol=1e-14)
    # and with the full batch that is the weighted mean's gradient
    np.testing.assert_allclose(whole, mlp.loss_and_grad(flat, x, y, sample_weight=w)[1], rtol=1e-12, atol=1e-14)
