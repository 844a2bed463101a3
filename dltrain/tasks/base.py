"""The task protocol the engine drives.

A task names its optimisation *phases* (one, "main", for most; "d" and "g" for a GAN), computes
the loss of each phase for a batch, evaluates a split, and may write artefacts after an epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltrain.data.base import DataBundle
from dltrain.registry import Entry, Registry

TASKS = Registry("task")


class TaskWrapper:
    """A task that changes only how a training step's loss is computed (distillation, ensembles):
    everything it does not define is the wrapped task's (`self.task`)."""

    def __init__(self, task) -> None:
        self.task = task

    def __getattr__(self, name: str) -> Any:  # only for what the wrapper does not define
        return getattr(self.__dict__["task"], name)


class Task:
    """Defaults shared by every task: one phase training every parameter on `step_loss`."""

    name = "task"
    phases: tuple[str, ...] = ("main",)
    metrics: tuple[str, ...] = ("loss",)  # validation metrics, without the val_ prefix
    monitor = "val_loss"  # picks the best checkpoint unless the trainer config says otherwise
    higher_is_better: frozenset[str] = frozenset()

    def __init__(self, data: DataBundle, loss_entry: Entry, loss_fn: nn.Module) -> None:
        self.data, self.loss_entry, self.loss_fn = data, loss_entry, loss_fn

    @staticmethod
    def out_features(data: DataBundle) -> int:
        return data.target_dim

    def mode(self, metric: str) -> str:
        """'max' for metrics where higher is better, else 'min'."""
        return "max" if metric.removeprefix("val_").removeprefix("test_") in self.higher_is_better else "min"

    def phase_params(self, model: nn.Module, phase: str) -> Iterable[nn.Parameter]:
        return model.parameters()

    def phase_repeats(self, model: nn.Module, phase: str) -> int:
        return 1

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (e.g. for KL annealing)."""

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        raise NotImplementedError

    def new_state(self, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def update(self, state: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def finish_evaluation(self, model: nn.Module, metrics: dict[str, float], split: str) -> dict[str, float]:
        """Add metrics that need the whole model rather than batches (e.g. sample quality)."""
        return metrics

    def end_epoch(self, model: nn.Module, epoch: int, plots: Path) -> list[str]:
        """After validation: write per-epoch artefacts; return warnings to show the user."""
        return []

    def keep_predictions(self, keep: bool) -> None:
        """From now on (until called with False) keep what test_pictures needs of each evaluated batch."""

    def test_pictures(self, split) -> dict[str, Any] | None:
        """After the final test (kept by keep_predictions): what plots/ shows of it, as plain
        JSON-able values drawn by engine.plots.plot_pictures; None: nothing to draw."""
        return None

    def end_fit(self, model: nn.Module, plots: Path) -> dict[str, Any]:
        """After training: write final artefacts; return extra summary.json entries
        ("preview": text shown to the user, not saved)."""
        return {}
