"""Full training-state checkpoints: exact resume, atomic commits, verified and pickle-free loads.

One directory per checkpoint, named by the optimizer step it was taken after:

    checkpoints/step-00000123/
        model.safetensors   the model's weights (uncompiled names: no `_orig_mod.`)
        best.safetensors    the best weights so far by trainer.checkpoint.monitor (once there are any)
        state.pt            optimizers, schedulers, grad scalers, RNG states (torch CPU/CUDA, numpy,
                            the loader's generator) and the epoch's data permutation: plain tensors
                            and containers only, read back with torch.load(weights_only=True)
        state.json          epoch, step, position in the epoch, running loss sums, best and
                            early-stopping state, python's RNG, the task's small state, history
        config.yaml         the run config; its hash is in state.json
        MANIFEST.json       size and sha256 of every file above: written last, the commit marker

A checkpoint is written into a hidden temporary directory (each file fsynced, MANIFEST last), the
directory is fsynced and renamed into place, then the parent is fsynced: a kill at any instant
leaves either the old set of checkpoints or the new one, never a half-written `step-*` directory
that passes verification. Loading verifies every file against the manifest before reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dltrain.engine.rundir import CHECKPOINT_FORMAT
from dltrain.errors import UserError

NAME = re.compile(r"step-(\d{8})")
MANIFEST = "MANIFEST.json"
# Keys that may change between a run and its resume without a config-diff error: they do not
# change what is computed (display, checkpoint cadence, where it runs, the resume switch itself).
RESUME_SAFE_KEYS = ("trainer.progress", "trainer.resume", "trainer.resume_force", "trainer.checkpoint.every_n_steps", "trainer.checkpoint.every_n_epochs", "trainer.checkpoint.keep_last", "trainer.checkpoint.writer", "logger")


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted (missing, truncated, altered, not ours)."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the next safe point. `code`: the exit code."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum, self.checkpoint, self.code = signum, checkpoint, 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name}" + (f"; checkpoint saved: {checkpoint}" if checkpoint else ""))


# ---- writing ---------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


_TRAINER_PID = os.getpid()  # a forked checkpoint writer (engine/writer.py) keeps its trainer's pid here


def _kill_hook(point: str) -> None:
    """Tests: DLTRAIN_TEST_KILL=save:N SIGKILLs the training process (and a writer process) in the
    middle of the N-th checkpoint write."""
    spec = os.environ.get("DLTRAIN_TEST_KILL", "")
    if spec.startswith("save:"):
        _kill_hook.count = getattr(_kill_hook, "count", 0) + 1  # type: ignore[attr-defined]
        if _kill_hook.count == int(spec[5:]):  # type: ignore[attr-defined]
            if os.getpid() != _TRAINER_PID:
                os.kill(_TRAINER_PID, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


def commit(root: Path, name: str, files: Mapping[str, bytes]) -> Path:
    """Write `files` as checkpoint directory root/name atomically; return its path.

    Any OSError (unwritable folder, full disk) is a one-line CheckpointError; what was there before
    (the previous checkpoints, an older root/name) is left intact.
    """
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        manifest = {"format": CHECKPOINT_FORMAT, "files": {}}
        for i, (fname, data) in enumerate(files.items()):
            _write(tmp / fname, data)
            manifest["files"][fname] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if i == 0:
                _kill_hook("save")
        _write(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        _fsync_dir(tmp)
        old = None
        if final.exists():  # the same step written again (after a resume): swap, then drop the old one
            old = root / f".old-{name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {e.strerror or e} (the previous checkpoints are intact)") from None
    return final


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` hold the bytes of `src` atomically (a hard link when the filesystem allows)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (0 keeps every one) and stale temporaries."""
    for p in [*root.glob(".tmp-*"), *root.glob(".old-*")]:
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
    if keep_last:
        for p in checkpoints(root)[keep_last:]:
            shutil.rmtree(p, ignore_errors=True)


# ---- reading ---------------------------------------------------------------------------------


