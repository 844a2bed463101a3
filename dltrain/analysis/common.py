"""What the analysis verbs share: options, opening a run, output folders, batched inference, files."""

from __future__ import annotations

import contextlib
import csv
import json
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from dltrain.data.base import DataBundle, Split
from dltrain.errors import UserError
from dltrain.runs import LoadedRun, load_run

SUPERVISED = ("classification", "regression", "forecasting")


@dataclass
class RunOptions:
    """Options every analysis verb takes: the run directory and which checkpoint to load."""

    run_dir: str
    ckpt: Literal["best", "last"] = "best"


def open_run(opts: RunOptions, verb: str, tasks: Sequence[str] = SUPERVISED) -> LoadedRun:
    """Load the run on the CPU; a run whose task the verb does not cover is a one-line UserError."""
    loaded = load_run(opts.run_dir, opts.ckpt, device="cpu")
    spec = loaded.built.spec
    if spec.task not in tasks:
        raise UserError(
            f"dltrain {verb} does not apply to {opts.run_dir}: it is a {spec.task} run (model={spec.model['name']}); "
            f"{verb} needs a {_either(tasks)} run"
        )
    return loaded


def _either(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def output_dir(loaded: LoadedRun, verb: str, fresh: bool = False) -> Path:
    """``<run>/analysis/<verb>/``, created if needed. `fresh`: the files a previous run of the verb
    left there are removed first (which files it writes depends on its options)."""
    path = loaded.path / "analysis" / verb
    path.mkdir(parents=True, exist_ok=True)
    if fresh:
        for old in path.iterdir():
            if old.is_file() or old.is_symlink():
                old.unlink()
    return path


def split_of(data: DataBundle, name: str) -> Split:
    """The named split; an empty one (e.g. val with data.val_fraction=0) is a UserError."""
    split = getattr(data, name)
    if len(split) == 0:
        raise UserError(f"split={name!r} is empty for data={data.name}; use split=test")
    return split


@torch.inference_mode()
def predict_outputs(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's raw outputs for every row of `x`, in batches (float32, CPU)."""
    model.eval()
    outs = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def to_target_units(data: DataBundle, values: torch.Tensor) -> torch.Tensor:
    """Standardised regression outputs or targets -> the data's original units (2-D)."""
    values = values.double().reshape(len(values), -1)
    dim = values.shape[1]
    mean = torch.tensor(data.y_mean or [0.0] * dim, dtype=torch.float64)
    std = torch.tensor(data.y_std or [1.0] * dim, dtype=torch.float64)
    return values * std + mean


def input_bounds(data: DataBundle) -> tuple[float, float] | None:
    """The valid range of normalised image inputs (the pixel range), or None for tables/sequences.

    Perturbed images are clamped to it; features of tables and series have no natural bound.
    """
    if data.kind != "image":
        return None
    pixel_range = getattr(data, "pixel_range", None)
    if pixel_range is None:  # fall back to the range the data actually spans
        xs = [s.x for s in (data.train, data.val, data.test) if len(s)]
        lo, hi = min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
        return lo, hi
    lo, hi = pixel_range
    mean, std = data.x_mean[0], data.x_std[0]
    return (lo - mean) / std, (hi - mean) / std


def display_images(data: DataBundle, x: torch.Tensor) -> torch.Tensor:
    """Normalised images -> intensities in [0, 1] for plotting."""
    bounds = input_bounds(data)
    if bounds is None:
        lo, hi = float(x.min()), float(x.max())
    else:
        lo, hi = bounds
    return ((x.float() - lo) / max(hi - lo, 1e-12)).clamp(0, 1)


@contextlib.contextmanager
def quiet_captum() -> Iterator[None]:
    """Mute captum's note that it turned on requires_grad for the inputs (it does so every call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*did not already require gradients.*")
        yield


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV (floats with 6 significant digits, like metrics.csv)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], console=None) -> None:
    """A rich table on stdout; the first column left-aligned, the rest right-aligned numbers."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]{title}[/]", highlight=False)  # above, not as the table's title: that wraps to its width
    table = Table()
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    console.print(table)


def print_written(folder: Path, files: Sequence[Path], console=None) -> None:
    from rich.console import Console

    names = ", ".join(p.name for p in files)
    (console or Console()).print(f"wrote {folder}/: {names}", highlight=False, soft_wrap=True)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)
