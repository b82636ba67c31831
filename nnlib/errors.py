"""Errors a person can act on.

Every :class:`NnlibError` is printed by the command line as one line and the
process exits with status 2: the message names the key or file, what is
allowed, and what was given.
"""


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
