"""Full training-state checkpoints: what they hold, exact resume, pickle-free encoding and loading.

One directory per checkpoint, named by the optimizer step it was taken after:

    checkpoints/step-00000123/
        model.safetensors   the model's weights (uncompiled names: no `_orig_mod.`)
        best.safetensors    the best weights so far by trainer.checkpoint.monitor (once there are any)
        state.safetensors   every tensor of the optimizers, schedulers and grad scalers, the RNG
                            states (torch CPU/CUDA, numpy, the loader's generator), the epoch's
                            data permutation and (trainer.ema / trainer.swa) the averaged weights
        state.json          epoch, step, position in the epoch, running loss sums, best and
                            early-stopping state, python's RNG, the task's small state, history,
                            and the structure of the state above ("blob": JSON whose tensors are
                            named entries of state.safetensors)
        config.yaml         the run config; its hash is in state.json
        MANIFEST.json       size and sha256 of every file above: written last, the commit marker

Everything is safetensors or JSON: loading never unpickles (format-1 checkpoints kept that state
in state.pt, read with torch.load(weights_only=True)). Commits and verification are in
engine/atomic.py; engine/writer.py decides who writes (engine/writer_process.py: the writer process).
"""

from __future__ import annotations

import array
import hashlib
import io
import json
import math
import os
import random
import signal
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dltrain.engine.atomic import CHECKPOINT_FORMAT, MANIFEST, CheckpointError, checkpoints, newest_valid, verify  # noqa: F401  (re-exported: the checkpoint API in one place)

# Keys that may change between a run and its resume without a config-diff error: they do not
# change what is computed (display, checkpoint cadence, where it runs, the resume switch itself).
RESUME_SAFE_KEYS = ("trainer.progress", "trainer.resume", "trainer.resume_force", "trainer.checkpoint.every_n_steps", "trainer.checkpoint.every_n_epochs", "trainer.checkpoint.every_n_minutes", "trainer.checkpoint.keep_last", "trainer.checkpoint.writer", "logger")


