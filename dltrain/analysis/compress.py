"""`dltrain compress RUN_DIR prune=0.5 quantize=int8`: magnitude pruning and dynamic int8 quantization.

Pruning (torch.nn.utils.prune) zeroes the smallest weights: `unstructured` ranks single weights
across all Linear, Conv and recurrent weight matrices together (global L1 magnitude);
`structured` removes whole output units / channels (L2 norm of each row) layer by layer, never
from the output layer. An optional fine-tune keeps the pruning masks, then they are made
permanent. Quantization converts Linear (and LSTM/GRU) weights to int8 with activations
quantized on the fly: PyTorch's own dynamic quantization by default (fast x86 kernels, covers
recurrent layers), or torchao's `Int8DynamicActivationInt8WeightConfig` (Linear only).

Before and after, on the test split: size on disk (the `torch.save`d state dict of each model,
written under analysis/compress/, so fp32 and int8 are compared in the same container), weight
sparsity, CPU latency per batch and the task's headline metric.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune

from dltrain.analysis.common import RunOptions, open_run, output_dir, predict_outputs, print_table, print_written, to_target_units, write_csv, write_json
from dltrain.errors import ConfigError, UserError
from dltrain.runs import LoadedRun
from dltrain.schema import NonNegativeInt, Positive, PositiveInt, Probability

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class PruneOptions:
    amount: Probability = 0.0  # fraction of weights (unstructured) or units (structured) to zero
    kind: Literal["unstructured", "structured"] = "unstructured"


@dataclass
class CompressOptions(RunOptions):
    prune: PruneOptions = field(default_factory=PruneOptions)
    quantize: Literal["none", "int8"] = "none"
    quantize_backend: Literal["torch", "torchao"] = "torch"
    finetune_epochs: NonNegativeInt = 0  # epochs of training after pruning, masks kept
    finetune_lr: Positive | None = None  # default: a tenth of the run's optim.lr
    batch_size: PositiveInt = 256  # batch for the latency measurement
    repeats: PositiveInt = 20  # timed forward passes per model (the median is reported)
    threads: PositiveInt = 1  # CPU threads while timing: one thread is the most reproducible


def shorthand(argv: list[str]) -> list[str]:
    """``prune=0.5`` is short for ``prune.amount=0.5`` (next to ``prune.kind=...``)."""
    return [f"prune.amount={a.partition('=')[2]}" if a.startswith("prune=") else a for a in argv]


def run_compress(opts: CompressOptions) -> int:
    """Prune and/or quantize the checkpoint; measure and write each stage; print the table."""
    if opts.prune.amount == 0 and opts.quantize == "none":
        raise UserError("dltrain compress: nothing to do; give prune=AMOUNT (e.g. prune=0.5) and/or quantize=int8")
    if opts.finetune_epochs and opts.prune.amount == 0:
        raise UserError("finetune_epochs applies after pruning; give prune=AMOUNT too")
    loaded = open_run(opts, "compress")
    from dltrain.optim import OPTIMIZERS

    if opts.finetune_epochs and OPTIMIZERS.get(loaded.built.spec.optim["name"]).meta.get("rule"):
        raise ConfigError("finetune_epochs", opts.finetune_epochs, f"model={loaded.built.spec.model['name']} learns by its own rule, which would not keep the pruning masks; allowed: 0")
    out = output_dir(loaded, "compress", fresh=True)
    model = loaded.built.model.eval()
    measure = Measure(loaded, opts.batch_size, opts.repeats, opts.threads)
    rows = [measure("original (fp32)", model, out / "model_fp32.pt")]
    notes: list[str] = []
    label = ""

    if opts.prune.amount > 0:
        model = copy.deepcopy(model)
        pruned = apply_pruning(model, opts.prune)
        label = f"pruned {opts.prune.amount:g} {opts.prune.kind}"
        if opts.finetune_epochs:
            lr = finetune(loaded, model, opts.finetune_epochs, opts.finetune_lr)
            label += f" + {opts.finetune_epochs} epoch fine-tune"
            notes.append(f"fine-tuned {opts.finetune_epochs} epoch{'s' if opts.finetune_epochs > 1 else ''} at lr {lr:g}, masks kept")
        for module, name in pruned:
            prune.remove(module, name)  # make it permanent: plain weights with zeros in them
        model.eval()
        rows.append(measure(label, model, out / "model_pruned.pt"))
        notes.append(f"pruned {len(pruned)} weight tensors; zeros are stored densely, so the file does not shrink")

    if opts.quantize == "int8":
        model, converted, kept = quantize_int8(model, opts.quantize_backend)
        if not converted:
            raise UserError(f"quantize=int8 found no Linear/LSTM/GRU layer in model={loaded.built.spec.model['name']}")
        label = f"{label} + int8 ({opts.quantize_backend})" if len(rows) > 1 else f"int8 dynamic ({opts.quantize_backend})"
        rows.append(measure(label, model, out / "model_int8.pt", sparsity_of=rows[-1]))
        notes.append(f"int8: {converted} layers quantized" + (f"; {kept} stay fp32 (dynamic quantization covers Linear and LSTM/GRU)" if kept else ""))

    base = rows[0]
    for r in rows:
        r["size_ratio"] = base["bytes"] / r["bytes"]
        r[f"delta_{measure.metric}"] = r[measure.metric] - base[measure.metric]
    files = [
        write_csv(out / "compress.csv", rows),
        write_json(out / "compress.json", {"options": asdict(opts), "metric": measure.metric, "split": "test", "rows": rows, "notes": notes}),
        *(out / r["file"] for r in rows),
    ]
    metric = measure.metric
    print_table(
        f"compress {loaded.built.spec.model['name']} on {loaded.built.data.name} (test split; latency: CPU, batch {opts.batch_size}, {opts.threads} thread{'s' if opts.threads > 1 else ''})",
        ["model", "size KiB", "x smaller", "sparsity", "ms / batch", metric, f"Δ {metric}"],
        [(r["model"], f"{r['bytes'] / 1024:.1f}", f"{r['size_ratio']:.2f}", f"{r['sparsity']:.1%}", f"{r['latency_ms']:.3f}", r[metric], f"{r[f'delta_{metric}']:+.4f}") for r in rows],
    )
    for note in notes:
        print(f"note: {note}")
    print_written(out, files)
    return 0


def prunable_weights(model: nn.Module, structured: bool) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of the weights pruning may touch.

    Structured pruning skips the output layer (removing a row there removes a class) and
    recurrent layers (a row of a gate matrix is not a unit that can be dropped on its own).
    """
    found: list[tuple[nn.Module, str]] = []
    for module in model.modules():
        if isinstance(module, PRUNABLE):
            found.append((module, "weight"))
        elif isinstance(module, nn.RNNBase) and not structured:
            found.extend((module, n) for n, _ in module.named_parameters(recurse=False) if n.startswith("weight"))
    if structured:
        linears = [i for i, (m, _) in enumerate(found) if isinstance(m, nn.Linear)]
        if linears:
            found.pop(linears[-1])
    return found


