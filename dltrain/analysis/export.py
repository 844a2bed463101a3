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
from typing import List, Literal  # noqa: UP035  (TorchScript reads typing's names)

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


def export_onnx(model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], path: Path, names: tuple[str, ...] = ("input",)) -> tuple[str, Callable[..., np.ndarray]]:
    """Export with torch.export (dynamic batch); fall back to the TorchScript-based exporter.

    Returns which exporter wrote the file and a function running it in onnxruntime (on arrays
    in the order of `names`, or on a dict of the file's inputs by name).
    """
    examples = example if isinstance(example, tuple) else (example,)
    with quiet_export():
        try:
            program = torch.onnx.export(
                model, examples, dynamo=True, verbose=False, input_names=list(names), output_names=["output"],
                dynamic_shapes=tuple({0: torch.export.Dim("batch")} for _ in examples),
            )
            program.save(str(path))
            exporter = "torch.export"
        except Exception:  # noqa: BLE001  (graph capture fails for some models: the legacy exporter still works)
            torch.onnx.export(
                model, examples, str(path), dynamo=False, input_names=list(names), output_names=["output"],
                dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
            )
            exporter = "torchscript-based (legacy)"
    return exporter, onnx_runner(path, names)


def onnx_runner(path: Path, names: tuple[str, ...] = ()) -> Callable[..., np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = names or tuple(i.name for i in session.get_inputs())
    return lambda *xs: session.run(None, xs[0] if isinstance(xs[0], dict) else dict(zip(names, xs, strict=True)))[0]


def export_torchscript(model: nn.Module, example: torch.Tensor | tuple[torch.Tensor, ...], path: Path, names: tuple[str, ...] = ("input",)) -> tuple[str, Callable[..., np.ndarray]]:
    """Trace to TorchScript (deprecated in PyTorch but still supported), save, load back."""
    with quiet_export(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)  # checked below on other batch sizes
        traced.save(str(path))
    return "torch.jit.trace", torchscript_runner(path)


def torchscript_runner(path: Path) -> Callable[..., np.ndarray]:
    reloaded = torch.jit.load(str(path), map_location="cpu")
    reloaded.eval()

    def run(*xs) -> np.ndarray:
        with torch.inference_mode():
            return reloaded(*(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in xs)).numpy()

    return run


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


class RawTable(nn.Module):
    """A data=table run's preprocessing.json as tensor operations, then the model. It takes the
    numeric columns raw (float, NaN for a missing value: the training median goes in, then the
    training standardisation) and each categorical column's category code (-1: a category
    never seen in training, all zeros, unless rare ones have their column), both (batch, n)."""

    def __init__(self, model: nn.Module, prep: dict) -> None:
        super().__init__()
        self.model = model
        for key in ("median", "mean", "scale"):
            self.register_buffer(key, torch.tensor([c[key] for c in prep["numeric"]], dtype=torch.float32))
        self.numeric = len(prep["numeric"])
        self.widths = [len(c["categories"]) + bool(c["infrequent"]) for c in prep["categorical"]]

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.numeric:
            parts.append((torch.where(torch.isnan(numeric), self.median, numeric) - self.mean) / self.scale)
        for j, width in enumerate(self.widths):
            parts.append((codes[:, j : j + 1] == torch.arange(width, device=codes.device)).float())  # one-hot
        return self.model(torch.cat(parts, 1))


class _OneInput(nn.Module):
    """RawTable for a table of one kind of column: the other input is empty."""

    def __init__(self, core: RawTable) -> None:
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        empty = x[:, :0]
        return self.core(x, empty.long()) if self.core.numeric else self.core(empty.float(), x)


class StringColumns(nn.Module):
    """TorchScript for a table with categorical columns: `model(numeric, categorical)`, where
    `categorical` holds each row's categorical values as strings (List[List[str]]; "" is
    missing), mapped to their codes here, then the traced RawTable."""

    def __init__(self, core: nn.Module, lookups: list[dict[str, int]], defaults: list[int]) -> None:
        super().__init__()
        self.core, self.lookups, self.defaults = core, lookups, defaults

    def forward(self, numeric: torch.Tensor, categorical: List[List[str]]) -> torch.Tensor:  # noqa: UP006
        rows = [[self.lookups[j].get(row[j], self.defaults[j]) for j in range(len(self.lookups))] for row in categorical]
        codes = torch.tensor(rows, dtype=torch.long).reshape(len(categorical), len(self.lookups))
        return self.core(numeric, codes)


def category_codes(prep: dict) -> list[tuple[dict[str, int], int]]:
    """Per categorical column: each value's code ("" for missing: the training split's most
    frequent value's; a rare value: the infrequent column's) and the code of any other value."""
    out = []
    for c in prep["categorical"]:
        width = len(c["categories"]) + bool(c["infrequent"])
        other = width - 1 if c["infrequent"] else -1
        lookup = {v: i for i, v in enumerate(c["categories"])} | dict.fromkeys(c["infrequent"], other)
        lookup.setdefault("", lookup.get(c["most_frequent"], other))
        out.append((lookup, other))
    return out


UNSEEN = "\x00unseen"  # a value no training row had (a prepared row with no category set)


def raw_columns(prep: dict, x: torch.Tensor) -> tuple[np.ndarray, list[list[str]]]:
    """Prepared rows back to raw ones, to check the exported file on: the numeric columns in
    their units, each categorical column's value (a rare one's: the first rare value)."""
    n = len(prep["numeric"])
    scale = np.array([c["scale"] for c in prep["numeric"]], dtype=np.float64)
    mean = np.array([c["mean"] for c in prep["numeric"]], dtype=np.float64)
    numeric = (x[:, :n].double().numpy() * scale + mean).astype(np.float32)
    columns, at = [], n
    for c in prep["categorical"]:
        names = [*c["categories"], *([c["infrequent"][0]] if c["infrequent"] else [])]
        block = x[:, at : at + len(names)].numpy()
        columns.append([names[int(k)] if block[i, int(k)] > 0.5 else UNSEEN for i, k in enumerate(block.argmax(1))])
        at += len(names)
    return numeric, [list(row) for row in zip(*columns, strict=True)] if columns else [[] for _ in range(len(x))]


def table_input_names(prep: dict) -> tuple[str, list[str]]:
    """The ONNX file's input names: the numeric block's, then one per categorical column (its name)."""
    categorical = [c["column"] for c in prep["categorical"]]
    numeric = "numeric"
    while numeric in categorical:
        numeric += "_columns"
    return numeric, categorical


def string_front(prep: dict, opsets, ir_version: int):
    """An ONNX graph from one string input per categorical column (batch,) to their codes (batch,
    n) as RawTable takes them: ai.onnx.ml's LabelEncoder per column."""
    from onnx import TensorProto, helper

    _, names = table_input_names(prep)
    nodes, inputs, codes = [], [], []
    for j, (name, (lookup, other)) in enumerate(zip(names, category_codes(prep), strict=True)):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.STRING, ["batch"]))
        nodes.append(helper.make_node("LabelEncoder", [name], [f"dltrain_code_{j}"], domain="ai.onnx.ml", keys_strings=list(lookup), values_int64s=list(lookup.values()), default_int64=other))
        nodes.append(helper.make_node("Unsqueeze", [f"dltrain_code_{j}", "dltrain_axis_1"], [f"dltrain_codes_{j}"]))
        codes.append(f"dltrain_codes_{j}")
    nodes.append(helper.make_node("Concat", codes, ["dltrain_codes"], axis=1))
    graph = helper.make_graph(nodes, "dltrain_categories", inputs, [helper.make_tensor_value_info("dltrain_codes", TensorProto.INT64, ["batch", len(names)])], initializer=[helper.make_tensor("dltrain_axis_1", TensorProto.INT64, [1], [1])])
    return helper.make_model(graph, opset_imports=[*opsets, helper.make_opsetid("ai.onnx.ml", 2)], ir_version=ir_version)


