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
the MLP's; under ``task: regression`` the linear layer's width
(``n_classes``) is the number of targets and its output is the prediction.

Inside, maps are kept channels-last ``(n, H, W, C)``, so a convolution is
one matrix product of the ``(n*H*W, k*k*C)`` patch matrix (built by ``k*k``
strided copies into a reused array) with the ``(k*k*C, out)`` kernel
matrix; its input gradient is one product and ``k*k`` strided additions, and the
2x2 max-pool compares the four strided views of its windows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from nnlib.core.mlp import NumpyModel
from nnlib.core.params import Layout, unpack

EVAL_CHUNK = 1024  # samples per forward pass when predicting


@dataclass(frozen=True)
class ConvSpec(Layout):
    """The CNN's shape: input image ``(C, H, W)``, conv channels, kernel size and classes (or targets)."""

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
        return {
            "model_type": "cnn",
            "image_shape": list(self.image_shape),
            "channels": list(self.channels),
            "kernel": self.kernel,
            "n_classes": self.n_classes,
            "n_params": self.n_params,
        }


class _Buffers(threading.local):
    """Work arrays reused from step to step (a fresh 10 MB patch matrix each step costs page faults), per thread."""

    def __init__(self):
        self.arrays: dict = {}

    def get(self, key, shape, dtype, zero: bool = False) -> np.ndarray:
        a = self.arrays.get(key)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = self.arrays[key] = np.zeros(shape, dtype)
        elif zero:
            a.fill(0)
        return a


def _patches(x: np.ndarray, k: int, buffers: _Buffers, key) -> np.ndarray:
    """``(n, H, W, C)`` -> the ``(n*H*W, k*k*C)`` matrix of its zero-padded ``k x k`` patches (a reused array).

    Columns are ordered ``(row, column, channel)`` of the patch, so a patch's
    row is ``k * C`` consecutive values of the padded map: ``k`` copies, each
    moving runs of ``k * C`` values. With one channel the matrix is built
    transposed instead (``k * k`` copies of whole image rows) and returned
    as a transposed view.
    """
    n, h, w, c = x.shape
    p = k // 2
    padded = buffers.get((key, "pad"), (n, h + 2 * p, w + 2 * p, c), x.dtype)  # its border stays 0
    padded[:, p : p + h, p : p + w] = x
    if c == 1:
        cols_t = buffers.get((key, "cols"), (k, k, n, h, w), x.dtype)
        for i in range(k):
            for j in range(k):
                cols_t[i, j] = padded[:, i : i + h, j : j + w, 0]
        return cols_t.reshape(k * k, -1).T
    cols = buffers.get((key, "cols"), (n, h, w, k, k, c), x.dtype)
    sn, sh, sw, sc = padded.strides
    for i in range(k):
        rows = as_strided(padded[:, i:], shape=(n, h, w, k * c), strides=(sn, sh, sw, sc), writeable=False)
        cols[:, :, :, i] = rows.reshape(n, h, w, k, c)
    return cols.reshape(n * h * w, -1)


