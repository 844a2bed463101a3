"""`dltrain sample RUN_DIR n=64`: new images from a trained VAE or GAN."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from rich.console import Console

from dltrain.analysis.common import RunOptions, open_run, output_dir
from dltrain.errors import ConfigError
from dltrain.images import preview, save_grid
from dltrain.schema import NonNegativeInt, Range

MAX_SAMPLES = 100_000  # 100,000 28x28 samples are 300 MB of float32: enough for any plot or metric
GRID = 256  # at most this many are drawn in samples.png (all of them are in samples.npz)


@dataclass
class SampleOptions(RunOptions):
    n: Annotated[int, Range(1, MAX_SAMPLES)] = 64
    seed: NonNegativeInt = 0
    label: int | None = None  # a conditional model's class; None cycles through the classes


def run_sample(opts: SampleOptions) -> int:
    """Write analysis/sample/samples.png and samples.npz (intensities in [0, 1], labels)."""
    loaded = open_run(opts, "sample", tasks=("vae", "gan"))
    model, task = loaded.built.model, loaded.built.task
    labels = None
    if opts.label is not None:
        if not model.num_classes:
            raise ConfigError("label", opts.label, "the model is not conditional (model.conditional=false); leave label unset")
        if not 0 <= opts.label < model.num_classes:
            raise ConfigError("label", opts.label, f"allowed: 0..{model.num_classes - 1}")
        labels = torch.full((opts.n,), opts.label, dtype=torch.long)
    z = torch.randn(opts.n, model.latent_dim, generator=torch.Generator().manual_seed(opts.seed))
    with torch.inference_mode():
        images = task.sample(model, z, labels)
    out = output_dir(loaded, "sample")
    grid_path = save_grid(images[:GRID], out / "samples.png")
    shown = labels if labels is not None else (torch.arange(opts.n) % model.num_classes if model.num_classes else None)
    np.savez_compressed(out / "samples.npz", images=images.numpy(), **({"labels": shown.numpy()} if shown is not None else {}))
    console = Console()
    console.print(preview(images[:GRID]), highlight=False)
    console.print(f"{opts.n} samples: [bold]{grid_path}[/] and {out / 'samples.npz'}", highlight=False)
    return 0