def export_table(model: nn.Module, prep: dict, x: torch.Tensor, path: Path, fmt: str) -> tuple[str, Callable[[torch.Tensor], np.ndarray]]:
    """Export a data=table run so that it takes raw columns (RawTable); return the exporter and a
    function running the reloaded file on the raw columns of prepared rows."""
    core = RawTable(model, prep).eval()
    numeric_name, categorical = table_input_names(prep)
    numeric, rows = raw_columns(prep, x[:3])
    codes = torch.tensor([[lookup.get(v, other) for v, (lookup, other) in zip(row, category_codes(prep), strict=True)] for row in rows], dtype=torch.long).reshape(len(rows), len(categorical))
    if fmt == "torchscript":
        with quiet_export(), torch.no_grad():
            traced = torch.jit.trace(core, (torch.from_numpy(numeric), codes), check_trace=False)
            lookups = category_codes(prep)
            torch.jit.script(StringColumns(traced, [m for m, _ in lookups], [o for _, o in lookups])).save(str(path))
        run = torchscript_runner(path)
        return "torch.jit.trace + torch.jit.script (categories)", lambda xb: run(*(lambda n, r: (torch.from_numpy(n), r))(*raw_columns(prep, xb)))
    import onnx

    if prep["numeric"] and categorical:
        exporter, _ = export_onnx(core, (torch.from_numpy(numeric), codes), path, (numeric_name, "dltrain_codes"))
    else:
        exporter, _ = export_onnx(_OneInput(core).eval(), torch.from_numpy(numeric) if prep["numeric"] else codes, path, (numeric_name if prep["numeric"] else "dltrain_codes",))
    if categorical:
        exported = onnx.load(str(path))
        merged = onnx.compose.merge_models(string_front(prep, exported.opset_import, exported.ir_version), exported, io_map=[("dltrain_codes", "dltrain_codes")])
        onnx.checker.check_model(merged)
        onnx.save(merged, str(path))
    run = onnx_runner(path)

    def raw_run(xb: torch.Tensor) -> np.ndarray:
        n, r = raw_columns(prep, xb)
        feed = {numeric_name: n} if prep["numeric"] else {}
        feed |= {name: np.array([row[j] for row in r], dtype=object) for j, name in enumerate(categorical)}
        return run(feed)

    return exporter, raw_run


