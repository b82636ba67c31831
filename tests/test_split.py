"""Sub-networks by neuron groups: slicing and recombining are exact, the counts match the closed forms."""

import numpy as np
import pytest

from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.core.params import LayerSpec, init_params, unpack
from nnlib.core.split import (
    count_any_splits,
    count_equal_splits,
    enumerate_splits,
    held_count,
    random_split,
    recombine,
    round_split,
    slice_params,
    sub_indices,
    whole,
)

SHAPES = [(5, 8, 3), (4, 6, 9, 3), (3, 7, 5, 6, 2)]


@pytest.mark.parametrize("sizes", SHAPES)
@pytest.mark.parametrize("g", [1, 2, 3])
def test_split_then_recombine_without_training_returns_the_weights_exactly(sizes, g):
    layers = LayerSpec(sizes)
    full = init_params(layers, 3) + np.float32(0.1)  # no zero biases: every value is distinct
    split = random_split(sizes[1:-1], g, np.random.default_rng(0))
    subs = [(k, slice_params(full, layers, split, k)) for k in range(g)]
    assert np.array_equal(recombine(full, subs, layers, split), full)


@pytest.mark.parametrize("sizes", SHAPES)
def test_a_sub_network_holds_its_groups_rows_and_columns(sizes):
    layers = LayerSpec(sizes)
    full = init_params(layers, 1)
    split = random_split(sizes[1:-1], 2, np.random.default_rng(5))
    for g in range(2):
        sub_layers = split.sub_layers(layers, g)
        assert sub_layers.sizes == (sizes[0], *(len(layer[g]) for layer in split.groups), sizes[-1])
        sub = unpack(slice_params(full, layers, split, g), sub_layers)
        arrays = unpack(full, layers)
        units = [list(range(sizes[0]))] + [list(layer[g]) for layer in split.groups] + [list(range(sizes[-1]))]
        for i in range(layers.n_layers):
            assert np.array_equal(sub[2 * i], arrays[2 * i][np.ix_(units[i], units[i + 1])])
            assert np.array_equal(sub[2 * i + 1], arrays[2 * i + 1][units[i + 1]])


def test_a_sub_network_computes_the_whole_network_with_the_other_units_cut_off():
    """Oracle: one hidden layer; zeroing the other groups' outgoing weights leaves exactly the sub-network."""
    layers = LayerSpec((6, 10, 4))
    full = init_params(layers, 2)
    split = random_split((10,), 3, np.random.default_rng(1))
    x = np.random.default_rng(2).normal(size=(7, 6)).astype(np.float32)
    for g in range(3):
        cut = full.copy()
        w_out = unpack(cut, layers)[2]
        others = [u for u in range(10) if u not in split.groups[0][g]]
        w_out[others, :] = 0
        sub = NumpyMLP(ModelSpec(split.sub_layers(layers, g)))
        np.testing.assert_allclose(
            sub.predict_logits(slice_params(full, layers, split, g), x),
            NumpyMLP(ModelSpec(layers)).predict_logits(cut, x),
            rtol=1e-5,
            atol=1e-6,
        )


def test_only_the_output_bias_is_shared_and_only_cross_group_blocks_are_untrained():
    layers = LayerSpec((3, 4, 6, 2))
    split = random_split((4, 6), 2, np.random.default_rng(0))
    count = unpack(held_count(layers, split, range(2)).astype(np.float32), layers)
    assert (count[0] == 1).all() and (count[1] == 1).all() and (count[3] == 1).all()  # into and of hidden 1
    assert (count[4] == 1).all() and (count[5] == 2).all()  # hidden 2 -> output; the output bias, shared
    block = count[2]
    for a in range(2):
        for b in range(2):
            assert (block[np.ix_(split.groups[0][a], split.groups[1][b])] == (a == b)).all()


def test_the_one_group_split_is_the_whole_network():
    layers = LayerSpec((5, 8, 7, 3))
    assert np.array_equal(sub_indices(layers, whole((8, 7)), 0), np.arange(layers.n_params))


@pytest.mark.parametrize("g", [2, 4])
def test_each_hidden_to_hidden_weight_is_trained_in_a_round_with_probability_one_over_g(g):
    layers = LayerSpec((3, 8, 8, 2))
    rounds = 2000
    held = (
        sum(
            unpack(held_count(layers, round_split((8, 8), g, 0, r), range(g)).astype(np.float64), layers)[2]
            for r in range(rounds)
        )
        / rounds
    )
    assert abs(held.mean() - 1 / g) < 0.01
    assert np.abs(held - 1 / g).max() < 5 * np.sqrt((1 / g) * (1 - 1 / g) / rounds)  # every weight, 5 sigma


def test_round_splits_are_seeded_and_disjoint():
    a, b = round_split((9, 5), 2, 7, 3), round_split((9, 5), 2, 7, 3)
    assert a == b and a != round_split((9, 5), 2, 7, 4)
    for layer, units in zip(a.groups, (9, 5)):
        assert sorted(u for grp in layer for u in grp) == list(range(units))
        assert sorted(len(grp) for grp in layer) == [units // 2, units - units // 2]


@pytest.mark.parametrize(
    "n,g,equal,expected",
    [
        (8, 2, True, 35),
        (8, 2, False, 127),
        (12, 2, True, 462),
        (12, 3, True, 5775),
        (8, 4, True, 105),
        (6, 3, False, 90),
        (16, 2, True, 6435),
    ],
)
def test_split_counts_match_the_closed_forms(n, g, equal, expected):
    assert (count_equal_splits(n, g) if equal else count_any_splits(n, g)) == expected
    if expected < 10_000:
        splits = list(enumerate_splits(n, g, equal))
        assert len(splits) == len(set(splits)) == expected
        assert all(sorted(u for grp in s for u in grp) == list(range(n)) and len(s) == g for s in splits)


def test_splits_into_equal_groups_need_a_size_that_divides():
    with pytest.raises(ValueError, match="7 units do not split into 2 equal groups"):
        count_equal_splits(7, 2)
    with pytest.raises(ValueError, match="hidden layer 1 has 2 units, fewer than the 3 groups"):
        random_split((5, 2), 3, np.random.default_rng(0))
