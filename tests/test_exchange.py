"""The driver-mapper exchange of the long-lived stage, with mappers in threads (no Spark)."""

import os
import pickle
import socket
import threading
import time

import numpy as np
import pytest
from conftest import small_config

from nnlib.data.dataset import ShardSource, load_dataset
from nnlib.engines.spark.exchange import Hub, recv, send, serve_mapper
from nnlib.errors import DataError
from nnlib.rounds.mapper import train_shard
from nnlib.rounds.payload import first_payload


def start_mappers(hub, source, mappers, token=None):
    def mapper(m):
        try:
            serve_mapper(lambda: source.build([m])[0], m, hub.address, token or hub.token)
        except ConnectionRefusedError:
            pass  # the hub closed (after another mapper's error) before this one connected

    threads = [threading.Thread(target=mapper, args=(m,), daemon=True) for m in range(mappers)]
    for t in threads:
        t.start()
    return threads


def alive():
    pass


def test_a_round_through_the_hub_equals_training_in_process():
    config = small_config("mappers=2")
    source = ShardSource(config.data, config.seed, 2)
    hub = Hub(2, "127.0.0.1", 0, timeout=30)
    threads = start_mappers(hub, source, 2)
    try:
        hub.connect(alive)
        payload = first_payload(config, load_dataset(config.data, config.seed))
        timings = {}
        start = time.perf_counter()
        results = hub.local_round(payload, alive, timings)
        wall = time.perf_counter() - start
        expected = [train_shard(shard, payload) for shard in source.build([0, 1])]
        assert [r.stats.mapper for r in results] == [0, 1]
        for got, want in zip(results, expected):
            np.testing.assert_array_equal(got.params, want.params)
            assert (got.stats.n_samples, got.stats.steps) == (want.stats.n_samples, want.stats.steps)
        # the mappers are threads of this process
        assert hub.executors == [(socket.gethostname(), os.getpid())] * 2
        # the two phases hold every mapper's training (a mapper may start while the next is still being
        # sent to) and fit inside the call
        assert set(timings) == {"broadcast", "wait"}
        assert max(r.stats.train_seconds for r in results) <= timings["broadcast"] + timings["wait"] <= wall
    finally:
        hub.close()
    for t in threads:
        t.join(timeout=10)
        assert not t.is_alive()  # every mapper ended when told to stop


def test_a_connection_without_the_token_is_closed_unread():
    config = small_config("mappers=1")
    hub = Hub(1, "127.0.0.1", 0, timeout=30)
    intruder = socket.create_connection(hub.address)
    intruder.sendall(b"NNLB" + b"0" * 32 + (0).to_bytes(4, "big"))  # the wrong token
    threads = start_mappers(hub, ShardSource(config.data, config.seed, 1), 1)
    try:
        hub.connect(alive)
        assert intruder.recv(1) == b""  # closed by the hub
        assert hub.conns[0] is not None and hub.executors == [(socket.gethostname(), os.getpid())]
    finally:
        hub.close()
        intruder.close()
    threads[0].join(timeout=10)


def test_a_mapper_that_cannot_build_its_shard_is_named(tmp_path):
    config = small_config("mappers=2", f"data.source={tmp_path / 'gone.npz'}")
    hub = Hub(2, "127.0.0.1", 0, timeout=30)
    start_mappers(hub, ShardSource(config.data, config.seed, 2), 2)
    try:
        with pytest.raises(DataError, match=r"^mapper [01]: data.source: file .*gone.npz does not exist$"):
            hub.connect(alive)
    finally:
        hub.close()


def hand_made_mappers(hub, n):
    """``n`` raw connections that say hello with the token and report ready, as a mapper does."""
    from nnlib.engines.spark.exchange import _HELLO, _MAGIC

    conns = []
    for m in range(n):
        conn = socket.create_connection(hub.address)
        conn.sendall(_HELLO.pack(_MAGIC, hub.token.encode(), m))
        send(conn, ("ready", f"host-{m}", 1000 + m))
        conns.append(conn)
    hub.connect(alive)
    return conns


def test_a_broadcast_sends_every_mapper_the_same_frame_and_gather_answers_in_mapper_order():
    hub = Hub(3, "127.0.0.1", 0, timeout=30)
    conns = hand_made_mappers(hub, 3)
    try:
        assert hub.executors == [("host-0", 1000), ("host-1", 1001), ("host-2", 1002)]
        message = ("round", np.arange(5, dtype=np.float32))
        hub.broadcast(message)
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        frame = len(data).to_bytes(8, "big") + data  # an 8-byte big-endian length, then the pickle
        for conn in conns:
            got = b""
            while len(got) < len(frame):
                got += conn.recv(len(frame) - len(got))
            assert got == frame

        for m in (2, 0, 1):  # the answers arrive out of order
            send(conns[m], ("result", f"from mapper {m}"))
        assert hub.gather("result", alive, "in round 0") == [("from mapper 0",), ("from mapper 1",), ("from mapper 2",)]
    finally:
        hub.close()
    for conn in conns:
        assert recv(conn) == ("stop",)  # close() tells every mapper to stop
        conn.close()


def test_send_each_gives_each_mapper_its_own_message():
    hub = Hub(2, "127.0.0.1", 0, timeout=30)
    conns = hand_made_mappers(hub, 2)
    try:
        hub.send_each(lambda m: ("round", m * 10))
        assert [recv(conn) for conn in conns] == [("round", 0), ("round", 10)]
    finally:
        hub.close()
        for conn in conns:
            conn.close()
