"""Text classifiers over word ids (data=text): the bag of embeddings."""

from __future__ import annotations

import torch
from torch import nn

from dltrain.models.base import MODELS
from dltrain.models.layers import Activation, make_activation
from dltrain.schema import NonNegativeInt, PositiveInt, Probability


class EmbeddingBagNet(nn.Module):
    """The mean of a text's word embeddings (nn.EmbeddingBag, padding left out), then an MLP head
    (fastText's classifier, Joulin et al. 2017, with `hidden_layers=0`)."""

    def __init__(self, num_words: int, out_features: int, embedding_dim: int, hidden: int, hidden_layers: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(num_words, embedding_dim, mode="mean", padding_idx=0)
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        width = embedding_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden), make_activation(activation)] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            width = hidden
        self.head = nn.Sequential(*layers, nn.Linear(width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(x))


@MODELS.register("embedding_bag", family="text", inputs=("text",))
def embedding_bag(
    in_shape: tuple[int, ...],
    out_features: int,
    num_words: int | None = None,
    embedding_dim: PositiveInt = 64,
    hidden: PositiveInt = 64,
    hidden_layers: NonNegativeInt = 0,
    activation: Activation = "relu",
    dropout: Probability = 0.0,
) -> EmbeddingBagNet:
    """Bag of word embeddings (their mean) and a linear or MLP head: a fast text classifier."""
    if num_words is None:
        raise ValueError("model=embedding_bag reads word ids: it needs data=text's vocabulary")
    return EmbeddingBagNet(num_words, out_features, embedding_dim, hidden, hidden_layers, activation, dropout)