def apply_pruning(model: nn.Module, opts: PruneOptions) -> list[tuple[nn.Module, str]]:
    """Attach L1 (global, unstructured) or L2-row (per layer, structured) pruning masks."""
    targets = prunable_weights(model, opts.kind == "structured")
    if not targets:
        raise UserError(f"prune: the model has no {'non-output Linear/Conv' if opts.kind == 'structured' else 'Linear/Conv/recurrent'} weights to prune")
    if opts.kind == "unstructured":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=opts.amount)
    else:
        for module, name in targets:
            prune.ln_structured(module, name, amount=opts.amount, n=2, dim=0)
    return targets


def finetune(loaded: LoadedRun, model: nn.Module, epochs: int, lr: float | None) -> float:
    """A short training run on the train split with the run's optimizer (a tenth of its lr).

    The pruning masks stay attached, so pruned weights stay zero. Quasi-Newton runs fine-tune
    with Adam instead, since a closure-driven optimizer needs the full training loop.
    """
    from dltrain.engine.loader import TensorLoader
    from dltrain.optim import OPTIMIZERS

    spec, data, task = loaded.built.spec, loaded.built.data, loaded.built.task
    lr = lr or 0.1 * float(spec.optim.get("lr", 1e-3))
    if OPTIMIZERS.get(spec.optim["name"]).meta.get("closure"):
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        optimizer = OPTIMIZERS.build({**spec.optim, "lr": lr}, key="optim", params=model.parameters())
    generator = torch.Generator().manual_seed(spec.seed)
    loader = TensorLoader(
        data.train.x, data.train.y, spec.batch_size, device=torch.device("cpu"), shuffle=True, generator=generator,
        drop_last=len(data.train) % spec.batch_size == 1,  # a batch of one breaks batch norm
    )
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            task.loss(model(x), y).backward()
            optimizer.step()
    model.eval()
    return lr


