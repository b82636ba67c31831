"""The one parameter format: a flat float32 vector plus a layer-shape spec.

(The CNN's layout, :class:`nnlib.core.cnn.ConvSpec`, answers the same
questions: ``shapes``, ``offsets``, ``names``, ``n_params``,
``weight_mask``, ``fans``, ``describe``; everything outside the backends
sees only the flat vector.)

An MLP with layer sizes ``[n_in, h1, ..., n_out]`` has, for each layer ``i``,
a weight matrix of shape ``(sizes[i], sizes[i + 1])`` followed by a bias of
shape ``(sizes[i + 1],)``. The flat vector holds them in that order. Every
engine ships, combines and stores this vector; only this module knows how to
cut it into arrays and glue it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

DTYPE = np.float32
# the model file's own arrays beside the weights (nnlib.model.file): no array of a layout may take these names
FILE_KEYS = ("meta.header", "meta.mean", "meta.std")


class Layout:
    """What every parameter layout shares, given its ``shapes()``: offsets, size and the L2 mask."""

    def shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def names(self) -> list[str]:
        """The arrays' names in flat order (what a model file stores them as)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The layout as the run's summary and log show it."""
        raise NotImplementedError

    @cached_property
    def offsets(self) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
        """``(start, stop, shape)`` of every array in the flat vector, computed once per spec."""
        out, start = [], 0
        for shape in self.shapes():
            stop = start + int(np.prod(shape))
            out.append((start, stop, shape))
            start = stop
        return tuple(out)

    @property
    def n_params(self) -> int:
        return self.offsets[-1][1]

    @property
    def n_weights(self) -> int:
        """The leading values of the flat vector that the gradient moves; the rest, if any, are a module's
        floating buffers (BatchNorm's running statistics), which its training forward updates."""
        return self.n_params

    def weight_mask(self) -> np.ndarray:
        """Flat float32 mask: 1 on weights (arrays of 2 dimensions and up), 0 on biases (the L2 penalty's support)."""
        return np.concatenate([np.full(int(np.prod(s)), 1.0 if len(s) >= 2 else 0.0, DTYPE) for s in self.shapes()])


@dataclass(frozen=True)
class LayerSpec(Layout):
    """Layer sizes of an MLP, input first: ``(n_features, *hidden, n_classes)``."""

    sizes: tuple[int, ...]

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def shapes(self) -> list[tuple[int, ...]]:
        """Array shapes in flat order: W0, b0, W1, b1, ..."""
        out: list[tuple[int, ...]] = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            out.append((fan_in, fan_out))
            out.append((fan_out,))
        return out

    def names(self) -> list[str]:
        """Array names in flat order, as stored in ``model.npz``."""
        out: list[str] = []
        for i in range(self.n_layers):
            out += [f"layer{i}.weight", f"layer{i}.bias"]
        return out

    def fans(self) -> list[tuple[int, int] | None]:
        """``(fan_in, fan_out)`` of every weight array in flat order, ``None`` for a bias (the init's scale)."""
        return [(s[0], s[1]) if len(s) == 2 else None for s in self.shapes()]

    def describe(self) -> dict:
        """The model's shape for summary.json."""
        return {"model_type": "mlp", "layer_sizes": list(self.sizes), "n_params": self.n_params}


def unpack(flat: np.ndarray, spec: Layout) -> list[np.ndarray]:
    """Cut a flat vector of length ``spec.n_params`` into arrays (views, no copy)."""
    if flat.shape != (spec.n_params,):
        raise ValueError(f"flat parameters must have shape ({spec.n_params},), got {flat.shape}")
    return [flat[start:stop].reshape(shape) for start, stop, shape in spec.offsets]


def pack(arrays: list[np.ndarray]) -> np.ndarray:
    """Glue arrays (in flat order) into one float32 vector."""
    return np.concatenate([np.asarray(a, DTYPE).ravel() for a in arrays])


def to_named(flat: np.ndarray, spec: Layout) -> dict[str, np.ndarray]:
    """Name the arrays for saving: ``{"layer0.weight": ..., "layer0.bias": ...}``."""
    return dict(zip(spec.names(), (a.copy() for a in unpack(flat, spec)), strict=True))


def init_params(spec, seed: int) -> np.ndarray:
    """Glorot-uniform weights, zero biases, as one flat float32 vector.

    ``spec`` is a parameter layout (:class:`LayerSpec`, or the CNN's
    :class:`nnlib.core.cnn.ConvSpec`). The initial weights depend only on
    ``spec`` and ``seed``, never on the backend, so numpy and torch start
    from the same point. A user's module (:class:`nnlib.core.module_spec.ModuleSpec`) starts from its own
    initialisation under ``torch.manual_seed(seed)`` instead (its ``initial_params``).
    """
    if hasattr(spec, "initial_params"):
        return spec.initial_params(seed)
    rng = np.random.default_rng([seed, 0x1A17])
    arrays = []
    for shape, fans in zip(spec.shapes(), spec.fans(), strict=True):
        if fans is not None:
            limit = np.sqrt(6.0 / (fans[0] + fans[1]))
            arrays.append(rng.uniform(-limit, limit, size=shape))
        else:
            arrays.append(np.zeros(shape))
    return pack(arrays)
