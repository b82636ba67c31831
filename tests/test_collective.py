"""The Spark tasks' collective (reduce-scatter by slices, then allgather) over sockets, tasks in threads (no Spark)."""

import socket
import threading

import numpy as np
import pytest

from nnlib.engines.spark.collective import DriverStopped, Listener, PeerLost, TaskCollective, TaskMesh, slice_bounds
from nnlib.rounds.reduce import mean_gradient, sync_coefficients

TOKEN = "ab" * 16


def run_tasks(groups, work, token_of=lambda rank: TOKEN, watch_of=lambda rank: None, timeout=20):
    """``work(collective, rank)`` in one thread per task of ``groups``; each task's return value or exception."""
    listeners = [Listener("127.0.0.1") for _ in groups]
    addresses = [listener.address for listener in listeners]
    out = [None] * len(groups)

    def task(rank):
        mesh = None
        try:
            mesh = TaskMesh.connect(
                listeners[rank], rank, addresses, groups, token_of(rank), watch_of(rank), timeout=timeout
            )
            out[rank] = work(TaskCollective(mesh), rank)
        except Exception as exc:  # noqa: BLE001  - returned to the test
            out[rank] = exc
        finally:
            if mesh is not None:
                mesh.close()
            listeners[rank].close()

    threads = [threading.Thread(target=task, args=(r,), daemon=True) for r in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    return out


def test_slices_cover_the_vector_once():
    assert slice_bounds(10, 3) == [0, 3, 6, 10]
    assert slice_bounds(2, 3) == [0, 0, 1, 2]  # fewer elements than tasks: an empty slice


@pytest.mark.parametrize(
    "groups",
    [[[0], [1]], [[0], [1], [2]], [[0, 1], [2]], [[0], [1, 2, 3]], [[0]]],
    ids=["2 tasks", "3 tasks", "2 mappers in task 0", "3 mappers in task 1", "1 task"],
)
@pytest.mark.parametrize("n", [101_770, 5, 2])
def test_mean_equals_the_local_engines_mean_bit_for_bit(groups, n):
    k = sum(map(len, groups))
    rng = np.random.default_rng(n + k)
    # wide-ranging values and uneven batches (one mapper sat out), where the order of the sum shows in the bits
    grads = [(rng.normal(size=n) * 10.0 ** rng.integers(-6, 6, n)).astype(np.float32) for _ in range(k)]
    coefs = sync_coefficients([32, 7, 0, 32][:k] if k > 1 else [32])
    want = mean_gradient(grads, coefs)

    def work(collective, rank):
        return [collective.mean([grads[m] for m in groups[rank]], coefs) for _ in range(3)]

    for got in run_tasks(groups, work):
        assert not isinstance(got, Exception), got
        for mean in got:  # every step, every task, the same bits
            assert mean.dtype == np.float32
            np.testing.assert_array_equal(mean.view(np.uint32), want.view(np.uint32))


def test_the_order_of_the_sum_is_the_mapper_order():
    # in float32, 1e8 + 1 - 1e8 is 0 and 1e8 - 1e8 + 1 is 1: the mean must be the in-order one of the local engine
    grads = [np.full(4, v, np.float32) for v in (1e8, 1.0, -1e8)]
    coefs = np.ones(3)
    want = mean_gradient(grads, coefs)
    got = run_tasks([[0], [1], [2]], lambda c, rank: c.mean([grads[rank]], coefs))
    for mean in got:
        np.testing.assert_array_equal(mean, want)


def test_flagged_mappers_are_known_to_every_task():
    groups = [[0, 1], [2], [3]]
    bad = {1, 3}
    got = run_tasks(groups, lambda c, rank: c.mappers_flagged({m: m in bad for m in groups[rank]}))
    assert got == [[1, 3]] * 3


def test_a_peer_without_the_token_is_refused():
    # task 1 dials with a wrong token: task 0 closes the connection unread and, finding nobody else, gives up
    got = run_tasks(
        [[0], [1]],
        lambda c, rank: c.mean([np.ones(4, np.float32)], np.ones(2) / 2),
        token_of=lambda rank: TOKEN if rank == 0 else "cd" * 16,
        timeout=2,
    )
    assert isinstance(got[0], PeerLost) and got[0].mapper == 1 and "did not connect" in got[0].reason
    assert isinstance(got[1], PeerLost) and got[1].mapper == 0  # its connection was closed by task 0


def test_a_peer_that_dies_is_peer_lost_naming_its_mapper():
    def work(collective, rank):
        if rank == 2:
            collective.mesh.close()  # the task dies before its first step
            return None
        return collective.mean([np.ones(1000, np.float32)], np.ones(3) / 3)

    got = run_tasks([[0], [1], [2]], work)
    assert all(isinstance(g, PeerLost) for g in got[:2]), got
    assert {g.mapper for g in got[:2]} <= {2, 0, 1}
    assert any(g.mapper == 2 for g in got[:2])  # at least one survivor names the dead task


def test_a_word_from_the_driver_ends_a_wait_on_a_peer():
    driver, task_end = socket.socketpair()
    released = threading.Event()

    def work(collective, rank):
        if rank == 1:  # never takes its step, and keeps its connection open until task 0 has given up
            released.wait(10)
            return None
        try:
            return collective.mean([np.ones(8, np.float32)], np.ones(2) / 2)
        finally:
            released.set()

    timer = threading.Timer(0.5, lambda: driver.sendall(b"x"))
    timer.start()
    try:
        got = run_tasks([[0], [1]], work, watch_of=lambda rank: task_end if rank == 0 else None)
    finally:
        timer.cancel()
        driver.close()
        task_end.close()
    assert isinstance(got[0], DriverStopped), got
