"""Experiment loggers. metrics.csv is always written by the run directory; a logger adds more.

`logger=NAME` or several at once, `logger=[tensorboard,mlflow]`: each is a registered entry
whose config sits under its name (logger.mlflow.tracking_uri=...). A run calls, on every
logger: `log_params` once with the flattened config, `log_epoch` with each epoch's metrics,
`finish` with the summary and the run directory when the run has finished, and `close` always.
No logger calls a network service the user did not configure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dltrain.errors import ConfigError, UserError
from dltrain.registry import Registry
from dltrain.schema import PositiveInt

LOGGERS = Registry("logger")


class Logger:
    """Receives the config once, one row of metrics per epoch, and the summary at the end."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_epoch(self, row: Mapping[str, Any], step: int | None = None) -> None:
        """A metrics row, at `step` on the x axis (the row's epoch unless the run validates inside
        epochs: then the optimizer step, given)."""

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        pass

    def close(self) -> None:
        pass


def numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (a summary's test metrics), by name."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def final_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """test_<metric> and best_<metric> of a finished run's summary."""
    out = {f"test_{k}": v for k, v in numbers(summary.get("test") or {}).items()}
    out.update({f"best_{k}": v for k, v in numbers(summary.get("best") or {}).items() if k != "epoch"})
    return out


@LOGGERS.register("csv", help="metrics.csv only (always written)")
def csv(run_dir: Path | None = None) -> Logger:
    return Logger()


class TensorBoardLogger(Logger):
    def __init__(self, log_dir: Path, flush_secs: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)
        self.params: dict[str, Any] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}

    def log_epoch(self, row: Mapping[str, Any], step: int | None = None) -> None:
        step = row["epoch"] if step is None else step
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                group = key.split("_", 1)
                tag = f"{group[0]}/{group[1]}" if len(group) == 2 and group[0] in ("train", "val") else key
                self.writer.add_scalar(tag, value, step)

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        """The HPARAMS tab: this run's config beside its final metrics, written into the same event
        file (SummaryWriter.add_hparams would start another run in a subfolder per call)."""
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparam/{k}": v for k, v in final_metrics(summary).items()}
        experiment, start, end = hparams(self.params, metrics)
        writer = self.writer.file_writer
        for part in (experiment, start, end):
            writer.add_summary(part)
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, summary.get("epochs", 0))

    def close(self) -> None:
        self.writer.close()


@LOGGERS.register("tensorboard", help="also writes TensorBoard event files under tensorboard/ in the run directory (scalars per epoch; the config and final metrics in the HPARAMS tab)")
def tensorboard(run_dir: Path | None = None, flush_secs: PositiveInt = 30) -> Logger:
    return TensorBoardLogger(Path(run_dir or ".") / "tensorboard", flush_secs)


# ---- MLflow -----------------------------------------------------------------------------------

MLFLOW_HINT = "logger=mlflow needs MLflow, an optional extra: pip install -e \".[mlflow]\" (or pip install mlflow-skinny)"
SKIPPED_ARTIFACTS = (".lock",)  # and the full training-state checkpoints (step-N/): large, and only for resume


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///PATH` store (relative to the working directory), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


class MLflowLogger(Logger):
    """One MLflow run per dltrain run: params as flat keys, metrics per epoch (step = epoch), the
    test and best metrics, and the run directory's files as artifacts at the end."""

    def __init__(self, run_dir: Path, tracking_uri: str, experiment: str, run_name: str | None, artifacts: bool) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 reports usage unless told not to
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError(MLFLOW_HINT) from None
        db = sqlite_path(tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.artifacts, self.finished = artifacts, False
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                experiment_id = found.experiment_id
            else:  # a local store keeps its artifacts beside it, not in ./mlruns of wherever dltrain ran
                location = (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None
                experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name or Path(run_dir).name, tags={"dltrain.run_dir": str(Path(run_dir).resolve())}).info.run_id
        except Exception as e:  # noqa: BLE001  (a store that cannot be opened: the user's URI)
            raise ConfigError("logger.mlflow.tracking_uri", tracking_uri, f"MLflow could not open it ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); allowed: sqlite:///PATH.db, a folder, or http://HOST:PORT of a tracking server") from None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k.replace("/", "."), v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_epoch(self, row: Mapping[str, Any], step: int | None = None) -> None:
        self._metrics({k: v for k, v in numbers(row).items() if k not in ("epoch", "step")}, int(row["epoch"] if step is None else step))

    def finish(self, summary: Mapping[str, Any], run_dir: Path) -> None:
        self._metrics(final_metrics(summary), int(summary.get("epochs", 0)))
        if self.artifacts:
            for path in sorted(Path(run_dir).rglob("*")):
                rel = path.relative_to(run_dir)
                if path.is_file() and not path.is_symlink() and rel.name not in SKIPPED_ARTIFACTS and not (rel.parts[0] == "checkpoints" and len(rel.parts) > 2):
                    self.client.log_artifact(self.run_id, str(path), artifact_path=str(rel.parent) if rel.parent != Path(".") else None)
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.finished = True

    def close(self) -> None:
        if not self.finished:  # stopped before the end: interrupted or failed
            self.client.set_terminated(self.run_id, status="KILLED")


@LOGGERS.register("mlflow", help="also logs to MLflow (optional extra .[mlflow]): params, metrics per epoch, the run directory as artifacts; a local SQLite store by default", requires=("mlflow", MLFLOW_HINT))
def mlflow(run_dir: Path | None = None, tracking_uri: str = "sqlite:///outputs/mlflow.db", experiment: str = "dltrain", run_name: str | None = None, artifacts: bool = True) -> Logger:
    return MLflowLogger(Path(run_dir or "."), tracking_uri, experiment, run_name, artifacts)