# Keys added after runs were made, with the value that runs made without them behave by: that
# value is left out of the config hash and the diff, so those runs still resume without a force.
ADDED_KEYS = {"trainer.val_every_n_steps": 0}


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the next safe point. `code`: the exit code."""

    def __init__(self, signum: int, checkpoint: Path | None, during: str = "") -> None:
        self.signum, self.checkpoint, self.code = signum, checkpoint, 128 + signum
        name = signal.Signals(signum).name
        saved = "checkpoint saved" if not during else "last checkpoint"
        super().__init__(f"stopped by {name}" + (f" {during}" if during else "") + (f"; {saved}: {checkpoint}" if checkpoint else ""))


# ---- what a checkpoint holds -----------------------------------------------------------------


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 of the config without the keys that may change on resume (RESUME_SAFE_KEYS)."""
    flat = {k: v for k, v in flatten(cfg).items() if not _safe(k) and not (k in ADDED_KEYS and v == ADDED_KEYS[k])}
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if prefix == "" and k == "hydra":
                continue
            out.update(flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _safe(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in RESUME_SAFE_KEYS)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'key: old -> new' for every key that differs (ignoring RESUME_SAFE_KEYS)."""
    a, b = ({**{k: v for k, v in ADDED_KEYS.items() if k not in flat}, **flat} for flat in (flatten(old), flatten(new)))
    return [f"{k}: {a.get(k, '<absent>')} -> {b.get(k, '<absent>')}" for k in sorted(set(a) | set(b)) if not _safe(k) and a.get(k) != b.get(k)]


def _task_state(task) -> dict[str, Any]:
    """The task's small mutable state: numbers and tiny tensors (e.g. a GAN's collapse streak)."""
    out = {}
    for k, v in vars(task).items():
        if isinstance(v, (bool, int, float)) and not isinstance(v, type):
            out[k] = v
        elif isinstance(v, torch.Tensor) and v.numel() <= 64:
            out[k] = v.detach().cpu().tolist()
    return out


def load_task_state(task, state: Mapping[str, Any]) -> None:
    for k, v in state.items():
        cur = getattr(task, k, None)
        setattr(task, k, torch.tensor(v, dtype=cur.dtype) if isinstance(cur, torch.Tensor) else v)


@dataclass
class LoopState:
    """Where fit() is: enough to continue exactly."""

    epoch: int = 1  # the epoch in progress (or just finished, if epoch_done)
    batch: int = 0  # batches of it done
    epoch_done: bool = False
    step: int = 0
    losses: torch.Tensor | list[list[float]] | None = None  # this epoch's batch losses (the first `batch` rows), per phase
    best: dict[str, Any] = field(default_factory=dict)
    stop_best: float = 0.0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    task: dict[str, Any] = field(default_factory=dict)
    order: torch.Tensor | None = None  # the epoch's data permutation
    best_state: dict[str, torch.Tensor] | None = None
    rank_rng: list[torch.Tensor] | None = None  # data-parallel runs: every rank's torch RNG state
    average: dict[str, torch.Tensor] | None = None  # trainer.ema / trainer.swa: the averaged model's state (weights, n_averaged)


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "loader": generator.get_state() if generator is not None else None,
        "python": {"version": version, "internal": torch.frombuffer(array.array("I", internal), dtype=torch.int32), "gauss": gauss},  # uint32 bits
    }


def set_rng_state(rng: Mapping[str, Any], python_rng: Sequence | None, generator: torch.Generator | None) -> None:
    """Every RNG back as `rng_state` took it (`python_rng`: format 1 kept Python's in state.json)."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if generator is not None and rng["loader"] is not None:
        generator.set_state(rng["loader"])
    if "python" in rng:
        p = rng["python"]
        random.setstate((p["version"], tuple(array.array("I", p["internal"].numpy().tobytes())), p["gauss"]))
    else:
        version, internal, gauss = python_rng
        random.setstate((version, tuple(internal), gauss))


def snapshot(loop: LoopState, model_state: Mapping[str, torch.Tensor], phases, generator, config_sha256: str) -> dict[str, Any]:
    """Everything a checkpoint holds, taken at a safe point in the training thread. Small state is
    encoded to JSON here; tensors are the live ones (model weights, optimizer moments): a writer
    that lets training go on copies them first (`pack` into its staging buffer)."""
    tensors: dict[str, torch.Tensor] = {}
    blob = {
        "phases": {
            ph.name: {
                "optimizer": ph.optimizer.state_dict(),
                "scheduler": ph.schedule.scheduler.state_dict() if ph.schedule.scheduler is not None else None,
                "scaler": ph.scaler.state_dict() if ph.scaler is not None and ph.scaler.is_enabled() else None,
            }
            for ph in phases
        },
        "rng": rng_state(generator),
        "order": loop.order,
        "losses": loop.losses,
        **({"rank_rng": loop.rank_rng} if loop.rank_rng is not None else {}),
        **({"average": loop.average} if loop.average is not None else {}),
    }
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": loop.epoch,
        "batch": loop.batch,
        "epoch_done": loop.epoch_done,
        "step": loop.step,
        "best": loop.best,
        "stop_best": loop.stop_best,
        "bad_epochs": loop.bad_epochs,
        "train_seconds": loop.train_seconds,
        "task": loop.task,
        "config_sha256": config_sha256,
        "threads": torch.get_num_threads(),  # trainer.threads=0's choice: resume keeps it (float order)
        "blob": to_tree(blob, tensors),
    }
    text = json.dumps(state)[:-1] + ', "history": ' + _HISTORY.encode(loop.history) + "}\n"  # no indent: the C encoder
    return {
        "model": {k.replace("_orig_mod.", ""): v for k, v in model_state.items()},
        "best": {k.replace("_orig_mod.", ""): v for k, v in loop.best_state.items()} if loop.best_state is not None else None,
        "best_token": loop.best_state,  # replaced, never changed in place: the same dict means the same weights
        "meta": {"epoch": loop.epoch, "step": loop.step, "best_epoch": loop.best.get("epoch", 0)},
        "state": tensors,
        "state_json": text.encode(),
    }


