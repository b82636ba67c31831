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
from nnlib.core.params import DTYPE
from nnlib.core.torch_mlp import ACTIVATIONS, data_loss


class TorchCNN:
    """conv + activation + 2x2 max-pool per entry of ``channels``, then a linear layer; an oracle for NumpyCNN."""

    def __init__(self, spec):
        self.spec = spec
        self.conv = spec.layers
        self._mask = torch.from_numpy(self.conv.weight_mask())
        self._act = ACTIVATIONS[spec.activation]

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        arrays = [flat[start:stop].view(shape) for start, stop, shape in self.conv.offsets]
        h = x.reshape(-1, *self.conv.image_shape)
        for i in range(len(self.conv.channels)):
            h = F.conv2d(h, arrays[2 * i], arrays[2 * i + 1], padding=self.conv.kernel // 2)
            h = F.max_pool2d(self._act(h), 2)
        return h.flatten(1) @ arrays[-2] + arrays[-1]

    def loss_and_grad(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Data loss and the gradient of loss + L2 penalty, flat ``(n_params,)``."""
        w = torch.from_numpy(flat).detach().requires_grad_(True)
        loss = data_loss(self.spec.loss, self._logits(w, torch.from_numpy(x)), torch.from_numpy(y))
        objective = loss
        if self.spec.l2:
            objective = loss + 0.5 * self.spec.l2 * ((w * self._mask) ** 2).sum()
        (grad,) = torch.autograd.grad(objective, w)
        return float(loss.detach()), grad.numpy().astype(DTYPE, copy=False)

    def _all_logits(self, flat: np.ndarray, x: np.ndarray) -> torch.Tensor:
        w = torch.from_numpy(flat)
        with torch.no_grad():
            return torch.cat([self._logits(w, torch.from_numpy(x[i:i + EVAL_CHUNK]))
                              for i in range(0, max(len(x), 1), EVAL_CHUNK)])

    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted class of every sample, ``(n_samples,)`` int64."""
        return self._all_logits(flat, x).argmax(dim=1).numpy()

    def evaluate(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Return ``(mean data loss, accuracy in [0, 1])`` on ``(x, y)``."""
        z, yt = self._all_logits(flat, x), torch.from_numpy(y)
        return float(data_loss(self.spec.loss, z, yt)), float((z.argmax(dim=1) == yt).double().mean())
