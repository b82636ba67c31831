"""Choose a backend by name. torch is imported only when asked for.

A backend exposes the model's maths on the flat parameter vector:
``loss_and_grad(flat, x, y)``, ``evaluate(flat, x, y)`` and
``predict(flat, x)``. The allowed names are checked by the config
(``model.backend``).
"""

from __future__ import annotations

from functools import lru_cache

from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.errors import ConfigError


@lru_cache(maxsize=8)
def get_backend(name: str, spec: ModelSpec):
    """Return the backend ``name`` ('numpy' or 'torch') for ``spec`` (cached per process)."""
    if name == "numpy":
        return NumpyMLP(spec)
    try:
        from nnlib.core.torch_mlp import TorchMLP
    except ImportError as exc:
        raise ConfigError(
            f"model.backend: 'torch' needs PyTorch, which cannot be imported ({exc}); "
            "install it with 'pip install torch==2.13.0' or use model.backend=numpy"
        ) from None
    return TorchMLP(spec)
