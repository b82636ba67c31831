"""Choose a backend by name. torch is imported only when asked for."""

from __future__ import annotations

from functools import lru_cache

from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.errors import ConfigError

BACKENDS = ("numpy", "torch")


@lru_cache(maxsize=8)
def get_backend(name: str, spec: ModelSpec):
    """Return the backend ``name`` ('numpy' or 'torch') for ``spec`` (cached per process)."""
    if name == "numpy":
        return NumpyMLP(spec)
    if name == "torch":
        try:
            from nnlib.core.torch_mlp import TorchMLP
        except ImportError as exc:
            raise ConfigError(
                f"model.backend: 'torch' needs PyTorch, which cannot be imported ({exc}); "
                "install it with 'pip install torch==2.13.0' or use model.backend=numpy"
            ) from None
        return TorchMLP(spec)
    raise ConfigError(f"model.backend must be one of {BACKENDS}, got {name!r}")
