"""The torch backend of ``model.type: cnn``: the same network as :mod:`nnlib.core.cnn`, as a ``torch.nn.Module``.

The flat vector's arrays are the module's parameters in order (see
:mod:`nnlib.core.torch_mlp` for the contract): each conv layer's weight
``(out, in, k, k)`` and bias ``(out,)``, as ``torch.nn.Conv2d`` holds them,
then the linear layer as ``(n_flat, n_classes)`` and ``(n_classes,)``, which
computes ``x @ W + b`` like the MLP's layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnlib.core.cnn import EVAL_CHUNK, ConvSpec
from nnlib.core.torch_mlp import ACTIVATIONS, TorchModel, _Affine


class CNNModule(nn.Module):
    """conv ("same" zero padding) + activation + 2x2 max-pool per entry of ``channels``, then a linear layer."""

    def __init__(self, conv: ConvSpec, activation: str):
        super().__init__()
        self.image_shape = tuple(conv.image_shape)
        fan_in, convs = conv.image_shape[0], []
        for ch in conv.channels:
            convs.append(nn.Conv2d(fan_in, ch, conv.kernel, padding=conv.kernel // 2))
            fan_in = ch
        self.convs = nn.ModuleList(convs)
        self.fc = _Affine(conv.n_flat, conv.n_classes)
        self.act = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, *self.image_shape)
        for conv in self.convs:
            h = F.max_pool2d(self.act(conv(h)), 2)
        return self.fc(h.flatten(1))


class TorchCNN(TorchModel):
    """The torch backend of ``model.type: cnn``; an oracle for NumpyCNN."""

    eval_chunk = EVAL_CHUNK

    def make_module(self) -> nn.Module:
        layers = self.spec.layers
        assert isinstance(layers, ConvSpec)  # model.type: cnn
        return CNNModule(layers, self.spec.activation)
