"""Shards that are not identically distributed, and the remedies: FedProx and the server's momentum (FedAvgM)."""

import numpy as np
import pytest
from conftest import small_config

from nnlib.core.backends import get_backend
from nnlib.core.optim import SGD, ServerSGD
from nnlib.core.params import init_params
from nnlib.core.train import LocalSchedule, local_sgd
from nnlib.data.dataset import load_dataset
from nnlib.data.partition import partition
from nnlib.driver import run
from nnlib.errors import DataError
from nnlib.outputs import RunDir
from nnlib.rounds.payload import model_spec

QUIET = dict(log=lambda _msg: None)


def _class_shares(y, parts, n_classes):
    """(mappers, classes): each shard's share of every class."""
    return np.array([np.bincount(y[p], minlength=n_classes) / len(p) for p in parts])


@pytest.mark.parametrize("scheme", ["label_skew", "quantity_skew"])
def test_skewed_partitions_cover_every_sample_once_and_are_seeded(scheme):
    y = np.random.default_rng(0).integers(0, 10, 2000)
    parts = partition(y, 5, scheme, seed=3, alpha=0.3)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(2000))
    assert all(len(p) > 0 for p in parts)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition(y, 5, scheme, seed=3, alpha=0.3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, partition(y, 5, scheme, seed=4, alpha=0.3)))


def test_label_skew_with_a_large_concentration_approaches_the_iid_split():
    y = np.random.default_rng(1).integers(0, 10, 20000)
    overall = np.bincount(y) / len(y)

    def distance(alpha):  # the largest gap between a shard's class share and the whole set's
        return np.abs(_class_shares(y, partition(y, 4, "label_skew", 0, alpha), 10) - overall).max()

    assert distance(0.1) > 0.2  # small alpha: shards hold few classes
    assert distance(1e4) < 0.02  # large alpha: every shard close to the overall mix
    assert distance(1e4) < distance(10) < distance(0.1)


def test_quantity_skew_keeps_the_classes_mixed_but_not_the_sizes():
    y = np.random.default_rng(2).integers(0, 3, 6000)
    parts = partition(y, 4, "quantity_skew", 0, 0.5)
    sizes = [len(p) for p in parts]
    assert max(sizes) > 2 * min(sizes)
    assert np.abs(_class_shares(y, [p for p in parts if len(p) > 200], 3) - 1 / 3).max() < 0.1


def test_a_concentration_too_small_for_the_data_is_one_line_naming_it():
    with pytest.raises(
        DataError,
        match=r"data.partition=label_skew: with data.skew_alpha=0.001, 100 Dirichlet "
        r"draws all left a shard of the 8 empty",
    ):
        partition(np.arange(40) % 2, 8, "label_skew", 0, 0.001)


def test_fedprox_adds_mu_times_the_distance_to_the_rounds_weights_to_each_gradient():
    config = small_config()
    data = load_dataset(config.data, config.seed)
    spec = model_spec(config, data)
    backend = get_backend("numpy", spec)
    w0 = init_params(spec.layers, 0)
    x, y = data.x_train[:64], data.y_train[:64]
    schedule = LocalSchedule(32, 1)
    prox = local_sgd(backend, w0, None, SGD(), x, y, schedule, 0.1, np.random.default_rng(0), proximal_mu=0.5)
    # by hand: step 1 at w0 has no pull; step 2 is pulled back by mu * (w1 - w0)
    order = np.random.default_rng(0).permutation(64)
    w1 = w0 - np.float32(0.1) * backend.loss_and_grad(w0, x[order[:32]], y[order[:32]])[1]
    g2 = backend.loss_and_grad(w1, x[order[32:]], y[order[32:]])[1] + np.float32(0.5) * (w1 - w0)
    np.testing.assert_allclose(prox.params, w1 - np.float32(0.1) * g2, rtol=1e-6, atol=1e-7)


def test_fedprox_with_mu_zero_equals_plain_averaging_and_mu_above_zero_does_not():
    plain = run(small_config("data.partition=label_skew"), **QUIET).params
    np.testing.assert_array_equal(
        run(small_config("data.partition=label_skew", "train.proximal_mu=0"), **QUIET).params, plain
    )
    assert not np.array_equal(
        run(small_config("data.partition=label_skew", "train.proximal_mu=0.1"), **QUIET).params, plain
    )


def test_server_momentum_zero_and_lr_one_is_plain_averaging():
    rng = np.random.default_rng(0)
    start, averaged = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    server = ServerSGD(lr=1.0, momentum=0.0)
    assert server.init_state(start) is None
    np.testing.assert_allclose(server.step(start, averaged, None), averaged, rtol=0, atol=1e-6)


def test_server_momentum_follows_its_closed_form_over_rounds():
    server = ServerSGD(lr=0.5, momentum=0.9)
    w, v = np.array([1.0], np.float32), server.init_state(np.zeros(1, np.float32))
    w = server.step(w, w - 2, v)  # d = 2: v = 2, w = 1 - 0.5 * 2 = 0
    w = server.step(w, w - 1, v)  # d = 1: v = 0.9 * 2 + 1 = 2.8, w = 0 - 1.4
    assert v[0] == pytest.approx(2.8) and w[0] == pytest.approx(-1.4)


def test_one_round_with_a_server_rate_extrapolates_the_average():
    plain = run(small_config("train.rounds=1"), **QUIET).params
    start = init_params(model_spec(small_config(), load_dataset(small_config().data, 7)).layers, 7)
    moved = run(small_config("train.rounds=1", "server.lr=2.0"), **QUIET).params
    np.testing.assert_allclose(moved, start - 2 * (start - plain), rtol=1e-6, atol=1e-6)


def test_server_momentum_survives_a_resume(tmp_path):
    sets = ("train.rounds=4", "server.momentum=0.9", "server.lr=0.7")
    whole = run(small_config(*sets), **QUIET).params
    run(small_config(*sets[1:], "train.rounds=2"), RunDir(tmp_path / "r"), **QUIET)
    resumed = run(small_config(*sets), RunDir(tmp_path / "r", resume=True), resume=True, **QUIET).params
    np.testing.assert_array_equal(resumed, whole)
