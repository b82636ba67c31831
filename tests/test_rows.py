"""Row-keyed membership and statistics in pieces: the closed forms and numpy as the oracle."""

import numpy as np
import pytest

from nnlib.data.rows import TEST, TRAIN, VAL, Moments, RowPlan, Tally, merge_in_order, unit_hash


def test_the_row_hash_is_uniform_deterministic_and_seeded():
    pos = np.arange(200_000)
    u = unit_hash(7, 1, pos)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 19_000  # each tenth holds ~20000
    np.testing.assert_array_equal(u, unit_hash(7, 1, pos))
    assert abs(np.corrcoef(u, unit_hash(8, 1, pos))[0, 1]) < 0.01
    assert abs(np.corrcoef(u, unit_hash(7, 2, pos))[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # neighbouring rows are independent


def test_roles_and_shards_depend_on_the_position_alone():
    plan = RowPlan(seed=3, mappers=4, n_rows=100_000, test_fraction=0.2, validation_fraction=0.1)
    pos = np.arange(100_000)
    role, shard = plan.roles(pos), plan.shards(pos)
    picked = np.random.default_rng(0).choice(pos, 500, replace=False)
    np.testing.assert_array_equal(plan.roles(picked), role[picked])  # any reader, any subset: the same answer
    np.testing.assert_array_equal(plan.shards(picked), shard[picked])
    assert abs((role == TEST).mean() - 0.2) < 0.005
    assert abs((role == VAL).mean() - 0.8 * 0.1) < 0.005
    assert np.bincount(shard[role == TRAIN]).min() > 0.24 * (role == TRAIN).sum()
    contiguous = RowPlan(3, 4, 10, None, 0.0, "contiguous")
    assert contiguous.shards(np.arange(10)).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert (contiguous.roles(np.arange(10)) == TRAIN).all()  # a given test set: every row trains


@pytest.mark.parametrize("cuts", [[], [1], [3, 500, 501, 4000], list(range(100, 9000, 700))])
def test_moments_merged_in_pieces_equal_numpy_float64(cuts):
    x = np.random.default_rng(1).normal(5.0, 3.0, size=(9000, 6)) * [1, 10, 1e-3, 1e4, 1, 1]
    x[:, 4] = 2.5  # a constant feature keeps a scale of 1
    pieces = np.split(x, cuts)
    merged = Moments.of(pieces[0])
    for piece in pieces[1:]:
        merged = merged.merge(Moments.of(piece))
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12)
    expected = x.std(axis=0)
    expected[4] = 1
    np.testing.assert_allclose(merged.std(), expected, rtol=1e-12)


def test_tallies_merge_to_the_counts_of_the_whole():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(1000, 3)), rng.integers(0, 4, 1000)
    plan = RowPlan(0, 3, 1000, 0.25, 0.0)
    pos = np.arange(1000)
    role, shard = plan.roles(pos), plan.shards(pos)
    blocks = [(int(p[0]), Tally.of(x[p], y[p], role[p], shard[p], 3, p)) for p in np.array_split(pos, 7)]
    total = merge_in_order(blocks[::-1])  # handed over in any order
    whole = Tally.of(x, y, role, shard, 3, pos)
    assert total.role_counts.tolist() == whole.role_counts.tolist() == np.bincount(role, minlength=3).tolist()
    assert total.shard_counts.tolist() == np.bincount(shard[role == TRAIN], minlength=3).tolist()
    assert total.train_label_max == 3 and total.train_labels_seen == {0, 1, 2, 3}
    assert total.digest == whole.digest != 0  # the rows' digest: any split of the rows, any order
    flipped = Tally.of(x, np.where(y == 0, 1, np.where(y == 1, 0, y)), role, shard, 3, pos)
    assert flipped.digest != whole.digest  # the same features with labels changed
    np.testing.assert_allclose(total.moments.mean, x[role == TRAIN].mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("partition", ["random", "contiguous"])
def test_a_shards_positions_from_the_plan_alone_equal_the_rows_the_hash_gives_it(partition):
    plan = RowPlan(seed=9, mappers=3, n_rows=10_007, test_fraction=0.2, validation_fraction=0.1, partition=partition)
    pos = np.arange(plan.n_rows)
    role, shard = plan.roles(pos), plan.shards(pos)
    for k in range(3):
        lo, hi = plan.span(k)
        assert ((shard == k) <= ((pos >= lo) & (pos < hi))).all()  # the span holds every row of the shard
        found = plan.positions(k, (TRAIN, VAL, TEST), chunk=1000)
        for r in (TRAIN, VAL, TEST):
            np.testing.assert_array_equal(found[r], pos[(shard == k) & (role == r)])
    if partition == "contiguous":
        assert [plan.span(k) for k in range(3)] == [(0, 3336), (3336, 6672), (6672, 10_007)]