def _unpatch(d_cols: np.ndarray, k: int, buffers: _Buffers, key) -> np.ndarray:
    """The adjoint of :func:`_patches`: add each patch's gradient ``(n, H, W, k, k, C)`` back onto ``(n, H, W, C)``.

    Patches ``k`` columns apart do not overlap, so for each patch row ``i``
    and column offset ``r`` the patches at columns ``r, r + k, ...`` add in
    one operation on runs of ``k * C`` values.
    """
    n, h, w = d_cols.shape[:3]
    c = d_cols.shape[-1]
    p = k // 2
    out = buffers.get((key, "dpad"), (n, h + 2 * p, w + 2 * p, c), d_cols.dtype, zero=True)
    d = d_cols.reshape(n, h, w, k, k * c)
    sn, sh, sw, sc = out.strides
    for i in range(k):
        for r in range(min(k, w)):
            m = -(-(w - r) // k)
            as_strided(out[:, i:, r:], shape=(n, h, m, k * c), strides=(sn, sh, k * sw, sc))[...] += d[:, :, r::k, i]
    return out[:, p : p + h, p : p + w]


def _corners(a: np.ndarray) -> list[np.ndarray]:
    """The four members of every 2x2 window of ``(n, H, W, C)``, each ``(n, H//2, W//2, C)`` (views), in torch's
    order."""
    h2, w2 = a.shape[1] // 2, a.shape[2] // 2
    return [a[:, i : 2 * h2 : 2, j : 2 * w2 : 2] for i in (0, 1) for j in (0, 1)]


def _pool(a: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """2x2 max-pool of ``(n, H, W, C)``: the pooled map and, per window member, where it won (the first, as torch)."""
    tl, tr, bl, br = _corners(a)
    pooled = np.maximum(np.maximum(tl, tr), np.maximum(bl, br))
    won, taken = [], np.zeros(pooled.shape, bool)
    for member in (tl, tr, bl):
        wins = member == pooled
        wins &= ~taken
        taken |= wins
        won.append(wins)
    won.append(~taken)
    return pooled, won


def _unpool(d: np.ndarray, won: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The gradient of :func:`_pool`: each pooled gradient goes to its window's winner."""
    out = np.empty(shape, d.dtype)
    if shape[1] % 2 or shape[2] % 2:
        out.fill(0)  # the rows and columns the pool dropped
    for member, wins in zip(_corners(out), won, strict=True):
        np.multiply(d, wins, out=member)
    return out


class NumpyCNN(NumpyModel):
    """The numpy backend of ``model.type: cnn``: its forward pass and backprop on the flat vector."""

    def __init__(self, spec):
        super().__init__(spec)  # the MLP's losses and activations
        self.conv: ConvSpec = spec.layers
        self._buffers = _Buffers()
        self._mask = self.conv.weight_mask()

    @staticmethod
    def _kernel_matrix(kernel: np.ndarray) -> np.ndarray:
        """``(out, in, k, k)`` -> ``(k * k * in, out)``, rows in the patches' ``(row, column, channel)`` order."""
        return kernel.transpose(2, 3, 1, 0).reshape(-1, kernel.shape[0])

    def _forward(self, arrays, x, buffers: _Buffers | None = None):
        """The logits, and what backprop needs of each conv block."""
        buffers = buffers if buffers is not None else _Buffers()
        c, h, w = self.conv.image_shape
        a = x.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
        k = self.conv.kernel
        saved = []
        for i in range(len(self.conv.channels)):
            kernel, bias = arrays[2 * i], arrays[2 * i + 1]
            cols2d = _patches(a, k, buffers, i)
            z = np.matmul(
                cols2d,
                self._kernel_matrix(kernel),
                out=buffers.get((i, "z"), (cols2d.shape[0], kernel.shape[0]), cols2d.dtype),
            )
            z += bias
            z = self._act(z).reshape(*a.shape[:3], -1)
            pooled, won = _pool(z)
            saved.append((cols2d, z, won, pooled))
            a = pooled
        flat = a.transpose(0, 3, 1, 2).reshape(a.shape[0], -1)  # channel-first, as torch flattens
        logits = flat @ arrays[-2] + arrays[-1]
        return logits, flat, saved

    def loss_and_grad(
        self,
        flat_params: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        weight_sum: float | None = None,
    ) -> tuple[float, np.ndarray]:
        """Data loss on ``(x, y)`` and the gradient of loss + L2 penalty, flat ``(n_params,)``
        (``sample_weight`` and ``weight_sum`` as :class:`nnlib.core.mlp.NumpyModel` says)."""
        arrays = unpack(flat_params, self.conv)
        logits, flat, saved = self._forward(arrays, x, self._buffers)
        loss, delta = self.data_loss_and_delta(logits, y, sample_weight, weight_sum)
        grad = np.empty_like(flat_params)
        grads = unpack(grad, self.conv)
        np.matmul(flat.T, delta, out=grads[-2])
        np.sum(delta, axis=0, out=grads[-1])
        c, h, w = self.conv.map_shapes()[-1]
        d = (delta @ arrays[-2].T).reshape(-1, c, h, w).transpose(0, 2, 3, 1)
        for i in reversed(range(len(self.conv.channels))):
            cols2d, z, won, pooled = saved[i]
            # only a window's winner gets a gradient, and there z is the pooled value: the activation's
            # derivative is taken on the pooled map, a quarter of the size
            dz = _unpool(d * self._act_grad(pooled), won, z.shape).reshape(-1, z.shape[-1])
            kernel = arrays[2 * i]
            k, ch_in = self.conv.kernel, kernel.shape[1]
            grads[2 * i][...] = (dz.T @ cols2d).reshape(kernel.shape[0], k, k, ch_in).transpose(0, 3, 1, 2)
            np.sum(dz, axis=0, out=grads[2 * i + 1])
            if i > 0:
                d_cols = self._buffers.get((i, "dcols"), cols2d.shape, dz.dtype)
                np.matmul(dz, self._kernel_matrix(kernel).T, out=d_cols)
                d = _unpatch(d_cols.reshape(*z.shape[:3], k, k, ch_in), k, self._buffers, i)
        if self.spec.l2:
            l2 = flat_params.dtype.type(self.spec.l2)
            grad += l2 * flat_params * self._mask.astype(flat_params.dtype, copy=False)
        return loss, grad

    def predict_logits(self, flat_params: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Output of the last layer, ``(n_samples, n_classes)``, in chunks (a patch matrix is k*k times x)."""
        arrays = unpack(flat_params, self.conv)
        return np.concatenate(
            [self._forward(arrays, x[i : i + EVAL_CHUNK])[0] for i in range(0, max(len(x), 1), EVAL_CHUNK)]
        )
