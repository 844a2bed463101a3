"""Checkpoint writers: who copies, hashes, fsyncs and commits a checkpoint, while training goes on.

The training loop takes a `snapshot` at a safe point (small state already JSON, tensors the live
ones) and `submit`s it. Three writers (trainer.checkpoint.writer):

    process  (default on Linux) a writer process, started when the run starts (or at the first
             checkpoint, if none was planned): `python -m dltrain.engine.writer_process`, which imports
             no torch. The trainer lays the checkpoint's files out in a shared-memory staging
             buffer (safetensors headers and tensor bytes, state.json, config.yaml: one memcpy of
             the tensors) and sends the byte range of each; the writer process hashes, writes,
             fsyncs and commits them. It is spawned, not forked, so the trainer's memory is never
             shared copy-on-write (a fork made every page the trainer then wrote fault once).
    thread   a background thread in the training process (the fallback where that process cannot
             start): the files are laid out in the loop, the thread commits them.
    sync     in the training loop itself: when training goes on, the checkpoint is committed.

At most one write is in flight: `submit` first waits for the previous one. `wait` returns when
every submitted checkpoint is committed, and raises the first write error (a CheckpointError with
one line for a full disk or an unwritable folder). A SIGKILL of the training process while a
write is in flight loses at most that checkpoint (the process writer still finishes it); the
previous one stays committed either way.
"""

from __future__ import annotations

import mmap
import os
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dltrain.child import python_command
from dltrain.engine import atomic, writer_process
from dltrain.engine.checkpoint import CheckpointError, NonFiniteWeights, Staging, _all_finite, plan, serialize


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
        """wait(), then release what the writer holds (its process, the spare checkpoint)."""
        try:
            self.wait(quiet)
        finally:
            atomic.discard_spare(self.root)

    @classmethod
    def flush_all(cls) -> None:
        """Wait for every pending write (the tests' kill hooks: "killed after step N" means after
        the checkpoints taken so far are on disk, so what a test resumes from is deterministic)."""
        for writer in list(cls.live):
            writer.wait(quiet=True)


class SyncWriter(Writer):
    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        atomic.write_checkpoint(self.root, name, serialize(snap, self.config_yaml), self.keep_last)


class RankWriter(Writer):
    """A data-parallel rank other than 0: rank 0 writes the checkpoints, this one only takes part
    (and refuses non-finite weights as rank 0 does, so every rank stops at the same step)."""

    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        weights = [t for t in snap["model"].values() if t.is_floating_point() and t.numel()]
        if weights and not _all_finite(weights):
            raise NonFiniteWeights


class ThreadWriter(Writer):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        self.wait()
        files = serialize(snap, self.config_yaml)  # a copy: training goes on and changes the live tensors

        def run() -> None:
            try:
                atomic.write_checkpoint(self.root, name, files, self.keep_last)
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


class ProcessWriter(Writer):
    """The writer process and its shared-memory staging buffer (see the module docstring).

    The buffer is a memfd both processes map; the socket pair is theirs alone. Messages are JSON
    (engine/writer_process.py): the trainer sends {"name", "files": [[file, start, end], ...]} or None
    (exit); the writer answers ["ok", path] or ["error", kind, message] once the checkpoint is
    committed. The buffer is reused: the trainer waits for the answer before laying out the next.
    """

    def __init__(self, *args: Any, capacity: int = 0) -> None:
        super().__init__(*args)
        self._proc: subprocess.Popen | None = None
        self._pid = 0
        self._staging: Staging | None = None
        self._pending = False
        self._config = self.config_yaml.encode()
        if capacity:  # start now, before training: its start is not in the first checkpoint's time
            self._start(capacity)

    def _start(self, capacity: int) -> None:
        """Map `capacity` bytes of shared memory (pages are only allocated when touched) and start the writer."""
        fd = os.memfd_create("dltrain-checkpoint-staging", os.MFD_CLOEXEC)
        ours, theirs = socket.socketpair()
        try:
            os.ftruncate(fd, capacity)
            self._mem = mmap.mmap(fd, capacity)
            args = (str(theirs.fileno()), str(fd), str(capacity), str(os.getpid()), str(self.keep_last), str(self.root))
            command = python_command("dltrain.engine.writer_process", *args)  # never the working directory on its path
            self._proc = subprocess.Popen(command, pass_fds=(theirs.fileno(), fd), stdin=subprocess.DEVNULL)
        finally:
            os.close(fd)
            theirs.close()
        self._sock, self._pid = ours, self._proc.pid
        self._staging = Staging(memoryview(self._mem))

    def submit(self, name: str, snap: Mapping[str, Any]) -> None:
        self.wait()
        files = plan(snap, self._config)
        need = Staging.size(files)
        if self._staging is None or need > len(self._staging.view):  # the first checkpoint, or the state outgrew the buffer
            self.close()
            self._start(max(2 * need, 1 << 20))
        ranges = self._staging.pack(files)
        try:
            writer_process.send(self._sock, {"name": name, "files": ranges})
        except OSError:
            pass  # the writer is gone: wait() says so
        self._pending = True

    def wait(self, quiet: bool = False) -> None:
        if not self._pending:
            return
        self._pending = False
        try:
            answer = writer_process.receive(self._sock)
        except (EOFError, OSError, ValueError):
            answer = ["error", "CheckpointError", f"the checkpoint writer process died (pid {self._pid}); the previous checkpoints are intact"]
        if answer[0] == "error" and not quiet:
            _, kind, message = answer
            raise CheckpointError(message) if kind == "CheckpointError" else RuntimeError(f"checkpoint writer: {message}")

    def close(self, quiet: bool = False) -> None:
        try:
            self.wait(quiet)
        finally:
            if self._proc is not None:
                try:
                    writer_process.send(self._sock, None)
                except OSError:
                    pass
                self._sock.close()
                self._proc.wait()
                self._proc, self._pid, self._staging = None, 0, None  # drops the tensors over the buffer
                try:
                    self._mem.close()
                except BufferError:  # a view still held somewhere: unmapped when it goes
                    pass


def make_writer(kind: str, root: Path, config_yaml: str, keep_last: int, state_bytes: int = 0) -> Writer:
    """The writer for trainer.checkpoint.writer. `process` needs Linux (memfd); where it is missing,
    or the writer process or the shared memory is refused, a thread writes. `state_bytes` (the
    model's size; 0 when no checkpoints are planned): start the writer process now, with room for
    the model, the best weights and an optimizer's state several times over. `rank`: a
    data-parallel rank other than 0, which writes nothing."""
    if kind == "process":
        if sys.platform == "linux" and hasattr(os, "memfd_create"):
            try:
                return ProcessWriter(root, config_yaml, keep_last, capacity=6 * state_bytes + (64 << 20) if state_bytes else 0)
            except OSError:
                pass
        kind = "thread"
    return {"thread": ThreadWriter, "sync": SyncWriter, "rank": RankWriter}[kind](root, config_yaml, keep_last)
