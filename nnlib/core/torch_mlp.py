"""The torch backend: the same MLP and losses as :mod:`nnlib.core.mlp`.

Imported only when ``model.backend: torch`` is chosen. Parameters still come
in and go out as the flat float32 numpy vector; inside a call they live in
one flat torch tensor whose slices are the layer arrays, so gradients come
out flat too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nnlib.core.mlp import ModelSpec
from nnlib.core.params import DTYPE

ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def data_loss(name: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean data loss ``name`` of the logits ``z`` (as :data:`nnlib.core.mlp.LOSSES` computes it)."""
    if name == "cross_entropy":
        return F.cross_entropy(z, y)
    target = F.one_hot(y, z.shape[1]).to(z.dtype)
    return 0.5 * ((z - target) ** 2).sum(dim=1).mean()


class TorchModel:
    """What the torch models share: loss, gradient (autograd) and evaluation, from ``_logits``.

    A model (:class:`TorchMLP`, :class:`nnlib.core.torch_cnn.TorchCNN`) adds
    ``_logits(flat tensor, x tensor)``; it is the oracle for its numpy twin
    and vice versa.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._act = ACTIVATIONS[spec.activation]
        self._mask = torch.from_numpy(spec.layers.weight_mask())

    def _arrays(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The layout's arrays as views of the flat tensor."""
        return [flat[start:stop].view(shape) for start, stop, shape in self.spec.layers.offsets]

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _eval_logits(self, flat: np.ndarray, x: np.ndarray) -> torch.Tensor:
        """The logits of every sample without a graph (a model may cut ``x`` into chunks)."""
        with torch.no_grad():
            return self._logits(torch.from_numpy(flat), torch.from_numpy(x))

    def loss_and_grad(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Data loss and the gradient of loss + L2 penalty, flat ``(n_params,)``."""
        w = torch.from_numpy(flat).detach().requires_grad_(True)
        loss = data_loss(self.spec.loss, self._logits(w, torch.from_numpy(x)), torch.from_numpy(y))
        objective = loss
        if self.spec.l2:
            objective = loss + 0.5 * self.spec.l2 * ((w * self._mask) ** 2).sum()
        (grad,) = torch.autograd.grad(objective, w)
        return float(loss.detach()), grad.numpy().astype(DTYPE, copy=False)

    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted class of every sample, ``(n_samples,)`` int64."""
        return self._eval_logits(flat, x).argmax(dim=1).numpy()

    def evaluate(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Return ``(mean data loss, accuracy in [0, 1])`` on ``(x, y)``."""
        z, yt = self._eval_logits(flat, x), torch.from_numpy(y)
        return float(data_loss(self.spec.loss, z, yt)), float((z.argmax(dim=1) == yt).double().mean())


class TorchMLP(TorchModel):
    """The torch backend of an MLP."""

    def _logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        arrays = self._arrays(flat)
        h = x
        n = self.spec.layers.n_layers
        for i in range(n):
            if i == n - 1 and self.spec.output_scale != 1:
                return (h @ arrays[2 * i]) * self.spec.output_scale + arrays[2 * i + 1]
            h = h @ arrays[2 * i] + arrays[2 * i + 1]
            if i < n - 1:
                h = self._act(h)
        return h
