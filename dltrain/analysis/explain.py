"""`dltrain explain RUN_DIR method=...`: which parts of an input drove the prediction (captum).

Attributions are for the predicted class of the first `n` examples of the split:
- integrated_gradients: gradients integrated along the path from a baseline of zeros (in
  normalised units, the training mean) to the input; they add up to the change in the logit;
- saliency: the absolute gradient of the logit with respect to each input value;
- occlusion: the drop in the logit when a window of the input is replaced by the baseline.
Images get a heatmap under each image; tables and sequences one row of values per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from dltrain.analysis import plots
from dltrain.analysis.common import RunOptions, display_images, open_run, output_dir, predict_outputs, print_table, print_written, quiet_captum, split_of, write_csv
from dltrain.schema import PositiveInt

METHODS = ("integrated_gradients", "saliency", "occlusion")


@dataclass
class ExplainOptions(RunOptions):
    method: Literal["integrated_gradients", "saliency", "occlusion"] = "integrated_gradients"
    n: PositiveInt = 16  # examples to explain (the first n of the split)
    split: Literal["test", "val"] = "test"
    steps: PositiveInt = 50  # integrated gradients: points on the path
    window: PositiveInt | None = None  # occlusion: window side (default: a quarter of the image)


def attribute(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, opts: ExplainOptions) -> tuple[torch.Tensor, float | None]:
    """Attributions with the shape of `x`; for integrated gradients also the mean |completeness error|."""
    import captum.attr as ca

    if opts.method == "integrated_gradients":
        attr, delta = ca.IntegratedGradients(model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=opts.steps, internal_batch_size=256, return_convergence_delta=True
        )
        return attr, float(delta.abs().mean())
    if opts.method == "saliency":
        return ca.Saliency(model).attribute(x, target=target, abs=True), None
    window, strides = occlusion_window(tuple(x.shape[1:]), opts.window)
    return ca.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=strides, baselines=0.0, target=target, perturbations_per_eval=64), None


def occlusion_window(shape: tuple[int, ...], side: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Window and stride: a square over all channels for images, time spans for sequences, one feature for tables."""
    if len(shape) == 3:
        c, h, w = shape
        k = min(side or max(1, min(h, w) // 4), h, w)
        return (c, k, k), (c, max(1, k // 2), max(1, k // 2))
    if len(shape) == 2:
        t, f = shape
        k = min(side or max(1, t // 8), t)
        return (k, f), (max(1, k // 2), f)
    k = min(side or 1, shape[0])
    return (k,), (max(1, k // 2),)


def run_explain(opts: ExplainOptions) -> int:
    """Attribute the first n examples; write the heatmap grid, the attributions and a CSV."""
    loaded = open_run(opts, "explain", tasks=("classification",))
    built = loaded.built
    model, data = built.model.eval(), built.data
    split = split_of(data, opts.split)
    x, y = split.x[: opts.n].clone(), split.y[: opts.n]
    probs = predict_outputs(model, x, len(x)).softmax(-1)
    pred = probs.argmax(-1)
    with quiet_captum():
        attr, delta = attribute(model, x, pred, opts)
    attr = attr.detach()
    names = data.class_names or [str(i) for i in range(probs.shape[1])]
    out = output_dir(loaded, "explain")
    method = opts.method.replace("_", " ")
    title = f"{method} for the predicted class: {built.spec.model['name']} on {data.name} ({opts.split} split)"
    labels = [f"#{i} pred {names[p]} ({probs[i, p]:.2f}) / true {names[t]}" for i, (p, t) in enumerate(zip(pred.tolist(), y.tolist(), strict=True))]
    if data.kind == "image" and x.dim() == 4:
        heat = attr.sum(1).numpy()  # channels add up: one heatmap per image
        titles = [f"pred {names[p]} ({probs[i, p]:.2f})\ntrue {names[t]}" for i, (p, t) in enumerate(zip(pred.tolist(), y.tolist(), strict=True))]
        png = plots.attribution_grid(display_images(data, x).numpy(), heat, titles, out / f"{opts.method}.png", title)
    else:
        xlabel = "feature" if x.dim() == 2 else "time step x feature (flattened)"
        png = plots.attribution_rows(attr.numpy(), labels, out / f"{opts.method}.png", title, xlabel)
    npz = out / f"{opts.method}.npz"
    np.savez_compressed(npz, inputs=x.numpy(), attributions=attr.numpy(), pred=pred.numpy(), true=y.numpy(), index=np.arange(len(x)))
    rows = [
        {"index": i, "true": names[t], "pred": names[p], "confidence": float(probs[i, p]), "attribution_sum": float(a.sum()), "attribution_abs_max": float(a.abs().max())}
        for i, (p, t, a) in enumerate(zip(pred.tolist(), y.tolist(), attr, strict=True))
    ]
    csv_path = write_csv(out / f"{opts.method}.csv", rows)
    print_table(title, ["example", "true", "pred", "confidence", "sum of attributions"], [(r["index"], r["true"], r["pred"], r["confidence"], r["attribution_sum"]) for r in rows])
    if delta is not None:
        print(f"integrated gradients: mean |completeness error| {delta:.3g} over {opts.steps} steps (raise steps= to lower it)")
    print_written(out, [png, npz, csv_path])
    return 0
