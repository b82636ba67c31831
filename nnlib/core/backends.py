"""Choose a backend by name. torch is imported only when asked for.

A backend exposes the model's maths on the flat parameter vector:
``loss_and_grad(flat, x, y, sample_weight=None, weight_sum=None)``,
``evaluate(flat, x, y, sample_weight=None)`` (mean loss and accuracy, or R²
under regression), ``score(flat, x, y, sample_weight=None, target_mean=None,
target_std=None, raw_target=None)`` (a block's summable metric sums,
:mod:`nnlib.core.metrics`) and ``predict(flat, x)`` (classes, or the outputs
under regression); a backend may add ``train_steps`` (the torch backend's own
round loop, :meth:`nnlib.core.torch_mlp.TorchModel.train_steps`), which
:func:`nnlib.core.train.local_sgd` then runs. The task and loss are the
spec's (``ModelSpec.task``, ``loss``, ``huber_delta``;
:mod:`nnlib.core.losses`). The allowed names are checked by the config
(``model.backend``).
"""

from __future__ import annotations

from functools import lru_cache

from nnlib.core.cnn import ConvSpec, NumpyCNN
from nnlib.core.mlp import ModelSpec, NumpyMLP
from nnlib.core.module_spec import ModuleSpec
from nnlib.errors import ConfigError


@lru_cache(maxsize=8)
def get_backend(name: str, spec: ModelSpec):
    """Return the backend ``name`` ('numpy' or 'torch') for ``spec``, an MLP, a CNN or a user's module
    (``model.type: module``, torch only) (cached per process)."""
    cnn = isinstance(spec.layers, ConvSpec)
    if isinstance(spec.layers, ModuleSpec):
        if name != "torch":
            raise ConfigError(f"model.type=module trains a torch.nn.Module and needs model.backend=torch, got {name}")
        from nnlib.core.torch_module import TorchModule

        return TorchModule(spec)
    if name == "numpy":
        return NumpyCNN(spec) if cnn else NumpyMLP(spec)
    try:
        from nnlib.core.torch_cnn import TorchCNN
        from nnlib.core.torch_mlp import TorchMLP
    except ImportError as exc:
        raise ConfigError(
            f"model.backend: 'torch' needs PyTorch, which cannot be imported ({exc}); "
            "install it with 'pip install torch==2.13.0' or use model.backend=numpy"
        ) from None
    return TorchCNN(spec) if cnn else TorchMLP(spec)
