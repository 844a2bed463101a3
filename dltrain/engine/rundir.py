"""The run directory: the contract every later verb, test and benchmark reads.

    config.yaml      the resolved config of the run
    metrics.csv      one row per epoch: epoch, step, train_loss, val_<metric>..., lr, seconds
    summary.json     task, test and best metrics, epochs, timings, device, seed, versions, weights_sha256
    checkpoints/     last.safetensors and best.safetensors (model weights, safetensors only) and
                     step-NNNNNNNN/ full training-state checkpoints (see engine/checkpoint.py)
    plots/           loss.png and one PNG per validation metric
    train.log        the run's log (written by Hydra's job logging)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dltrain.engine.atomic import CHECKPOINT_FORMAT
from dltrain.errors import UserError
from dltrain.files import atomic_write


def weights_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes, shapes and bytes (independent of file format)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.csv"
        self.summary = self.path / "summary.json"
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self._columns: list[str] | None = None

    def create(self) -> None:
        for p in (self.path, self.checkpoints, self.plots):
            p.mkdir(parents=True, exist_ok=True)

    def write_config(self, yaml_text: str) -> None:
        atomic_write(self.config, yaml_text.encode())

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row to metrics.csv (the first row fixes the columns)."""
        new = self._columns is None
        if new:
            self._columns = list(row)
        with open(self.metrics, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(v) for k, v in row.items()})

    def restart_metrics(self, rows: list[Mapping[str, Any]]) -> None:
        """Rewrite metrics.csv as `rows` (a resume: rows written after its checkpoint are dropped)."""
        import io

        self._columns = None
        if not rows:
            self.metrics.unlink(missing_ok=True)
            return
        self._columns = list(rows[0])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._columns, extrasaction="ignore", lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write(self.metrics, buf.getvalue().encode())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write(self.summary, (json.dumps(summary, indent=2) + "\n").encode())

    def save_weights(self, name: str, state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
        """Save model weights as checkpoints/<name>.safetensors, atomically."""
        from safetensors.torch import save

        path = self.checkpoints / f"{name}.safetensors"
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        meta = {"format": str(CHECKPOINT_FORMAT), **{k: str(v) for k, v in metadata.items()}}
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
