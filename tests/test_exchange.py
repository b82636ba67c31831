"""The driver-mapper exchange of the long-lived stage, with mappers in threads (no Spark)."""

import socket
import threading

import numpy as np
import pytest
from conftest import small_config

from nnlib.data.dataset import ShardSource, load_dataset
from nnlib.engines.spark.exchange import Hub, serve_mapper
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
        results = hub.local_round(payload, alive, timings)
        expected = [train_shard(shard, payload) for shard in source.build([0, 1])]
        for got, want in zip(results, expected):
            np.testing.assert_array_equal(got.params, want.params)
            assert got.stats.mapper == want.stats.mapper
        assert timings["wait"] > 0 and timings["broadcast"] >= 0
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
        assert hub.conns[0] is not None and hub.executors[0][1] > 0
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
