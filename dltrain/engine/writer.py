"""Checkpoint writers: who serializes, hashes, fsyncs and commits a checkpoint, while training goes on.

The training loop takes a `snapshot` at a safe point (small state already JSON, tensors the live
ones) and `submit`s it. Three writers (trainer.checkpoint.writer):

    process  (default on Linux) a writer process, forked when the run starts (or at the first
             checkpoint, if none was planned). The snapshot's tensors are copied into a
             shared-memory staging buffer and a small message says what they are; the writer
             process does everything else, so the training loop pays a memcpy, not the GIL.
    thread   a background thread in the training process (the fallback where fork is missing).
    sync     in the training loop itself: when training goes on, the checkpoint is committed.

At most one write is in flight: `submit` first waits for the previous one. `wait` returns when
every submitted checkpoint is committed, and raises the first write error (a CheckpointError with
one line for a full disk or an unwritable folder). A SIGKILL of the training process while a
write is in flight loses at most that checkpoint (the process writer still finishes it); the
previous one stays committed either way.
"""

from __future__ import annotations

import math
import mmap
import os
import json
import pickle
import signal
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dltrain.engine.checkpoint import CheckpointError, commit, copy_tensors, link_or_copy, prune, serialize

_ALIGN = 64


def write_checkpoint(root: Path, name: str, snap: Mapping[str, Any], config_yaml: str, keep_last: int) -> Path:
    """Serialize `snap`, commit it as root/name, point last/best.safetensors at it, prune old ones."""
    files = serialize(snap, config_yaml)
    path = commit(root, name, files)
    try:  # the model-weights files other verbs read: hard links to this checkpoint's files
        link_or_copy(path / "model.safetensors", root / "last.safetensors")
        if "best.safetensors" in files:
            link_or_copy(path / "best.safetensors", root / "best.safetensors")
    except OSError as e:
        raise CheckpointError(f"cannot update {root}/last.safetensors: {e.strerror or e} (checkpoint {path} is complete)") from None
    prune(root, keep_last)
    return path


class Writer:
    """Writes checkpoints of one run (`root`, the run config's text, keep_last) one at a time."""

    live: weakref.WeakSet[Writer] = weakref.WeakSet()

    def __init__(self, root: Path, config_yaml: str, keep_last: int) -> None:
        self.root, self.config_yaml, self.keep_last = root, config_yaml, keep_last
        Writer.live.add(self)

    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def wait(self, quiet: bool = False) -> None:
        """Block until every submitted checkpoint is committed; raise the first error unless quiet."""

    def close(self, quiet: bool = False) -> None:
        """wait(), then release what the writer holds (its process)."""
        self.wait(quiet)

    @classmethod
    def flush_all(cls) -> None:
        """Wait for every pending write (the tests' kill hooks: "killed after step N" means after
        the checkpoints taken so far are on disk, so what a test resumes from is deterministic)."""
        for writer in list(cls.live):
            writer.wait(quiet=True)


class SyncWriter(Writer):
    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        write_checkpoint(self.root, name, snap, self.config_yaml, self.keep_last)


class RankWriter(Writer):
    """A data-parallel rank other than 0: rank 0 writes the checkpoints, this one only takes part."""

    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        pass


class ThreadWriter(Writer):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        self.wait()
        snap = copy_tensors(snap)  # training goes on and changes the live tensors

        def run() -> None:
            try:
                write_checkpoint(self.root, name, snap, self.config_yaml, self.keep_last)
            except BaseException as e:  # noqa: BLE001  (reported to the training thread)
                self._error = e

        self._thread = threading.Thread(target=run, name="dltrain-checkpoint", daemon=False)
        self._thread.start()

    def wait(self, quiet: bool = False) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None and not quiet:
            raise error


# ---- the writer process ------------------------------------------------------------------------


def _split(node: Any, tensors: list[torch.Tensor]) -> Any:
    """`node` with each tensor replaced by a placeholder ("__tensor__", i) and put in tensors[i]."""
    if isinstance(node, torch.Tensor):
        tensors.append(node.detach())
        return ("__tensor__", len(tensors) - 1)
    if isinstance(node, dict):
        return {k: _split(v, tensors) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_split(v, tensors) for v in node)
    return node


