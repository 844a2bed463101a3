"""Checkpoint directories on disk: atomic commits, manifests, verification, and the writer process.

This module imports no torch, on purpose: the checkpoint writer process (`python -m
dltrain.engine.atomic`, started by engine/writer.py) runs only this file. It gets each
checkpoint as finished file bytes in a shared-memory staging buffer (the trainer laid the
safetensors files out there itself) and a JSON message naming the byte range of each file; it
hashes, writes, fsyncs and commits them. Nothing it receives is unpickled.

A checkpoint is written into a hidden temporary directory (each file fsynced, MANIFEST last), the
directory is fsynced and renamed into place, then the parent is fsynced: a kill at any instant
leaves either the old set of checkpoints or the new one, never a half-written `step-*` directory
that passes verification. Loading verifies every file against the manifest before reading it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from dltrain.errors import UserError

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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes | memoryview) -> None:
    """Write and fsync `path`. A file already there (a recycled checkpoint's, see `prune`) is
    overwritten in place, unless another name links to it: on the VMs we measured, a new file
    (and the deletion of an old one) slowed a training process on another core several times more
    than overwriting the same bytes of a file that exists."""
    _fail_hook(path)
    try:
        fd = os.open(path, os.O_WRONLY)
        if os.fstat(fd).st_nlink > 1:  # e.g. checkpoints/best.safetensors: never changed through another name
            os.close(fd)
            os.unlink(path)
            raise FileNotFoundError
    except FileNotFoundError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    with open(fd, "wb") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


_TRAINER_PID = os.getpid()  # the writer process is told its trainer's pid (the kill hook below)


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


def _fail_hook(path: Path) -> None:
    """Tests: DLTRAIN_TEST_WRITE_ERROR=ERRNO:step-NNNNNNNN makes writing that checkpoint's files
    fail with that errno (ENOSPC: a full disk), in whichever process writes it."""
    spec = os.environ.get("DLTRAIN_TEST_WRITE_ERROR", "")
    if spec:
        code, _, name = spec.partition(":")
        if path.parent.name.startswith(f".tmp-{name}-"):
            import errno

            number = getattr(errno, code)
            raise OSError(number, os.strerror(number), str(path))


def commit(root: Path, name: str, files: Mapping[str, bytes | memoryview]) -> tuple[Path, dict]:
    """Write `files` as checkpoint directory root/name atomically; return its path and manifest.

    Any OSError (unwritable folder, full disk) is a one-line CheckpointError; what was there before
    (the previous checkpoints, an older root/name) is left intact.
    """
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
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


# ---- the writer process ----------------------------------------------------------------------
# Messages between the trainer and its writer: a 4-byte little-endian length, then JSON.


def send(sock: socket.socket, message: object) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("<I", len(data)) + data)


def receive(sock: socket.socket) -> object:
    """The next message; EOFError when the other side is gone."""
    (n,) = struct.unpack("<I", _exactly(sock, 4))
    return json.loads(_exactly(sock, n))


def _exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def serve(sock: socket.socket, staging: memoryview, root: Path, keep_last: int) -> int:
    """The writer process's loop. Each message is {"name": "step-...", "files": [[file, start,
    end], ...]}: commit those byte ranges of the staging buffer as checkpoint root/name, then answer
    ["ok", path] or ["error", kind, message]. None (or the trainer gone) ends it."""
    while True:
        try:
            message = receive(sock)
        except (EOFError, OSError):  # the trainer is gone (killed): nothing more will come
            return 0
        if message is None:
            return 0
        try:
            files = {fname: staging[start:end] for fname, start, end in message["files"]}
            answer = ["ok", str(write_checkpoint(root, message["name"], files, keep_last))]
        except CheckpointError as e:
            answer = ["error", "CheckpointError", str(e)]
        except Exception as e:  # noqa: BLE001  (a bug: the trainer reports it with its traceback)
            answer = ["error", type(e).__name__, "".join(traceback.format_exception(e)).strip()]
        finally:
            files = {}  # no view of the staging buffer outlives the write (it is closed at exit)
        try:
            send(sock, answer)
        except OSError:
            return 0


def main(argv: Sequence[str]) -> int:
    """python -m dltrain.engine.atomic SOCKET_FD STAGING_FD STAGING_BYTES TRAINER_PID KEEP_LAST ROOT"""
    global _TRAINER_PID
    sock_fd, mem_fd, size, _TRAINER_PID, keep_last = (int(a) for a in argv[:5])
    root = Path(argv[5])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # trainer decides; we finish the write in hand
    try:  # run only on a core the trainer leaves idle: its threads never wait for the writer
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    sock = socket.socket(fileno=sock_fd)
    with mmap.mmap(mem_fd, size) as mem:
        staging = memoryview(mem)
        try:
            return serve(sock, staging, root, keep_last)
        finally:
            staging.release()
            discard_spare(root)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
