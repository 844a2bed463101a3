"""A local plugin: one model, in one file. Train it with

    dltrain --plugin examples/my_model.py model=wide_linear model.width=128

(every later verb on that run takes the same `--plugin examples/my_model.py`).
"""

import math

from torch import nn

from dltrain import MODELS
from dltrain.schema import PositiveInt, Probability


@MODELS.register("wide_linear", inputs=("image", "table"))
def wide_linear(in_shape, out_features, width: PositiveInt = 512, dropout: Probability = 0.1):
    """One wide hidden layer: flatten, linear, ReLU, dropout, linear."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(in_shape), width),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(width, out_features),
    )
