"""Small torch modules for tests/test_module.py, given to nnlib as ``user_models.tiny:make``."""

from torch import nn


def make(hidden: int = 16, batch_norm: bool = True, n_classes: int = 10, bn_momentum: float = 0.1) -> nn.Module:
    """Flatten, Linear, (BatchNorm1d), ReLU, Linear: ``(n, ...)`` images -> ``(n, n_classes)`` logits."""
    layers = [nn.Flatten(), nn.LazyLinear(hidden) if hidden < 0 else nn.Linear(64, hidden)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden, momentum=bn_momentum))
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(hidden, n_classes))


def not_a_module():
    return 3
