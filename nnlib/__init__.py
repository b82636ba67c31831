"""nnlib: distributed batch training of neural networks on Spark, Hadoop (mrjob) and MPI."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["train", "Run", "load_model", "Model", "__version__"]

if TYPE_CHECKING:  # for type checkers and the API reference; at run time __getattr__ imports them on first use
    from nnlib.api import Run, train
    from nnlib.model.model import Model, load_model


def __getattr__(name: str):
    """``nnlib.train``, ``nnlib.Run``, ``nnlib.load_model`` and ``nnlib.Model``, imported on first use
    (``import nnlib`` stays cheap)."""
    if name in ("load_model", "Model"):
        from nnlib.model import model

        return getattr(model, name)
    if name in ("train", "Run"):
        from nnlib import api

        return getattr(api, name)
    raise AttributeError(f"module 'nnlib' has no attribute {name!r}")
