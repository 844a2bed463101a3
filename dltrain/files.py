"""Files that a crash never leaves half-written: fsynced writes and atomic replaces.

Used by the run directory, the checkpoint commits (also in the torch-free writer process), the
dataset and reference-net caches and the sweep summaries. No torch, no third-party imports.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename or a new file in it survives a power cut."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes | memoryview, *, in_place: bool = False) -> None:
    """Write `data` to `path` and fsync it.

    `in_place`: a file already at `path` is overwritten rather than replaced by a new one, unless
    another name links to it (it is then unlinked first, so the other name keeps its bytes). On
    the VMs we measured, creating a file (and deleting an old one) slowed a training process on
    another core several times more than overwriting the bytes of a file that exists.
    """
    flags = os.O_WRONLY | os.O_CREAT | (0 if in_place else os.O_TRUNC)
    if in_place:
        try:
            fd = os.open(path, os.O_WRONLY)
            if os.fstat(fd).st_nlink > 1:  # e.g. checkpoints/best.safetensors: never changed through another name
                os.close(fd)
                os.unlink(path)
                fd = os.open(path, flags | os.O_TRUNC, 0o666)
        except FileNotFoundError:
            fd = os.open(path, flags, 0o666)
    else:
        fd = os.open(path, flags, 0o666)
    with open(fd, "wb") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def injected_fault(path: Path) -> None:
    """Tests: DLTRAIN_TEST_WRITE_ERROR=ERRNO:NAME makes writing a file named NAME fail with that
    errno (ENOSPC: a full disk), as a real disk would (engine/atomic.py: NAME a checkpoint's)."""
    spec = os.environ.get("DLTRAIN_TEST_WRITE_ERROR")
    if spec and spec.partition(":")[2] == Path(path).name:
        import errno

        number = getattr(errno, spec.partition(":")[0])
        raise OSError(number, os.strerror(number), str(path))


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Replace `path` with `data` atomically: a temporary file in the same folder, fsynced, renamed
    (a symbolic link at `path` is replaced, never followed)."""
    path = Path(path)
    injected_fault(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path, key: str) -> None:
    """`path`, or the nearest folder above it that exists, takes a new file (a probe, removed at
    once): a read-only folder or a full disk is one UserError line before anything runs."""
    from dltrain.errors import UserError

    path = Path(path)
    if any(len(part.encode()) > 255 for part in path.parts):
        raise UserError(f"{key}={str(path)[:80]}...: a folder name is longer than 255 bytes, more than a filesystem allows")
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    probe = folder / f".dltrain-probe-{os.getpid()}"
    try:
        injected_fault(Path(".hydra"))
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe\n")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"{key}: cannot write into {folder}: {e.strerror or e} (a read-only folder or a full disk?)") from None


class FolderLock:
    """One writer per folder: an exclusive OS lock (flock) on FOLDER/.lock, holding the owner's pid.

    Re-entrant within a process (the CLI may take it before Hydra starts, the run again inside);
    released when the last holder releases it or the process ends, however it ends. Another
    process that asks gets a one-line UserError naming the holder's pid.
    """

    _held: dict[str, list] = {}  # resolved folder -> [fd, count]

    def __init__(self, folder: Path, what: str = "run directory") -> None:
        self.folder, self.what = Path(folder), what
        self.key = str(self.folder.resolve())

    def acquire(self) -> FolderLock:
        import fcntl

        from dltrain.errors import UserError

        held = self._held.get(self.key)
        if held is not None:
            held[1] += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(f"{self.what} {self.folder} is in use: process {holder} is writing into it (one dltrain per {self.what}); wait for it, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._held[self.key] = [fd, 1]
        return self

    def release(self) -> None:
        held = self._held.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del self._held[self.key]
            os.close(held[0])  # closing the descriptor drops the lock

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def writing(path: Path):
    """Turn a failed write of `path` (a full disk, a read-only folder) into one UserError line."""
    from dltrain.errors import UserError

    try:
        yield
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e} (a full disk or a read-only folder?); the run stopped and is not marked finished") from None
