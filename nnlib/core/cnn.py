"""The small CNN of the MPI slides, in numpy: its parameter layout, forward pass and backprop.

The network (``model.type: cnn``): for each entry of ``channels`` a
``kernel x kernel`` convolution with "same" zero padding (``kernel // 2``),
an activation (``model.activation``; the slides' ReLU) and a 2x2 max-pool
(floor, as ``torch.nn.MaxPool2d(2)``); then one linear layer from the
flattened maps to the classes. With the slides' ``channels=(16, 32)``,
``kernel=5`` and a 28x28 input that is 416 + 12,832 + 15,690 = 28,938
parameters.

Parameters are the same flat float32 vector as the MLP's
(:mod:`nnlib.core.params`), in torch's layouts: conv weights
``(out, in, k, k)``, conv biases ``(out,)``, then the linear layer as
``(in, out)`` and ``(out,)`` like the MLP's layers. The input rows are images
flattened channel-first (``C x H x W``), as IDX files and the digits store
them. Losses and the L2 penalty (on every weight array, not the biases) are
the MLP's.

Inside, maps are kept channels-last ``(n, H, W, C)``, so a convolution is
one matrix product of the ``(n*H*W, C*k*k)`` patch matrix with the
``(C*k*k, out)`` kernel matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nnlib.core.mlp import NumpyModel
from nnlib.core.params import DTYPE, Layout, unpack

EVAL_CHUNK = 1024  # samples per forward pass when predicting


@dataclass(frozen=True)
class ConvSpec(Layout):
    """The CNN's shape: input image ``(C, H, W)``, conv channels, kernel size and classes."""

    image_shape: tuple[int, int, int]
    channels: tuple[int, ...] = (16, 32)
    kernel: int = 5
    n_classes: int = 10

    def map_shapes(self) -> list[tuple[int, int, int]]:
        """``(C, H, W)`` of the input and of every pooled map after it."""
        c, h, w = self.image_shape
        out = [(c, h, w)]
        for ch in self.channels:
            h, w = h // 2, w // 2
            out.append((ch, h, w))
        return out

    @property
    def n_flat(self) -> int:
        """Inputs of the linear layer: the last pooled map, flattened."""
        c, h, w = self.map_shapes()[-1]
        return c * h * w

    def shapes(self) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        fan_in = self.image_shape[0]
        for ch in self.channels:
            out += [(ch, fan_in, self.kernel, self.kernel), (ch,)]
            fan_in = ch
        return out + [(self.n_flat, self.n_classes), (self.n_classes,)]

    def names(self) -> list[str]:
        out: list[str] = []
        for i in range(len(self.channels)):
            out += [f"conv{i}.weight", f"conv{i}.bias"]
        return out + ["fc.weight", "fc.bias"]

    def fans(self) -> list[tuple[int, int] | None]:
        """Glorot's fans: a conv kernel's ``(in * k * k, out * k * k)``, the linear layer's ``(in, out)``."""
        out: list[tuple[int, int] | None] = []
        for s in self.shapes():
            if len(s) == 4:
                out.append((s[1] * s[2] * s[3], s[0] * s[2] * s[3]))
            else:
                out.append((s[0], s[1]) if len(s) == 2 else None)
        return out

    def describe(self) -> dict:
        return {"model_type": "cnn", "image_shape": list(self.image_shape), "channels": list(self.channels),
                "kernel": self.kernel, "n_classes": self.n_classes, "n_params": self.n_params}


def _patches(x: np.ndarray, k: int) -> np.ndarray:
    """``(n, H, W, C)`` -> the ``(n*H*W, C*k*k)`` matrix of its zero-padded ``k x k`` patches."""
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    windows = sliding_window_view(xp, (k, k), axis=(1, 2))  # (n, H', W', C, k, k), H' = H + 2p - k + 1
    n, h, w = x.shape[:3]
    return windows[:, :h, :w].reshape(n * h * w, -1)


