"""Recurrent networks: Elman RNN, LSTM and GRU over a sequence (or an image read row by row)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from dltrain.models.base import MODELS
from dltrain.schema import PositiveInt, Probability

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class AttentionPool(nn.Module):
    """Additive attention over the time steps (Bahdanau et al. 2015, as pooling): a score
    v . tanh(W h_t) per step, softmax over time, the weighted sum of the steps' states."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.score = nn.Linear(width, 1, bias=False)

    def weights(self, states: torch.Tensor) -> torch.Tensor:
        """(B, T, W) -> (B, T): each sequence's attention over its steps."""
        return self.score(torch.tanh(self.proj(states))).squeeze(-1).softmax(-1)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bt,btw->bw", self.weights(states), states)


class RecurrentNet(nn.Module):
    """A stacked (optionally bidirectional) recurrent layer, then a linear head on the last state.

    Input ``(B, T, F)`` is a sequence; an image ``(B, C, H, W)`` is read as H steps of C*W
    features; a table ``(B, F)`` as F steps of one feature; text ``(B, T)`` word ids as T steps
    of their `embedding_dim`-wide embeddings. `residual` (with `layers` > 1): the
    layers run one by one and each after the first adds its input sequence to its output (Wu et
    al. 2016's residual stacking); `attention`: the head reads an attention-weighted sum of every
    step's state instead of the last one.
    """

    def __init__(
        self,
        cell: str,
        in_shape: tuple[int, ...],
        out_features: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        batchnorm: bool,
        residual: bool = False,
        attention: bool = False,
        num_words: int | None = None,
        embedding_dim: int = 64,
        **cell_kwargs,
    ) -> None:
        super().__init__()
        features = in_shape[0] * in_shape[2] if len(in_shape) == 3 else (in_shape[-1] if len(in_shape) == 2 else 1)
        # text (word ids): each step's word through an embedding (id 0, the padding, stays zero)
        self.embed = nn.Embedding(num_words, embedding_dim, padding_idx=0) if num_words else None
        if self.embed is not None:
            features = embedding_dim
        width = hidden * (2 if bidirectional else 1)
        self.residual = residual and layers > 1
        if self.residual:  # one module per layer, so each can take a shortcut (fused multi-layer cells cannot)
            self.rnn = nn.ModuleList(
                CELLS[cell](features if i == 0 else width, hidden, batch_first=True, bidirectional=bidirectional, **cell_kwargs) for i in range(layers)
            )
            self.between = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        else:
            self.rnn = CELLS[cell](
                features,
                hidden,
                num_layers=layers,
                batch_first=True,
                bidirectional=bidirectional,
                dropout=dropout if layers > 1 else 0.0,
                **cell_kwargs,
            )
        self.hidden, self.bidirectional = hidden, bidirectional
        self.attention = AttentionPool(width) if attention else None
        self.norm = nn.BatchNorm1d(width) if batchnorm else nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:  # (B, T) word ids -> (B, T, embedding_dim)
            x = self.embed(x)
        elif x.dim() == 4:  # (B, C, H, W) -> (B, H, C*W): one image row per time step
            x = x.permute(0, 2, 1, 3).flatten(2)
        elif x.dim() == 2:
            x = x.unsqueeze(-1)
        if self.residual:
            out = self.rnn[0](x)[0]
            for layer in self.rnn[1:]:
                out = out + layer(self.between(out))[0]
        else:
            out, _ = self.rnn(x)
        if self.attention is not None:
            last = self.attention(out)
        elif self.bidirectional:  # forward direction's last step, backward direction's first
            last = torch.cat([out[:, -1, : self.hidden], out[:, 0, self.hidden :]], dim=1)
        else:
            last = out[:, -1]
        return self.head(self.dropout(self.norm(last)))


@MODELS.register("rnn", family="recurrent", inputs=("image", "sequence", "text"))
def rnn(
    in_shape: tuple[int, ...],
    out_features: int,
    hidden: PositiveInt = 128,
    layers: PositiveInt = 1,
    activation: Literal["tanh", "relu"] = "tanh",
    bidirectional: bool = False,
    dropout: Probability = 0.0,
    batchnorm: bool = False,
    residual: bool = False,
    attention: bool = False,
    embedding_dim: PositiveInt = 64,
    num_words: int | None = None,
) -> RecurrentNet:
    """Elman RNN (tanh or ReLU units) with a linear head on the last hidden state."""
    return RecurrentNet("rnn", in_shape, out_features, hidden, layers, bidirectional, dropout, batchnorm, residual, attention, num_words, embedding_dim, nonlinearity=activation)


@MODELS.register("lstm", family="recurrent", inputs=("image", "sequence", "text"))
def lstm(
    in_shape: tuple[int, ...],
    out_features: int,
    hidden: PositiveInt = 128,
    layers: PositiveInt = 1,
    bidirectional: bool = False,
    dropout: Probability = 0.0,
    batchnorm: bool = False,
    residual: bool = False,
    attention: bool = False,
    embedding_dim: PositiveInt = 64,
    num_words: int | None = None,
) -> RecurrentNet:
    """Long short-term memory network (Hochreiter & Schmidhuber 1997)."""
    return RecurrentNet("lstm", in_shape, out_features, hidden, layers, bidirectional, dropout, batchnorm, residual, attention, num_words, embedding_dim)


@MODELS.register("gru", family="recurrent", inputs=("image", "sequence", "text"))
def gru(
    in_shape: tuple[int, ...],
    out_features: int,
    hidden: PositiveInt = 128,
    layers: PositiveInt = 1,
    bidirectional: bool = False,
    dropout: Probability = 0.0,
    batchnorm: bool = False,
    residual: bool = False,
    attention: bool = False,
    embedding_dim: PositiveInt = 64,
    num_words: int | None = None,
) -> RecurrentNet:
    """Gated recurrent unit network (Cho et al. 2014)."""
    return RecurrentNet("gru", in_shape, out_features, hidden, layers, bidirectional, dropout, batchnorm, residual, attention, num_words, embedding_dim)