def quantize_int8(model: nn.Module, backend: str) -> tuple[nn.Module, int, int]:
    """A dynamically quantized copy; also how many layers were converted and how many kept fp32."""
    model = copy.deepcopy(model).eval()
    kept = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNN)) for m in model.modules())
    if backend == "torchao":
        import logging

        # its GPU-only kernels (mxfp8, cutlass) fail to load on a CPU machine, which it logs
        logging.getLogger("torchao").setLevel(logging.ERROR)
        logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError:
            raise UserError("quantize_backend=torchao needs torchao: pip install torchao") from None
        converted = sum(isinstance(m, nn.Linear) for m in model.modules())
        kept += sum(isinstance(m, (nn.LSTM, nn.GRU)) for m in model.modules())
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        return model, converted, kept
    converted = sum(isinstance(m, (nn.Linear, nn.LSTM, nn.GRU)) for m in model.modules())
    # torch.ao.quantization is marked deprecated in favour of torchao, which on CPU has no fast
    # int8 kernels and no recurrent layers; the torch path still works, so its notices are muted.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        model = quantize_dynamic(model, {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8)
    return model, converted, kept


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros among the weights pruning can touch (all of them, not biases)."""
    zeros = total = 0
    for module, name in prunable_weights(model, structured=False):
        w = getattr(module, name)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


def saved_size(model: nn.Module, path: Path) -> int:
    """Write the state dict with torch.save (it holds int8 packed weights too); return its bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), buffer)
    path.write_bytes(buffer.getvalue())
    return path.stat().st_size


class Measure:
    """Size, sparsity, CPU latency and the headline test metric of one model."""

    def __init__(self, loaded: LoadedRun, batch_size: int, repeats: int, threads: int) -> None:
        self.data, self.task = loaded.built.data, loaded.built.spec.task
        self.metric = "accuracy" if self.task == "classification" else "rmse"
        self.eval_batch_size = loaded.built.spec.trainer.eval_batch_size
        x = self.data.test.x
        reps = -(-batch_size // max(len(x), 1))
        self.batch = x.repeat(reps, *[1] * (x.dim() - 1))[:batch_size].contiguous()  # real inputs, padded by repetition
        self.repeats, self.threads = repeats, threads

    def __call__(self, label: str, model: nn.Module, path: Path, sparsity_of: dict | None = None) -> dict:
        return {
            "model": label,
            "file": path.name,
            "bytes": saved_size(model, path),
            # int8 weights keep exact zeros (symmetric scheme, zero point 0), so report the source's
            "sparsity": sparsity_of["sparsity"] if sparsity_of else weight_sparsity(model),
            "latency_ms": self.latency_ms(model),
            self.metric: self.score(model),
        }

    def score(self, model: nn.Module) -> float:
        outputs = predict_outputs(model, self.data.test.x, self.eval_batch_size)
        if self.task == "classification":
            return float((outputs.argmax(-1) == self.data.test.y).double().mean())
        err = to_target_units(self.data, outputs) - to_target_units(self.data, self.data.test.y)
        return float(err.pow(2).mean().sqrt())

    @torch.inference_mode()
    def latency_ms(self, model: nn.Module) -> float:
        """Median wall time of one forward pass over the batch, in milliseconds."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)  # also shields the figure from other busy cores
        try:
            for _ in range(3):  # warm-up: allocator, kernel selection
                model(self.batch)
            times = []
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                model(self.batch)
                times.append(time.perf_counter() - t0)
        finally:
            torch.set_num_threads(before)
        return 1000 * statistics.median(times)
