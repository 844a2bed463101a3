"""What the user sees while training: a rich progress bar on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dltrain.engine.callbacks import Callback, format_row

# Seconds between progress refreshes; reading the loss for display costs a device sync.
REFRESH_SECONDS = 0.2


def progress_display(console: Console, mode: str, max_epochs: int, batches_per_epoch: int, batch_size: int, better: Callable[[str], str] | None = None) -> Callback | None:
    """The display for trainer.progress: a bar (`bar`; `auto` on a terminal), one line per epoch
    (`lines`; `auto` elsewhere), or nothing (`none`). Use it as a context manager around fit.
    `better(metric)`: 'max' or 'min', which way a validation metric improves (the task's)."""
    if mode == "auto":
        mode = "bar" if console.is_terminal or console.is_jupyter else "lines"  # rich draws the bar in a notebook too
    if mode == "bar":
        return ProgressBar(console, max_epochs, batches_per_epoch, batch_size, better)
    return EpochLines(console) if mode == "lines" else None


class EpochLines(Callback):
    """One line per epoch (CI, pipes, files): `epoch 3  train_loss 0.12  val_loss 0.1  ...`."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __enter__(self) -> EpochLines:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        self.console.print(format_row(row), highlight=False, soft_wrap=True)

    on_validation_end = on_epoch_end


class ProgressBar(Callback):
    """Progress over the whole run: epochs x steps, loss, the last validation metric and the best
    so far, throughput and ETA."""

    def __init__(self, console: Console, max_epochs: int, batches_per_epoch: int, batch_size: int, better: Callable[[str], str] | None = None) -> None:
        self.console = console
        self.max_epochs, self.batches, self.batch_size = max_epochs, batches_per_epoch, batch_size
        self.better = better or (lambda metric: "min" if "loss" in metric else "max")
        self.best: float | None = None
        self._next_refresh = 0.0
        self._epoch_start = 0.0
        self.bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[val]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            auto_refresh=False,  # refreshed from the loop, throttled: no background thread
            transient=False,
        )

    def __enter__(self) -> ProgressBar:
        self.bar.start()
        self.task = self.bar.add_task("train", total=self.max_epochs * self.batches, epoch=1, epochs=self.max_epochs, loss="-", rate="-", val="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.refresh()
        self.bar.stop()

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch_start = time.perf_counter()
        self.bar.update(self.task, epoch=epoch)

    def on_step_end(self, epoch: int, batch: int, step: int, losses: torch.Tensor) -> None:
        """Refreshes at most every REFRESH_SECONDS (only then reads the loss: a device sync)."""
        now = time.perf_counter()
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_SECONDS
        rate = batch * self.batch_size / max(now - self._epoch_start, 1e-9)
        loss = losses[:batch, -1].mean().item()
        self.bar.update(self.task, completed=(epoch - 1) * self.batches + batch, loss=f"{loss:.4f}", rate=f"{rate:,.0f}")
        self.bar.refresh()

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        loss = next((v for k, v in reversed(row.items()) if k.startswith("train_") and k.endswith("loss")), float("nan"))
        self.bar.update(self.task, completed=row["epoch"] * self.batches, loss=f"{loss:.4f}", val=self.validation(row))
        self.bar.refresh()

    def on_validation_end(self, row: Mapping[str, Any]) -> None:
        self.bar.update(self.task, val=self.validation(row))

    def validation(self, row: Mapping[str, Any]) -> str:
        """`val_accuracy 0.9514 (best 0.9583)`: the first validation metric other than the loss."""
        metric = next((k for k in row if k.startswith("val_") and k != "val_loss"), "val_loss" if "val_loss" in row else None)
        value = row.get(metric) if metric else None
        if not isinstance(value, (int, float)):
            return ""
        if self.best is None or (value > self.best if self.better(metric) == "max" else value < self.best):
            self.best = float(value)
        return f"{metric} {value:.4f} (best {self.best:.4f})"
