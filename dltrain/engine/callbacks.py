"""Callbacks: what `fit` calls at fixed points of a run, so that the loop itself is only training.

    on_epoch_start(epoch)                  before an epoch's first batch
    on_step_end(epoch, batch, step, losses)  after every batch; `losses` holds this epoch's
                                           per-batch losses so far (rows up to `batch`, on the
                                           device: reading them is a host sync)
    on_validation_start(epoch)             before each validation (after an epoch's last batch,
                                           or inside it with trainer.val_every_n_steps)
    on_validation_end(row)                 after a validation inside an epoch, with its row (its
                                           epoch fractional: 2.25 is a quarter into the 3rd)
    on_epoch_end(row)                      after validation, with the epoch's metrics row; it may
                                           raise to stop the run (a sweep's pruning does)

Callbacks are called in the order given, and only at these points. A callback that does not
override `on_step_end` is never called per step: `fit` makes the list of per-step callbacks once,
so a run without a progress bar has no per-step dispatch at all. Early stopping, the best
weights and checkpoints are the loop's own (they are part of what a checkpoint restores).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("dltrain")


class Callback:
    """The points of a run a callback may act at; each default does nothing."""

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def on_step_end(self, epoch: int, batch: int, step: int, losses: torch.Tensor) -> None:
        pass

    def on_validation_start(self, epoch: int) -> None:
        pass

    def on_validation_end(self, row: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        pass


def format_row(row: Mapping[str, Any]) -> str:
    """An epoch's row as one line: `epoch 3  train_loss 0.1234  val_loss 0.1  ...` (the per-layer
    grad_norm/* and weight_norm/* columns stay in metrics.csv)."""
    parts = [f"epoch {row['epoch']}" if float(row["epoch"]).is_integer() else f"epoch {row['epoch']:g} (step {row['step']})"]
    for k, v in row.items():
        if k not in ("epoch", "step") and "/" not in k and isinstance(v, float):  # not the per-layer norms
            parts.append(f"{k} {v:.4g}")
    return "  ".join(parts)


def per_step(callbacks: Sequence[Callback]) -> list[Callback]:
    """The callbacks that act after every batch (override `on_step_end`)."""
    return [c for c in callbacks if type(c).on_step_end is not Callback.on_step_end]


class MetricsLog(Callback):
    """The run directory's metrics.csv, the configured loggers (TensorBoard, ...) and train.log:
    one row per epoch. Only the process that writes the run directory (rank 0) has one."""

    def __init__(self, append_row: Callable[[Mapping[str, Any]], None], loggers: Sequence[Any] = (), by_step: bool = False) -> None:
        self.append_row, self.loggers = append_row, list(loggers)
        self.by_step = by_step  # validations inside epochs: the loggers' x axis is the optimizer step

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.append_row(row)
        for logger in self.loggers:
            if self.by_step:
                logger.log_epoch(row, step=row["step"])
            else:
                logger.log_epoch(row)
        log.info(format_row(row))

    on_validation_end = on_epoch_end  # a row of metrics.csv like an epoch's


class TaskEpochEnd(Callback):
    """The task's per-epoch artefacts (a GAN's and VAE's sample grids) and its warnings (a
    discriminator that wins outright). Rank 0 only; runs before the epoch's checkpoint, so the
    task's state it updates is saved with it."""

    def __init__(self, task, model: torch.nn.Module, plots: Path, warn: Callable[[str], None]) -> None:
        self.task, self.model, self.plots, self.warn = task, model, plots, warn

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        for warning in self.task.end_epoch(self.model, row["epoch"], self.plots):
            self.warn(warning)


class EpochReport(Callback):
    """Hand each epoch's row to `report` (a sweep job's pruning: it raises to stop the run)."""

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self.report = report

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.report(row)
