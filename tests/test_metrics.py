"""Weighted metrics against scikit-learn (the oracle), Spark's formula written out, and closed forms; block sums.

Prepare predictions, targets and weights by hand or from a seeded generator,
compute the metrics with nnlib (one shot, or block by block and added in
order), assert against an independent computation.
"""

import numpy as np
import pytest
from conftest import needs_torch

from nnlib.core import metrics
from nnlib.core.backends import get_backend
from nnlib.core.mlp import ModelSpec
from nnlib.core.params import LayerSpec, init_params


def _problem(t, n=50, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    y = rng.normal(loc=offset, scale=2.0, size=(n, t))
    p = y + rng.normal(scale=0.8, size=(n, t))
    w = rng.uniform(0, 3, n)
    return (p[:, 0].copy(), y[:, 0].copy()) if t == 1 else (p, y), w


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("t", [1, 3])
def test_regression_metrics_equal_scikit_learns(t, weighted):
    sk = pytest.importorskip("sklearn.metrics")
    (p, y), w = _problem(t)
    w = w if weighted else None
    got = metrics.regression_metrics(p, y, w)
    assert got.r2 == pytest.approx(sk.r2_score(y, p, sample_weight=w, multioutput="uniform_average"), rel=1e-12)
    assert got.mae == pytest.approx(sk.mean_absolute_error(y, p, sample_weight=w), rel=1e-12)
    assert got.rmse == pytest.approx(sk.root_mean_squared_error(y, p, sample_weight=w), rel=1e-12)
    np.testing.assert_allclose(
        got.r2_per_target, sk.r2_score(y, p, sample_weight=w, multioutput="raw_values"), rtol=1e-12
    )
    np.testing.assert_allclose(
        got.rmse_per_target,
        np.atleast_1d(sk.root_mean_squared_error(y, p, sample_weight=w, multioutput="raw_values")),
        rtol=1e-12,
    )
    assert len(got.mae_per_target) == t and 0 < got.r2 < 1


def test_regression_metrics_closed_forms():
    p, y = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 2.0])
    w = np.array([1.0, 2.0, 1.0])
    got = metrics.regression_metrics(p, y, w)
    # errors 1, 0, 2; W = 4; MSE = (1 + 0 + 4) / 4; MAE = (1 + 0 + 2) / 4
    assert got.rmse == pytest.approx(np.sqrt(5 / 4)) and got.mae == pytest.approx(3 / 4)
    # ybar = (0 + 4 + 2) / 4 = 1.5; SS_tot = 2.25 + 2 * 0.25 + 0.25 = 3
    assert got.r2 == pytest.approx(1 - 5 / 3)
    constant = np.full(4, 2.0)  # a constant target: 1 when predicted exactly, else 0 (scikit-learn's convention)
    assert metrics.regression_metrics(constant, constant).r2 == 1.0
    assert metrics.regression_metrics(constant + 1, constant).r2 == 0.0


def _spark_r2(p, y, w):
    """Spark's RegressionMetrics.r2 with weightCol, written out from its source: 1 - SSerr / SStot with
    SStot = variance * (weightSum - 1) and the summarizer's variance M2 / (W - sum w^2 / W)."""
    big_w = w.sum()
    mean = (w * y).sum() / big_w
    m2 = (w * (y - mean) ** 2).sum()
    variance = m2 / (big_w - (w * w).sum() / big_w)
    return 1 - (w * (p - y) ** 2).sum() / (variance * (big_w - 1))


def test_spark_r2_is_kept_beside_and_equals_ours_when_every_weight_is_1():
    (p, y), w = _problem(1)
    got = metrics.regression_metrics(p, y, w)
    assert got.r2_spark == pytest.approx(_spark_r2(p, y, w), rel=1e-12)
    assert abs(got.r2_spark - got.r2) > 1e-4  # weights other than 1: Spark's R² is not the weighted R²
    ones = metrics.regression_metrics(p, y)
    assert ones.r2_spark == pytest.approx(ones.r2, rel=1e-12) == pytest.approx(_spark_r2(p, y, np.ones(len(y))))


