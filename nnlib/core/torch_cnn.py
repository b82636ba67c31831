"""The torch backend of ``model.type: cnn``: the same network as :mod:`nnlib.core.cnn`.

Parameters come in and go out as the flat float32 numpy vector, as for the
torch MLP; inside a call they are views of one flat tensor, so the gradient
comes out flat.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nnlib.core.cnn import EVAL_CHUNK
from nnlib.core.torch_mlp import TorchModel


class TorchCNN(TorchModel):
    """conv + activation + 2x2 max-pool per entry of ``channels``, then a linear layer; an oracle for NumpyCNN."""

    def __init__(self, spec):
        super().__init__(spec)
        self.conv = spec.layers

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        arrays = self._arrays(flat)
        h = x.reshape(-1, *self.conv.image_shape)
        for i in range(len(self.conv.channels)):
            h = F.conv2d(h, arrays[2 * i], arrays[2 * i + 1], padding=self.conv.kernel // 2)
            h = F.max_pool2d(self._act(h), 2)
        return h.flatten(1) @ arrays[-2] + arrays[-1]

    def _eval_logits(self, flat: np.ndarray, x: np.ndarray) -> torch.Tensor:
        w = torch.from_numpy(flat)
        with torch.no_grad():
            return torch.cat([self._logits(w, torch.from_numpy(x[i:i + EVAL_CHUNK]))
                              for i in range(0, max(len(x), 1), EVAL_CHUNK)])
