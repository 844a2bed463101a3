"""Checkpoint directories on disk: atomic commits, manifests, pruning and verification.

This module imports no torch, on purpose: the checkpoint writer process
(engine/writer_process.py) commits checkpoints through it.

A checkpoint is written into a hidden temporary directory (each file fsynced, MANIFEST last), the
directory is fsynced and renamed into place, then the parent is fsynced: a kill at any instant
leaves either the old set of checkpoints or the new one, never a half-written `step-*` directory
that passes verification. Loading verifies every file against the manifest before reading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from dltrain.errors import UserError
from dltrain.files import fsync_dir, write_synced

# Version of what dltrain writes into checkpoints; readers refuse newer formats.
# 1: the optimizer/scheduler/RNG state in state.pt (torch.save). 2: in state.safetensors, with its
# structure in state.json: no pickle at all. Both are read.
CHECKPOINT_FORMAT = 2
NAME = re.compile(r"step-(\d{8})")
MANIFEST = "MANIFEST.json"
REQUIRED = {1: ("model.safetensors", "state.pt", "state.json"), 2: ("model.safetensors", "state.safetensors", "state.json")}


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted (missing, truncated, altered, not ours)."""


# ---- writing ---------------------------------------------------------------------------------


TRAINER_PID = [os.getpid()]  # the writer process is told its trainer's pid (the kill hook below)
_SAVES = [0]  # checkpoints this process has begun to commit (the kill hook counts them)


def _test_hooks(name: str):
    """Tests only, read once per commit: DLTRAIN_TEST_KILL=save:N SIGKILLs the training process (and
    a writer process) in the middle of the N-th checkpoint write; DLTRAIN_TEST_WRITE_ERROR=
    ERRNO:step-NNNNNNNN makes writing that checkpoint fail with that errno (ENOSPC: a full disk),
    in whichever process writes it."""
    kill, error = os.environ.get("DLTRAIN_TEST_KILL", ""), os.environ.get("DLTRAIN_TEST_WRITE_ERROR", "")
    if error:
        code, _, target = error.partition(":")
        if target == name:
            import errno

            number = getattr(errno, code)
            raise OSError(number, os.strerror(number), name)
    if kill.startswith("save:"):
        _SAVES[0] += 1
        if _SAVES[0] == int(kill[5:]):
            return _kill_mid_write
    return None


def _kill_mid_write() -> None:
    if os.getpid() != TRAINER_PID[0]:
        os.kill(TRAINER_PID[0], signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def commit(root: Path, name: str, files: Mapping[str, bytes | memoryview]) -> tuple[Path, dict]:
    """Write `files` as checkpoint directory root/name atomically; return its path and manifest.

    Any OSError (unwritable folder, full disk) is a one-line CheckpointError; what was there before
    (the previous checkpoints, an older root/name) is left intact.
    """
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        kill = _test_hooks(name)
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        try:  # the checkpoint `prune` set aside: its files are overwritten in place
            os.replace(_spare(root), tmp)
            for p in tmp.iterdir():
                if p.name not in files and p.name != MANIFEST:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        except FileNotFoundError:
            tmp.mkdir()
        manifest: dict = {"format": CHECKPOINT_FORMAT, "files": {}}
        for i, (fname, data) in enumerate(files.items()):
            write_synced(tmp / fname, data, in_place=True)
            manifest["files"][fname] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if i == 0 and kill:
                kill()
        write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), in_place=True)
        fsync_dir(tmp)
        old = None
        if final.exists():  # the same step written again (after a resume): swap, then drop the old one
            old = root / f".old-{name}-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {e.strerror or e} (the previous checkpoints are intact)") from None
    return final, manifest


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` hold the bytes of `src` atomically (a hard link when the filesystem allows)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _spare(root: Path) -> Path:
    return root / f".spare-{os.getpid()}"


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints (0 keeps every one) and stale temporaries.
    The first checkpoint to go is renamed to `.spare-PID` instead: the next `commit` writes into
    its files (so a run holds keep_last checkpoints and one spare; `discard_spare` at its end)."""
    for p in [*root.glob(".tmp-*"), *root.glob(".old-*"), *root.glob(".spare-*")]:
        if not p.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)
    if keep_last:
        for p in checkpoints(root)[keep_last:]:
            if not _spare(root).exists():
                try:
                    os.replace(p, _spare(root))
                    continue
                except OSError:
                    pass
            shutil.rmtree(p, ignore_errors=True)


def discard_spare(root: Path) -> None:
    """Delete the spare checkpoint `prune` kept for this process's next write (the run is over)."""
    shutil.rmtree(_spare(root), ignore_errors=True)


_LINKED: dict[Path, tuple[str, int]] = {}  # root/best.safetensors: the sha256 of what it holds, its inode


def write_checkpoint(root: Path, name: str, files: Mapping[str, bytes | memoryview], keep_last: int) -> Path:
    """Commit `files` as root/name, point last/best.safetensors at it, prune old checkpoints."""
    path, manifest = commit(root, name, files)
    try:  # the model-weights files other verbs read: hard links to this checkpoint's files
        link_or_copy(path / "model.safetensors", root / "last.safetensors")
        if "best.safetensors" in files:
            best, sha = root / "best.safetensors", manifest["files"]["best.safetensors"]["sha256"]
            if _LINKED.get(best) != (sha, _inode(best)):  # unchanged best weights are not linked again
                link_or_copy(path / "best.safetensors", best)
                _LINKED[best] = sha, _inode(best)
    except OSError as e:
        raise CheckpointError(f"cannot update {root}/last.safetensors: {e.strerror or e} (checkpoint {path} is complete)") from None
    prune(root, keep_last)
    return path


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1


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
    for required in REQUIRED.get(version, REQUIRED[CHECKPOINT_FORMAT]):
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
