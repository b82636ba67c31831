"""Errors a person can act on.

Every :class:`NnlibError` is printed by the command line as one line and the
process exits with status 2: the message names the key or file, what is
allowed, and what was given.
"""

import re


class NnlibError(Exception):
    """A problem with the user's input or environment, reported in one line."""


class ConfigError(NnlibError):
    """A config key is unknown, has the wrong type, or is out of range."""


class DataError(NnlibError):
    """A data file is missing, unreadable, or holds values we cannot train on."""


class DivergenceError(NnlibError):
    """A mapper returned weights containing NaN or inf."""


class EngineError(NnlibError):
    """An engine (Spark, mrjob, MPI) failed; the message carries the tail of its log."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


_NNLIB_ERROR = re.compile(r"nnlib\.errors\.(\w+): (.*)")
_ANY_ERROR = re.compile(r"\s*\w+(\.\w+)*(Error|Exception): ")


def named_error(name: str, message: str) -> NnlibError | None:
    """The nnlib error class called ``name`` (as a worker reported it) with ``message``; None for any other name."""
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, NnlibError):
        return cls(message)
    return None


def error_from_text(text: str, engine: str, what: str) -> NnlibError:
    """Turn the log of a failed engine job into a one-line error.

    An nnlib error raised inside a worker (a data file the worker cannot read,
    a diverged mapper) comes back as the same error; anything else becomes an
    :class:`EngineError` carrying the last error line of the worker's log.
    """
    found = _NNLIB_ERROR.findall(text)
    if found:
        name, message = found[-1]
        if (error := named_error(name, message.strip())) is not None:
            return error
    lines = [ln.strip() for ln in text.splitlines() if _ANY_ERROR.match(ln)]
    detail = lines[-1] if lines else (text.strip().splitlines() or ["no log"])[0]
    return EngineError(f"{engine}: {what} failed: {detail[:400]}")
