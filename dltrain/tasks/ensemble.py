"""Training an ensemble (ensemble.size=K): the loss of a batch is the sum of the members' own
losses, so each member's gradient is the one it would get trained alone. Evaluation is the
task's own, of the ensemble's combined prediction (models/ensemble.py)."""

from __future__ import annotations

import torch
from torch import nn

from dltrain.tasks.base import TaskWrapper


class EnsembleTraining(TaskWrapper):
    """`task` for an `Ensemble` model. A training batch holds one batch per member ((K, B, ...)
    inputs and (K, B) targets: each member's own order of the data, with `bagging` of its own
    bootstrap sample; engine/loader.py `MemberLoader`)."""

    def __init__(self, task, bagging: bool = False) -> None:
        super().__init__(task)
        self.bagging = bagging

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        ensemble = getattr(model, "_orig_mod", model)  # trainer.compile wraps it
        if x.dim() == len(ensemble.in_shape) + 1:  # one batch for every member (the threads probe, batch-norm statistics)
            return sum(self.task.loss(out, y) for out in ensemble.member_outputs(x))
        return sum(self.task.loss(out, y[k]) for k, out in enumerate(ensemble.member_outputs(x, per_member=True)))
