"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"): a classification task whose training loss also matches a teacher's class
probabilities, both softened by a temperature T:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard loss

(T^2 keeps the soft term's gradients at the hard term's scale as T changes). Only training
changes: validation and test measure the student alone, with the task's own loss and metrics,
so a distilled run compares directly with one trained without a teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dltrain.tasks.base import TaskWrapper


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(student.float() / t, dim=1)
    log_q = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * (t * t)


class Distillation(TaskWrapper):
    """`task` (a classification task) trained against `teacher`'s softened predictions as well.

    The teacher is frozen in eval mode (no dropout, its batch-norm statistics fixed) and sees the
    same batch as the student, augmentation included. Everything but the training loss is the
    task's own (attributes are looked up on it)."""

    def __init__(self, task, teacher: nn.Module, temperature: float, alpha: float) -> None:
        super().__init__(task)
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        teacher.eval()
        teacher.requires_grad_(False)

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        logits = model(x)
        hard = self.task.loss(logits, y)
        if self.alpha == 0.0:
            return hard
        with torch.no_grad():
            target = self.teacher(x)
        soft = soft_loss(logits, target, self.temperature)
        return soft if self.alpha == 1.0 else self.alpha * soft + (1.0 - self.alpha) * hard
