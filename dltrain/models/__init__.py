"""Model families (one module each, `layers.py` shared); `MODELS` is their registry (models/base.py)."""

from dltrain.models import cnn, generative, mlp, perceptron, rbm, resnet, rnn, seq2seq, text  # noqa: F401  (registration)
from dltrain.models.base import MODELS

__all__ = ["MODELS"]