class _RowsJson:
    """The JSON of a run's history, each row encoded once: a checkpoint's cost does not grow with
    the epochs done. Rows are final once appended (metrics.csv has written them)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.parts: list[str] = []

    def encode(self, rows: Sequence[dict]) -> str:
        if len(self.rows) > len(rows) or any(a is not b for a, b in zip(self.rows, rows, strict=False)):
            self.rows, self.parts = [], []  # another run, or a resumed one
        for row in rows[len(self.rows) :]:
            self.rows.append(row)
            self.parts.append(json.dumps(row))
        return "[" + ", ".join(self.parts) + "]"


_HISTORY = _RowsJson()


# ---- state as JSON and named tensors ---------------------------------------------------------


_PLAIN = {str, int, float, bool, type(None)}


def to_tree(node: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """`node` as JSON: each tensor moved into `tensors` under its path ({"__tensor__": path}),
    tuples as {"__tuple__": [...]}, dicts whose keys are not plain strings (an optimizer's
    per-parameter state is keyed by int) as {"__items__": [[key, value], ...]}. (Plain values are
    kept inline, not recursed into: this runs in the training loop at every checkpoint.)"""
    if isinstance(node, torch.Tensor):
        key = path or "/"
        while key in tensors:  # keys 1 and "1" in one dict: both kept
            key += "'"
        tensors[key] = node  # read only by a copy under no_grad (`Staging.pack`)
        return {"__tensor__": key}
    if isinstance(node, Mapping):
        if all(type(k) is str and not k.startswith("__") for k in node):
            return {k: v if type(v) in _PLAIN else to_tree(v, tensors, f"{path}/{k}") for k, v in node.items()}
        return {"__items__": [[k if type(k) in _PLAIN else to_tree(k, tensors, path), v if type(v) in _PLAIN else to_tree(v, tensors, f"{path}/{k}")] for k, v in node.items()]}
    if isinstance(node, (list, tuple)):
        items = [v if type(v) in _PLAIN else to_tree(v, tensors, f"{path}/{i}") for i, v in enumerate(node)]
        return items if isinstance(node, list) else {"__tuple__": items}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"checkpoint state {path or '/'} is a {type(node).__name__}: only tensors, numbers, strings and containers are stored")


def from_tree(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of `to_tree` (KeyError/TypeError/ValueError on a tree that is not one of ours)."""
    if isinstance(node, dict):
        if len(node) == 1:
            (tag, value), = node.items()
            if tag == "__tensor__":
                return tensors[value]
            if tag == "__tuple__":
                return tuple(from_tree(v, tensors) for v in value)
            if tag == "__items__":
                return {from_tree(k, tensors): from_tree(v, tensors) for k, v in value}
        return {k: from_tree(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [from_tree(v, tensors) for v in node]
    return node


# ---- safetensors files laid out by hand (the writer process has no torch) --------------------

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
    **{getattr(torch, t): name for t, name in [("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64"), ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")] if hasattr(torch, t)},
}
_ALIGN = 64  # where each file starts in a staging buffer


@dataclass
class Frame:
    """One safetensors file: its header (length prefix included), its tensors in data order and
    their byte offsets after the header. Tensors are ordered by alignment, dtype and name, with no
    gaps, and the header is padded to 8 bytes, as safetensors' own writer does. `unchanged`:
    an object that is the same one (`is`) only while these tensors keep their values (the best
    weights' dict, replaced when they improve), so a staging buffer may keep the bytes it holds."""

    header: bytes
    tensors: list[torch.Tensor]
    offsets: list[int]
    size: int
    layout: object  # the same object for the same names, dtypes and shapes
    unchanged: object = None


_LAYOUTS: dict[tuple, tuple[list[str], list[int], bytes, int]] = {}  # a run's few file layouts, computed once


def frame(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], unchanged: object = None) -> Frame:
    key = tuple((k, v.dtype, v.shape) for k, v in tensors.items())
    layout = _LAYOUTS.get(key)
    if layout is None:
        for name, t in tensors.items():
            if t.dtype not in DTYPES:
                raise TypeError(f"checkpoint tensor {name} is {t.dtype}, which safetensors cannot store")
        # by alignment, then dtype (each dtype's tensors are one run of bytes: `floats`), then name
        items = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), DTYPES[kv[1].dtype], kv[0]))
        entries: dict[str, Any] = {}
        offsets, runs, pos = [], {}, 0
        for name, t in items:
            n = t.numel() * t.element_size()
            entries[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + n]}
            if t.is_floating_point():
                runs[t.dtype] = (runs.get(t.dtype, (pos,))[0], pos + n)
            offsets.append(pos)
            pos += n
        floats = [(dtype, a, b) for dtype, (a, b) in runs.items() if b > a]
        layout = [name for name, _ in items], offsets, json.dumps(entries, separators=(",", ":")).encode()[1:-1], pos, floats
        if len(_LAYOUTS) > 16:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    names, offsets, entries_json, data_size, _ = layout
    text = b'{"__metadata__":' + json.dumps(metadata, separators=(",", ":")).encode() + (b"," + entries_json if entries_json else b"") + b"}"
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned
    head = struct.pack("<Q", len(text)) + text
    return Frame(head, [tensors[n] for n in names], offsets, len(head) + data_size, layout, unchanged)


