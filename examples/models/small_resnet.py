"""A small residual CNN with BatchNorm, for nnlib's ``model.type: module`` (8x8 digits or 28x28 MNIST).

    nnlib run examples/own_model.yaml
    nnlib run --set model.type=module --set model.module=examples.models.small_resnet:make

``make(channels=16, blocks=2, in_channels=1, n_classes=10)`` returns the
network: a 3x3 convolution, BatchNorm and ReLU; ``blocks`` residual blocks
(conv, BN, ReLU, conv, BN, plus the input, ReLU); average pooling to a 4x4
map and a linear layer. Input ``(n, in_channels, H, W)`` float32, output
``(n, n_classes)`` logits. Plain PyTorch: nothing here knows nnlib.
"""

from torch import nn


class Block(nn.Module):
    """Two 3x3 convolutions with BatchNorm, added to the input (He et al.'s basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        h = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(h)) + x).relu()


class SmallResNet(nn.Module):
    def __init__(self, channels: int = 16, blocks: int = 2, in_channels: int = 1, n_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.blocks = nn.Sequential(*[Block(channels) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(4)  # a 4x4 map whatever the image size: where a stroke is matters
        self.head = nn.Linear(channels * 16, n_classes)

    def forward(self, x):
        h = self.pool(self.blocks(self.stem(x)))
        return self.head(h.flatten(1))


def make(channels: int = 16, blocks: int = 2, in_channels: int = 1, n_classes: int = 10) -> nn.Module:
    """The network (see the module docstring)."""
    return SmallResNet(channels, blocks, in_channels, n_classes)
