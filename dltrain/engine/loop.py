"""The training loop, readable top to bottom: train an epoch, validate, log, keep the best."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from dltrain.config import TrainerConfig
from dltrain.engine.device import autocast
from dltrain.engine.loader import TensorLoader
from dltrain.engine.loggers import Logger
from dltrain.engine.progress import ProgressDisplay, format_row
from dltrain.engine.rundir import RunDir
from dltrain.errors import UserError
from dltrain.optim import Schedule

log = logging.getLogger("dltrain")


@dataclass
class FitResult:
    epochs: int
    steps: int
    train_seconds: float
    stopped_early: bool
    best: dict[str, float]
    best_state: dict[str, torch.Tensor] | None
    history: list[dict] = field(default_factory=list)


@torch.inference_mode()
def evaluate(model: nn.Module, task, loader: TensorLoader, device: torch.device, precision: str) -> dict[str, float]:
    """The task's metrics over every batch of `loader` (one host sync at the end)."""
    was_training = model.training
    model.eval()
    state = task.new_state(device)
    with autocast(device, precision):
        for x, y in loader:
            task.update(state, model(x), y)
    model.train(was_training)
    return task.compute(state)


def _better(value: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    return value < best - min_delta if mode == "min" else value > best + min_delta


def fit(
    model: nn.Module,
    task,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    train_loader: TensorLoader,
    val_loader: TensorLoader,
    *,
    trainer: TrainerConfig,
    device: torch.device,
    run: RunDir,
    progress: ProgressDisplay,
    loggers: Sequence[Logger] = (),
    penalty: Callable[[], torch.Tensor] | None = None,
    clip_grad: float | None = None,
    needs_closure: bool = False,
    state_of: Callable[[], dict[str, torch.Tensor]] | None = None,
) -> FitResult:
    """Train `model` for trainer.max_epochs (or until early stopping); return what happened.

    `state_of` returns the weights to keep as "best" (the uncompiled module's state dict).
    """
    precision, accumulate = trainer.precision, trainer.accumulate
    scaler = torch.amp.GradScaler(device.type) if precision == "16" else None
    amp = autocast(device, precision)
    state_of = state_of or model.state_dict
    monitor = trainer.checkpoint.monitor
    stop_monitor, patience = trainer.early_stop.monitor, trainer.early_stop.patience
    best = {"epoch": 0, monitor: math.inf if task.mode(monitor) == "min" else -math.inf}
    best_state = None
    stop_best, bad_epochs, stopped_early = (math.inf if task.mode(stop_monitor) == "min" else -math.inf), 0, False
    n_batches, step, history = len(train_loader), 0, []

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with amp:
            loss = task.loss(model(x), y)
            return loss + penalty() if penalty else loss

    t_start = time.perf_counter()
    model.train()
    for epoch in range(1, trainer.max_epochs + 1):
        t_epoch = time.perf_counter()
        progress.start_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        for i, (x, y) in enumerate(train_loader, start=1):
            if needs_closure:  # quasi-Newton: the optimizer re-evaluates loss and gradient itself

                def closure() -> torch.Tensor:
                    optimizer.zero_grad(set_to_none=True)
                    loss = forward_loss(x, y)
                    loss.backward()
                    return loss

                loss = optimizer.step(closure)
                schedule.after_step()
                step += 1
            else:
                loss = forward_loss(x, y)
                scaled = loss / accumulate if accumulate > 1 else loss
                (scaler.scale(scaled) if scaler else scaled).backward()
                if i % accumulate == 0 or i == n_batches:
                    if clip_grad:
                        if scaler:
                            scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.after_step()
                    step += 1
            loss_sum += loss.detach()
            progress.step(epoch, i, lambda: (loss_sum / i).item())

        train_loss = (loss_sum / n_batches).item()
        if not math.isfinite(train_loss):
            raise UserError(
                f"training diverged: train_loss={train_loss} in epoch {epoch} (step {step}); "
                f"lower optim.lr, add reg=grad_clip, or use trainer.precision=32"
            )
        val = evaluate(model, task, val_loader, device, trainer.precision)
        schedule.after_epoch(val)
        row = {"epoch": epoch, "step": step, "train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}}
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t_epoch
        history.append(row)
        run.append_metrics(row)
        for logger in loggers:
            logger.log_epoch(row)
        progress.end_epoch(row)
        log.info(format_row(row))

        if _better(row[monitor], best[monitor], task.mode(monitor)):
            best = {"epoch": epoch, **{k: v for k, v in row.items() if k.startswith("val_")}}
            best_state = {k: v.detach().clone() for k, v in state_of().items()}
        if trainer.checkpoint.every_n_epochs and epoch % trainer.checkpoint.every_n_epochs == 0:
            run.save_weights("last", state_of(), {"epoch": epoch, "step": step})
        if patience:
            if _better(row[stop_monitor], stop_best, task.mode(stop_monitor), trainer.early_stop.min_delta):
                stop_best, bad_epochs = row[stop_monitor], 0
            else:
                bad_epochs += 1
                if bad_epochs >= patience:
                    stopped_early = True
                    log.info("early stopping: %s did not improve for %d epochs", stop_monitor, patience)
                    break

    return FitResult(
        epochs=len(history),
        steps=step,
        train_seconds=time.perf_counter() - t_start,
        stopped_early=stopped_early,
        best=best,
        best_state=best_state,
        history=history,
    )
