"""Gradient diagnostics (trainer.log_grad_norms): per-layer gradient and weight norms per epoch.

A layer is a module that owns parameters (a Linear, a Conv2d, a BatchNorm, an LSTM); its norm is
the 2-norm of all its parameters together. After every optimizer step a hook adds each layer's
gradient norm to a running sum on the training device (no host sync); the epoch's row gets the
mean over its steps, `grad_norm/<layer>`, and the weights' norm at the epoch's end,
`weight_norm/<layer>`: one host sync per epoch. They go wherever the row goes (metrics.csv,
TensorBoard, the checkpoint's history) and `plots/grad_norms.png` is drawn from them.

Vanishing gradients (Hochreiter 1991; Glorot & Bengio 2010): where the first weight layer's
gradient norm is below `VANISHING` of the last one's, the run says so once, in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dltrain.engine.callbacks import Callback

VANISHING = 1e-4  # first weight layer's gradient norm / the last one's, below which the run warns
GRAD, WEIGHT = "grad_norm/", "weight_norm/"


def layers(model: nn.Module) -> list[tuple[str, list[nn.Parameter]]]:
    """(name, parameters) of every module owning trainable parameters, in registration order;
    the name is the module's path and its kind."""
    out = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            kind = type(module).__name__.lower()
            out.append((f"{name}_{kind}" if name else kind, own))  # "1_linear", "encoder.0_lstm"
    return out


def first_to_last(row: dict[str, Any], weight_layers: Sequence[str]) -> float | None:
    """The first weight layer's gradient norm over the last one's in an epoch's row."""
    if len(weight_layers) < 2:
        return None
    last = row.get(GRAD + weight_layers[-1])
    return row[GRAD + weight_layers[0]] / last if last else None


class GradNorms(Callback):
    """Adds each layer's mean gradient norm and its weight norm to every epoch's row.

    `optimizers`: every phase's optimizer; each hook measures only the parameters its optimizer
    steps (a GAN's generator step leaves gradients on the discriminator that are not its own)."""

    def __init__(self, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], warn: Callable[[str], None]) -> None:
        self.layers = layers(model)
        self.names = [name for name, _ in self.layers]
        # layers with a weight matrix or kernel: the ones a vanishing gradient is judged by
        self.weight_layers = [name for name, params in self.layers if any(p.dim() >= 2 for p in params)]
        self.warn, self.warned = warn, False
        layer_of = {p: i for i, (_, params) in enumerate(self.layers) for p in params}
        device = next(model.parameters()).device
        self.sums = torch.zeros(len(self.layers), device=device)
        self.steps = torch.zeros(len(self.layers), device=device)
        self.handles = []
        for opt in optimizers:
            params = [p for group in opt.param_groups for p in group["params"] if p in layer_of]
            index = torch.tensor([layer_of[p] for p in params], device=device, dtype=torch.long)
            touched = torch.zeros(len(self.layers), device=device).index_fill_(0, index, 1.0)
            self.handles.append(opt.register_step_post_hook(self._hook(params, index, touched)))

    def _hook(self, params: list[nn.Parameter], index: torch.Tensor, touched: torch.Tensor):
        @torch.no_grad()
        def after_step(opt, args, kwargs) -> None:
            squares = torch.stack([p.grad.detach().float().pow(2).sum() if p.grad is not None else p.new_zeros((), dtype=torch.float32) for p in params])
            per_layer = torch.zeros_like(self.sums).index_add_(0, index, squares)
            self.sums.add_(per_layer.sqrt_())
            self.steps.add_(touched)

        return after_step

    def on_epoch_start(self, epoch: int) -> None:
        self.sums.zero_()
        self.steps.zero_()

    @torch.no_grad()
    def on_epoch_end(self, row: dict[str, Any]) -> None:
        weights = torch.stack([torch.sqrt(sum(p.detach().float().pow(2).sum() for p in params)) for _, params in self.layers])
        grads, weights = (self.sums / self.steps.clamp(min=1)).tolist(), weights.tolist()  # the epoch's one host sync
        row.update({GRAD + name: g for name, g in zip(self.names, grads, strict=True)})
        row.update({WEIGHT + name: w for name, w in zip(self.names, weights, strict=True)})
        ratio = first_to_last(row, self.weight_layers)
        if ratio is not None and ratio < VANISHING and not self.warned:
            self.warned = True
            first, last = self.weight_layers[0], self.weight_layers[-1]
            self.warn(f"vanishing gradients: {first}'s gradient norm is {ratio:.1e} of {last}'s (epoch {row['epoch']}); try model.activation=relu, model.batchnorm=true or init=kaiming_normal")

    def summary(self, history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """summary.json's grad_norms: the last epoch's first and last weight layers and their ratio."""
        if not history or len(self.weight_layers) < 2:
            return {}
        row = history[-1]
        first, last = self.weight_layers[0], self.weight_layers[-1]
        return {"grad_norms": {"first_layer": first, "last_layer": last, "first": row.get(GRAD + first), "last": row.get(GRAD + last), "first_to_last": first_to_last(row, self.weight_layers)}}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
