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


class OutputError(NnlibError):
    """A file could not be written (disk full, file too large, permission); the message names the file."""


class EngineError(NnlibError):
    """An engine (Spark, mrjob, MPI) failed; the message carries the tail of its log."""


_NNLIB_ERROR = re.compile(r"nnlib\.errors\.(\w+): (.*)")
_ANY_ERROR = re.compile(r"\s*\w+(\.\w+)*(Error|Exception): ")
_TRACEBACK = "Traceback (most recent call last):"
_PYTHON_ERROR = re.compile(r"^((?:\w+\.)*\w+(?:Error|Exception|Exit|Interrupt))(?:: (.*))?$")
_SPARK_ERROR_CLASS = re.compile(r"\[([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)\] ([^\n]+)")

# what a person does about the common root causes (the workers' Python, Spark's own size limits)
HINTS = (
    (
        re.compile(r"No module named '([\w.]+)'"),
        "the workers' Python cannot import {0}: install nnlib and its dependencies there, or run the workers with "
        "this Python (PYSPARK_PYTHON for Spark, --python-bin in mrjob.args)",
    ),
    (
        re.compile(r"PYTHON_VERSION_MISMATCH|different version .* than that in driver|different minor versions"),
        "the executors' Python (PYSPARK_PYTHON) must have the driver's minor version: point PYSPARK_PYTHON and "
        "PYSPARK_DRIVER_PYTHON at the same Python",
    ),
    (
        re.compile(r"spark\.driver\.maxResultSize"),
        "raise Spark's limit on results brought to the driver: spark.conf={{spark.driver.maxResultSize: 4g}}",
    ),
    (
        re.compile(r"spark\.rpc\.message\.maxSize"),
        "raise Spark's message size limit (MiB): spark.conf={{spark.rpc.message.maxSize: 512}}",
    ),
    (
        re.compile(r"java\.lang\.OutOfMemoryError"),
        "give Spark's JVMs more memory: spark.conf={{spark.driver.memory: 4g, spark.executor.memory: 4g}}",
    ),
)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def root_cause(text: str) -> str:
    """The innermost cause in the log or trace of a failed engine job, as one line.

    In order: the exception line that ends the last Python traceback (what a
    Python worker raised, which Spark and mrjob bury under their own
    traces); else the first Spark error class and message (``[CLASS]
    message``); else the last line that names an exception; else the first
    line.
    """
    if _TRACEBACK in text:
        tail = text[text.rindex(_TRACEBACK) :].splitlines()[1:]
        for line in tail:
            if not line.startswith((" ", "\t")) and (match := _PYTHON_ERROR.match(line.strip())):
                return line.strip()
    if match := _SPARK_ERROR_CLASS.search(text):
        return f"[{match.group(1)}] {match.group(2).strip()}"
    lines = [ln.strip() for ln in text.splitlines() if _ANY_ERROR.match(ln)]
    return lines[-1] if lines else (text.strip().splitlines() or ["no log"])[0]


def python_failed(exc: BaseException) -> bool:
    """True when an engine's error carries a Python traceback: a Python worker failed, whatever the job read."""
    return _TRACEBACK in str(exc)


def hint(cause: str) -> str:
    """``"; <what to do>"`` for a root cause nnlib knows a remedy for, else ``""``."""
    for pattern, remedy in HINTS:
        if match := pattern.search(cause):
            return "; " + remedy.format(*match.groups())
    return ""


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
    :class:`EngineError` carrying the root cause (:func:`root_cause`) and, for
    the common ones, what to do (:func:`hint`).
    """
    found = _NNLIB_ERROR.findall(text)
    if found:
        name, message = found[-1]
        if (error := named_error(name, message.strip())) is not None:
            return error
    cause = root_cause(text)
    return EngineError(f"{engine}: {what} failed: {cause[:400]}{hint(cause)}")
