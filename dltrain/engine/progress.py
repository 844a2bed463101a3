"""What the user sees while training: a rich progress bar on a terminal, one line per epoch elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Seconds between progress refreshes; reading the loss for display costs a device sync.
REFRESH_SECONDS = 0.2


def format_row(row: Mapping[str, Any]) -> str:
    parts = [f"epoch {row['epoch']}"]
    for k, v in row.items():
        if k not in ("epoch", "step") and isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
    return "  ".join(parts)


class ProgressDisplay:
    """Progress over the whole run: epochs x steps, loss, throughput and ETA."""

    def __init__(self, console: Console, mode: str, max_epochs: int, batches_per_epoch: int, batch_size: int) -> None:
        if mode == "auto":
            mode = "bar" if console.is_terminal else "lines"
        self.console, self.mode = console, mode
        self.max_epochs, self.batches, self.batch_size = max_epochs, batches_per_epoch, batch_size
        self.bar: Progress | None = None
        self._next_refresh = 0.0
        self._epoch_start = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.mode == "bar":
            self.bar = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} samples/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                auto_refresh=False,  # refreshed from the loop, throttled: no background thread
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.max_epochs * self.batches, epoch=1, epochs=self.max_epochs, loss="-", rate="-")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.refresh()
            self.bar.stop()

    def start_epoch(self, epoch: int) -> None:
        self._epoch_start = time.perf_counter()
        if self.bar is not None:
            self.bar.update(self.task, epoch=epoch)

    def step(self, epoch: int, batch: int, loss: Callable[[], float]) -> None:
        """Called every batch; refreshes at most every REFRESH_SECONDS (only then reads the loss)."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_SECONDS
        seen = batch * self.batch_size
        rate = seen / max(now - self._epoch_start, 1e-9)
        self.bar.update(self.task, completed=(epoch - 1) * self.batches + batch, loss=f"{loss():.4f}", rate=f"{rate:,.0f}")
        self.bar.refresh()

    def end_epoch(self, row: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=row["epoch"] * self.batches, loss=f"{row['train_loss']:.4f}")
            self.bar.refresh()
        elif self.mode == "lines":
            self.console.print(format_row(row), highlight=False)
