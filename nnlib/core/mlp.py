"""A multilayer perceptron in numpy: forward pass, losses, backprop.

This is the default backend (no torch needed). Every function works on the
flat float32 parameter vector of :mod:`nnlib.core.params`.

Shapes: ``x`` is ``(n_samples, n_features)`` float32 (float64 works too and is
kept, which the gradient checks use), ``y`` is
``(n_samples,)`` int64 class labels in ``[0, n_classes)``.

Losses (``m`` samples, output ``z`` of the last layer, one-hot targets ``t``):

- ``cross_entropy``: ``mean_i -log softmax(z_i)[y_i]``
- ``squared``: ``1/(2m) sum_i ||z_i - t_i||^2`` (linear output layer)

Both are optimised with the L2 penalty ``l2/2 * sum(W**2)`` over the weight
matrices (not the biases). Reported losses are the data loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnlib.core.params import DTYPE, LayerSpec, unpack


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(z.dtype, copy=False)


# name -> (activation, derivative written in terms of the activation's output h)
ACTIVATIONS = {
    "relu": (lambda z: np.maximum(z, 0, out=z), lambda h: h > 0),
    "sigmoid": (_sigmoid, lambda h: h * (1 - h)),
    "tanh": (lambda z: np.tanh(z, out=z), lambda h: 1 - h * h),
}


def _one_hot(y: np.ndarray, n_classes: int, dtype=DTYPE) -> np.ndarray:
    t = np.zeros((y.shape[0], n_classes), dtype)
    t[np.arange(y.shape[0]), y] = 1
    return t


def _cross_entropy(z, y):
    """Return (mean loss, d loss / d z)."""
    m = z.shape[0]
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(m), y].mean()
    delta = np.exp(log_p)
    delta[np.arange(m), y] -= 1
    return float(loss), delta / m


def _squared(z, y):
    """Return (mean loss, d loss / d z)."""
    m = z.shape[0]
    diff = z - _one_hot(y, z.shape[1], z.dtype)
    return float(0.5 * (diff * diff).sum() / m), diff / m


LOSSES = {"cross_entropy": _cross_entropy, "squared": _squared}


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the function an MLP computes and the loss it minimises."""

    layers: LayerSpec  # or, for model.type: cnn, a nnlib.core.cnn.ConvSpec (same flat-vector interface)
    activation: str = "relu"
    loss: str = "cross_entropy"
    l2: float = 0.0
    output_scale: float = 1.0  # multiplies the last layer's ``h @ W`` (not its bias): a sub-network's x G


class NumpyModel:
    """What the numpy models share: predictions, the objective and evaluation, from ``predict_logits``.

    A model (:class:`NumpyMLP`, :class:`nnlib.core.cnn.NumpyCNN`) adds
    ``predict_logits`` and ``loss_and_grad``. Stateless apart from the model
    spec; the update rules live in :mod:`nnlib.core.optim` and training loops
    call ``loss_and_grad``.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._act, self._act_grad = ACTIVATIONS[spec.activation]
        self._loss = LOSSES[spec.loss]

    def predict_logits(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted class of every sample, ``(n_samples,)`` int64."""
        return self.predict_logits(flat, x).argmax(axis=1)

    def objective(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        """Data loss plus the L2 penalty: the function whose gradient ``loss_and_grad`` returns."""
        loss, _ = self._loss(self.predict_logits(flat, x), y)
        w = flat * self.spec.layers.weight_mask().astype(flat.dtype)
        return loss + 0.5 * self.spec.l2 * float(np.dot(w, w))

    def evaluate(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Return ``(mean data loss, accuracy in [0, 1])`` on ``(x, y)``."""
        z = self.predict_logits(flat, x)
        loss, _ = self._loss(z, y)
        return loss, float((z.argmax(axis=1) == y).mean())


class NumpyMLP(NumpyModel):
    """The numpy backend of an MLP: its forward pass and backprop on the flat vector."""

    def _forward(self, arrays, x):
        """Return the list of layer outputs ``[x, h1, ..., z]``."""
        outs = [x]
        n = self.spec.layers.n_layers
        for i in range(n):
            z = outs[-1] @ arrays[2 * i]
            if i == n - 1 and self.spec.output_scale != 1:
                z *= z.dtype.type(self.spec.output_scale)
            z += arrays[2 * i + 1]
            outs.append(self._act(z) if i < n - 1 else z)
        return outs

    def hidden_activations(self, flat: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
        """Every hidden layer's output on ``x``, ``[(n_samples, h1), ...]``."""
        return self._forward(unpack(flat, self.spec.layers), x)[1:-1]

    def predict_logits(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Output of the last layer, ``(n_samples, n_classes)``."""
        return self._forward(unpack(flat, self.spec.layers), x)[-1]

    def loss_and_grad(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Data loss on ``(x, y)`` and the gradient of loss + L2 penalty, flat ``(n_params,)``.

        The gradient is written straight into one flat vector (no per-layer
        arrays glued together afterwards).
        """
        layers = self.spec.layers
        arrays = unpack(flat, layers)
        outs = self._forward(arrays, x)
        loss, delta = self._loss(outs[-1], y)
        grad = np.empty_like(flat)
        grads = unpack(grad, layers)
        scale = self.spec.output_scale
        for i in reversed(range(layers.n_layers)):
            w = arrays[2 * i]
            np.sum(delta, axis=0, out=grads[2 * i + 1])
            if i == layers.n_layers - 1 and scale != 1:
                delta = delta * delta.dtype.type(scale)  # the scaled product's gradient, for W and below
            np.matmul(outs[i].T, delta, out=grads[2 * i])
            if self.spec.l2:
                grads[2 * i] += w.dtype.type(self.spec.l2) * w
            if i > 0:
                delta = delta @ w.T
                delta *= self._act_grad(outs[i])
        return loss, grad
