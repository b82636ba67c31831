"""The numpy MLP against closed forms, finite differences, and the torch backend as an oracle."""

import numpy as np
import pytest
from conftest import needs_torch

from nnlib.core.backends import get_backend
from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.core.optim import SGD
from nnlib.core.params import LayerSpec, init_params
from nnlib.core.train import LocalSchedule, batch_indices, local_sgd, run_steps

ACTIVATIONS = ["relu", "sigmoid", "tanh"]
LOSSES = ["cross_entropy", "squared"]


def _problem(seed=0, n=40, sizes=(6, 5, 4, 3), dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], size=n)
    return x, y, LayerSpec(sizes)


@pytest.mark.parametrize("scale", [1.0, 3.0])  # 3: a sub-network's output contribution scaled by its G
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_matches_finite_differences(activation, loss, scale):
    x, y, layers = _problem(dtype=np.float64)
    mlp = NumpyMLP(ModelSpec(layers, activation, loss, l2=0.03, output_scale=scale))
    flat = init_params(layers, 3).astype(np.float64) + 0.01  # nonzero biases
    _, grad = mlp.loss_and_grad(flat, x, y)
    eps = 1e-6
    numeric = np.empty_like(flat)
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        numeric[i] = (mlp.objective(flat + step, x, y) - mlp.objective(flat - step, x, y)) / (2 * eps)
    assert np.abs(grad - numeric).max() < 1e-6 * max(1.0, np.abs(numeric).max())
    if scale != 1:  # the scale is really applied: the logits are not the unscaled network's
        assert not np.allclose(mlp.predict_logits(flat, x), NumpyMLP(ModelSpec(layers)).predict_logits(flat, x))


def test_cross_entropy_of_uniform_output_is_log_k():
    layers = LayerSpec((3, 4))
    mlp = NumpyMLP(ModelSpec(layers, "relu", "cross_entropy"))
    flat = np.zeros(layers.n_params, np.float32)  # all logits zero: uniform softmax
    loss, acc = mlp.evaluate(flat, np.ones((5, 3), np.float32), np.array([0, 1, 2, 3, 0]))
    assert loss == pytest.approx(np.log(4), rel=1e-6)


def test_squared_loss_closed_form():
    layers = LayerSpec((2, 2))
    mlp = NumpyMLP(ModelSpec(layers, "relu", "squared"))
    flat = np.zeros(layers.n_params, np.float32)  # output 0, target one-hot: each sample costs 1/2
    loss, _ = mlp.evaluate(flat, np.ones((3, 2), np.float32), np.array([0, 1, 1]))
    assert loss == pytest.approx(0.5)


@needs_torch
@pytest.mark.parametrize("scale", [1.0, 2.0])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_backend_agrees_after_one_epoch(activation, loss, scale):
    x, y, layers = _problem(n=100)
    spec = ModelSpec(layers, activation, loss, l2=0.01, output_scale=scale)
    flat = init_params(layers, 5)
    optimizer = SGD(momentum=0.9)
    schedule = LocalSchedule(batch_size=16, local_epochs=1)
    outs = [
        local_sgd(
            get_backend(name, spec),
            flat,
            optimizer.init_state(flat),
            optimizer,
            x,
            y,
            schedule,
            0.1,
            np.random.default_rng(0),
        )
        for name in ("numpy", "torch")
    ]
    np.testing.assert_allclose(outs[0].params, outs[1].params, atol=1e-5)
    np.testing.assert_allclose(outs[0].opt_state, outs[1].opt_state, atol=1e-5)
    assert outs[0].train_loss == pytest.approx(outs[1].train_loss, rel=1e-5)
    assert get_backend("numpy", spec).evaluate(outs[0].params, x, y) == pytest.approx(
        get_backend("torch", spec).evaluate(outs[0].params, x, y), rel=1e-5
    )
    np.testing.assert_array_equal(
        get_backend("numpy", spec).predict(outs[0].params, x), get_backend("torch", spec).predict(outs[0].params, x)
    )


def test_sgd_step_is_lr_times_gradient():
    x, y, layers = _problem()
    mlp = NumpyMLP(ModelSpec(layers))
    flat = init_params(layers, 0)
    _, grad = mlp.loss_and_grad(flat, x, y)
    optimizer = SGD()
    assert optimizer.init_state(flat) is None
    new = flat.copy()
    optimizer.step(new, grad, None, 0.5)
    np.testing.assert_allclose(new, flat - 0.5 * grad, atol=1e-7)