def checkpoints(root: Path) -> list[Path]:
    """The `step-*` checkpoint directories under `root`, newest (highest step) first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def verify(path: Path) -> dict[str, bytes]:
    """Every file of checkpoint `path`, checked against its manifest; a problem is a CheckpointError."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"checkpoint {path} has no {MANIFEST} (incomplete or not written by dltrain)")
    try:
        manifest = json.loads(mpath.read_text())
        version, entries = int(manifest["format"]), dict(manifest["files"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is damaged") from None
    if version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is format {version}; this dltrain reads format {CHECKPOINT_FORMAT} or older: upgrade dltrain")
    out = {}
    for fname, entry in entries.items():
        fpath = path / fname
        if "/" in fname or fname.startswith(".") or not fpath.is_file():
            raise CheckpointError(f"checkpoint {path}: {fname} is missing")
        data = fpath.read_bytes()
        if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CheckpointError(f"checkpoint {path}: {fname} does not match its sha256 in {MANIFEST} (truncated or altered)")
        out[fname] = data
    for required in ("model.safetensors", "state.pt", "state.json"):
        if required not in out:
            raise CheckpointError(f"checkpoint {path}: {MANIFEST} does not list {required}")
    return out


def newest_valid(paths: Sequence[Path], fallback: bool, warn=None) -> tuple[Path, dict[str, bytes]]:
    """The first of `paths` that verifies; with `fallback=False` the first must verify."""
    if not paths:
        raise CheckpointError("no checkpoint to resume from")
    errors = []
    for p in paths:
        try:
            return p, verify(p)
        except CheckpointError as e:
            if not fallback:
                raise
            errors.append(str(e))
            if warn:
                warn(f"skipping {e}")
    raise CheckpointError(f"no valid checkpoint: {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))


# ---- what a checkpoint holds -----------------------------------------------------------------


def config_hash(cfg: Mapping[str, Any]) -> str:
    """sha256 of the config without the keys that may change on resume (RESUME_SAFE_KEYS)."""
    flat = {k: v for k, v in flatten(cfg).items() if not _safe(k)}
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
    a, b = flatten(old), flatten(new)
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
    losses: list[list[float]] = field(default_factory=list)  # this epoch's batch losses so far, per phase
    best: dict[str, Any] = field(default_factory=dict)
    stop_best: float = 0.0
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    task: dict[str, Any] = field(default_factory=dict)
    order: torch.Tensor | None = None  # the epoch's data permutation
    best_state: dict[str, torch.Tensor] | None = None
    rank_rng: list[torch.Tensor] | None = None  # data-parallel runs: every rank's torch RNG state


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "loader": generator.get_state() if generator is not None else None,
    }


def set_rng_state(rng: Mapping[str, Any], python_rng: Sequence, generator: torch.Generator | None) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if generator is not None and rng["loader"] is not None:
        generator.set_state(rng["loader"])
    version, internal, gauss = python_rng
    random.setstate((version, tuple(internal), gauss))


def copy_tensors(node: Any) -> Any:
    """`node` with every tensor copied to CPU memory (containers rebuilt, other leaves shared)."""
    if isinstance(node, torch.Tensor):
        return node.detach().to("cpu", copy=True)
    if isinstance(node, Mapping):
        return {k: copy_tensors(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(copy_tensors(v) for v in node)
    return node


def snapshot(loop: LoopState, model_state: Mapping[str, torch.Tensor], phases, generator, config_sha256: str) -> dict[str, Any]:
    """Everything a checkpoint holds, taken at a safe point in the training thread. Small state is
    encoded to JSON here; tensors are the live ones (model weights, optimizer moments): a writer
    that lets training go on first copies them (`copy_tensors`, or into its staging buffer)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": loop.epoch,
        "batch": loop.batch,
        "epoch_done": loop.epoch_done,
        "step": loop.step,
        "losses": loop.losses,
        "best": loop.best,
        "stop_best": loop.stop_best,
        "bad_epochs": loop.bad_epochs,
        "history": loop.history,
        "train_seconds": loop.train_seconds,
        "task": loop.task,
        "python_rng": list(random.getstate()),
        "config_sha256": config_sha256,
    }
    blob = {
        "phases": {
            ph.name: {
                "optimizer": ph.optimizer.state_dict(),
                "scheduler": ph.schedule.scheduler.state_dict() if ph.schedule.scheduler is not None else None,
                "scaler": ph.scaler.state_dict() if ph.scaler is not None else None,
            }
            for ph in phases
        },
        "rng": rng_state(generator),
        "order": loop.order,
        **({"rank_rng": loop.rank_rng} if loop.rank_rng is not None else {}),
    }
    return {
        "model": dict(model_state),
        "best": loop.best_state,
        "meta": {"epoch": loop.epoch, "step": loop.step, "best_epoch": loop.best.get("epoch", 0)},
        "blob": blob,
        "state_json": (json.dumps(state) + "\n").encode(),  # no indent: the C encoder
    }


def serialize(snap: Mapping[str, Any], config_yaml: str) -> dict[str, bytes]:
    """The files of one checkpoint (MANIFEST excepted), in write order."""
    import io

    from safetensors.torch import save

    def weights(state: Mapping[str, torch.Tensor], meta: dict) -> bytes:
        tensors = {k.replace("_orig_mod.", ""): v.contiguous() for k, v in state.items()}
        return save(tensors, metadata={"format": str(CHECKPOINT_FORMAT), **{k: str(v) for k, v in meta.items()}})

    meta = snap["meta"]
    files = {"model.safetensors": weights(snap["model"], {"epoch": meta["epoch"], "step": meta["step"]})}
    if snap["best"] is not None:
        files["best.safetensors"] = weights(snap["best"], {"epoch": meta["best_epoch"]})
    buf = io.BytesIO()
    torch.save(snap["blob"], buf)
    files["state.pt"] = buf.getvalue()
    files["state.json"] = snap["state_json"]
    files["config.yaml"] = config_yaml.encode()
    return files


def encode(loop: LoopState, model_state: Mapping[str, torch.Tensor], phases, generator, config: Mapping[str, Any], config_yaml: str) -> dict[str, bytes]:
    """The files of a checkpoint of this state, now (snapshot and serialize in one go)."""
    return serialize(snapshot(loop, model_state, phases, generator, config_hash(config)), config_yaml)


def decode(path: Path, files: Mapping[str, bytes]) -> tuple[LoopState, dict[str, torch.Tensor], dict, dict]:
    """(loop state, model weights, state.pt contents, state.json) of a verified checkpoint."""
    import io
    import pickle

    from safetensors.torch import load

    try:
        model = load(files["model.safetensors"])
        best = load(files["best.safetensors"]) if "best.safetensors" in files else None
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: unreadable weights ({str(e).splitlines()[0]})") from None
    try:  # weights_only: only tensors and plain containers; any other pickle global is refused
        blob = torch.load(io.BytesIO(files["state.pt"]), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: state.pt is not a plain-tensor file, refused ({str(e).splitlines()[0][:160]})") from None
    try:
        state = json.loads(files["state.json"])
    except ValueError:
        raise CheckpointError(f"checkpoint {path}: state.json is not JSON") from None
    if int(state.get("format", 0)) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is format {state['format']}; this dltrain reads format {CHECKPOINT_FORMAT} or older")
    loop = LoopState(
        epoch=state["epoch"], batch=state["batch"], epoch_done=state["epoch_done"], step=state["step"],
        losses=state["losses"], best=state["best"], stop_best=state["stop_best"], bad_epochs=state["bad_epochs"],
        history=state["history"], train_seconds=state.get("train_seconds", 0.0), task=state["task"], order=blob.get("order"), best_state=best,
        rank_rng=blob.get("rank_rng"),
    )
    return loop, model, blob, state


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
    set_rng_state(blob["rng"], state["python_rng"], generator)
    return loop


# ---- signals ---------------------------------------------------------------------------------


class StopSignals:
    """SIGINT/SIGTERM set `received`; the loop saves a checkpoint at the next safe point and stops.

    A second signal stops at once (SIGINT: KeyboardInterrupt; SIGTERM: exit 143). Only the main
    thread can install handlers; elsewhere this does nothing.
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
            os._exit(128 + signum)
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
