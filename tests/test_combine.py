"""Combine rules in closed form: mapper r holds the value r everywhere."""

import numpy as np
import pytest

from nnlib.core.combine import COEFFICIENTS, combine


def _combine(rule, k, n_params=7, sizes=None, start=None):
    """``rule`` over k mappers where mapper r holds the value r everywhere."""
    sizes = sizes or [10] * k
    return combine(rule, [np.full(n_params, r, np.float32) for r in range(k)], sizes, start)


@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_average_of_0_to_k_minus_1(k):
    np.testing.assert_allclose(_combine("average", k), (k - 1) / 2)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_sum_is_k_times_k_minus_1_over_2(k):
    np.testing.assert_allclose(_combine("sum", k), k * (k - 1) / 2)


def test_weighted_by_sample_count():
    # mapper r holds r and has r + 1 samples: sum r(r+1) / sum (r+1)
    k = 4
    out = _combine("weighted", k, sizes=[r + 1 for r in range(k)])
    expected = sum(r * (r + 1) for r in range(k)) / sum(r + 1 for r in range(k))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_weighted_equals_average_for_equal_shards():
    np.testing.assert_allclose(_combine("weighted", 5), _combine("average", 5))


def test_sum_updates_adds_the_changes_to_the_start():
    start = np.full(7, 10.0, np.float32)
    # changes are r - 10; start + sum(r - 10) = 10 + k(k-1)/2 - 10k
    k = 3
    np.testing.assert_allclose(_combine("sum_updates", k, start=start), 10 + k * (k - 1) / 2 - 10 * k)


@pytest.mark.parametrize("rule", sorted(COEFFICIENTS))
def test_one_mapper_result_comes_back_unchanged(rule):
    w = np.random.default_rng(0).normal(size=11).astype(np.float32)
    start = np.random.default_rng(1).normal(size=11).astype(np.float32)
    out = combine(rule, [w], [5], start)
    np.testing.assert_array_equal(out, w)
    assert out.dtype == np.float32


@pytest.mark.parametrize("rule", sorted(COEFFICIENTS))
def test_combine_is_the_sum_of_coefficients_times_vectors(rule):
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=9).astype(np.float32) for _ in range(3)]
    start = rng.normal(size=9).astype(np.float32)
    coefs, start_coef = COEFFICIENTS[rule]([5, 7, 11])
    linear = sum(c * w.astype(np.float64) for c, w in zip(coefs, vectors)) + start_coef * start
    np.testing.assert_allclose(combine(rule, vectors, [5, 7, 11], start), linear, rtol=1e-6, atol=1e-6)


def test_combine_sums_in_mapper_order_in_float64():
    # 1 + 1e-8 - 1 in float32 loses the 1e-8; summed in float64 it survives until the final cast
    vectors = [np.array([1.0], np.float32), np.array([1e-8], np.float32), np.array([-1.0], np.float32)]
    assert combine("sum", vectors, [1, 1, 1])[0] == np.float32(1e-8)


def _results(k, n_params, with_state, rng, bad=()):
    from nnlib.rounds.payload import MapperResult, MapperStats

    results = []
    for m in range(k):
        params = rng.normal(size=n_params).astype(np.float32)
        if m in bad:
            params[3] = np.nan
        state = rng.normal(size=n_params).astype(np.float32) if with_state else None
        results.append(MapperResult(MapperStats(m, 10 + 7 * m, 1, 0.0, "h", 1, 0.0), params, state))
    return results


@pytest.mark.parametrize("rule", sorted(COEFFICIENTS))
def test_the_round_reduce_equals_the_closed_form_combine_bit_for_bit(rule):
    """The shares summed in mapper order (whatever order results arrive in) are exactly :func:`combine`."""
    from dataclasses import replace

    from nnlib.rounds.payload import first_payload
    from nnlib.rounds.reduce import RoundReducer
    from nnlib.data.dataset import load_dataset
    from conftest import small_config

    config = small_config("train.momentum=0.9")
    payload = first_payload(config, load_dataset(config.data, config.seed))
    rng = np.random.default_rng(3)
    results = _results(4, payload.params.size, True, rng)
    out = RoundReducer(rule)(results[::-1], payload)
    counts = [r.stats.n_samples for r in results]
    np.testing.assert_array_equal(out.params, combine(rule, [r.params for r in results], counts, payload.params))
    np.testing.assert_array_equal(out.opt_state, combine("average", [r.opt_state for r in results], counts))
    # a mapper with NaN weights is left out with skip_bad, and the rest are combined as if it were absent
    results = _results(4, payload.params.size, False, rng, bad=(2,))
    out = RoundReducer(rule, skip_bad=True)(results, replace(payload, opt_state=None))
    good = [r for r in results if r.stats.mapper != 2]
    np.testing.assert_array_equal(
        out.params, combine(rule, [r.params for r in good], [r.stats.n_samples for r in good], payload.params)
    )
    assert out.skipped == [2] and out.opt_state is None


def test_the_mean_gradient_is_the_average_rule_on_equal_batches_and_the_weighted_one_on_uneven():
    from nnlib.rounds.reduce import mean_gradient, sync_coefficients

    grads = [np.random.default_rng(m).normal(size=11).astype(np.float32) for m in range(3)]
    np.testing.assert_array_equal(
        mean_gradient(grads, sync_coefficients([8, 8, 8])), combine("average", grads, [1, 1, 1])
    )
    np.testing.assert_array_equal(
        mean_gradient(grads, sync_coefficients([8, 3, 0])), combine("weighted", grads, [8, 3, 0])
    )
