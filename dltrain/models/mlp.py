"""Feed-forward network (multi-layer perceptron)."""

from __future__ import annotations

import math

from torch import nn

from dltrain.models.base import MODELS
from dltrain.models.layers import Activation, make_activation
from dltrain.schema import NonNegativeInt, PositiveInt, Probability


class MLP(nn.Sequential):
    """Flatten -> [Linear -> (BatchNorm) -> activation -> (Dropout)] x layers -> Linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int,
        layers: int,
        activation: str,
        dropout: float,
        batchnorm: bool,
    ) -> None:
        modules: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(layers):
            modules.append(nn.Linear(width, hidden, bias=not batchnorm))
            if batchnorm:
                modules.append(nn.BatchNorm1d(hidden))
            modules.append(make_activation(activation))
            if dropout > 0:
                modules.append(nn.Dropout(dropout))
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
) -> MLP:
    """Multi-layer perceptron: `layers` hidden layers of width `hidden` (any input, flattened)."""
    return MLP(math.prod(in_shape), out_features, hidden, layers, activation, dropout, batchnorm)