def _join(node: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(node, tuple) and len(node) == 2 and node[0] == "__tensor__":
        return tensors[node[1]]
    if isinstance(node, dict):
        return {k: _join(v, tensors) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_join(v, tensors) for v in node)
    return node


def _offsets(layout: list[tuple[torch.dtype, tuple[int, ...]]]) -> tuple[list[int], int]:
    """Aligned byte offsets of tensors of these (dtype, shape)s in one buffer, and its size."""
    offsets, end = [], 0
    for dtype, shape in layout:
        start = -(-end // _ALIGN) * _ALIGN
        offsets.append(start)
        end = start + math.prod(shape) * dtype.itemsize
    return offsets, end


def _views(buf: torch.Tensor, layout: list, offsets: list[int]) -> list[torch.Tensor]:
    return [buf[o : o + math.prod(shape) * dtype.itemsize].view(dtype).view(shape) for (dtype, shape), o in zip(layout, offsets)]


def _tensors(mem: mmap.mmap, layout: list, offsets: list[int]) -> list[torch.Tensor]:
    """Tensors over the staging buffer, each with a storage of its own (torch.save writes whole storages)."""
    return [
        torch.frombuffer(mem, dtype=dtype, count=math.prod(shape), offset=o).view(shape) if math.prod(shape) else torch.empty(shape, dtype=dtype)
        for (dtype, shape), o in zip(layout, offsets)
    ]


class ProcessWriter(Writer):
    """A forked writer process and a shared-memory staging buffer (see the module docstring).

    Protocol over a socket pair that only this process and its fork hold (nothing else can write
    to it, so the trainer's own messages are pickled: they carry dtypes and optimizer state): the
    trainer sends (name, staged tree, layout, offsets) or None (exit); the writer answers in JSON,
    ["ok", path] or ["error", kind, message], once the checkpoint is committed.
    The staging buffer is reused: the trainer waits for the answer before copying the next one.
    """

    def __init__(self, *args: Any, capacity: int = 0) -> None:
        super().__init__(*args)
        self._pid = 0
        self._conn: Any = None
        self._buf: torch.Tensor | None = None
        self._layout: list | None = None
        self._pending = False
        if capacity:  # start now, before training: the fork is not in the first checkpoint's time
            self._start(capacity)

    def _start(self, capacity: int) -> None:
        """Map `capacity` bytes of shared memory (pages are only allocated when touched) and fork."""
        import multiprocessing

        self._mem = mmap.mmap(-1, capacity)  # anonymous and shared: the forked writer sees our copies
        self._buf = torch.frombuffer(self._mem, dtype=torch.uint8)
        parent, child = multiprocessing.Pipe(duplex=True)
        with warnings.catch_warnings():  # 3.12+: "multi-threaded, use of fork() may lead to deadlocks":
            warnings.simplefilter("ignore", DeprecationWarning)  # the writer runs no torch threads, logging or CUDA
            pid = os.fork()
        if pid == 0:  # the writer process
            code = 1
            try:
                parent.close()
                code = _serve(child, self._mem, self.root, self.config_yaml, self.keep_last)
            except BaseException:  # noqa: BLE001  (a bug in the writer: the trainer sees it died)
                traceback.print_exc()
            finally:
                os._exit(code)
        child.close()
        self._pid, self._conn = pid, parent

    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        self.wait()
        tensors: list[torch.Tensor] = []
        tree = _split(snap, tensors)
        layout = [(t.dtype, tuple(t.shape)) for t in tensors]
        if layout != self._layout:  # the first checkpoint, or the state's shapes changed
            offsets, size = _offsets(layout)
            if self._buf is None or size > self._buf.numel():
                self.close()
                self._start(max(2 * size, 1 << 20))
            self._layout, self._offsets, self._dst = layout, offsets, _views(self._buf, layout, offsets)
        if all(t.device.type == "cpu" for t in tensors):
            torch._foreach_copy_(self._dst, tensors)  # one call for every tensor
        else:
            for dst, src in zip(self._dst, tensors):
                dst.copy_(src)
        self._conn.send_bytes(pickle.dumps((name, tree, self._layout, self._offsets), protocol=pickle.HIGHEST_PROTOCOL))
        self._pending = True

    def wait(self, quiet: bool = False) -> None:
        if not self._pending:
            return
        self._pending = False
        try:
            answer = json.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            answer = ["error", "CheckpointError", f"the checkpoint writer process died (pid {self._pid}); the previous checkpoints are intact"]
        if answer[0] == "error" and not quiet:
            _, kind, message = answer
            raise CheckpointError(message) if kind == "CheckpointError" else RuntimeError(f"checkpoint writer: {message}")

    def close(self, quiet: bool = False) -> None:
        try:
            self.wait(quiet)
        finally:
            if self._pid:
                try:
                    self._conn.send_bytes(pickle.dumps(None))
                except OSError:
                    pass
                self._conn.close()
                os.waitpid(self._pid, 0)
                self._pid, self._buf, self._layout = 0, None, None
                self._mem.close()


def _serve(conn, mem: mmap.mmap, root: Path, config_yaml: str, keep_last: int) -> int:
    """The writer process's loop: write what arrives until told to stop or the trainer is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # trainer decides; we finish the write in hand
    torch.set_num_threads(1)
    try:  # the manifest's sha256 checks every file: the zip's own CRC32 would only cost time
        from torch.utils.serialization import config

        config.save.compute_crc32 = False
    except (ImportError, AttributeError):  # an older torch
        pass
    try:  # run only on a core the trainer leaves idle: its threads never wait for the writer
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):  # the trainer is gone (killed): nothing more will come
            return 0
        if message is None:
            return 0
        name, tree, layout, offsets = message
        try:
            tensors = _tensors(mem, layout, offsets)
            path = write_checkpoint(root, name, _join(tree, tensors), config_yaml, keep_last)
            answer = ["ok", str(path)]
        except CheckpointError as e:
            answer = ["error", "CheckpointError", str(e)]
        except BaseException as e:  # noqa: BLE001  (a bug: the trainer reports it with its traceback)
            answer = ["error", type(e).__name__, "".join(traceback.format_exception(e)).strip()]
        try:
            conn.send_bytes(json.dumps(answer).encode())
        except OSError:
            return 0


def make_writer(kind: str, root: Path, config_yaml: str, keep_last: int, state_bytes: int = 0) -> Writer:
    """The writer for trainer.checkpoint.writer. `process` needs fork (Linux); where it is missing,
    or the fork or the shared memory is refused, a thread writes. `state_bytes` (the model's
    size; 0 when no checkpoints are planned): start the writer process now, with room for the
    model, the best weights and an optimizer's state several times over. `rank`: a data-parallel
    rank other than 0, which writes nothing."""
    if kind == "process":
        if sys.platform == "linux" and hasattr(os, "fork"):
            try:
                return ProcessWriter(root, config_yaml, keep_last, capacity=6 * state_bytes + (64 << 20) if state_bytes else 0)
            except OSError:
                pass
        kind = "thread"
    return {"thread": ThreadWriter, "sync": SyncWriter, "rank": RankWriter}[kind](root, config_yaml, keep_last)
