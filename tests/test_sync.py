"""Synchronous gradient averaging and the linear form of the combine rules."""

import numpy as np
import pytest
from conftest import small_config

from nnlib.core.combine import COMBINE_RULES, linear_coefficients
from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.core.params import LayerSpec, init_params
from nnlib.core.train import sync_learning_rates
from nnlib.driver import run

QUIET = dict(log=lambda _m: None, warn=lambda _m: None)


@pytest.mark.parametrize("rule", sorted(COMBINE_RULES))
def test_linear_form_reproduces_every_rule(rule):
    rng = np.random.default_rng(0)
    results = [(rng.normal(size=9).astype(np.float32), n) for n in (5, 7, 11)]
    start = rng.normal(size=9).astype(np.float32)
    coefs, start_coef = linear_coefficients(rule, [n for _, n in results])
    linear = sum(c * w.astype(np.float64) for c, (w, _) in zip(coefs, results)) + start_coef * start
    np.testing.assert_allclose(linear, COMBINE_RULES[rule](results, start), rtol=1e-6, atol=1e-6)


def test_mean_of_equal_batch_gradients_is_the_union_batch_gradient():
    rng = np.random.default_rng(1)
    layers = LayerSpec((5, 8, 3))
    mlp = NumpyMLP(ModelSpec(layers, "tanh", "cross_entropy", l2=0.01))
    x = rng.normal(size=(20, 5)).astype(np.float64)
    y = rng.integers(0, 3, 20)
    w = init_params(layers, 0).astype(np.float64)
    _, g_union = mlp.loss_and_grad(w, x, y)
    _, g_a = mlp.loss_and_grad(w, x[:10], y[:10])
    _, g_b = mlp.loss_and_grad(w, x[10:], y[10:])
    np.testing.assert_allclose((g_a + g_b) / 2, g_union, atol=1e-12)


def test_linear_scaling_with_warmup_closed_form():
    # 4 mappers, base 0.1: target 0.4; warm-up over 10 steps climbs from 0.1 by 0.03 per step
    lrs = np.concatenate([sync_learning_rates(r, 6, 0.1, 4, "linear", 10) for r in range(3)])
    np.testing.assert_allclose(lrs[:10], 0.1 + 0.03 * np.arange(10))
    np.testing.assert_allclose(lrs[10:], 0.4)
    np.testing.assert_allclose(sync_learning_rates(0, 5, 0.1, 4, "none", 0), 0.1)


def test_one_mapper_gradient_mode_is_plain_sgd():
    base = ("mappers=1", "train.rounds=3", "train.momentum=0.5")
    averaged = run(small_config(*base, "combine=average"), **QUIET)
    synced = run(small_config(*base, "combine=gradient"), **QUIET)
    np.testing.assert_array_equal(averaged.params, synced.params)


def test_gradient_mode_trains_and_times_mappers():
    result = run(small_config("combine=gradient", "mappers=3", "train.rounds=3", "train.lr_scaling=linear"), **QUIET)
    assert result.rounds[-1]["test_accuracy"] > 0.85
    assert len(result.mapper_rows) == 9 and len({r["steps"] for r in result.mapper_rows}) == 1


def test_post_local_sgd_switches_to_averaging_after_sync_rounds():
    synced_then_avg = run(small_config("train.sync_rounds=1", "train.rounds=2"), **QUIET)
    all_sync = run(small_config("combine=gradient", "train.rounds=2"), **QUIET)
    first_round_sync = run(small_config("combine=gradient", "train.rounds=1"), **QUIET)
    only_first = run(small_config("train.sync_rounds=1", "train.rounds=1"), **QUIET)
    np.testing.assert_array_equal(first_round_sync.params, only_first.params)
    assert not np.array_equal(synced_then_avg.params, all_sync.params)


@pytest.mark.parametrize("engine", ["spark", "mrjob"])
def test_gradient_mode_needs_a_synchronous_engine(engine):
    from nnlib.errors import ConfigError

    with pytest.raises(ConfigError, match=f"needs engine local or mpi, got engine={engine}"):
        small_config(f"engine={engine}", "combine=gradient")


def test_large_global_batch_warns():
    warnings = []
    run(small_config("combine=gradient", "mappers=3", "train.batch_size=512", "train.rounds=1"),
        log=lambda _m: None, warn=warnings.append)
    assert any("global batch" in w and "larger than the training set" in w for w in warnings)