@pytest.mark.parametrize("t", [1, 3])
def test_sums_added_block_by_block_equal_the_one_shot_sums(t):
    (p, y), w = _problem(t, n=103, offset=1e6)  # a mean far from 0 against its spread: the shift is needed
    shift = np.full(t, 1e6)
    one = metrics.regression_sums(p, y, w, loss_sum=4.5, shift=shift)
    cuts = [0, 10, 11, 64, 103]
    blocks = [
        metrics.regression_sums(p[a:b], y[a:b], w[a:b], loss_sum=4.5 * (b - a) / 103, shift=shift)
        for a, b in zip(cuts, cuts[1:])
    ]
    added = metrics.total(blocks)
    assert added.rows == one.rows == 103 and added.weight == pytest.approx(one.weight, rel=1e-14)
    for field in ("target", "target2", "error2", "abs_error"):
        np.testing.assert_allclose(getattr(added, field), getattr(one, field), rtol=1e-12, atol=1e-9)
    got, want = metrics.finish_regression(added), metrics.finish_regression(one)
    assert got.r2 == pytest.approx(want.r2, rel=1e-12) and got.rmse == pytest.approx(want.rmse, rel=1e-12)
    assert got.loss == pytest.approx(4.5 / one.weight, rel=1e-12)
    sk = pytest.importorskip("sklearn.metrics")
    assert got.r2 == pytest.approx(sk.r2_score(y, p, sample_weight=w), rel=1e-9)
    again = metrics.RegressionSums.from_vector(added.to_vector(), shift)  # what an Allreduce carries
    assert metrics.finish_regression(again) == got
    with pytest.raises(ValueError, match="different shifts"):
        added + metrics.regression_sums(p, y, w)


def test_weighted_accuracy_and_loss_closed_form_and_block_sums():
    pred, y = np.array([0, 1, 2, 2, 1]), np.array([0, 1, 1, 2, 0])
    w = np.array([1.0, 0.5, 2.0, 1.0, 0.5])
    one = metrics.classification_sums(pred, y, w, loss_sum=2.5)
    got = metrics.finish_classification(one)
    assert got.accuracy == pytest.approx(2.5 / 5) and got.loss == pytest.approx(2.5 / 5)
    blocks = metrics.total(
        [
            metrics.classification_sums(pred[:2], y[:2], w[:2], 1.0),
            metrics.classification_sums(pred[2:], y[2:], w[2:], 1.5),
        ]
    )
    assert blocks == one
    assert metrics.ClassificationSums.from_vector(one.to_vector()) == one
    assert metrics.finish_classification(metrics.classification_sums(pred, y)).accuracy == pytest.approx(3 / 5)


def test_a_total_weight_of_zero_gives_nan_not_an_error():
    assert np.isnan(metrics.finish_classification(metrics.classification_sums([1], [1], [0.0])).accuracy)
    assert np.isnan(metrics.finish_regression(metrics.regression_sums([1.0], [2.0], [0.0])).rmse)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
@pytest.mark.parametrize("t", [1, 2])
def test_a_backends_score_in_the_targets_units_equals_the_metrics_of_its_destandardised_predictions(backend, t):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    raw = rng.normal(loc=50, scale=10, size=(30, t))
    mean, std = raw.mean(axis=0), raw.std(axis=0)
    y = ((raw - mean) / std).astype(np.float32)
    w = rng.uniform(0.5, 2, 30)
    spec = ModelSpec(LayerSpec((4, 5, t)), loss="huber", task="regression")
    scorer = get_backend(backend, spec)
    flat = init_params(spec.layers, 1)
    sums = scorer.score(flat, x, y, w, mean, std, raw_target=raw)
    z = scorer.predict(flat, x)
    want = metrics.regression_metrics(metrics.destandardize(z, mean, std), raw, w)
    got = metrics.finish_regression(sums)
    assert (got.rmse, got.mae, got.r2) == pytest.approx((want.rmse, want.mae, want.r2), rel=1e-12)
    assert got.loss == pytest.approx(scorer.evaluate(flat, x, y, w)[0], rel=1e-6)
    # R² does not change with the units: evaluate's score in standardised units is the same R²
    assert scorer.evaluate(flat, x, y, w)[1] == pytest.approx(got.r2, rel=1e-5)
    # without raw targets the standardised ones are de-standardised (float32 rounding away)
    assert metrics.finish_regression(scorer.score(flat, x, y, w, mean, std)).rmse == pytest.approx(got.rmse, rel=1e-5)
    assert got.rmse > 1.0  # in the targets' units (std 10), not standardised ones


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_a_classifiers_weighted_score_and_evaluate_agree(backend):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    w = rng.uniform(0, 2, 40)
    scorer = get_backend(backend, ModelSpec(LayerSpec((4, 6, 3))))
    flat = init_params(LayerSpec((4, 6, 3)), 2)
    got = metrics.finish_classification(scorer.score(flat, x, y, w))
    hit = scorer.predict(flat, x) == y
    assert got.accuracy == pytest.approx((w * hit).sum() / w.sum(), rel=1e-12)
    assert (got.loss, got.accuracy) == pytest.approx(scorer.evaluate(flat, x, y, w), rel=1e-6)
    assert scorer.evaluate(flat, x, y) == pytest.approx((scorer.evaluate(flat, x, y, np.ones(40))), rel=1e-6)
