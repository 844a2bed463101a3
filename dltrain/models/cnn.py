"""Convolutional network in the LeNet tradition, for any image size and channel count."""

from __future__ import annotations

from torch import nn

from dltrain.models.base import MODELS
from dltrain.models.layers import Activation, make_activation
from dltrain.schema import PositiveInt, Probability


class ConvNet(nn.Module):
    """[Conv -> (BatchNorm) -> activation -> MaxPool] x layers -> Linear -> activation -> Linear.

    Block i has ``channels * 2**i`` filters with "same" padding; each block halves the spatial
    size while it is at least 2, so 8x8 digits and 28x28 MNIST both work.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        out_features: int,
        channels: int,
        layers: int,
        kernel_size: int,
        hidden: int,
        activation: str,
        dropout: float,
        batchnorm: bool,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        blocks: list[nn.Module] = []
        for i in range(layers):
            out_c = channels * 2**i
            blocks.append(nn.Conv2d(c, out_c, kernel_size, padding=kernel_size // 2, bias=not batchnorm))
            if batchnorm:
                blocks.append(nn.BatchNorm2d(out_c))
            blocks.append(make_activation(activation))
            grow = 2 * (kernel_size // 2) - kernel_size + 1  # +1 for even kernels, 0 for odd
            h, w = h + grow, w + grow
            if min(h, w) >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out_c
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(c * h * w, hidden), make_activation(activation)]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, out_features))
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.features(x))


@MODELS.register("cnn", family="conv", inputs=("image",))
def cnn(
    in_shape: tuple[int, ...],
    out_features: int,
    channels: PositiveInt = 32,
    layers: PositiveInt = 2,
    kernel_size: PositiveInt = 3,
    hidden: PositiveInt = 128,
    activation: Activation = "relu",
    dropout: Probability = 0.0,
    batchnorm: bool = True,
) -> ConvNet:
    """LeNet-style CNN: conv/pool blocks doubling the channels, then a hidden dense layer."""
    return ConvNet(tuple(in_shape), out_features, channels, layers, kernel_size, hidden, activation, dropout, batchnorm)