def _unpatch(d_cols: np.ndarray, shape: tuple[int, ...], k: int) -> np.ndarray:
    """The adjoint of :func:`_patches`: add each patch's gradient back onto the input ``(n, H, W, C)``."""
    n, h, w, c = shape
    p = k // 2
    d = d_cols.reshape(n, h, w, c, k, k)
    out = np.zeros((n, h + 2 * p, w + 2 * p, c), d_cols.dtype)
    for i in range(k):
        for j in range(k):
            out[:, i:i + h, j:j + w] += d[..., i, j]
    return out[:, p:p + h, p:p + w]


def _pool(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x2 max-pool of ``(n, H, W, C)``: the pooled map and which of the 4 won (the first, as torch)."""
    n, h, w, c = a.shape
    h2, w2 = h // 2, w // 2
    win = a[:, :2 * h2, :2 * w2].reshape(n, h2, 2, w2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h2, w2, c, 4)
    arg = win.argmax(axis=-1)[..., None]
    return np.take_along_axis(win, arg, axis=-1)[..., 0], arg


def _unpool(d: np.ndarray, arg: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The gradient of :func:`_pool`: each pooled gradient goes to its window's winner."""
    n, h2, w2, c = d.shape
    win = np.zeros((n, h2, w2, c, 4), d.dtype)
    np.put_along_axis(win, arg, d[..., None], axis=-1)
    out = np.zeros(shape, d.dtype)
    out[:, :2 * h2, :2 * w2] = win.reshape(n, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(
        n, 2 * h2, 2 * w2, c)
    return out


class NumpyCNN(NumpyModel):
    """The numpy backend of ``model.type: cnn``: its forward pass and backprop on the flat vector."""

    def __init__(self, spec):
        super().__init__(spec)  # the MLP's losses and activations
        self.conv: ConvSpec = spec.layers

    def _forward(self, arrays, x):
        """The logits, and what backprop needs of each conv block."""
        c, h, w = self.conv.image_shape
        a = x.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
        k = self.conv.kernel
        saved = []
        for i in range(len(self.conv.channels)):
            kernel, bias = arrays[2 * i], arrays[2 * i + 1]
            cols = _patches(a, k)
            z = (cols @ kernel.reshape(kernel.shape[0], -1).T).reshape(*a.shape[:3], -1)
            z += bias
            z = self._act(z)
            pooled, arg = _pool(z)
            saved.append((a.shape, cols, z, arg))
            a = pooled
        flat = a.transpose(0, 3, 1, 2).reshape(a.shape[0], -1)  # channel-first, as torch flattens
        logits = flat @ arrays[-2] + arrays[-1]
        return logits, flat, saved

    def loss_and_grad(self, flat_params: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Data loss on ``(x, y)`` and the gradient of loss + L2 penalty, flat ``(n_params,)``."""
        arrays = unpack(flat_params, self.conv)
        logits, flat, saved = self._forward(arrays, x)
        loss, delta = self._loss(logits, y)
        grad = np.empty_like(flat_params)
        grads = unpack(grad, self.conv)
        np.matmul(flat.T, delta, out=grads[-2])
        np.sum(delta, axis=0, out=grads[-1])
        c, h, w = self.conv.map_shapes()[-1]
        d = (delta @ arrays[-2].T).reshape(-1, c, h, w).transpose(0, 2, 3, 1)
        for i in reversed(range(len(self.conv.channels))):
            in_shape, cols, z, arg = saved[i]
            dz = _unpool(d, arg, z.shape)
            dz *= self._act_grad(z)
            dz = dz.reshape(-1, dz.shape[-1])
            kernel = arrays[2 * i]
            grads[2 * i][...] = (dz.T @ cols).reshape(kernel.shape)
            np.sum(dz, axis=0, out=grads[2 * i + 1])
            if i > 0:
                d = _unpatch(dz @ kernel.reshape(kernel.shape[0], -1), in_shape, self.conv.kernel)
        if self.spec.l2:
            grad += DTYPE(self.spec.l2) * flat_params * self.conv.weight_mask().astype(flat_params.dtype)
        return loss, grad

    def predict_logits(self, flat_params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Output of the last layer, ``(n_samples, n_classes)``, in chunks (a patch matrix is k*k times x)."""
        arrays = unpack(flat_params, self.conv)
        return np.concatenate([self._forward(arrays, x[i:i + EVAL_CHUNK])[0]
                               for i in range(0, max(len(x), 1), EVAL_CHUNK)])
