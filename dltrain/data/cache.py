"""Built datasets kept on disk, so a run reads its split instead of rebuilding it.

scikit-learn's bundled datasets are split with scikit-learn; importing it takes about 0.7 s, paid
by every run and by every worker of a parallel sweep. `@cached` builds a dataset once per
(dataset, parameters, scikit-learn version, format) and writes it under
`$DLTRAIN_CACHE/data` (default `~/.cache/dltrain/data`): the split's tensors as safetensors and
the rest of the bundle as JSON in its metadata. Later runs read that file back bit for bit, and
never import scikit-learn. A damaged entry is rebuilt; a cache that cannot be written is skipped.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path

from dltrain.data.base import DataBundle, Split

FORMAT = 2
SPLITS = ("train", "val", "test")
FIELDS = ("name", "kind", "task", "num_classes", "class_names", "x_mean", "x_std", "y_mean", "y_std", "pixel_range", "note", "prep")


def cache_root() -> Path:
    """Where dltrain keeps what it can rebuild: $DLTRAIN_CACHE, else ~/.cache/dltrain."""
    return Path(os.environ.get("DLTRAIN_CACHE", Path.home() / ".cache" / "dltrain"))


def cache_dir() -> Path:
    return cache_root() / "data"


def cached(source: str, content: Callable[[dict], str] | None = None) -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    """Decorate a dataset builder whose result depends only on its arguments and on the installed
    distribution `source` (e.g. "scikit-learn": its bundled files and its split), and, for a
    user's own file, on `content(arguments)`: a digest of what the file holds, so an edited file
    is parsed again and a renamed one is not."""

    def wrap(build: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        signature = inspect.signature(build)

        @functools.wraps(build)
        def builder(*args, **kwargs) -> DataBundle:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            path = entry(build.__name__, {**arguments, **({"content": content(arguments)} if content else {})}, source)
            if path.is_file():
                try:
                    return read(path)
                except Exception:  # noqa: BLE001  (a damaged or foreign entry is rebuilt, never trusted)
                    path.unlink(missing_ok=True)
            bundle = build(*args, **kwargs)
            try:
                write(path, bundle)
            except OSError:  # a read-only or full home: the run goes on uncached
                pass
            return bundle

        return builder

    return wrap


def entry(name: str, params: dict, source: str) -> Path:
    from importlib.metadata import PackageNotFoundError, version

    try:
        source_version = version(source)
    except PackageNotFoundError:
        source_version = "none"
    key = json.dumps({"dataset": name, "params": params, "source": f"{source}=={source_version}", "format": FORMAT}, sort_keys=True)
    return cache_dir() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def folder_digest(root: str | Path) -> str:
    """sha256 over every file under `root`: its relative path, size and modification time (reading
    60,000 images to hash them would cost about what decoding them does)."""
    digest = hashlib.sha256()

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for e in sorted(entries, key=lambda e: e.name):
                if e.is_dir(follow_symlinks=False):
                    walk(e.path, prefix + e.name + "/")
                else:
                    stat = e.stat()
                    digest.update(f"{prefix}{e.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())

    walk(str(root), "")
    return digest.hexdigest()


def write(path: Path, bundle: DataBundle) -> None:
    from safetensors.torch import save

    from dltrain.files import atomic_write

    tensors = {f"{split}.{part}": getattr(getattr(bundle, split), part).contiguous() for split in SPLITS for part in ("x", "y")}
    meta = {field: getattr(bundle, field) for field in FIELDS}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save(tensors, metadata={"format": str(FORMAT), "bundle": json.dumps(meta)}))


def read(path: Path) -> DataBundle:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != str(FORMAT):
            raise ValueError(f"{path}: format {meta.get('format')}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    fields = json.loads(meta["bundle"])
    if fields["pixel_range"] is not None:
        fields["pixel_range"] = tuple(fields["pixel_range"])
    splits = {split: Split(tensors[f"{split}.x"], tensors[f"{split}.y"]) for split in SPLITS}
    return DataBundle(**{field: fields[field] for field in FIELDS}, **splits)
