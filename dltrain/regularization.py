"""Regularizers, composable as a list (``reg=[l2,dropout]``).

A regularizer acts at one of four places, and says which by what it defines:
``penalty(weights)`` adds a term to the training loss (L1, L2, elastic net); ``model`` and
``loss`` override keys of those components (dropout, batch norm, label smoothing); ``clip_grad``
sets gradient clipping. Early stopping lives in ``trainer.early_stop``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dltrain.registry import Registry
from dltrain.schema import NonNegative, Positive, Probability

REGULARIZERS = Registry("reg")


@dataclass
class Regularizer:
    """What one regularizer changes. Empty fields change nothing."""

    model: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    clip_grad: float | None = None
    l1: float = 0.0
    l2: float = 0.0


@REGULARIZERS.register("l1", help="lasso penalty l1 * sum|w| on weights (drives them to exact zeros)")
def l1(weight: Positive = 1e-5) -> Regularizer:
    return Regularizer(l1=weight)


@REGULARIZERS.register("l2", help="ridge penalty l2 * sum w^2 on weights, added to the loss")
def l2(weight: Positive = 1e-4) -> Regularizer:
    return Regularizer(l2=weight)


@REGULARIZERS.register("elastic_net", help="l1 * sum|w| + l2 * sum w^2 (Zou & Hastie 2005)")
def elastic_net(l1: NonNegative = 1e-5, l2: NonNegative = 1e-4) -> Regularizer:
    return Regularizer(l1=l1, l2=l2)


@REGULARIZERS.register("dropout", help="sets the model's dropout probability (Srivastava et al. 2014)")
def dropout(p: Probability = 0.3) -> Regularizer:
    return Regularizer(model={"dropout": p})


@REGULARIZERS.register("batchnorm", help="turns on the model's batch normalisation (Ioffe & Szegedy 2015)")
def batchnorm() -> Regularizer:
    return Regularizer(model={"batchnorm": True})


@REGULARIZERS.register("label_smoothing", help="sets the loss's label smoothing (Szegedy et al. 2016)")
def label_smoothing(eps: Probability = 0.1) -> Regularizer:
    return Regularizer(loss={"label_smoothing": eps})


@REGULARIZERS.register("grad_clip", help="clips the global gradient norm to max_norm before each step")
def grad_clip(max_norm: Positive = 1.0) -> Regularizer:
    return Regularizer(clip_grad=max_norm)


def build_regularizers(cfg: Mapping[str, Mapping] | None) -> dict[str, Regularizer]:
    """Build every regularizer of the ``reg`` node (a mapping of name -> its parameters)."""
    return {name: REGULARIZERS.build({"name": name, **dict(params or {})}, key=f"reg.{name}") for name, params in (cfg or {}).items()}


class WeightPenalty:
    """The summed L1/L2 penalty over a model's weight matrices and kernels (not biases or norms)."""

    def __init__(self, model: nn.Module, regs: Sequence[Regularizer]) -> None:
        self.l1 = sum(r.l1 for r in regs)
        self.l2 = sum(r.l2 for r in regs)
        self.weights = [p for p in model.parameters() if p.dim() > 1 and p.requires_grad]

    def __bool__(self) -> bool:
        return bool(self.l1 or self.l2)

    def __call__(self) -> torch.Tensor:
        total = 0.0
        if self.l1:
            total = total + self.l1 * sum(w.abs().sum() for w in self.weights)
        if self.l2:
            total = total + self.l2 * sum(w.pow(2).sum() for w in self.weights)
        return total
