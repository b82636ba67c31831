"""Update rules against torch.optim step for step, and the optimizer state across rounds."""

import numpy as np
import pytest
from conftest import needs_torch, small_config

from nnlib.core.backends import get_backend
from nnlib.core.optim import SGD, Adam, from_json, to_json
from nnlib.core.train import LocalSchedule, local_sgd
from nnlib.data.dataset import ShardSource
from nnlib.driver import prepare, run
from nnlib.rounds.mapper import shard_rng

QUIET = dict(log=lambda _m: None, warn=lambda _m: None)


def torch_steps(rule, w0, grads, lr):
    """``torch.optim.<name>(**kwargs)`` for ``rule = (name, kwargs)``, stepped through ``grads``."""
    import torch

    name, kwargs = rule
    w = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = getattr(torch.optim, name)([w], lr, **kwargs)
    out = []
    for g in grads:
        w.grad = torch.from_numpy(g.copy())
        opt.step()
        out.append(w.detach().numpy().copy())
    return out


def ours(optimizer, w0, grads, lr):
    w = w0.copy()
    state = optimizer.init_state(w)
    out = []
    for g in grads:
        optimizer.step(w, g, state, lr)
        out.append(w.copy())
    return out


CASES = {  # ours, and torch.optim's class name and arguments
    "sgd-weight-decay": (SGD(weight_decay=0.01), ("SGD", {"weight_decay": 0.01})),
    "momentum": (SGD(0.9), ("SGD", {"momentum": 0.9})),
    "nesterov": (SGD(0.9, nesterov=True), ("SGD", {"momentum": 0.9, "nesterov": True})),
    "adam": (Adam(), ("Adam", {})),
    "adam-l2": (
        Adam(0.8, 0.99, 1e-6, weight_decay=0.05),
        ("Adam", {"betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.05}),
    ),
    "adamw": (Adam(weight_decay=0.1, decoupled=True), ("AdamW", {"weight_decay": 0.1})),
}


@needs_torch
@pytest.mark.parametrize("name", CASES)
def test_matches_torch_optim_step_for_step(name):
    ours_rule, torch_rule = CASES[name]
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=50).astype(np.float32)
    grads = [rng.normal(size=50).astype(np.float32) for _ in range(30)]
    for mine, theirs in zip(ours(ours_rule, w0, grads, 0.01), torch_steps(torch_rule, w0, grads, 0.01)):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CASES)
def test_an_update_rule_survives_json(name):
    rule = CASES[name][0]
    assert from_json(to_json(rule)) == rule


def test_adam_keeps_a_step_count_per_parameter():
    w = np.zeros(4, np.float32)
    state = Adam().init_state(w)
    Adam().step(w, np.ones(4, np.float32), state, 0.1)
    np.testing.assert_array_equal(state.reshape(3, 4)[2], [1, 1, 1, 1])
    np.testing.assert_allclose(w, -0.1, rtol=1e-6)  # the first Adam step is lr * sign(g)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "nesterov"])
def test_averaged_optimizer_state_with_one_mapper_is_sequential_training(optimizer):
    """One mapper, state carried over rounds: 3 rounds of one epoch equal 1 round of 3 epochs."""
    sets = ["mappers=1", f"train.optimizer={optimizer}", "train.momentum=0.9", "train.lr=0.01"]
    config = small_config(*sets, "train.rounds=3", "train.local_epochs=1")
    rounds = run(config, **QUIET)
    setup = prepare(config, warn=lambda _m: None)
    (shard,) = ShardSource(config.data, config.seed, 1).build([0])
    payload = setup.first
    params, state = payload.params, payload.opt_state
    for r in range(3):  # the rounds by hand: the state goes on from round to round
        update = local_sgd(
            get_backend("numpy", payload.model),
            params,
            state,
            payload.optimizer,
            shard.x,
            shard.y,
            LocalSchedule(32, 1),
            0.01,
            shard_rng(config.seed, r, 0),
        )
        params, state = update.params, update.opt_state
    np.testing.assert_array_equal(rounds.params, params)


def test_reset_state_starts_every_round_afresh():
    averaged = run(small_config("train.optimizer=adam", "train.lr=0.01"), **QUIET)
    reset = run(small_config("train.optimizer=adam", "train.lr=0.01", "train.optimizer_state=reset"), **QUIET)
    assert averaged.rounds[0]["test_accuracy"] == reset.rounds[0]["test_accuracy"]  # round 0 starts fresh anyway
    assert not np.array_equal(averaged.params, reset.params)


def test_nesterov_without_momentum_is_refused():
    from nnlib.errors import ConfigError

    with pytest.raises(ConfigError, match="train.optimizer=nesterov needs train.momentum > 0"):
        small_config("train.optimizer=nesterov")
