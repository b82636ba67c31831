"""A small torch regressor for tests/test_regression.py, given to nnlib as ``user_models.regressor:make``."""

from torch import nn


def make(n_features: int = 10, n_targets: int = 1) -> nn.Module:
    """Linear, BatchNorm1d, ReLU, Linear: ``(n, n_features)`` rows -> ``(n, n_targets)`` predictions."""
    return nn.Sequential(nn.Linear(n_features, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, n_targets))
