"""``python -m nnlib run [CONF] [--set key=value ...] [--out DIR]``."""

from nnlib.cli import entry_point

entry_point()
