"""Optimizers and learning-rate schedules.

Optimizer builders take ``params`` plus their config keys. Schedule builders take the
``optimizer``, ``steps_per_epoch`` and ``max_epochs`` plus their config keys; the entry's
``interval`` metadata says when the schedule steps: every optimizer "step", every "epoch", or
on the validation metric ("plateau").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal

import torch

from dltrain.registry import Registry
from dltrain.schema import NonNegative, NonNegativeInt, Positive, PositiveInt, Probability, Range
from dltrain.second_order import ConjugateGradient, Newton

OPTIMIZERS = Registry("optim")
SCHEDULES = Registry("sched")

Momentum = Annotated[float, Range(0, 1, high_open=True)]
Beta = Annotated[float, Range(0, 1, high_open=True)]


@OPTIMIZERS.register("sgd", help="plain stochastic gradient descent")
def sgd(params, lr: Positive = 0.05, weight_decay: NonNegative = 0.0, momentum: Momentum = 0.0):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)


@OPTIMIZERS.register("momentum", help="SGD with heavy-ball momentum (Polyak 1964)")
def momentum(params, lr: Positive = 0.05, weight_decay: NonNegative = 0.0, momentum: Momentum = 0.9, dampening: Probability = 0.0):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, dampening=dampening)


@OPTIMIZERS.register("nesterov", help="SGD with Nesterov accelerated momentum (Sutskever et al. 2013)")
def nesterov(params, lr: Positive = 0.05, weight_decay: NonNegative = 0.0, momentum: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.9):
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True)


@OPTIMIZERS.register("adagrad", help="per-parameter rates from accumulated squared gradients (Duchi et al. 2011)")
def adagrad(params, lr: Positive = 0.01, weight_decay: NonNegative = 0.0, lr_decay: NonNegative = 0.0, eps: Positive = 1e-10):
    return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, lr_decay=lr_decay, eps=eps)


@OPTIMIZERS.register("rmsprop", help="running average of squared gradients (Hinton's lecture 6e)")
def rmsprop(params, lr: Positive = 1e-3, weight_decay: NonNegative = 0.0, alpha: Beta = 0.99, momentum: Momentum = 0.0, eps: Positive = 1e-8, centered: bool = False):
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, alpha=alpha, momentum=momentum, eps=eps, centered=centered)


@OPTIMIZERS.register("adam", help="adaptive moments (Kingma & Ba 2015)")
def adam(params, lr: Positive = 1e-3, weight_decay: NonNegative = 0.0, beta1: Beta = 0.9, beta2: Beta = 0.999, eps: Positive = 1e-8, amsgrad: bool = False):
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=(beta1, beta2), eps=eps, amsgrad=amsgrad)


@OPTIMIZERS.register("adamw", help="Adam with decoupled weight decay (Loshchilov & Hutter 2019)")
def adamw(params, lr: Positive = 1e-3, weight_decay: NonNegative = 0.01, beta1: Beta = 0.9, beta2: Beta = 0.999, eps: Positive = 1e-8, amsgrad: bool = False):
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(beta1, beta2), eps=eps, amsgrad=amsgrad)


@OPTIMIZERS.register("lbfgs", closure=True, help="limited-memory BFGS, a quasi-Newton method (re-evaluates the loss via a closure)")
def lbfgs(
    params,
    full_batch: bool = True,
    lr: Positive = 1.0,
    max_iter: PositiveInt = 10,
    history_size: PositiveInt = 20,
    tolerance_grad: NonNegative = 1e-7,
    tolerance_change: NonNegative = 1e-9,
    line_search: bool = True,
):
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=max_iter,
        history_size=history_size,
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        line_search_fn="strong_wolfe" if line_search else None,
    )
    # Quasi-Newton curvature estimates assume a deterministic objective, so by default each
    # step sees the whole training set (full_batch=false uses data.batch_size minibatches).


@OPTIMIZERS.register("cg", closure=True, help="nonlinear conjugate gradient, Polak-Ribiere+ or Fletcher-Reeves, with a strong-Wolfe line search")
def cg(
    params,
    full_batch: bool = True,
    lr: Positive = 1.0,
    max_iter: PositiveInt = 20,
    beta: Literal["pr+", "fr"] = "pr+",
    weight_decay: NonNegative = 0.0,
    tolerance_grad: NonNegative = 1e-5,
    tolerance_change: NonNegative = 1e-9,
):
    # lr caps each line search's first trial step; weight_decay is part of the objective minimised
    return ConjugateGradient(params, lr=lr, max_iter=max_iter, beta=beta, weight_decay=weight_decay, tolerance_grad=tolerance_grad, tolerance_change=tolerance_change)


@OPTIMIZERS.register("newton", closure=True, hessian=True, help="damped Newton: the exact Hessian for small models, Newton-CG with Hessian-vector products beyond")
def newton(
    params,
    full_batch: bool = True,
    lr: Positive = 1.0,
    max_iter: PositiveInt = 10,
    max_exact_params: NonNegativeInt = 500,
    damping: Positive = 1e-4,
    cg_max_iter: PositiveInt = 50,
    weight_decay: NonNegative = 0.0,
    tolerance_grad: NonNegative = 1e-5,
    tolerance_change: NonNegative = 1e-9,
):
    # lr is the full step's length (1: Newton's own step); the line search shortens it where needed
    return Newton(
        params, lr=lr, max_iter=max_iter, max_exact_params=max_exact_params, damping=damping, cg_max_iter=cg_max_iter, weight_decay=weight_decay, tolerance_grad=tolerance_grad, tolerance_change=tolerance_change
    )


class LearningRule(torch.optim.Optimizer):
    """Holds the learning rate (for schedules and checkpoints) of a model that learns by its own
    rule: `step(closure)` calls ``closure(lr)``, which applies the rule to the current batch (the
    engine passes one that computes the batch's loss and calls the model's ``learn``), without
    gradients. Step hooks (EMA, SWA, timing) run as for any optimizer."""

    def __init__(self, params, lr: float) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        if closure is None:
            raise RuntimeError("optim=rule applies the model's learning rule to a batch: step(closure) needs the closure")
        return closure(self.param_groups[0]["lr"])


@OPTIMIZERS.register("rule", rule=True, help="no gradients: the model's own learning rule (the perceptron rule; an RBF network's least-squares solve)")
def rule(params, lr: Positive = 1.0):
    # lr scales the perceptron's updates (from zero weights its predictions do not depend on it); a closed-form solve ignores it
    return LearningRule(params, lr=lr)


@SCHEDULES.register("none", interval="none", help="constant learning rate")
def constant(optimizer, steps_per_epoch, max_epochs):
    return None


@SCHEDULES.register("step", interval="epoch", help="multiply the rate by gamma every step_size epochs")
def step(optimizer, steps_per_epoch, max_epochs, step_size: PositiveInt = 10, gamma: Positive = 0.1):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@SCHEDULES.register("exponential", interval="epoch", help="multiply the rate by gamma every epoch")
def exponential(optimizer, steps_per_epoch, max_epochs, gamma: Positive = 0.95):
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


@SCHEDULES.register("cosine", interval="step", help="cosine decay to min_lr_ratio * lr over the run (Loshchilov & Hutter 2017)")
def cosine(optimizer, steps_per_epoch, max_epochs, min_lr_ratio: NonNegative = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(0, steps_per_epoch * max_epochs, min_lr_ratio))


@SCHEDULES.register("warmup_cosine", interval="step", help="linear warm-up for warmup_epochs, then cosine decay")
def warmup_cosine(optimizer, steps_per_epoch, max_epochs, warmup_epochs: NonNegative = 2.0, min_lr_ratio: NonNegative = 0.0):
    warmup = round(warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(warmup, steps_per_epoch * max_epochs, min_lr_ratio))


def _cosine(warmup: int, total: int, min_ratio: float):
    """Multiplier of the base rate at optimizer step t: linear warm-up, then half a cosine."""

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        progress = min(1.0, (t - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@SCHEDULES.register("plateau", interval="plateau", help="divide the rate when the monitored validation metric stops improving")
def plateau(optimizer, steps_per_epoch, max_epochs, factor: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.5, patience: NonNegativeInt = 3, min_lr: NonNegative = 0.0):
    # mode "min": every task's default monitor (val_loss, val_frechet) is lower-is-better
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience, min_lr=min_lr)


@SCHEDULES.register("onecycle", interval="step", help="one cycle: warm up to max_lr_ratio * lr, anneal far below (Smith 2018)")
def onecycle(optimizer, steps_per_epoch, max_epochs, max_lr_ratio: Positive = 10.0, pct_start: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.3):
    base = optimizer.param_groups[0]["lr"]
    defaults = optimizer.defaults
    cycle_momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=base * max_lr_ratio, total_steps=steps_per_epoch * max_epochs, pct_start=pct_start, cycle_momentum=cycle_momentum
    )


class Schedule:
    """Steps a learning-rate scheduler at the right moments (or does nothing for ``none``)."""

    def __init__(self, scheduler, interval: str) -> None:
        self.scheduler, self.interval = scheduler, interval
        self.per_step = scheduler is not None and interval == "step"

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, monitored: float | None) -> None:
        """Step per-epoch schedules; plateau schedules watch the task's monitored metric."""
        if self.scheduler is None:
            return
        if self.interval == "epoch":
            self.scheduler.step()
        elif self.interval == "plateau" and monitored is not None:
            self.scheduler.step(monitored)


def build_schedule(cfg: Mapping, optimizer, steps_per_epoch: int, max_epochs: int) -> Schedule:
    entry = SCHEDULES.get(str(cfg.get("name")), "sched.name")
    scheduler = SCHEDULES.build(cfg, optimizer=optimizer, steps_per_epoch=steps_per_epoch, max_epochs=max_epochs)
    return Schedule(scheduler, entry.meta["interval"])
