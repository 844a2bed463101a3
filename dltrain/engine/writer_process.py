"""The checkpoint writer process: `python -m dltrain.engine.writer_process`, started by engine/writer.py.

It imports no torch, on purpose (a test checks it): it starts in milliseconds and shares nothing
with the trainer's memory. It gets each checkpoint as finished file bytes in a shared-memory
staging buffer (the trainer laid the safetensors files out there itself) and a JSON message
naming the byte range of each file; it hashes, writes, fsyncs and commits them
(engine/atomic.py). Nothing it receives is unpickled.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from dltrain.engine import atomic
from dltrain.engine.atomic import CheckpointError, discard_spare, write_checkpoint

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
    """python -m dltrain.engine.writer_process SOCKET_FD STAGING_FD STAGING_BYTES TRAINER_PID KEEP_LAST ROOT"""
    sock_fd, mem_fd, size, trainer_pid, keep_last = (int(a) for a in argv[:5])
    atomic.TRAINER_PID[0] = trainer_pid
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
