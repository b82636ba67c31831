"""A clean stop on request: a signal asks the run to stop at the next round boundary.

Batch schedulers end a job with SIGTERM (SLURM: at the time limit, or a
chosen time before it with ``--signal``; on preemption). While
:func:`handling_stop` is active, such a signal only records a request; the
driver asks :func:`stop_agreed` after every finished round (its checkpoint
written) and raises :class:`StopRequested` when the run should end there.
With several driver processes (MPI ranks) every process takes part in that
question and all get the same answer, so every rank stops after the same
round. If the round in progress is still running ``grace`` seconds after the
signal, it is abandoned: :class:`StopRequested` is raised wherever the
process is (as Ctrl-C would be), and the newest checkpoint is the last
finished round's.

The handlers are installed in the main thread only (Python runs signal
handlers there); elsewhere the signals keep their previous disposition.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_STATUS = 143  # 128 + SIGTERM: the exit status of a run that stopped on request, whatever the signal


class StopRequested(KeyboardInterrupt):
    """A stop asked for by a signal: at a round boundary (``rounds_done`` rounds are checkpointed) or, past
    the grace, in the middle of a round (``abandoned``; ``rounds_done`` is then None: the newest checkpoint).

    A ``KeyboardInterrupt``, so everything that cleans up after Ctrl-C (the
    engines' sessions and workers) cleans up after it the same way.
    """

    def __init__(
        self, signum: int, rounds_done: int | None = None, abandoned: bool = False, grace: float | None = None
    ):
        super().__init__(signal_name(signum))
        self.signum, self.rounds_done, self.abandoned, self.grace = signum, rounds_done, abandoned, grace


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """The state of one :func:`handling_stop`: which signal came first and when (``time.monotonic()``)."""

    def __init__(self, grace: float | None, forward: Callable[[int], None] | None):
        self.grace, self.forward = grace, forward
        self.signum: int | None = None
        self.at: float | None = None
        self.timer_armed = False
        self.pid = os.getpid()

    def __call__(self, signum: int, _frame) -> None:
        if os.getpid() != self.pid:
            # a child forked from the run (mrjob's local runner's pool, multiprocessing) inherits this handler:
            # there the signal does what it would have done (a pool's terminate() ends its workers)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.signum is not None:  # a second signal: the stop is already on its way
            return
        self.signum, self.at = signum, time.monotonic()
        if self.forward is not None:
            self.forward(signum)
        if self.grace is not None:
            signal.signal(signal.SIGALRM, self._overdue)
            signal.setitimer(signal.ITIMER_REAL, self.grace)
            self.timer_armed = True

    def _overdue(self, _signum, _frame) -> None:
        self.disarm()
        assert self.signum is not None  # the alarm is armed only once a stop signal came
        raise StopRequested(self.signum, abandoned=True, grace=self.grace)

    def disarm(self) -> None:
        """Cancel the grace timer (the stop has been agreed, or the run is over)."""
        if self.timer_armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self.timer_armed = False


_active: list[StopRequest] = []  # the innermost handling_stop's request last


def requested() -> StopRequest | None:
    """The request of the innermost active :func:`handling_stop` if a signal has come, else None."""
    return _active[-1] if _active and _active[-1].signum is not None else None


def stop_agreed(all_ok: Callable[[bool], bool]) -> int | None:
    """After a finished round: the signal that asked this process, or another one, to stop; None to go on.

    ``all_ok`` is the engine's (``Engine.all_ok``): True on every process
    when its argument is True on every process, so every MPI rank answers
    the same. A stop agreed here cancels the grace timer.
    """
    mine = requested()
    if all_ok(mine is None):
        return None
    for request in _active:
        request.disarm()
    return mine.signum if mine is not None else signal.SIGTERM  # another rank's signal: most likely SIGTERM


@contextmanager
def handling_stop(
    signals: tuple[int, ...] = (signal.SIGTERM,),
    grace: float | None = None,
    forward: Callable[[int], None] | None = None,
) -> Iterator[StopRequest]:
    """While active, ``signals`` ask for a stop instead of ending the process.

    ``grace``: seconds after the first signal when the round in progress is
    abandoned (:class:`StopRequested` raised where the main thread is; None:
    wait for the round however long it takes). ``forward``, if given, is
    called with the signal number when the first one comes (a launcher
    passes the stop on to its ranks). The previous handlers come back on
    exit; a signal that came in between stays recorded in the yielded
    :class:`StopRequest`.
    """
    request = StopRequest(grace, forward)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, request) for sig in signals}
    alarm = signal.getsignal(signal.SIGALRM)
    _active.append(request)
    try:
        yield request
    finally:
        request.disarm()
        _active.remove(request)
        signal.signal(signal.SIGALRM, alarm)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def holding_interrupt() -> Iterator[list[int]]:
    """Hold Ctrl-C (SIGINT) while the block runs: the signal is recorded, not raised, and the block's
    list holds it; the caller acts on it once the block is done. In another thread than the main one
    nothing is held (Python runs signal handlers in the main thread only) and the list stays empty.

    For a step that must not be cut in half: a Spark session's start, where an interrupt between the
    JVM's launch and its connection back leaves the JVM running with nobody to stop it. The handler from
    before the block is put back even if the block installed its own (pyspark's SparkContext does, and
    its handler calls the JVM from inside the signal, while the interrupted call may hold the connection).
    """
    came: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: came.append(signum))
    try:
        yield came
    finally:
        signal.signal(signal.SIGINT, previous)
