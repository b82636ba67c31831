"""A module whose layers are named ``meta`` and ``head``, given to nnlib as ``user_models.named:Meta``."""

import torch
from torch import nn


class Meta(nn.Module):
    """Flatten, Linear ``meta`` (64 -> 12), ReLU, Linear ``head`` (12 -> 10); ``stats=True`` adds a buffer
    ``meta.mean``, one of the names the model file keeps for itself."""

    def __init__(self, stats: bool = False):
        super().__init__()
        self.meta, self.head = nn.Linear(64, 12), nn.Linear(12, 10)
        if stats:
            self.meta.register_buffer("mean", torch.zeros(12))

    def forward(self, x):
        return self.head(torch.relu(self.meta(x.flatten(1))))