def test_momentum_closed_form_on_two_parameters():
    # a constant gradient g: v_t = g (1 - mu^t) / (1 - mu), so after T steps
    # w_T = w_0 - lr g / (1 - mu) * (T - mu (1 - mu^T) / (1 - mu))
    mu, lr, steps = 0.9, 0.1, 7
    g = np.array([1.0, -2.0])
    w0 = np.array([0.5, 0.25])
    optimizer = SGD(momentum=mu)
    w, v = w0.copy(), optimizer.init_state(w0)
    run_steps(w, v, optimizer, [lr] * steps, lambda _w, _step: g)
    expected = w0 - lr * g / (1 - mu) * (steps - mu * (1 - mu**steps) / (1 - mu))
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    np.testing.assert_allclose(v, g * (1 - mu**steps) / (1 - mu), rtol=1e-12)


def test_batch_schedule_epochs_and_steps():
    rng = np.random.default_rng(0)
    epochs = batch_indices(10, LocalSchedule(batch_size=4, local_epochs=2), rng)
    assert [len(b) for b in epochs] == [4, 4, 2, 4, 4, 2]
    assert sorted(np.concatenate(epochs[:3]).tolist()) == list(range(10))
    steps = batch_indices(10, LocalSchedule(batch_size=4, local_steps=5), rng)
    assert [len(b) for b in steps] == [4, 4, 2, 4, 4]


def test_the_slides_ann_loss_and_gradient_match_the_formula():
    """conf/slides_ann.yaml: J = 1/(2m) sum ||z - t||^2 + lambda/(2n) sum W^2, lambda = 5, written out by hand."""
    from pathlib import Path

    from nnlib.config import load_config
    from nnlib.data.dataset import load_dataset
    from nnlib.rounds.payload import model_spec

    config = load_config(Path(__file__).parent.parent / "conf/slides_ann.yaml")
    data = load_dataset(config.data, config.seed)
    spec = model_spec(config, data)
    n = len(data.y_train)
    assert (config.model.l2, config.model.loss, config.model.activation) == (5.0, "squared", "sigmoid")
    assert spec.l2 == 5.0 / n and 10 <= spec.layers.sizes[1] <= 50

    x, y = data.x_train[:7].astype(np.float64), data.y_train[:7]
    w = init_params(spec.layers, 1).astype(np.float64) + 0.01
    w1, b1, w2, b2 = (w[a:b].reshape(s) for a, b, s in spec.layers.offsets)
    m, t = len(y), np.eye(10)[y]
    a1 = 1 / (1 + np.exp(-(x @ w1 + b1)))
    z = a1 @ w2 + b2
    data_loss = ((z - t) ** 2).sum() / (2 * m)
    J = data_loss + 5.0 / (2 * n) * ((w1**2).sum() + (w2**2).sum())
    d2 = (z - t) / m
    d1 = (d2 @ w2.T) * a1 * (1 - a1)
    by_hand = np.concatenate(
        [(x.T @ d1 + 5.0 / n * w1).ravel(), d1.sum(0), (a1.T @ d2 + 5.0 / n * w2).ravel(), d2.sum(0)]
    )
    for name, rtol in (("numpy", 1e-10), ("torch", 1e-6)):  # torch hands its gradient back as float32
        if name == "torch":
            pytest.importorskip("torch")
        loss, grad = get_backend(name, spec).loss_and_grad(w, x, y)
        assert loss == pytest.approx(data_loss, rel=1e-12)
        np.testing.assert_allclose(grad, by_hand, rtol=rtol, atol=1e-14)
    assert NumpyMLP(spec).objective(w, x, y) == pytest.approx(J, rel=1e-12)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_a_large_set_scored_in_pieces_gives_the_whole_sets_loss_and_accuracy(monkeypatch, backend):
    from nnlib.rounds import mapper as tasks

    spec = ModelSpec(LayerSpec((6, 5, 4)), "tanh", "cross_entropy")
    params = init_params(spec.layers, 0)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(103, 6)).astype(np.float32), rng.integers(0, 4, 103)
    scorer = get_backend(backend, spec)
    whole = scorer.evaluate(params, x, y)
    monkeypatch.setattr(tasks, "EVAL_ROWS", 10)
    loss, accuracy = tasks.evaluate_rows(scorer, params, x, y)
    assert accuracy == whole[1] and loss == pytest.approx(whole[0], rel=1e-6)
    assert tasks.score_sums(scorer, params, x, y)[1:] == (round(whole[1] * 103), 103)
