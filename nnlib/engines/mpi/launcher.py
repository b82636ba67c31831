"""Processes started by a launcher (``mpiexec``): is this one of them, which rank, and how to start them.

An SPMD run starts the same ``nnlib run`` in every rank; rank 0 is the main
process (it writes the run directory and prints). This module reads the
rank from the launcher's environment, so the command line knows which
process speaks before any MPI library is loaded.

``nnlib run --set engine=mpi`` starts the ranks here, on this machine unless
``mpi.args`` names hosts. Open MPI's ``mpiexec`` refuses more ranks than
cores and refuses to run as root, each with a long message whose advice is
about its own command line; :func:`launcher_options` says it in one line in
``nnlib``'s terms instead (more ranks than cores: ``--oversubscribe`` is
added, with a warning; as root: a one-line error naming the setting).

A stop: Open MPI's ``mpiexec`` ends its ranks within a second of a SIGTERM
(it cannot pass SIGTERM on and wait), but passes SIGUSR1 on to every rank
and keeps waiting. So :func:`launch`, given SIGTERM, sends SIGUSR1 to
mpiexec; the ranks (which take SIGUSR1 as a stop request) finish the round,
rank 0 writes its checkpoint, and all of them end; :func:`launch` then
raises :class:`nnlib.util.stop.StopRequested`.

A rank's error: rank 0 prints nnlib's one line and every rank exits 2, and
Open MPI's mpiexec then adds a block of its own (framed by dashes) saying
that a process exited with a non-zero status. :func:`launch` relays
mpiexec's stderr as it comes and holds back that block alone
(:class:`StderrRelay`), so a bad input says nnlib's line and nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from nnlib.errors import ConfigError, EngineError
from nnlib.util.stop import StopRequested, handling_stop

# the variables Open MPI, MPICH and any PMI/PMIx launcher set in each rank
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
_LAUNCHER_VARIABLES = (*_RANK_VARIABLES, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
# mpiexec options that place ranks elsewhere or say how to place them: nnlib then leaves placement alone
_PLACEMENT_OPTIONS = (
    "--host",
    "-host",
    "-H",
    "--hostfile",
    "-hostfile",
    "--machinefile",
    "-machinefile",
    "--map-by",
    "-map-by",
    "--oversubscribe",
    "-oversubscribe",
)
ROOT_VARIABLES = ("OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM")
STOP_GRACE_SECONDS = 10.0  # after Ctrl-C: how long mpiexec has to end its ranks before it is terminated
LAUNCHED_FLAG = "--launched"  # tells a rank that nnlib's launcher started it: the launcher speaks for the job
# what Open MPI's report of ranks that exited non-zero says (Open MPI 5: prterun's block; 4: two blocks)
_NONZERO_EXIT_MARKERS = ("exited with non-zero status", "non-zero exit code")
_HELD_LINES_MAX = 100  # a block longer than this is nobody's report: relayed as it is


def inside_launcher() -> bool:
    """True in a process started by mpiexec."""
    return any(k in os.environ for k in _LAUNCHER_VARIABLES)


def launcher_rank() -> int:
    """This process's rank under mpiexec (0 outside one)."""
    for key in _RANK_VARIABLES:
        if key in os.environ:
            return int(os.environ[key])
    return 0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def is_open_mpi(launcher: list[str]) -> bool:
    """True when ``launcher`` is Open MPI's mpiexec (``mpiexec --version`` names it); False for MPICH and others."""
    try:
        proc = subprocess.run([*launcher, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "open mpi" in (proc.stdout + proc.stderr).lower()


def launcher_options(
    launcher: list[str],
    ranks: int,
    launcher_args: list[str],
    warn: Callable[[str], None],
    cores: int | None = None,
    uid: int | None = None,
    open_mpi: bool | None = None,
) -> list[str]:
    """The options for ``launcher`` to start ``ranks`` ranks on this machine: ``launcher_args``, and
    ``--oversubscribe`` when Open MPI would refuse more ranks than ``cores``.

    Raises :class:`ConfigError` as root (``uid`` 0) when Open MPI would refuse
    to start, naming the ``mpi.args`` setting or the environment variables
    that allow it. ``cores``, ``uid`` and ``open_mpi`` default to this
    machine's and this process's.
    """
    if open_mpi is None:
        open_mpi = is_open_mpi(launcher)
    if not open_mpi:
        return list(launcher_args)
    uid = os.geteuid() if uid is None else uid
    allowed = "--allow-run-as-root" in launcher_args or all(os.environ.get(k) == "1" for k in ROOT_VARIABLES)
    if uid == 0 and not allowed:
        extra = ",".join(["--allow-run-as-root", *launcher_args])
        raise ConfigError(
            f"engine=mpi: Open MPI's {launcher[0]} refuses to run as root; to run as root anyway, "
            f"add --set 'mpi.args=[{extra}]' (or export OMPI_ALLOW_RUN_AS_ROOT=1 "
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)"
        )
    cores = usable_cores() if cores is None else cores
    placed = any(arg.split("=")[0] in _PLACEMENT_OPTIONS for arg in launcher_args)
    if ranks > cores and not placed:
        warn(f"mappers={ranks} is more than the {cores} cores here: the ranks share them (mpiexec --oversubscribe)")
        return ["--oversubscribe", *launcher_args]
    return list(launcher_args)


def launch(
    launcher: list[str],
    ranks: int,
    launcher_args: list[str],
    nnlib_args: list[str],
    warn: Callable[[str], None] | None = None,
    stop_grace: float | None = None,
) -> int:
    """Start ``ranks`` copies of ``python -m nnlib run NNLIB_ARGS`` under ``launcher``; return its exit status.

    On SIGTERM the ranks are asked to stop (SIGUSR1 to mpiexec, which passes
    it on); once mpiexec has ended, :class:`StopRequested` is raised. Should
    the job still run ``stop_grace`` + ``STOP_GRACE_SECONDS`` seconds after
    the signal (the ranks abandon a round at ``stop_grace``), it is ended as
    on Ctrl-C. On Ctrl-C (``KeyboardInterrupt``) mpiexec is given
    ``STOP_GRACE_SECONDS`` to end its ranks, then terminated, and the
    interrupt is raised again: no rank is left running.
    """
    try:
        options = launcher_options(launcher, ranks, launcher_args, warn or _warn)
        # in a session of its own: a terminal's Ctrl-C reaches this process alone, which ends mpiexec quietly
        proc = subprocess.Popen(
            [*launcher, "-n", str(ranks), *options, sys.executable, "-m", "nnlib", "run", *nnlib_args, LAUNCHED_FLAG],
            start_new_session=True,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError:
        raise EngineError(
            f"mpi.launcher: {launcher[0]!r} not found on PATH (pip install '.[mpi]' provides mpiexec)"
        ) from None
    relay = threading.Thread(target=_relay_stderr, args=(proc.stderr,), daemon=True, name="mpiexec-stderr")
    relay.start()
    try:
        with handling_stop(forward=lambda _signum: proc.send_signal(signal.SIGUSR1)) as stop:
            status = _wait(proc, stop, stop_grace)
    except KeyboardInterrupt:
        _stop(proc)
        relay.join(timeout=STOP_GRACE_SECONDS)
        raise
    # the pipe ends once mpiexec has; a rank it left behind could hold it open, so the wait is bounded
    relay.join(timeout=STOP_GRACE_SECONDS)
    if stop.signum is not None:
        raise StopRequested(stop.signum)
    return status


def _wait(proc: subprocess.Popen, stop, stop_grace: float | None) -> int:
    """``proc``'s exit status; once a stop is asked for, at most ``stop_grace + STOP_GRACE_SECONDS`` more seconds
    (then ``KeyboardInterrupt``, which ends it)."""
    while True:
        try:
            return proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if (
            stop.at is not None
            and stop_grace is not None
            and time.monotonic() - stop.at > stop_grace + STOP_GRACE_SECONDS
        ):
            raise KeyboardInterrupt


class StderrRelay:
    """Filters mpiexec's stderr line by line: every line passes as it comes, except Open MPI's report of ranks
    that exited non-zero.

    A block framed by lines of dashes is held until its closing line; it is
    dropped when it says a process exited non-zero (``exited with non-zero
    status``, ``non-zero exit code``: the rank has said why, in nnlib's one
    line) and passed on whole otherwise. libevent's ``[warn] Epoll ... Bad
    file descriptor`` line, which Open MPI's mpiexec may print as its ranks
    exit, is dropped too. :meth:`feed` returns the lines to write now,
    :meth:`close` those still held at the end of the stream.
    """

    def __init__(self) -> None:
        self._held: list[str] | None = None  # the block being read, from its opening dash line; None outside one

    def feed(self, line: str) -> list[str]:
        """The lines to write once ``line`` (with its newline, if any) has been read."""
        if self._held is None:
            if _is_rule(line):
                self._held = [line]
                return []
            return [] if _is_event_warning(line) else [line]
        self._held.append(line)
        if _is_rule(line):
            block, self._held = self._held, None
            text = "".join(block)
            return [] if any(marker in text for marker in _NONZERO_EXIT_MARKERS) else block
        if len(self._held) > _HELD_LINES_MAX:
            return self.close()
        return []

    def close(self) -> list[str]:
        """The lines still held (a block that never closed): written as they are."""
        block, self._held = self._held or [], None
        return block


def _is_rule(line: str) -> bool:
    """A line of dashes alone, as Open MPI frames its messages with."""
    text = line.strip()
    return len(text) >= 20 and set(text) == {"-"}


def _is_event_warning(line: str) -> bool:
    return line.startswith("[warn] Epoll ") and line.rstrip().endswith("Bad file descriptor")


def _relay_stderr(stream) -> None:
    """Copy mpiexec's stderr (bytes) to this process's stderr through :class:`StderrRelay`, each line at once."""
    relay = StderrRelay()
    try:
        for raw in iter(stream.readline, b""):
            _write(relay.feed(raw.decode(errors="replace")))
        _write(relay.close())
    except (OSError, ValueError):  # this process's stderr went away, or the pipe was closed under us
        pass
    finally:
        stream.close()


def _write(lines: list[str]) -> None:
    if lines:
        sys.stderr.write("".join(lines))
        sys.stderr.flush()


def _warn(message: str) -> None:
    print(f"nnlib: warning: {message}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen) -> None:
    """End ``proc`` (mpiexec) and so its ranks: SIGTERM (mpiexec passes it on to the ranks), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            pass
