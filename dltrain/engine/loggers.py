"""Experiment loggers. metrics.csv is always written by the run directory; a logger adds more."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dltrain.registry import Registry
from dltrain.schema import PositiveInt

LOGGERS = Registry("logger")


class Logger:
    """Receives one row of metrics per epoch."""

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@LOGGERS.register("csv", help="metrics.csv only (always written)")
def csv(run_dir: Path | None = None) -> Logger:
    return Logger()


class TensorBoardLogger(Logger):
    def __init__(self, log_dir: Path, flush_secs: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        step = row["epoch"]
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                group = key.split("_", 1)
                tag = f"{group[0]}/{group[1]}" if len(group) == 2 and group[0] in ("train", "val") else key
                self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


@LOGGERS.register("tensorboard", help="also writes TensorBoard event files under tensorboard/ in the run directory")
def tensorboard(run_dir: Path | None = None, flush_secs: PositiveInt = 30) -> Logger:
    return TensorBoardLogger(Path(run_dir or ".") / "tensorboard", flush_secs)
