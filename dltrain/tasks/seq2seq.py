"""Sequence-to-sequence: a token sequence in, a token sequence out."""

from __future__ import annotations

import torch
from torch import nn

from dltrain.tasks.base import TASKS, Task


@TASKS.register("seq2seq", help="map a token sequence to another; metrics: loss (teacher-forced), token_accuracy, sequence_accuracy (greedy decoding)")
class Seq2SeqTask(Task):
    """Trained by teacher forcing (the loss: cross-entropy per target token); measured by greedy
    decoding, as it would be used: the share of tokens and of whole sequences decoded right."""

    name = "seq2seq"
    metrics = ("loss", "token_accuracy", "sequence_accuracy")
    higher_is_better = frozenset({"token_accuracy", "sequence_accuracy"})

    @staticmethod
    def out_features(data) -> int:
        return data.num_classes  # the vocabulary

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits.flatten(0, 1).float(), y.flatten())

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        return self.loss(model(x, y), y)

    def new_state(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, right tokens, right sequences, sequences

    def update(self, state: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        state[0] += self.loss(model(x, y), y).double() * n
        right = model(x, steps=y.shape[1]).argmax(-1) == y
        state[1] += right.double().mean(1).sum()
        state[2] += right.all(1).sum()
        state[3] += n

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        loss, tokens, sequences, n = state.tolist()
        n = max(n, 1)
        return {"loss": loss / n, "token_accuracy": tokens / n, "sequence_accuracy": sequences / n}
