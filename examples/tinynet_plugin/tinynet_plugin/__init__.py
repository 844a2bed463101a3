"""An example dltrain plugin package: registers a model (`tinynet`) and a dataset (`blobs`).

dltrain imports this module when a command needs its registries (the entry point in
pyproject.toml); it ships `configs/model/tinynet_wide.yaml`, a preset of its model.
"""

import math

import numpy as np
from torch import nn

from dltrain import DATASETS, MODELS
from dltrain.data.base import classification_bundle
from dltrain.schema import Fraction, NonNegativeInt, PositiveInt


@MODELS.register("tinynet", inputs=("image", "table"))
def tinynet(in_shape, out_features, width: PositiveInt = 32):
    """Two linear layers with a ReLU between them."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width), nn.ReLU(), nn.Linear(width, out_features))


@DATASETS.register("blobs", kind="table", task="classification")
def blobs(n: PositiveInt = 900, classes: PositiveInt = 3, spread: float = 1.0, val_fraction: Fraction = 0.1, test_fraction: Fraction = 0.2, split_seed: NonNegativeInt = 0):
    """Gaussian blobs around points on a circle, one per class (2 features)."""
    rng = np.random.default_rng(split_seed)
    y = rng.integers(0, classes, n)
    angle = 2 * np.pi * y / classes
    x = rng.normal(scale=spread, size=(n, 2)) + 3 * np.stack([np.cos(angle), np.sin(angle)], 1)
    return classification_bundle("blobs", "table", x.astype(np.float32), y, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed)
