"""`dltrain robust RUN_DIR attack=fgsm|pgd|noise eps=[...]`: accuracy under perturbed inputs.

`eps` is in the units the model sees: inputs are standardised on the training split, so eps=0.1
moves each input value by at most 0.1 standard deviations of the training data (for digits,
0.1 * 6.0 ≈ 0.6 of the 0..16 pixel scale). Images are clamped to the valid pixel range; tables
and series are not clamped. FGSM and PGD (L-infinity, no random start) come from captum.robust
and ascend the run's own training loss; `noise` adds Gaussian noise with standard deviation eps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import nn

from dltrain.analysis import plots
from dltrain.analysis.common import RunOptions, input_bounds, open_run, output_dir, print_table, print_written, quiet_captum, split_of, write_csv, write_json
from dltrain.schema import NonNegativeInt, Positive, PositiveInt, Range


@dataclass
class RobustOptions(RunOptions):
    attack: Literal["fgsm", "pgd", "noise"] = "fgsm"
    eps: Annotated[list[float] | float, Range(0)] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2])
    steps: PositiveInt = 10  # pgd iterations
    step_size: Positive | None = None  # pgd step; default 2.5 * eps / steps (Madry et al.)
    split: Literal["test", "val"] = "test"
    seed: NonNegativeInt = 0  # noise


def perturb(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, eps: float, opts: RobustOptions, bounds, generator) -> torch.Tensor:
    """The attacked (or noised) version of a batch; eps=0 returns the inputs unchanged."""
    from captum.robust import FGSM, PGD

    lo, hi = bounds if bounds else (float("-inf"), float("inf"))
    if opts.attack == "noise":
        noisy = x + eps * torch.randn(x.shape, generator=generator)
        return noisy.clamp(lo, hi) if bounds else noisy

    def batch_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # captum differentiates a one-element tensor; the summed loss gives each input its own gradient
        return (loss_fn(output, target) * len(target)).reshape(1)

    with quiet_captum():
        if opts.attack == "fgsm":
            return FGSM(model, batch_loss, lower_bound=lo, upper_bound=hi).perturb(x, epsilon=eps, target=y)
        step_size = opts.step_size or 2.5 * eps / opts.steps
        return PGD(model, batch_loss, lower_bound=lo, upper_bound=hi).perturb(x, radius=eps, step_size=step_size, step_num=opts.steps, target=y)


def run_robust(opts: RobustOptions) -> int:
    """Accuracy and loss at each eps; write <attack>.csv, <attack>.json and <attack>.png."""
    loaded = open_run(opts, "robust", tasks=("classification",))
    built = loaded.built
    model, task, data = built.model.eval(), built.task, built.data
    for p in model.parameters():  # gradients flow to the inputs only
        p.requires_grad_(False)
    split = split_of(data, opts.split)
    eps_list = opts.eps if isinstance(opts.eps, list) else [opts.eps]
    bounds = input_bounds(data)
    batch_size = built.spec.trainer.eval_batch_size
    generator = torch.Generator().manual_seed(opts.seed)
    rows = []
    for eps in eps_list:
        correct, loss_sum = 0, 0.0
        for i in range(0, len(split), batch_size):
            x, y = split.x[i : i + batch_size], split.y[i : i + batch_size]
            xa = perturb(model, task.loss, x, y, eps, opts, bounds, generator).detach()
            with torch.inference_mode():
                logits = model(xa)
            correct += int((logits.argmax(-1) == y).sum())
            loss_sum += float(task.loss(logits, y)) * len(y)
        rows.append({"attack": opts.attack, "eps": float(eps), "accuracy": correct / len(split), "loss": loss_sum / len(split), "n": len(split)})

    out = output_dir(loaded, "robust")
    name = f"{built.spec.model['name']} on {data.name}"
    detail = f"({opts.steps} steps of {'2.5*eps/steps' if opts.step_size is None else f'{opts.step_size:g}'})" if opts.attack == "pgd" else ""
    files = [
        write_csv(out / f"{opts.attack}.csv", rows),
        write_json(out / f"{opts.attack}.json", {
            "attack": opts.attack, "split": opts.split, "ckpt": opts.ckpt, "eps_units": "standard deviations of the training inputs",
            "clamped_to": list(bounds) if bounds else None, "steps": opts.steps if opts.attack == "pgd" else None,
            "step_size": opts.step_size, "rows": rows,
        }),
        plots.curves_png(
            [r["eps"] for r in rows], {f"{opts.attack} accuracy": [r["accuracy"] for r in rows]}, out / f"{opts.attack}.png",
            "eps (training std units)", "accuracy", f"{name}: accuracy under {opts.attack} {detail}".strip(),
        ),
    ]
    print_table(f"{name}: {opts.attack} on the {opts.split} split {detail}".strip(), ["eps", "accuracy", "loss"], [(f"{r['eps']:g}", r["accuracy"], r["loss"]) for r in rows])
    print_written(out, files)
    return 0
