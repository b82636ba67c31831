"""A driver and its long-lived mappers talking over TCP for a whole run.

The driver listens on one socket (:class:`Hub`); every mapper task connects
once, proves it belongs to this run with the run's random token, builds its
shard once, and then serves rounds until the driver says stop
(:func:`serve_mapper`). Each round costs one message each way per mapper
instead of a new cluster job.

Messages are length-prefixed pickles, read only from connections that have
shown the token (the first message is a fixed-size hello of raw bytes, never
unpickled). Driver to mapper:

- ``("round", payload)``: run :func:`nnlib.rounds.mapper.train_shard`; the mapper
  answers ``("result", MapperResult)``. In a round of sub-networks (``ist``,
  ``split``) each mapper's payload holds only its own sub-network;
- ``("sync", payload, peers)``: a synchronous round. With ``peers`` (every
  mapper's listening address, in mapper order; ``spark.collective: tasks``)
  the mappers average their gradients among themselves every step
  (:mod:`nnlib.engines.spark.collective`: the mesh is built at the first such
  round and kept for the stage); with ``peers`` None (``spark.collective:
  driver``) every step the mapper sends ``("grad", g)`` and waits for
  ``("mean", m)``, the driver's mean over all mappers (for a module with
  floating buffers, one more pair after the last step carries the
  mappers' running statistics). At the end it answers
  ``("synced", MapperStats, Combined or None)`` (mapper 0 sends the round's
  state, every mapper holding the same), or ``("lost", mapper, reason)`` when
  a peer's connection broke;
- ``("score", backend, model, params)``: score the weights on the held-out
  rows the mapper keeps (a large Parquet source's test and validation sets
  stay with the mappers); it answers ``("scores", {role: (loss sum, correct,
  rows)})``;
- ``("stop",)``: end the task.

A mapper says ``("ready", host, pid, listening address)`` once its shard is
built. Any mapper may answer ``("error", type name, message)`` instead; the
driver raises it as one line naming the mapper. The traffic is not encrypted: on an
untrusted network run Spark with ``spark.authenticate`` and
``spark.network.crypto.enabled`` and keep the port behind the cluster's
firewall (``spark.port`` pins it).
"""

from __future__ import annotations

import hmac
import os
import pickle
import secrets
import socket
import struct
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from nnlib import errors
from nnlib.data.disk import MemoryStore, ShardStore, kept, shard_store
from nnlib.engines.spark.collective import DriverStopped, Listener, PeerLost, TaskCollective, TaskMesh
from nnlib.errors import EngineError
from nnlib.rounds.mapper import score_held_out, sync_shards, train_shard
from nnlib.rounds.payload import Combined, MapperResult, MapperStats, RoundPayload
from nnlib.rounds.reduce import buffer_coefficients, check_mean_gradient, mean_gradient, sync_coefficients

_LENGTH = struct.Struct("!Q")
_HELLO = struct.Struct("!4s32sI")  # magic, token, mapper index
_MAGIC = b"NNLB"
START_ALLOWANCE = 60.0  # seconds a mapper may take to start and build its shard, beyond the mapper timeout


def _not_finite(grads: list[np.ndarray]) -> list[int]:
    """The mappers whose gradient holds a NaN or an infinity."""
    return [m for m, g in enumerate(grads) if not np.isfinite(g).all()]


class MapperLost(Exception):
    """A mapper's connection broke (its executor died or the stage was aborted); the round can be redone."""

    def __init__(self, mapper: int, reason: str):
        super().__init__(f"mapper {mapper}: {reason}")
        self.mapper, self.reason = mapper, reason


class _Stopped(Exception):
    """The driver ended the run while a mapper waited inside a round."""


def _frame(message) -> tuple[bytes, bytes]:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)), data


def send(conn: socket.socket, message) -> None:
    header, data = _frame(message)
    conn.sendall(header)  # two sends, no copy of a large message; TCP_NODELAY is on
    conn.sendall(data)