def plan(snap: Mapping[str, Any], config_yaml: bytes) -> list[tuple[str, Frame | bytes]]:
    """The files of one checkpoint (MANIFEST excepted), in write order."""
    meta, fmt = snap["meta"], str(CHECKPOINT_FORMAT)
    files: list[tuple[str, Frame | bytes]] = [("model.safetensors", frame(snap["model"], {"format": fmt, "epoch": str(meta["epoch"]), "step": str(meta["step"])}))]
    if snap["best"] is not None:
        files.append(("best.safetensors", frame(snap["best"], {"format": fmt, "epoch": str(meta["best_epoch"])}, snap.get("best_token"))))
    files += [("state.safetensors", frame(snap["state"], {"format": fmt})), ("state.json", snap["state_json"]), ("config.yaml", config_yaml)]
    return files


class Staging:
    """A byte buffer that checkpoints are laid out in, file after file (`pack`). It keeps the
    destination views of each file's last layout (a run's checkpoints all have the same shapes)
    and skips copying a file's tensors that are marked unchanged since it last copied them."""

    def __init__(self, buffer: memoryview) -> None:
        self.view = buffer
        self.bytes = torch.frombuffer(buffer, dtype=torch.uint8) if len(buffer) else torch.empty(0, dtype=torch.uint8)
        self._last: dict[str, tuple[tuple, list[torch.Tensor], object]] = {}  # file -> (layout, views, unchanged)

    @staticmethod
    def size(files: Sequence[tuple[str, Frame | bytes]]) -> int:
        end = 0
        for _, f in files:
            end = -(-end // _ALIGN) * _ALIGN + (f.size if isinstance(f, Frame) else len(f))
        return end

    def pack(self, files: Sequence[tuple[str, Frame | bytes]], finite: Sequence[str] = ("model.safetensors",)) -> list[tuple[str, int, int]]:
        """Copy `files` into the buffer; [(file, start, end)] of each. Tensors are copied in one
        call. NonFiniteWeights if a floating-point tensor of the `finite` files holds NaN or inf
        (checked on the copy: one reduction per dtype)."""
        ranges, dsts, srcs, runs, pos = [], [], [], [], 0
        for fname, f in files:
            pos = -(-pos // _ALIGN) * _ALIGN
            data = f.header if isinstance(f, Frame) else f
            self.view[pos : pos + len(data)] = data
            if isinstance(f, Frame):
                start = pos + len(f.header)
                layout = (start, f.layout)
                last = self._last.get(fname)
                if last is not None and last[0][0] == start and last[0][1] is f.layout:
                    views = last[1]
                    if f.unchanged is not None and f.unchanged is last[2]:
                        views = None  # the buffer holds these bytes already
                else:
                    views = [self.bytes[start + o : start + o + t.numel() * t.element_size()].view(t.dtype).view(t.shape) for t, o in zip(f.tensors, f.offsets, strict=True)]
                self._last[fname] = (layout, views if views is not None else last[1], f.unchanged)
                if views is not None:
                    dsts += views
                    srcs += f.tensors
                if fname in finite:
                    runs += [self.bytes[start + a : start + b].view(dtype) for dtype, a, b in f.layout[4]]
            end = pos + (f.size if isinstance(f, Frame) else len(f))
            ranges.append((fname, pos, end))
            pos = end
        with torch.no_grad():
            if all(t.device.type == "cpu" for t in srcs):
                torch._foreach_copy_(dsts, srcs)
            else:
                for dst, src in zip(dsts, srcs, strict=True):
                    dst.copy_(src)
        if runs and not _all_finite(runs):
            raise NonFiniteWeights
        return ranges


class NonFiniteWeights(Exception):
    """The weights to checkpoint hold NaN or inf (the training loop says at which step)."""


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every element is finite. Sums first (a sum is finite when every element is, and
    summing is ten times faster than isfinite on CPU); element-wise only if a sum is not (it may
    have overflowed)."""
    if all(math.isfinite(t.sum(dtype=torch.float32).item()) for t in tensors):
        return True
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def serialize(snap: Mapping[str, Any], config_yaml: str) -> dict[str, memoryview]:
    """The files of one checkpoint (MANIFEST excepted) as bytes, in write order: a copy of the state."""
    files = plan(snap, config_yaml.encode())
    staging = Staging(memoryview(bytearray(Staging.size(files))))
    return {fname: staging.view[start:end] for fname, start, end in staging.pack(files)}


def encode(loop: LoopState, model_state: Mapping[str, torch.Tensor], phases, generator, config: Mapping[str, Any], config_yaml: str) -> dict[str, bytes]:
    """The files of a checkpoint of this state, now, as bytes (snapshot and serialize in one go)."""
    return {k: bytes(v) for k, v in serialize(snapshot(loop, model_state, phases, generator, config_hash(config)), config_yaml).items()}


def decode(path: Path, files: Mapping[str, bytes]) -> tuple[LoopState, dict[str, torch.Tensor], dict, dict]:
    """(loop state, model weights, the optimizer/RNG state, state.json) of a verified checkpoint."""
    from safetensors.torch import load

    try:
        model = load(files["model.safetensors"])
        best = load(files["best.safetensors"]) if "best.safetensors" in files else None
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: unreadable weights ({str(e).splitlines()[0]})") from None
    try:
        state = json.loads(files["state.json"])
    except ValueError:
        raise CheckpointError(f"checkpoint {path}: state.json is not JSON") from None
    if int(state.get("format", 0)) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is format {state['format']}; this dltrain reads format {CHECKPOINT_FORMAT} or older")
    if "state.safetensors" in files:
        try:
            blob = from_tree(state["blob"], load(files["state.safetensors"]))
        except Exception as e:
            raise CheckpointError(f"checkpoint {path}: state.json and state.safetensors do not fit together ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    else:
        blob = _legacy_blob(path, files["state.pt"])
    loop = LoopState(
        epoch=state["epoch"], batch=state["batch"], epoch_done=state["epoch_done"], step=state["step"],
        losses=blob["losses"] if "losses" in blob else state["losses"], best=state["best"], stop_best=state["stop_best"], bad_epochs=state["bad_epochs"],
        history=state["history"], train_seconds=state.get("train_seconds", 0.0), task=state["task"], order=blob.get("order"), best_state=best,
        rank_rng=blob.get("rank_rng"), average=blob.get("average"),
    )
    return loop, model, blob, state


def _legacy_blob(path: Path, data: bytes) -> dict:
    """Format 1's state.pt. weights_only: only tensors and plain containers; any other pickle global is refused."""
    import pickle

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: state.pt is not a plain-tensor file, refused ({str(e).splitlines()[0][:160]})") from None


def threads_of(files: Mapping[str, bytes]) -> int | None:
    """The intra-op thread count a verified checkpoint was trained with (None: not recorded)."""
    threads = json.loads(files["state.json"]).get("threads") if "state.json" in files else None
    return threads if isinstance(threads, int) and threads > 0 else None


def restore(path: Path, files: Mapping[str, bytes], *, model: torch.nn.Module, phases, generator: torch.Generator | None) -> LoopState:
    """Load a verified checkpoint into model, optimizers, schedulers, scalers and every RNG."""
    loop, weights, blob, state = decode(path, files)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
    saved = blob["phases"]
    if sorted(saved) != sorted(ph.name for ph in phases):
        raise CheckpointError(f"checkpoint {path} has optimizer phases {sorted(saved)}, this run {[ph.name for ph in phases]}")
    for ph in phases:
        s = saved[ph.name]
        try:
            ph.optimizer.load_state_dict(s["optimizer"])
            if ph.schedule.scheduler is not None and s["scheduler"] is not None:
                ph.schedule.scheduler.load_state_dict(s["scheduler"])
            if ph.scaler is not None and s["scaler"] is not None:
                ph.scaler.load_state_dict(s["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path}: optimizer state of phase {ph.name!r} does not fit: {str(e).splitlines()[0]}") from None
    set_rng_state(blob["rng"], state.get("python_rng"), generator)
    return loop


# ---- signals ---------------------------------------------------------------------------------


class StopSignals:
    """SIGINT/SIGTERM set `received`; the loop saves a checkpoint at the next safe point and stops.

    A second signal stops at once (SIGINT: KeyboardInterrupt; SIGTERM: exit 143, also after the
    loop has returned, while the stop finishes). Only the main thread can install handlers;
    elsewhere this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            _exit_at_once(signum, frame)
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        if self.received == signal.SIGTERM and self._old:  # the run is stopping: another SIGTERM ends it at once
            signal.signal(signal.SIGTERM, _exit_at_once)
        self._old = {}


def _exit_at_once(signum: int, frame) -> None:
    """A second SIGTERM while a run stops: exit with its code now (the checkpoint in flight may be lost)."""
    os._exit(128 + signum)
