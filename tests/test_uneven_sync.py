"""Synchronous rounds on uneven shards: every row trained on, and every engine equal to the local one.

A mapper whose shard is used up for the epoch takes part with an empty batch
and weight 0 until the largest shard's epoch ends (torch's ``Join``), and each
step's mean gradient is weighted by the samples in it (docs/pages/guide/mpi.md, "Running with
MPI", uneven shards).
"""

from dataclasses import replace

import numpy as np
import pytest
from conftest import small_config

from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.core.params import LayerSpec, init_params
from nnlib.core.train import LocalSchedule, batch_indices
from nnlib.data.dataset import Shard, load_dataset
from nnlib.driver import run
from nnlib.engines.local import InProcessCollective
from nnlib.rounds.mapper import shard_rng, sync_batches, sync_shards
from nnlib.rounds.payload import first_payload
from nnlib.rounds.schedule import Schedule, sync_batch_sizes

QUIET = dict(log=lambda _m: None, warn=lambda _m: None)
UNEVEN = ("combine=gradient", "data.partition=quantity_skew", "data.skew_alpha=0.3")


def test_batch_sizes_of_uneven_shards_closed_form():
    # shards of 10, 5 and 1 samples, batches of 4: an epoch is the largest shard's 3 steps
    sizes = sync_batch_sizes([10, 5, 1], 4, np.arange(6), per_epoch=3)
    assert sizes.tolist() == [[4, 4, 1], [4, 1, 0], [2, 0, 0]] * 2


def test_equal_shards_keep_the_batches_of_plain_local_steps():
    for n, steps in ((12, 7), (13, 8)):
        per_epoch = -(-n // 4)
        joined = sync_batches(n, 4, steps, per_epoch, np.random.default_rng(5))
        plain = batch_indices(n, LocalSchedule(4, local_steps=steps), np.random.default_rng(5))
        assert [b.tolist() for b in joined] == [b.tolist() for b in plain]


def test_sync_sgd_on_uneven_shards_equals_sgd_on_each_steps_union_batch():
    # 3 mappers of 10, 5 and 1 samples, batch 4, 2 epochs: 6 steps; each step's gradient is that of the union
    rng = np.random.default_rng(2)
    layers = LayerSpec((5, 6, 3))
    spec = ModelSpec(layers, "relu", "cross_entropy", l2=0.01)
    shards = [Shard(i, rng.normal(size=(n, 5)), rng.integers(0, 3, n)) for i, n in enumerate((10, 5, 1))]
    config = small_config(
        "combine=gradient", "mappers=3", "train.batch_size=4", "train.momentum=0.9", "train.local_epochs=2"
    )
    schedule = Schedule.from_config(config, [10, 5, 1])
    params = init_params(layers, 0).astype(np.float64)
    payload = replace(
        first_payload(config, load_dataset(config.data, config.seed), schedule),
        model=spec,
        params=params,
        opt_state=np.zeros_like(params),
        plan=schedule.plan(0),
    )
    combined, stats = sync_shards(shards, payload, InProcessCollective())

    assert len(payload.plan.sync_lrs) == 6 and [s.steps for s in stats] == [6, 4, 2]
    batches = [sync_batches(s.n_samples, 4, 6, 3, shard_rng(config.seed, 0, s.index)) for s in shards]
    for epoch in range(2):  # every row once per epoch
        for s, b in zip(shards, batches):
            assert sorted(np.concatenate(b[3 * epoch : 3 * epoch + 3]).tolist()) == list(range(s.n_samples))
    mlp = NumpyMLP(spec)
    w, v = params.copy(), np.zeros_like(params)
    for step, lr in enumerate(payload.plan.sync_lrs):  # plain SGD with momentum on the step's union batch
        x = np.concatenate([s.x[b[step]] for s, b in zip(shards, batches)])
        y = np.concatenate([s.y[b[step]] for s, b in zip(shards, batches)])
        _, g = mlp.loss_and_grad(w, x, y)
        v = 0.9 * v + g
        w = w - lr * v
    np.testing.assert_allclose(combined.params, w, rtol=0, atol=1e-12)


def test_linear_scaling_counts_the_mappers_taking_part():
    config = small_config("combine=gradient", "mappers=3", "train.batch_size=4", "train.lr_scaling=linear")
    plan = Schedule.from_config(config, [10, 5, 1]).plan(0)
    np.testing.assert_allclose(plan.sync_lrs, 0.1 * np.array([3, 2, 1]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        (*UNEVEN, "train.momentum=0.9", "train.lr_scaling=linear"),
        ("train.sync_rounds=1", "combine=weighted", "data.partition=quantity_skew", "data.skew_alpha=0.3"),
    ],
    ids=["gradient", "post-local"],
)
def test_uneven_synchronous_rounds_on_spark_equal_the_local_engine(spark, overrides):
    from test_engines import spark_engine

    config = small_config("mappers=3", "train.rounds=2", *overrides)
    local = run(config, **QUIET)
    sizes = [r["n_samples"] for r in local.mapper_rows[:3]]
    assert max(sizes) > 2 * min(sizes)  # uneven indeed
    on_spark = run(config.model_copy(update={"engine": "spark"}), engine=spark_engine("stage"), **QUIET)
    np.testing.assert_array_equal(on_spark.params, local.params)
    assert [r["steps"] for r in on_spark.mapper_rows] == [r["steps"] for r in local.mapper_rows]


@pytest.mark.slow
def test_uneven_synchronous_rounds_on_mpi_equal_the_local_engine(tmp_path):
    from conftest import saved_params
    from test_mpi import local_params, mpirun

    sets = (
        "--set",
        "mappers=2",
        "--set",
        "combine=gradient",
        "--set",
        "data.partition=quantity_skew",
        "--set",
        "data.skew_alpha=0.3",
        "--set",
        "train.lr_scaling=linear",
    )
    proc, out = mpirun(tmp_path, 2, *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_array_equal(saved_params(out), local_params(*sets))
    rows = (out / "mapper_times.csv").read_text().splitlines()[1:3]
    assert len({row.split(",")[4] for row in rows}) == 2  # the two ranks' shards differ in size