def _recv_exactly(conn: socket.socket, n: int, first_wait: Callable[[], None] | None = None) -> bytearray:
    """``n`` bytes from ``conn``; while none has come, ``first_wait()`` runs on every socket timeout."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = conn.recv_into(view[got:])
        except TimeoutError:
            if got or first_wait is None:
                raise
            first_wait()
            continue
        if k == 0:
            raise ConnectionError("connection closed")
        got += k
    return buf


def recv_sized(conn: socket.socket, first_wait: Callable[[], None] | None = None) -> tuple[object, int]:
    """The next message and its size on the wire in bytes (header included)."""
    (length,) = _LENGTH.unpack(_recv_exactly(conn, _LENGTH.size, first_wait))
    return pickle.loads(_recv_exactly(conn, length)), _LENGTH.size + length


def recv(conn: socket.socket, first_wait: Callable[[], None] | None = None):
    return recv_sized(conn, first_wait)[0]


def _error_message(exc: BaseException) -> tuple[str, str, str]:
    return ("error", type(exc).__name__, errors.first_line(exc))


class DriverCollective:
    """A synchronous round's gradient mean, computed by the driver over every mapper."""

    def __init__(self, conn: socket.socket):
        self.conn = conn

    def mean(self, local: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
        (grad,) = local  # the driver weights it (by the round's plan, as every engine does)
        send(self.conn, ("grad", grad))
        reply = recv(self.conn)
        if reply[0] != "mean":
            raise _Stopped()
        return reply[1]

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        return []  # the driver judges non-finite gradients itself and never sends a non-finite mean


def serve_mapper(build, mapper: int, address: tuple[str, int], token: str, data=None) -> None:
    """A mapper task's whole life: connect, build its shard once (``build()``), serve rounds until stopped.

    The task also listens for its peers (on the address it reaches the
    driver from) in case the run has synchronous rounds among the tasks.
    Under ``data.shard_storage: disk`` (``data``, the run's DataConfig) the
    shard is kept in a scratch folder of the executor, removed when the
    task ends.
    """
    conn = socket.create_connection(address, timeout=60)
    conn.settimeout(None)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener: Listener | None = None
    mesh: TaskMesh | None = None
    store: MemoryStore | ShardStore = MemoryStore()
    try:
        conn.sendall(_HELLO.pack(_MAGIC, token.encode(), mapper))
        listener = Listener(conn.getsockname()[0])
        try:
            store = MemoryStore() if data is None else shard_store(data)
            shard = kept([build()], store)[0]
        except Exception as exc:  # noqa: BLE001  - reported to the driver, which stops the run
            send(conn, _error_message(exc))
            return
        send(conn, ("ready", socket.gethostname(), os.getpid(), listener.address))
        while True:
            message = recv(conn)
            try:
                if message[0] == "round":
                    send(conn, ("result", train_shard(shard, message[1])))
                elif message[0] == "score":
                    send(conn, ("scores", score_held_out(shard, *message[1:])))
                elif message[0] == "sync":
                    peers = message[2] if len(message) > 2 else None
                    collective: DriverCollective | TaskCollective
                    if peers is None:
                        collective = DriverCollective(conn)
                    else:
                        if mesh is None:  # the first synchronous round of this stage
                            mesh = TaskMesh.connect(
                                listener, mapper, peers, [[m] for m in range(len(peers))], token, watch=conn
                            )
                            listener.close()
                        collective = TaskCollective(mesh)
                    combined, (stats,) = sync_shards([shard], message[1], collective)
                    send(conn, ("synced", stats, combined if mapper == 0 else None))
                else:
                    return
            except (_Stopped, DriverStopped):
                return
            except PeerLost as exc:  # the driver starts the stage again
                send(conn, ("lost", exc.mapper, exc.reason))
                return
            except Exception as exc:  # noqa: BLE001  - reported to the driver, which stops the run
                send(conn, _error_message(exc))
                return
    except (ConnectionError, EOFError, OSError):
        return  # the driver is gone or restarted the stage: end quietly
    finally:
        store.remove()
        if mesh is not None:
            mesh.close()
        if listener is not None:
            listener.close()
        conn.close()


class Hub:
    """The driver's end: one listening socket, one connection per mapper, messages in mapper order."""

    def __init__(self, mappers: int, host: str, port: int = 0, timeout: float = 1800.0, collective: str = "tasks"):
        self.mappers, self.timeout, self.collective = mappers, timeout, collective
        self.bytes_sent = self.bytes_received = 0  # every message's bytes on the wire, headers included
        self.token = secrets.token_hex(16)
        try:
            self.server = socket.create_server((host, port), backlog=max(16, 2 * mappers))
        except OSError as exc:
            raise EngineError(f"spark.port: cannot listen on {host}:{port} ({exc.strerror})") from None
        self.address = self.server.getsockname()[:2]
        self.conns: list[socket.socket | None] = [None] * mappers
        self.executors: list[tuple[str, int] | None] = [None] * mappers
        self.peers: list[tuple[str, int] | None] = [None] * mappers  # where each mapper listens for the others

    def connect(self, alive: Callable[[], None]) -> None:
        """Wait until every mapper has connected with the token and built its shard.

        ``alive()`` runs while waiting and raises if the stage has died.
        """
        self.close_mappers()
        self.server.settimeout(0.2)
        deadline = time.monotonic() + self.timeout + START_ALLOWANCE
        while any(c is None for c in self.conns):
            alive()
            if time.monotonic() > deadline:
                missing = [m for m, c in enumerate(self.conns) if c is None]
                raise EngineError(
                    f"spark: mapper(s) {missing} did not start within "
                    f"{self.timeout + START_ALLOWANCE:.0f}s (spark.mapper_timeout plus a minute)"
                )
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            mapper = self._authenticate(conn)
            if mapper is None:
                continue
            conn.settimeout(0.25)  # how often a waiting driver checks the stage and the deadline
            reply = self._receive(mapper, conn, alive, "while building its shard")
            if reply[0] != "ready":
                conn.close()
                self._raise_error(mapper, reply, "building its shard")
            self.conns[mapper], self.executors[mapper] = conn, (reply[1], reply[2])
            self.peers[mapper] = tuple(reply[3]) if len(reply) > 3 else None

    def _authenticate(self, conn: socket.socket) -> int | None:
        """The mapper index of a connection that shows this run's token; None (and closed) otherwise."""
        try:
            conn.settimeout(10)
            magic, token, mapper = _HELLO.unpack(_recv_exactly(conn, _HELLO.size))
        except (OSError, ConnectionError, struct.error):
            conn.close()
            return None
        if magic != _MAGIC or not hmac.compare_digest(token, self.token.encode()) or mapper >= self.mappers:
            conn.close()
            return None
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.conns[mapper] is not None:  # a task from an earlier attempt of the stage
            self.conns[mapper].close()
            self.conns[mapper] = None
        return mapper

    def _receive(self, mapper: int, conn: socket.socket, alive: Callable[[], None], what: str):
        """One message from ``mapper``: a broken connection is :class:`MapperLost`, silence past the timeout
        an error."""
        deadline = time.monotonic() + self.timeout

        def waiting():
            alive()
            if what.startswith("while building"):
                return  # connect() holds the start-up deadline
            if time.monotonic() > deadline:
                raise EngineError(
                    f"spark: mapper {mapper} sent nothing for {self.timeout:.0f}s {what} "
                    "(spark.mapper_timeout); ending the run"
                )

        try:
            message, size = recv_sized(conn, waiting)
            self.bytes_received += size
            return message
        except (ConnectionError, EOFError, OSError) as exc:
            if isinstance(exc, socket.timeout):
                raise EngineError(f"spark: mapper {mapper} stopped mid-message {what}") from None
            raise MapperLost(mapper, f"connection lost {what} ({errors.first_line(exc)})") from None

    @staticmethod
    def _raise_error(mapper: int, reply, what: str):
        if reply[0] == "error":
            _, name, message = reply
            if (error := errors.named_error(name, f"mapper {mapper}: {message}")) is not None:
                raise error
            raise EngineError(f"spark: mapper {mapper} failed {what}: {name}: {message}")
        raise EngineError(f"spark: mapper {mapper} answered {reply[0]!r} {what}")

    def _connected(self) -> list[tuple[int, socket.socket]]:
        """``(mapper, connection)`` of every mapper, in mapper order; a mapper without one is lost."""
        out = []
        for mapper, conn in enumerate(self.conns):
            if conn is None:
                raise MapperLost(mapper, "not connected")
            out.append((mapper, conn))
        return out

    def broadcast(self, message) -> None:
        """The same message to every mapper (pickled once)."""
        header, data = _frame(message)
        for mapper, conn in self._connected():
            try:
                conn.sendall(header)
                conn.sendall(data)
                self.bytes_sent += len(header) + len(data)
            except OSError as exc:
                raise MapperLost(mapper, f"connection lost ({errors.first_line(exc)})") from None

    def gather(self, kind: str, alive: Callable[[], None], what: str) -> list:
        """Every mapper's next message, in mapper order; each must be of ``kind``."""
        out = []
        for mapper, conn in self._connected():
            reply = self._receive(mapper, conn, alive, what)
            if reply[0] != kind:
                self._raise_error(mapper, reply, what)
            out.append(reply[1:])
        return out

    def send_each(self, message_for: Callable[[int], object]) -> None:
        """Its own message to every mapper."""
        for mapper, conn in self._connected():
            try:
                header, data = _frame(message_for(mapper))
                conn.sendall(header)
                conn.sendall(data)
                self.bytes_sent += len(header) + len(data)
            except OSError as exc:
                raise MapperLost(mapper, f"connection lost ({errors.first_line(exc)})") from None

    def local_round(self, payload: RoundPayload, alive, timings: dict) -> list[MapperResult]:
        start = time.perf_counter()
        if payload.subnets is not None:  # sub-networks: each mapper gets only its own slice
            self.send_each(lambda mapper: ("round", payload.sliced(mapper)))
        else:
            self.broadcast(("round", payload))
        timings["broadcast"] = time.perf_counter() - start
        results = [r for (r,) in self.gather("result", alive, f"in round {payload.round_index + 1}")]
        timings["wait"] = time.perf_counter() - start - timings["broadcast"]
        return results

    def sync_round(self, payload: RoundPayload, alive, timings: dict) -> tuple[Combined, list[MapperStats]]:
        """Drive a synchronous round: every step, the mean of the mappers' gradients, in mapper order, among
        the tasks (``collective`` "tasks") or here (``collective`` "driver")."""
        if self.collective == "tasks" and None not in self.peers:
            return self._sync_among_tasks(payload, alive, timings)
        start = time.perf_counter()
        self.broadcast(("sync", payload, None))
        timings["broadcast"] = time.perf_counter() - start
        combine_seconds = 0.0
        what = f"in round {payload.round_index + 1}"
        assert payload.plan.sync_lrs is not None  # a synchronous round's plan has its step sizes
        for step in range(len(payload.plan.sync_lrs)):
            grads = [g for (g,) in self.gather("grad", alive, what)]
            t = time.perf_counter()
            mean = mean_gradient(grads, sync_coefficients(payload.plan.sync_batch_sizes(step)))
            check_mean_gradient(mean, payload.round_index, step, partial(_not_finite, grads))
            self.broadcast(("mean", mean))
            combine_seconds += time.perf_counter() - t
        layers = payload.model.layers
        if layers.n_weights < layers.n_params:  # a module's buffers: the mappers' own, averaged once at the end
            buffers = [b for (b,) in self.gather("grad", alive, what)]
            t = time.perf_counter()
            self.broadcast(("mean", mean_gradient(buffers, buffer_coefficients(payload.plan))))
            combine_seconds += time.perf_counter() - t
        finished = self.gather("synced", alive, what)
        timings["combine"] = combine_seconds
        timings["wait"] = time.perf_counter() - start - timings["broadcast"] - combine_seconds
        return finished[0][1], [stats for stats, _ in finished]

    def _sync_among_tasks(self, payload: RoundPayload, alive, timings: dict) -> tuple[Combined, list[MapperStats]]:
        """The mappers average among themselves; the driver hands out the addresses and collects the result.

        Every mapper's answer is awaited, so that an error a task raised is
        reported rather than the broken connections it leaves its peers; a
        mapper that names a lost peer is :class:`MapperLost` (the stage starts
        again), as a broken connection to the driver is.
        """
        start = time.perf_counter()
        self.broadcast(("sync", payload, list(self.peers)))
        timings["broadcast"] = time.perf_counter() - start
        what = f"in round {payload.round_index + 1}"
        replies, lost = [], []
        for mapper, conn in self._connected():
            try:
                replies.append(self._receive(mapper, conn, alive, what))
            except MapperLost as exc:
                replies.append(None)
                lost.append(exc)
        for mapper, reply in enumerate(replies):
            if reply is not None and reply[0] == "error":
                # every task judged the same mean: the message names the mappers
                if reply[1] == "DivergenceError" and (error := errors.named_error(reply[1], reply[2])) is not None:
                    raise error
                self._raise_error(mapper, reply, what)
        if lost:
            raise lost[0]
        for mapper, reply in enumerate(replies):
            if reply[0] == "lost":
                raise MapperLost(reply[1], f"{reply[2]} {what} (reported by mapper {mapper})")
            if reply[0] != "synced":
                self._raise_error(mapper, reply, what)
        stats = [reply[1] for reply in replies]
        timings["combine"] = stats[0].comm_seconds  # mapper 0's time in the collective, as MPI reports rank 0's
        timings["wait"] = time.perf_counter() - start - timings["broadcast"] - timings["combine"]
        return replies[0][2], stats

    def score(self, backend: str, model, params, alive) -> list[dict]:
        """Every mapper's scores of ``params`` on the held-out rows it keeps, in mapper order."""
        self.broadcast(("score", backend, model, params))
        return [scores for (scores,) in self.gather("scores", alive, "scoring the held-out rows")]

    def close_mappers(self) -> None:
        """Tell every connected mapper to stop, and close the connections."""
        for mapper, conn in enumerate(self.conns):
            if conn is not None:
                try:
                    send(conn, ("stop",))
                except OSError:
                    pass
                conn.close()
            self.conns[mapper] = None

    def close(self) -> None:
        self.close_mappers()
        self.server.close()