def is_table(data) -> bool:
    return data.prep is not None and data.kind == "table" and data.prep.get("kind", "table") == "table"


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


def table_description(prep: dict, fmt: str) -> str:
    numeric, categorical = table_input_names(prep)
    parts = [f"'{numeric}': the numeric columns' raw values, float32 (batch, {len(prep['numeric'])}), NaN for missing"] if prep["numeric"] else []
    if categorical and fmt == "onnx":
        parts.append("one string input (batch,) per categorical column, named by it ('' for missing)")
    elif categorical:
        parts.append("a list per row of its categorical columns' values as strings ('' for missing): model(numeric, categorical)" + ("" if prep["numeric"] else ", numeric empty: torch.empty(batch, 0)"))
    return "raw columns: " + "; ".join(parts) + "; imputation, standardisation and one-hot encoding (preprocessing.json) are inside the file"


def table_columns(prep: dict, fmt: str) -> dict:
    """model.<format>.json's `columns`: what goes in where, in order."""
    numeric, categorical = table_input_names(prep)
    return {
        "numeric": {"input": numeric if fmt == "onnx" else "numeric", "columns": [c["column"] for c in prep["numeric"]]},
        "categorical": [{"column": c["column"], "input": c["column"] if fmt == "onnx" else f"categorical[row][{j}]", "categories": c["categories"], "infrequent": c["infrequent"], "missing_means": c["most_frequent"]} for j, c in enumerate(prep["categorical"])],
    }


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
    table = is_table(data)
    scaling = None if table else input_scaling(data)
    exported, raw = (RawInputs(model, *scaling).eval(), x * scaling[1] + scaling[0]) if scaling else (model, x)
    # trace with a batch other than the checked ones (and not 1, which export would specialise)
    example = raw[: min(len(raw), 2)] if len(raw) < 3 else raw[:3]
    t0 = time.perf_counter()
    if table:  # the file takes the raw columns: the checks feed it the test rows' raw values
        exporter, run_raw = export_table(model, data.prep, x, path, opts.format)
    else:
        exporter, run_plain = exporter_fn(exported, example, path)
    export_seconds = time.perf_counter() - t0

    checks = []
    for b in batch_sizes:
        xb = x[:b].contiguous()
        with torch.inference_mode():
            expected = model(xb).float().numpy()
        got = run_raw(xb) if table else run_plain(raw[:b].contiguous().numpy())  # the file reads raw values; the model its standardised ones
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
        "input_shape": ["batch", *data.in_shape] if not table else None,
        "inputs": input_description(data, scaling is not None) if not table else table_description(data.prep, opts.format),
        **({"columns": table_columns(data.prep, opts.format)} if table else {}),
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
