"""Sequence to sequence: an encoder-decoder LSTM with attention (Sutskever et al. 2014; Luong et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from dltrain.models.base import MODELS
from dltrain.schema import PositiveInt, Probability


class Seq2Seq(nn.Module):
    """Tokens -> embedding -> LSTM encoder; an LSTM decoder that attends over the encoder's
    states at every step (Luong's "general" score h_t . W . s, input feeding) and emits a token.

    `forward(x, y)`: teacher forcing, the decoder reads the true previous token (a start token
    first) and returns logits ``(B, T, vocab)``; `forward(x)`: greedy decoding, each step's most
    likely token fed back, for as many steps as the input has (`steps` to change it).
    """

    def __init__(self, vocab: int, embedding_dim: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.vocab, self.start = vocab, vocab  # token `vocab` starts every decoded sequence
        self.embed = nn.Embedding(vocab + 1, embedding_dim)
        self.encoder = nn.LSTM(embedding_dim, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.decoder = nn.LSTM(embedding_dim + hidden, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.score = nn.Linear(hidden, hidden, bias=False)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(hidden, vocab)

    def _step(self, token: torch.Tensor, feed: torch.Tensor, state, memory: torch.Tensor, keys: torch.Tensor):
        inp = torch.cat([self.embed(token), feed], -1).unsqueeze(1)
        out, state = self.decoder(inp, state)
        h = out[:, 0]
        weights = torch.einsum("bh,bsh->bs", h, keys).softmax(-1)
        context = torch.einsum("bs,bsh->bh", weights, memory)
        feed = torch.tanh(self.combine(torch.cat([h, context], -1)))
        return self.head(self.dropout(feed)), feed, state

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, steps: int | None = None) -> torch.Tensor:
        x = x.long()
        memory, state = self.encoder(self.embed(x))
        keys = self.score(memory)
        feed = memory.new_zeros(len(x), memory.shape[-1])
        token = torch.full((len(x),), self.start, dtype=torch.long, device=x.device)
        logits = []
        for t in range(y.shape[1] if y is not None else steps or x.shape[1]):
            out, feed, state = self._step(token, feed, state, memory, keys)
            logits.append(out)
            token = y[:, t] if y is not None else out.argmax(-1)
        return torch.stack(logits, 1)


@MODELS.register("seq2seq", family="recurrent", inputs=("tokens",), task="seq2seq")
def seq2seq(in_shape: tuple[int, ...], out_features: int, embedding_dim: PositiveInt = 32, hidden: PositiveInt = 128, layers: PositiveInt = 1, dropout: Probability = 0.0) -> Seq2Seq:
    """Encoder-decoder LSTM with attention: teacher forcing in training, greedy decoding to predict."""
    return Seq2Seq(out_features, embedding_dim, hidden, layers, dropout)
