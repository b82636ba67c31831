"""``python -m nnlib run [CONF] [--set key=value ...] [--out DIR]``; also the ``nnlib`` command and the job
scripts in ``jobs/``.

:func:`main` imports the command line lazily, so that a Ctrl-C while its modules load (numpy, torch,
pyspark take a second or more) is one line and exit status 130, as a Ctrl-C later in the run is.
"""

import sys


def main(argv: list[str] | None = None) -> None:
    """The ``nnlib`` command on ``argv`` (default the command line); exits with its status."""
    try:
        from nnlib.cli import entry_point
    except KeyboardInterrupt:
        print("nnlib: interrupted while loading; nothing was done", file=sys.stderr, flush=True)
        sys.exit(130)
    entry_point(argv)


if __name__ == "__main__":
    main()
