"""Combine rules in closed form: mapper r holds the value r everywhere."""

import numpy as np
import pytest

from nnlib.core.combine import (
    COMBINE_RULES,
    combine_average,
    combine_sum,
    combine_sum_updates,
    combine_weighted,
)


def _results(k, n_params=7, sizes=None):
    sizes = sizes or [10] * k
    return [(np.full(n_params, r, np.float32), sizes[r]) for r in range(k)]


@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_average_of_0_to_k_minus_1(k):
    np.testing.assert_allclose(combine_average(_results(k)), (k - 1) / 2)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_sum_is_k_times_k_minus_1_over_2(k):
    np.testing.assert_allclose(combine_sum(_results(k)), k * (k - 1) / 2)


def test_weighted_by_sample_count():
    # mapper r holds r and has r + 1 samples: sum r(r+1) / sum (r+1)
    k = 4
    out = combine_weighted(_results(k, sizes=[r + 1 for r in range(k)]))
    expected = sum(r * (r + 1) for r in range(k)) / sum(r + 1 for r in range(k))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_weighted_equals_average_for_equal_shards():
    np.testing.assert_allclose(combine_weighted(_results(5)), combine_average(_results(5)))


def test_sum_updates_adds_the_changes_to_the_start():
    start = np.full(7, 10.0, np.float32)
    # changes are r - 10; start + sum(r - 10) = 10 + k(k-1)/2 - 10k
    k = 3
    np.testing.assert_allclose(combine_sum_updates(_results(k), start), 10 + k * (k - 1) / 2 - 10 * k)


@pytest.mark.parametrize("rule", sorted(COMBINE_RULES))
def test_one_mapper_result_comes_back_unchanged(rule):
    w = np.random.default_rng(0).normal(size=11).astype(np.float32)
    start = np.zeros(11, np.float32)
    np.testing.assert_allclose(COMBINE_RULES[rule]([(w, 5)], start), w, rtol=1e-6)
    assert COMBINE_RULES[rule]([(w, 5)], start).dtype == np.float32
