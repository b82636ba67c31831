"""combine: ist (Independent Subnet Training) against plain training and against sub-networks cut by hand."""

import numpy as np
import pytest

from conftest import small_config
from nnlib.core.backends import get_backend
from nnlib.core.mlp import ModelSpec
from nnlib.core.params import LayerSpec, unpack
from nnlib.core.train import local_sgd
from nnlib.data.dataset import ShardSource
from nnlib.driver import prepare, run
from nnlib.errors import ConfigError
from nnlib.tasks import shard_rng, train_shard

QUIET = dict(log=lambda _m: None, warn=lambda _m: None)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ist_with_one_mapper_is_plain_training(backend):
    plain = run(small_config("mappers=1", "train.momentum=0.9", f"model.backend={backend}"), **QUIET)
    ist = run(small_config("mappers=1", "train.momentum=0.9", f"model.backend={backend}", "combine=ist"), **QUIET)
    np.testing.assert_array_equal(ist.params, plain.params)


def _by_hand(arrays, groups, g):
    """Sub-network g's arrays cut out with np.ix_: all inputs, group g of each hidden layer, all outputs."""
    units = [slice(None)] + [list(layer[g]) for layer in groups] + [slice(None)]
    out = []
    for i in range(len(arrays) // 2):
        rows, cols = units[i], units[i + 1]
        w = arrays[2 * i][rows][:, cols] if not isinstance(rows, slice) else arrays[2 * i][:, cols]
        out += [w, arrays[2 * i + 1][cols]]
    return out


@pytest.mark.parametrize("scale", ["groups", "none"])
def test_one_ist_round_trains_each_mappers_sub_network_and_copies_it_back(scale):
    config = small_config("mappers=3", "model.hidden=[10,7]", "combine=ist", "train.momentum=0.5",
                          f"split.scale={scale}")
    setup = prepare(config, warn=lambda _m: None)
    payload, layers = setup.first, setup.first.model.layers
    shards = ShardSource(config.data, config.seed, config.mappers).build([0, 1, 2])
    results = [train_shard(shard, payload) for shard in shards]
    split = payload.split()
    start = unpack(payload.params, layers)
    for shard, res in zip(shards, results):  # each mapper: its sub-network, trained alone
        g = shard.index
        sub_layers = LayerSpec((layers.sizes[0], *(len(layer[g]) for layer in split.groups), layers.sizes[-1]))
        sub = np.concatenate([a.ravel() for a in _by_hand(start, split.groups, g)])
        spec = ModelSpec(sub_layers, output_scale=3.0 if scale == "groups" else 1.0)
        expected = local_sgd(get_backend("numpy", spec), sub, np.zeros_like(sub), payload.optimizer, shard.x,
                             shard.y, payload.plan.local, payload.plan.lr, shard_rng(config.seed, 0, g))
        np.testing.assert_array_equal(res.params, expected.params)
        assert res.stats.result_bytes == 2 * sub.nbytes  # the sub-network and its momentum, nothing more
    after = unpack(setup.reducer(results, payload).params, layers)
    for g, res in enumerate(results):
        trained = unpack(res.params, split.sub_layers(layers, g))
        for full, mine in zip(_by_hand(after, split.groups, g)[:-1], trained[:-1]):
            np.testing.assert_array_equal(full, mine)  # copied back, all but the output bias
    np.testing.assert_allclose(after[-1], np.mean([unpack(r.params, split.sub_layers(layers, g))[-1]
                                                   for g, r in enumerate(results)], axis=0), rtol=1e-6)
    a, b = split.groups
    for ga in range(3):
        for gb in range(3):
            block = np.ix_(list(a[ga]), list(b[gb]))
            same = np.array_equal(after[2][block], start[2][block])
            assert same == (ga != gb)  # cross-group blocks untouched, own blocks trained


def test_ist_learns_digits_and_sends_back_less_than_the_whole_network():
    config = small_config("mappers=4", "model.hidden=[128]", "combine=ist", "train.rounds=6")
    ist = run(config, **QUIET)
    full = run(small_config("mappers=4", "model.hidden=[128]", "train.rounds=6"), **QUIET)
    assert ist.rounds[-1]["test_accuracy"] >= 0.93
    n_params = 64 * 128 + 128 + 128 * 10 + 10
    sub_params = 4 * (64 * 32 + 32 + 32 * 10 + 10)
    assert full.rounds[0]["result_bytes"] == 4 * 4 * n_params
    assert ist.rounds[0]["result_bytes"] == 4 * sub_params  # about a quarter


def test_ist_needs_a_unit_per_mapper_in_every_hidden_layer():
    with pytest.raises(ConfigError, match=r"model.hidden=\[16, 3\] has a layer with fewer units than mappers"):
        small_config("mappers=4", "model.hidden=[16,3]", "combine=ist")
