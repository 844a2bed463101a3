"""Finished runs: read one back from its directory (`load_run`), and print its result.

Every later verb (eval, predict, export, compress, explain, robust, sample) opens a run through
`load_run`; the CLI, sweeps and `verify` print a run's test metrics with `print_summary`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dltrain import plugins
from dltrain.config import validate
from dltrain.engine.device import select_device
from dltrain.engine.rundir import load_weights
from dltrain.errors import ConfigError, UserError
from dltrain.training import Built, build


@dataclass
class LoadedRun:
    """A finished run read back from its directory: its spec, data, task and trained model."""

    path: Path
    summary: dict[str, Any]
    built: Built
    checkpoint: Path


def load_run(run_dir: str | Path, ckpt: str = "best", device: str = "cpu") -> LoadedRun:
    """Rebuild a run's model from config.yaml and load checkpoints/<ckpt>.safetensors (eval mode).

    Every problem a user can cause (no such dir, not a run dir, missing or corrupt checkpoint,
    a checkpoint from a newer format or another model) is a one-line UserError.
    """
    from omegaconf import OmegaConf

    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    if not (path / "config.yaml").is_file():
        raise UserError(f"{str(path)!r} is not a dltrain run directory: it has no config.yaml")
    plugins.check_record(path)  # the plugins it was trained with: loaded, or one line
    spec = validate(OmegaConf.load(path / "config.yaml"))
    checkpoint = path / "checkpoints" / f"{ckpt}.safetensors"
    if not checkpoint.is_file():
        have = sorted(p.stem for p in (path / "checkpoints").glob("*.safetensors"))
        raise ConfigError("ckpt", ckpt, f"{path} has " + (f"checkpoints: {', '.join(have)}" if have else "no checkpoint (did the run finish?)"))
    state = load_weights(checkpoint)
    built = build(spec, select_device(device), fit_data=False)
    try:
        built.model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{checkpoint} does not fit model={spec.model['name']}: {str(e).splitlines()[0]}") from None
    built.model.eval()
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return LoadedRun(path, summary, built, checkpoint)


def print_summary(console, summary: dict, run_dir: str) -> None:
    """The test metrics of a finished run as a table, then its run directory on one line."""
    from rich.table import Table

    table = Table(title=f"{summary['model']} on {summary['data']}: test metrics ({summary['test_ckpt']} checkpoint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary["test"].items():
        table.add_row(f"test {k}", f"{v:.4f}")
    table.add_row("best epoch", str(summary["best"]["epoch"]))
    table.add_row("epochs", f"{summary['epochs']}" + (" (early stop)" if summary["stopped_early"] else ""))
    table.add_row("train seconds", f"{summary['train_seconds']:.2f}")
    if summary.get("compile_seconds"):
        table.add_row("compile seconds", f"{summary['compile_seconds']:.2f}")
    table.add_row("device", summary["device"] + (f" x {summary['ranks']} ranks" if summary.get("ranks", 1) > 1 else ""))
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/]", highlight=False, soft_wrap=True)  # one line, to copy
    report = Path(run_dir) / "report.html"
    if report.is_file():
        console.print(f"report: {report}", highlight=False, soft_wrap=True)
