"""Synchronous rounds among the Spark tasks: a reduce-scatter by slices, then an allgather, over their own sockets.

``spark.collective: tasks`` (the default). Every task of the long-lived
stage (:mod:`nnlib.engines.spark.exchange`) opens a :class:`Listener` on the
address it uses to reach the driver and names it in its ``ready`` message;
the driver hands every task the list with its first synchronous round, so no
Spark barrier call is needed (each costs about a second). The tasks then
connect pairwise, the higher rank dialling the lower and proving with the
run's token that it belongs to the run (:meth:`TaskMesh.connect`), once per
stage. Every step of a synchronous round (:meth:`TaskCollective.mean`), with
the ``n``-element vector cut into ``k`` slices (slice ``j`` is elements
``[j*n//k, (j+1)*n//k)``, owned by task ``j``):

1. reduce-scatter: every task sends each peer its mappers' gradients on that
   peer's slice; the owner weights and adds all the mappers' contributions in
   mapper order, in float64, with :func:`nnlib.rounds.reduce.mean_gradient`:
   the local engine's mean, elementwise, so the same bits on every engine;
2. allgather: every owner sends its slice of the mean to every peer.

With two tasks, or a vector of at most ``WHOLE_BYTES``, one exchange does it:
every task sends its whole vectors to every peer and adds them all in mapper
order (the same bits; with two tasks the same bytes, and one wait on the
peer instead of two).

A task sends and receives about ``2(k-1)/k`` of the vector a step (its
gradients count once per mapper it holds), whatever ``k`` is, and the driver
sees none of it. Messages are raw arrays of known size, never pickles; a
socket is read only after its peer has shown the token. A peer whose
connection breaks is :class:`PeerLost` (the task tells the driver, which
starts the stage again); a word from the driver mid-round (``stop``, or its
connection closing) is :class:`DriverStopped`.
"""

from __future__ import annotations

import hmac
import select
import socket
import struct
import time
from typing import Any

import numpy as np

from nnlib.rounds.reduce import mean_gradient

_HELLO = struct.Struct("!4s32sI")  # magic, token, rank of the dialling task
_MAGIC = b"NNLP"
WHOLE_BYTES = 64 * 1024  # a vector this small goes whole to every peer: one exchange a step (see TaskCollective)
CONNECT_SECONDS = 120.0  # how long a task waits for its peers to connect at the first synchronous round


class PeerLost(Exception):
    """A peer task's connection broke (its executor died, or it stopped on an error)."""

    def __init__(self, mapper: int, reason: str):
        super().__init__(f"mapper {mapper}: {reason}")
        self.mapper, self.reason = mapper, reason


class DriverStopped(Exception):
    """The driver spoke (``stop``) or went away while the task waited on its peers."""


