"""A multilayer perceptron in numpy: forward pass, losses, backprop.

This is the default backend (no torch needed). Every function works on the
flat float32 parameter vector of :mod:`nnlib.core.params`.

Shapes: ``x`` is ``(n_samples, n_features)`` float32 (float64 works too and is
kept, which the gradient checks use). Under ``task: classification`` ``y`` is
``(n_samples,)`` int64 class labels in ``[0, n_classes)``; under ``task:
regression`` it is float ``(n_samples,)`` for one target or ``(n_samples,
n_targets)``, and the last layer's width is the number of targets.
``sample_weight`` (optional everywhere) is ``(n_samples,)`` float, ``>= 0``.

Losses (``m`` samples, output ``z`` of the last layer, which is affine with no
activation; formulas, weights and sources in :mod:`nnlib.core.losses`):

- ``cross_entropy``: ``mean_i -log softmax(z_i)[y_i]``
- ``squared``: ``1/(2m) sum_i ||z_i - t_i||^2``, ``t_i`` the one-hot class or the targets
- ``absolute``, ``huber`` (regression): ``1/m sum_i sum_j |r_ij|`` and Huber's ``h_delta(r_ij)``

With sample weights each mean is ``sum_i w_i l_i / sum_i w_i`` (scoring, a
full batch; a mini-batch of local training divides by its size times the
shard's mean weight instead, as :mod:`nnlib.core.losses` explains). All are
optimised with the L2 penalty ``l2/2 * sum(W**2)`` over the weight matrices
(not the biases). Reported losses are the data loss alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nnlib.core import metrics
from nnlib.core.losses import CLASSIFICATION_LOSSES, loss_function
from nnlib.core.params import LayerSpec, Layout, unpack


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(z.dtype, copy=False)


# name -> (activation, derivative written in terms of the activation's output h)
ACTIVATIONS = {
    "relu": (lambda z: np.maximum(z, 0, out=z), lambda h: h > 0),
    "sigmoid": (_sigmoid, lambda h: h * (1 - h)),
    "tanh": (lambda z: np.tanh(z, out=z), lambda h: 1 - h * h),
}


# the classification losses by name, ``(z, y) -> (mean loss, d loss / d z)``; all of them, weighted, in losses
LOSSES = CLASSIFICATION_LOSSES


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the function an MLP computes and the loss it minimises."""

    layers: Layout  # a LayerSpec; for model.type cnn or module a ConvSpec or ModuleSpec (the same flat vector)
    activation: str = "relu"
    loss: str = "cross_entropy"
    l2: float = 0.0
    output_scale: float = 1.0  # multiplies the last layer's ``h @ W`` (not its bias): a sub-network's x G
    task: str = "classification"  # or "regression": float targets, the last layer's width is their number
    huber_delta: float = 1.0  # loss: huber's threshold, in the (standardised) units of the targets

    @property
    def regression(self) -> bool:
        return self.task == "regression"

    @property
    def mlp(self) -> LayerSpec:
        """``layers`` as an MLP's :class:`LayerSpec` (the MLP models and sub-networks read its sizes).

        Raises ``TypeError`` for another layout (a CNN's, a module's)."""
        if not isinstance(self.layers, LayerSpec):
            raise TypeError(f"the layer sizes of an MLP were asked of a {type(self.layers).__name__}")
        return self.layers


class NumpyModel:
    """What the numpy models share: predictions, the objective and evaluation, from ``predict_logits``.

    A model (:class:`NumpyMLP`, :class:`nnlib.core.cnn.NumpyCNN`) adds
    ``predict_logits`` and ``loss_and_grad``. Stateless apart from the model
    spec; the update rules live in :mod:`nnlib.core.optim` and training loops
    call ``loss_and_grad``. ``sample_weight`` ``(n_samples,)`` and
    ``weight_sum`` are the loss's weights and denominator
    (:mod:`nnlib.core.losses`); ``None`` is the unweighted mean.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self._act, self._act_grad = ACTIVATIONS[spec.activation]
        self._loss = loss_function(spec.task, spec.loss, spec.huber_delta)

    def predict_logits(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Predicted class of every sample, ``(n_samples,)`` int64; under regression the outputs,
        ``(n_samples, n_targets)`` in ``flat``'s dtype (standardised units when the targets were)."""
        if self.spec.regression:
            return self.predict_logits(flat, x)
        return self.predict_logits(flat, x).argmax(axis=1)

    def objective(
        self,
        flat: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        weight_sum: float | None = None,
    ) -> float:
        """Data loss plus the L2 penalty: the function whose gradient ``loss_and_grad`` returns."""
        loss, _ = self.data_loss_and_delta(self.predict_logits(flat, x), y, sample_weight, weight_sum)
        w = flat * self.spec.layers.weight_mask().astype(flat.dtype)
        return loss + 0.5 * self.spec.l2 * float(np.dot(w, w))

    def data_loss_and_delta(
        self, z: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None, weight_sum: float | None
    ) -> tuple[float, np.ndarray]:
        """The data loss of the outputs ``z`` ``(m, k)`` and its gradient ``(m, k)`` with respect to them."""
        return self._loss(z, y, sample_weight, weight_sum)  # None: the unweighted code, as before weights

    def evaluate(
        self, flat: np.ndarray, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Return ``(mean data loss, score)`` on ``(x, y)``, means weighted by ``sample_weight`` when given.

        The score is the accuracy in ``[0, 1]``, or under regression R² averaged
        over the targets (:func:`nnlib.core.metrics.finish_regression`; R² is the
        same in standardised units as in the targets' own).
        """
        z = self.predict_logits(flat, x)
        loss, _ = self.data_loss_and_delta(z, y, sample_weight, None)
        if self.spec.regression:
            return loss, metrics.finish_regression(metrics.regression_sums(z, y, sample_weight)).r2
        if sample_weight is None:
            return loss, float((z.argmax(axis=1) == y).mean())
        return loss, metrics.finish_classification(
            metrics.classification_sums(z.argmax(axis=1), y, sample_weight)
        ).accuracy

    def score(
        self,
        flat: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        target_mean=None,
        target_std=None,
        raw_target: np.ndarray | None = None,
    ):
        """The block's :class:`nnlib.core.metrics.ClassificationSums` or ``RegressionSums`` (its loss sum, and its
        metrics' sums in the targets' own units), as :func:`nnlib.core.metrics.block_sums` says."""
        z = self.predict_logits(flat, x)
        loss, _ = self.data_loss_and_delta(z, y, sample_weight, None)
        return metrics.block_sums(self.spec.regression, z, y, loss, sample_weight, target_mean, target_std, raw_target)


class NumpyMLP(NumpyModel):
    """The numpy backend of an MLP: its forward pass and backprop on the flat vector."""

    def _forward(self, arrays, x):
        """Return the list of layer outputs ``[x, h1, ..., z]``."""
        outs = [x]
        n = self.spec.mlp.n_layers
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
        """Output of the last layer, ``(n_samples, n_classes)`` (``n_targets`` under regression)."""
        return self._forward(unpack(flat, self.spec.layers), x)[-1]

    def loss_and_grad(
        self,
        flat: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        weight_sum: float | None = None,
    ) -> tuple[float, np.ndarray]:
        """Data loss on ``(x, y)`` and the gradient of loss + L2 penalty, flat ``(n_params,)``.

        The gradient is written straight into one flat vector (no per-layer
        arrays glued together afterwards).
        """
        layers = self.spec.mlp
        arrays = unpack(flat, layers)
        outs = self._forward(arrays, x)
        loss, delta = self.data_loss_and_delta(outs[-1], y, sample_weight, weight_sum)
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
