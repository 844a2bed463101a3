"""The run directory: the contract every later verb, test and benchmark reads.

    config.yaml      the resolved config of the run
    metrics.csv      one row per epoch: epoch, step, train_loss, val_<metric>..., lr, seconds
    summary.json     task, test and best metrics, epochs, timings, device, seed, versions, weights_sha256
    checkpoints/     last.safetensors and best.safetensors (model weights, safetensors only) and
                     step-NNNNNNNN/ full training-state checkpoints (see engine/checkpoint.py)
    plots/           loss.png and one PNG per validation metric
    train.log        the run's log (written by Hydra's job logging)
    report.html      one self-contained page of all of it (dltrain/report.py), written as the run ends
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dltrain.engine.atomic import CHECKPOINT_FORMAT
from dltrain.errors import UserError
from dltrain.files import atomic_write, injected_fault, writing


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes, shapes and bytes (independent of file format)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# What a run directory may hold: dltrain's files, Hydra's (.hydra/, train.log) and a sweep job's.
OURS = frozenset({"config.yaml", "metrics.csv", "summary.json", "checkpoints", "plots", "train.log", ".hydra", ".lock", "tensorboard", "analysis", "job.json", "plugins.json", "pretraining.json", "preprocessing.json", "report.html"})


def check_run_dir(path: Path, config_sha256: str, resuming: bool) -> None:
    """Refuse to train into a folder that is not a new one, an empty one, or an unfinished dltrain
    run of the same config (a resume may continue any run of its own); never into one where a
    file dltrain or Hydra writes is a symbolic link (its target would be overwritten)."""
    import yaml

    from dltrain.engine.checkpoint import config_hash

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise UserError(f"hydra.run.dir={str(path)!r} is a file, not a folder; choose a new or empty folder")
    entries = {p.name for p in path.iterdir()}
    foreign = sorted(entries - OURS)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UserError(f"{path} holds files that are not a dltrain run's ({shown}); train into a new or empty folder (hydra.run.dir=...), nothing there is overwritten")
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                raise UserError(f"{os.path.join(root, name)} is a symbolic link; dltrain never writes through one: remove it or train into a new folder")
    if "config.yaml" not in entries or resuming:
        return
    if "summary.json" in entries:
        raise UserError(f"{path} holds a finished run; continue it with dltrain resume={path} trainer.max_epochs=N, or train into a new folder")
    try:
        recorded = config_hash(yaml.safe_load((path / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        recorded = None
    if recorded != config_sha256:
        raise UserError(f"{path} holds an unfinished run of another config; continue it with dltrain resume={path}, or train into a new folder")


class RunDir:
    """Paths and writers of one run directory. A write that fails (a full disk, a read-only
    folder) is a one-line UserError naming the file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.csv"
        self.summary = self.path / "summary.json"
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self._columns: list[str] | None = None
        self._rows: list[dict[str, Any]] = []  # what metrics.csv holds, should a row bring new columns
        self.started = False  # this process began writing the run (its config.yaml)
        self.loggers: list = []  # the run's experiment loggers until they are finished and closed

    def create(self) -> None:
        with writing(self.path):
            for p in (self.path, self.checkpoints, self.plots):
                p.mkdir(parents=True, exist_ok=True)

    def write_config(self, yaml_text: str) -> None:
        with writing(self.config):
            atomic_write(self.config, yaml_text.encode())

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row to metrics.csv (the first row sets the columns; a later row with columns
        of its own, an epoch's grad norms after a validation inside the epoch, rewrites the file
        with them added); never through a symbolic link."""
        new = self._columns is None
        if not new and set(row) - set(self._columns):
            self.restart_metrics([*self._rows, row], [*self._columns, *(k for k in row if k not in self._columns)])
            return
        if new:
            self._columns = list(row)
        self._rows.append(dict(row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, extrasaction="ignore", lineterminator="\r\n")
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(v) for k, v in row.items()})
        with writing(self.metrics):
            injected_fault(self.metrics)
            flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | (os.O_TRUNC if new else os.O_APPEND)
            fd = os.open(self.metrics, flags, 0o644)
            with open(fd, "w", newline="") as f:
                f.write(buf.getvalue())

    def restart_metrics(self, rows: list[Mapping[str, Any]], columns: list[str] | None = None) -> None:
        """Rewrite metrics.csv as `rows` (a resume: rows written after its checkpoint are dropped)."""
        self._columns, self._rows = None, [dict(r) for r in rows]
        if not rows:
            self.metrics.unlink(missing_ok=True)
            return
        self._columns = columns or list(rows[0])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, extrasaction="ignore", lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        with writing(self.metrics):
            atomic_write(self.metrics, buf.getvalue().encode())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        with writing(self.summary):
            atomic_write(self.summary, (json.dumps(summary, indent=2) + "\n").encode())

    def save_weights(self, name: str, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
        """Save model weights as checkpoints/<name>.safetensors, atomically."""
        from safetensors.torch import save

        path = self.checkpoints / f"{name}.safetensors"
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        meta = {"format": str(CHECKPOINT_FORMAT), **{k: str(v) for k, v in metadata.items()}}
        with writing(path):
            atomic_write(path, save(tensors, metadata=meta))
        return path


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors weights file (no pickle involved); a bad file is a one-line UserError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            version = int((f.metadata() or {}).get("format", CHECKPOINT_FORMAT))
            if version > CHECKPOINT_FORMAT:
                raise UserError(f"{path} is checkpoint format {version}; this dltrain reads format {CHECKPOINT_FORMAT} or older: upgrade dltrain")
            return {k: f.get_tensor(k) for k in f.keys()}
    except UserError:
        raise
    except Exception as e:  # safetensors reports truncation and bad headers with several types
        raise UserError(f"{path} is not a readable safetensors checkpoint ({str(e).splitlines()[0]})") from None


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v
