"""Learning-rate schedules across rounds and early stopping on a validation split."""

import math

import numpy as np
import pytest
from conftest import small_config

from nnlib.data.dataset import load_dataset
from nnlib.driver import EarlyStopping, run
from nnlib.errors import ConfigError
from nnlib.rounds.schedule import Schedule, round_lr_factor

QUIET = dict(log=lambda _msg: None)


def test_round_lr_factors_follow_their_closed_forms():
    assert [round_lr_factor(r, 6) for r in range(6)] == [1.0] * 6
    assert [round_lr_factor(r, 7, "step", step_rounds=3, gamma=0.1) for r in range(7)] == pytest.approx(
        [1, 1, 1, 0.1, 0.1, 0.1, 0.01]
    )
    cosine = [round_lr_factor(r, 5, "cosine", warmup_rounds=1, min_factor=0.2) for r in range(5)]
    # warm-up 1/2; then t = 0..3 of T = 4: 0.2 + 0.8 * (1 + cos(pi t / 4)) / 2
    assert cosine == pytest.approx([0.5] + [0.2 + 0.8 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)])
    assert [round_lr_factor(r, 4, "constant", warmup_rounds=3) for r in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_every_round_trains_at_its_scheduled_rate_on_every_kind_of_round():
    config = small_config(
        "train.rounds=4",
        "train.lr=0.2",
        "train.lr_schedule=step",
        "train.lr_step_rounds=2",
        "train.lr_gamma=0.5",
        "train.sync_rounds=1",
        "train.lr_warmup_rounds=1",
    )
    plans = [Schedule.from_config(config, [100] * config.mappers).plan(r) for r in range(4)]
    assert [p.lr for p in plans] == pytest.approx([0.1, 0.2, 0.2, 0.1])
    np.testing.assert_allclose(plans[0].sync_lrs, 0.1)  # the synchronous round's steps are scaled too
    result = run(config, **QUIET)
    assert [row["lr"] for row in result.rounds] == pytest.approx([0.1, 0.2, 0.2, 0.1])


def test_a_scheduled_rate_changes_the_weights_and_a_constant_schedule_changes_nothing():
    plain = run(small_config(), **QUIET).params
    np.testing.assert_array_equal(
        run(small_config("train.lr_schedule=constant", "train.lr_gamma=0.1"), **QUIET).params, plain
    )
    assert not np.array_equal(run(small_config("train.lr_schedule=cosine"), **QUIET).params, plain)


def test_the_validation_split_comes_out_of_the_training_set_only():
    full = load_dataset(small_config().data, 7)
    held = load_dataset(small_config("data.validation_fraction=0.25").data, 7)
    assert len(held.y_val) == round(0.25 * len(full.y_train))
    assert len(held.y_train) + len(held.y_val) == len(full.y_train)
    assert len(held.y_test) == len(full.y_test)


def test_early_stopping_counts_rounds_without_a_lower_validation_loss():
    stop = EarlyStopping(patience=2)
    flags = [stop.update(r, loss, np.array([r])) for r, loss in enumerate([3.0, 2.0, 2.5, 1.5, 1.6, 1.5, 1.7])]
    assert flags == [False, False, False, False, False, True, True] and stop.best_round == 3
    assert stop.best_params[0] == 3  # a tie is no improvement


OVERFITS = (
    "data.source=synthetic",
    "data.n_samples=300",
    "data.validation_fraction=0.3",
    "model.hidden=[128]",
    "train.lr=0.5",
    "train.rounds=30",
    "train.local_epochs=2",
)


def test_early_stopping_stops_patience_rounds_after_the_best_and_keeps_its_weights():
    result = run(small_config(*OVERFITS, "train.patience=2"), **QUIET)
    best = result.summary["best_round"]
    assert result.summary["rounds_run"] == best + 2 < 30
    losses = [row["val_loss"] for row in result.rounds]
    assert min(losses) == losses[best - 1] == result.summary["best_val_loss"]
    # the kept weights are those after round `best`: an uninterrupted run of that many rounds
    np.testing.assert_array_equal(result.params, run(small_config(*OVERFITS, f"train.rounds={best}"), **QUIET).params)
    assert result.summary["final_test_accuracy"] == result.rounds[best - 1]["test_accuracy"]


def test_patience_without_a_validation_split_is_refused():
    with pytest.raises(
        ConfigError,
        match="train.patience=3 stops on the validation loss and needs "
        r"data.validation_fraction > 0",
    ):
        small_config("train.patience=3")
    with pytest.raises(ConfigError, match="train.lr_min must be below train.lr"):
        small_config("train.lr_schedule=cosine", "train.lr_min=0.5", "train.lr=0.1")
