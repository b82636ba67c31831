"""nnlib: distributed batch training of neural networks on Spark, Hadoop (mrjob) and MPI."""

__version__ = "0.1.0"


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
