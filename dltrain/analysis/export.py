"""`dltrain export RUN_DIR format=onnx|torchscript`: write the model, load it back, check it.

The exported file takes a dynamic batch dimension and is checked against the PyTorch model on
real inputs (the first test examples, at batch sizes 1, 7 and a full evaluation batch): the
largest absolute difference of the outputs must stay below `tolerance` (1e-4 in fp32) times
the outputs' largest magnitude where that exceeds 1 (a perceptron's scores run into the
hundreds, where float32 itself resolves only ~1e-5).

The file takes raw inputs: where the run standardised them (images, bundled tables, arrays,
series), that step is part of the exported graph, so pixels or features in their own units go
in as they are; `model.<format>.json` records it (`inputs`, `normalization`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from dltrain.analysis.common import RunOptions, open_run, output_dir, print_table, write_json
from dltrain.schema import Positive

CHECK_BATCH_SIZES = (1, 7)


@dataclass
class ExportOptions(RunOptions):
    format: Literal["onnx", "torchscript"] = "onnx"
    tolerance: Positive = 1e-4  # largest allowed |exported - pytorch| on the check inputs


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence exporter chatter (deprecation notices, 'torchvision is not installed' log lines)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """Export with torch.export (dynamic batch); fall back to the TorchScript-based exporter.

    Returns which exporter wrote the file and a function running it in onnxruntime.
    """
    import onnxruntime as ort

    with quiet_export():
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, verbose=False, input_names=["input"], output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
            program.save(str(path))
            exporter = "torch.export"
        except Exception:  # noqa: BLE001  (graph capture fails for some models: the legacy exporter still works)
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
            exporter = "torchscript-based (legacy)"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return exporter, lambda x: session.run(None, {name: x})[0]


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """Trace to TorchScript (deprecated in PyTorch but still supported), save, load back."""
    with quiet_export(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)  # checked below on other batch sizes
        traced.save(str(path))
        reloaded = torch.jit.load(str(path), map_location="cpu")
    reloaded.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return reloaded(torch.from_numpy(x)).numpy()

    return "torch.jit.trace", run


EXPORTERS = {"onnx": (export_onnx, "model.onnx"), "torchscript": (export_torchscript, "model.pt")}


class RawInputs(nn.Module):
    """The training split's standardisation, then the model: the exported file takes raw values
    (pixels in the data's own range, features in their units), as `dltrain predict` does."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def input_scaling(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean, std) that standardised the run's inputs (one for images, one per feature for tables
    and sequences), or None where the inputs are ids or already prepared features (data=table:
    preprocessing.json maps raw columns to them)."""
    if data.kind in ("tokens", "text") or not data.x_mean:
        return None
    mean, std = torch.tensor(data.x_mean, dtype=torch.float32), torch.tensor(data.x_std, dtype=torch.float32)
    if bool((mean == 0).all() and (std == 1).all()):
        return None
    return mean, std


def input_description(data, scaled: bool) -> str:
    if scaled:
        return "raw values: the training split's standardisation (normalization) is inside the file"
    if data.kind in ("tokens", "text"):
        return "token ids" + (" from preprocessing.json's vocabulary (0: padding, 1: unknown)" if data.kind == "text" else "")
    if data.prep is not None:
        return "prepared features (preprocessing.json maps the file's columns to them; dltrain predict applies it)"
    return "the inputs as trained on"


def run_export(opts: ExportOptions) -> int:
    """Export the checkpoint, then compare the reloaded file with PyTorch; exit 1 if they differ."""
    loaded = open_run(opts, "export")
    built = loaded.built
    model = built.model.eval()
    data = built.data
    x = data.test.x if len(data.test) else data.train.x
    full = min(len(x), built.spec.trainer.eval_batch_size)
    batch_sizes = sorted({min(b, len(x)) for b in (*CHECK_BATCH_SIZES, full)})
    out = output_dir(loaded, "export")
    exporter_fn, filename = EXPORTERS[opts.format]
    path = out / filename
    scaling = input_scaling(data)
    exported, raw = (RawInputs(model, *scaling).eval(), x * scaling[1] + scaling[0]) if scaling else (model, x)
    # trace with a batch other than the checked ones (and not 1, which export would specialise)
    example = raw[: min(len(raw), 2)] if len(raw) < 3 else raw[:3]
    t0 = time.perf_counter()
    exporter, run = exporter_fn(exported, example, path)
    export_seconds = time.perf_counter() - t0

    checks = []
    for b in batch_sizes:
        xb = x[:b].contiguous()
        with torch.inference_mode():
            expected = model(xb).float().numpy()
        got = run(raw[:b].contiguous().numpy())  # the file reads raw values; the model its standardised ones
        if got.shape != expected.shape:
            checks.append({"batch": b, "max_abs_diff": float("inf"), "shape": list(got.shape)})
            continue
        checks.append({"batch": b, "max_abs_diff": float(np.abs(got - expected).max()), "scale": max(1.0, float(np.abs(expected).max()))})
    max_diff = max(c["max_abs_diff"] for c in checks)
    scale = max(c.get("scale", 1.0) for c in checks)
    ok = all(c["max_abs_diff"] < opts.tolerance * c.get("scale", 1.0) for c in checks)
    report = {
        "format": opts.format,
        "file": filename,
        "bytes": path.stat().st_size,
        "exporter": exporter,
        "input_shape": ["batch", *data.in_shape],
        "inputs": input_description(data, scaling is not None),
        **({"normalization": {"mean": data.x_mean, "std": data.x_std}} if scaling else {}),
        "output_shape": ["batch", *expected.shape[1:]],
        "checked_on": f"{'test' if len(data.test) else 'train'} inputs",
        "checks": checks,
        "max_abs_diff": max_diff,
        "tolerance": opts.tolerance,
        "scale": scale,  # the tolerance applies to differences relative to this (the outputs' largest magnitude, at least 1)
        "ok": ok,
        "export_seconds": round(export_seconds, 3),
        "ckpt": opts.ckpt,
        "torch": torch.__version__,
    }
    if opts.format == "onnx":
        import onnx
        import onnxruntime

        report["opset"] = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), None)
        report["onnxruntime"] = onnxruntime.__version__
    write_json(out / f"{path.stem}.{opts.format}.json", report)
    title = f"{built.spec.model['name']} -> {opts.format} ({exporter}): {path} ({report['bytes'] / 1024:.1f} KiB)"
    print_table(title, ["batch size", "max |diff|"], [(c["batch"], f"{c['max_abs_diff']:.3g}") for c in checks])
    verdict = "matches" if ok else "DOES NOT match"
    allowed = f"tolerance {opts.tolerance:g}" + (f" x output scale {scale:.3g}" if scale > 1 else "")
    print(f"{opts.format} output {verdict} PyTorch: max abs diff {max_diff:.3g} ({allowed}, dynamic batch)")
    return 0 if ok else 1
