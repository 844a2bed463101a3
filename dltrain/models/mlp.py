"""Feed-forward network (multi-layer perceptron)."""

from __future__ import annotations

import math

from torch import nn

from dltrain.models.base import MODELS
from dltrain.models.layers import Activation, make_activation
from dltrain.schema import NonNegativeInt, PositiveInt, Probability


class Residual(nn.Sequential):
    """x + block(x): an identity shortcut around its layers (He et al. 2016)."""

    def forward(self, x):
        return x + super().forward(x)


class MLP(nn.Sequential):
    """Flatten -> [Linear -> (BatchNorm) -> activation -> (Dropout)] x layers -> Linear.

    `residual`: every hidden layer after the first (whose input and output widths are both
    `hidden`) adds its input to its output, so a deep stack starts near the identity."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int,
        layers: int,
        activation: str,
        dropout: float,
        batchnorm: bool,
        residual: bool = False,
    ) -> None:
        modules: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i in range(layers):
            layer: list[nn.Module] = [nn.Linear(width, hidden, bias=not batchnorm)]
            if batchnorm:
                layer.append(nn.BatchNorm1d(hidden))
            layer.append(make_activation(activation))
            if dropout > 0:
                layer.append(nn.Dropout(dropout))
            modules += [Residual(*layer)] if residual and i > 0 else layer
            width = hidden
        modules.append(nn.Linear(width, out_features))
        super().__init__(*modules)


@MODELS.register("mlp", family="feedforward", inputs=("image", "table", "sequence"))
def mlp(
    in_shape: tuple[int, ...],
    out_features: int,
    hidden: PositiveInt = 256,
    layers: NonNegativeInt = 2,
    activation: Activation = "relu",
    dropout: Probability = 0.0,
    batchnorm: bool = True,
    residual: bool = False,
) -> MLP:
    """Multi-layer perceptron: `layers` hidden layers of width `hidden` (any input, flattened)."""
    return MLP(math.prod(in_shape), out_features, hidden, layers, activation, dropout, batchnorm, residual)