def slice_bounds(n: int, parts: int) -> list[int]:
    """Where the ``parts`` slices of an ``n``-element vector start, and its end: ``[j*n//parts ...]``."""
    return [j * n // parts for j in range(parts + 1)]


class Listener:
    """A task's listening socket on ``host`` (the address it reaches the driver from), any free port."""

    def __init__(self, host: str):
        self.sock = socket.create_server((host, 0), backlog=64)
        self.address = self.sock.getsockname()[:2]

    def close(self) -> None:
        self.sock.close()


class TaskMesh:
    """One authenticated, non-blocking TCP connection from this task to every other task of the stage.

    ``rank`` is this task's place in ``groups`` (a list, per task, of the
    mappers it holds, in task order; in the Spark stage each task holds one
    mapper, its partition's). ``watch`` is the task's connection to the
    driver: anything readable on it while the task waits on a peer ends the
    wait (:class:`DriverStopped`).
    """

    def __init__(
        self, rank: int, groups: list[list[int]], conns: dict[int, socket.socket], watch: socket.socket | None = None
    ):
        self.rank, self.groups, self.conns, self.watch = rank, groups, conns, watch

    @classmethod
    def connect(
        cls,
        listener: Listener,
        rank: int,
        addresses: list[tuple[str, int]],
        groups: list[list[int]],
        token: str,
        watch: socket.socket | None = None,
        timeout: float = CONNECT_SECONDS,
    ) -> TaskMesh:
        """Dial every lower rank at ``addresses[r]``, accept every higher one that shows ``token``."""
        conns: dict[int, socket.socket] = {}
        deadline = time.monotonic() + timeout
        for peer in range(rank):
            try:
                host, port = addresses[peer]
                conn = socket.create_connection((host, port), timeout=timeout)
                conn.sendall(_HELLO.pack(_MAGIC, token.encode(), rank))
            except OSError as exc:
                raise PeerLost(groups[peer][0], f"cannot connect to {addresses[peer]} ({exc})") from None
            conns[peer] = conn
        listener.sock.settimeout(0.2)
        while len(conns) < len(groups) - 1:
            if watch is not None and _readable(watch):
                raise DriverStopped()
            if time.monotonic() > deadline:
                missing = [groups[p][0] for p in range(rank + 1, len(groups)) if p not in conns]
                raise PeerLost(missing[0], f"did not connect within {timeout:.0f}s")
            try:
                conn, _ = listener.sock.accept()
            except TimeoutError:
                continue
            dialled = _authenticate(conn, token, rank, len(groups))
            if dialled is not None:
                peer = dialled
                if peer in conns:  # only a stray or repeated dial can do this
                    conns[peer].close()
                conns[peer] = conn
        for conn in conns.values():
            conn.settimeout(None)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(rank, groups, conns, watch)

    def exchange(self, sends: dict[int, np.ndarray], recvs: dict[int, np.ndarray]) -> None:
        """Send ``sends[p]`` to peer ``p`` and fill ``recvs[p]`` from it, for every peer at once.

        Non-blocking sockets driven by one ``poll`` loop, so no send waits on a
        peer that is itself sending (the buffers are raw, C-contiguous arrays).
        """
        # each peer's [bytes of its array, bytes done so far]
        out: dict[int, list[Any]] = {p: [_bytes_of(a), 0] for p, a in sends.items() if a.nbytes}
        into: dict[int, list[Any]] = {p: [_bytes_of(a), 0] for p, a in recvs.items() if a.nbytes}
        while out or into:
            progressed = False
            for p in list(out):
                entry = out[p]
                try:
                    entry[1] += self.conns[p].send(entry[0][entry[1] :])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise PeerLost(self.groups[p][0], f"connection lost ({exc})") from None
                progressed = True
                if entry[1] == len(entry[0]):
                    del out[p]
            for p in list(into):
                entry = into[p]
                try:
                    got = self.conns[p].recv_into(entry[0][entry[1] :])
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise PeerLost(self.groups[p][0], f"connection lost ({exc})") from None
                if got == 0:
                    raise PeerLost(self.groups[p][0], "connection closed")
                progressed = True
                entry[1] += got
                if entry[1] == len(entry[0]):
                    del into[p]
            if not progressed and (out or into):
                self._wait(out, into)

    def _wait(self, out: dict, into: dict) -> None:
        poller = select.poll()
        for p in set(out) | set(into):
            poller.register(self.conns[p], (select.POLLOUT if p in out else 0) | (select.POLLIN if p in into else 0))
        if self.watch is not None:
            poller.register(self.watch, select.POLLIN)
        events = poller.poll()
        if self.watch is not None and any(fd == self.watch.fileno() for fd, _ in events):
            raise DriverStopped()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns = {}


def _readable(conn: socket.socket) -> bool:
    return bool(select.select([conn], [], [], 0)[0])


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous ``array`` as one flat view (no copy)."""
    # numpy's stubs make ndarray a Buffer from Python 3.12 on only
    return memoryview(array).cast("B")  # type: ignore[arg-type]


def _authenticate(conn: socket.socket, token: str, rank: int, tasks: int) -> int | None:
    """The rank of a connection that shows ``token`` and is a higher rank than ``rank``; None (closed) else."""
    try:
        conn.settimeout(10)
        buf = bytearray()
        while len(buf) < _HELLO.size:
            chunk = conn.recv(_HELLO.size - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        magic, shown, peer = _HELLO.unpack(bytes(buf))
    except (OSError, ConnectionError, struct.error):
        conn.close()
        return None
    if magic != _MAGIC or not hmac.compare_digest(shown, token.encode()) or not rank < peer < tasks:
        conn.close()
        return None
    return peer


class TaskCollective:
    """:class:`nnlib.rounds.mapper.Collective` over a :class:`TaskMesh`: reduce-scatter by slices, allgather."""

    def __init__(self, mesh: TaskMesh):
        self.mesh = mesh
        self.n_mappers = sum(len(g) for g in mesh.groups)

    def mean(self, local: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
        """The weighted mean over all mappers of their vectors, bit for bit :func:`mean_gradient`'s.

        ``local`` holds this task's mappers' vectors (1-D, one dtype, in the
        order of its group); ``coefficients`` has one entry per mapper.
        """
        mesh, rank = self.mesh, self.mesh.rank
        n, dtype = local[0].size, local[0].dtype
        if len(mesh.groups) == 2 or n * dtype.itemsize <= WHOLE_BYTES:
            return self._mean_of_whole(local, coefficients)
        bounds = slice_bounds(n, len(mesh.groups))
        lo, hi = bounds[rank], bounds[rank + 1]
        peers = [p for p in range(len(mesh.groups)) if p != rank]

        def on_slice(p):  # this task's mappers' contributions to peer p's slice, one contiguous buffer
            if len(local) == 1:
                return np.ascontiguousarray(local[0][bounds[p] : bounds[p + 1]])
            return np.concatenate([v[bounds[p] : bounds[p + 1]] for v in local])

        received = {p: np.empty((len(mesh.groups[p]), hi - lo), dtype) for p in peers}
        mesh.exchange({p: on_slice(p) for p in peers}, received)
        parts = {m: v[lo:hi] for m, v in zip(mesh.groups[rank], local, strict=True)}
        for p in peers:
            parts.update(zip(mesh.groups[p], received[p], strict=True))
        mine = mean_gradient([parts[m] for m in range(self.n_mappers)], coefficients)

        out = np.empty(n, dtype)
        out[lo:hi] = mine
        mesh.exchange({p: mine for p in peers}, {p: out[bounds[p] : bounds[p + 1]] for p in peers})
        return out

    def _mean_of_whole(self, local: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
        """The same mean from one exchange: every task sends its whole vectors to every peer and adds them all.

        With two tasks a task sends and receives the vector once a step either
        way, so one wait on the peer instead of two; below ``WHOLE_BYTES``
        the waits cost more than the bytes at any ``k``.
        """
        mesh, rank = self.mesh, self.mesh.rank
        n, dtype = local[0].size, local[0].dtype
        peers = [p for p in range(len(mesh.groups)) if p != rank]
        mine = local[0] if len(local) == 1 else np.concatenate(local)
        received = {p: np.empty((len(mesh.groups[p]), n), dtype) for p in peers}
        mesh.exchange({p: np.ascontiguousarray(mine) for p in peers}, received)
        vectors = dict(zip(mesh.groups[rank], local, strict=True))
        for p in peers:
            vectors.update(zip(mesh.groups[p], received[p], strict=True))
        return mean_gradient([vectors[m] for m in range(self.n_mappers)], coefficients)

    def mappers_flagged(self, local_flags: dict[int, bool]) -> list[int]:
        """The mappers, across all tasks, whose flag is set (every task sends every peer its flags)."""
        mine = np.zeros(self.n_mappers, np.uint8)
        for mapper, flag in local_flags.items():
            mine[mapper] = bool(flag)
        peers = [p for p in range(len(self.mesh.groups)) if p != self.mesh.rank]
        theirs = {p: np.empty(self.n_mappers, np.uint8) for p in peers}
        self.mesh.exchange({p: mine for p in peers}, theirs)
        for flags in theirs.values():
            mine |= flags
        return [int(m) for m in np.flatnonzero(mine)]
