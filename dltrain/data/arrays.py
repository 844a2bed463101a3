"""`data=arrays`: a user's own NumPy arrays, an `.npz` (inputs under `x`, targets under `y`, or the
names `data.x` and `data.y` give) or two `.npy` files (`data.path=X.npy data.y=Y.npy`).

Nothing is unpickled (`allow_pickle=False`: an object array is refused), and an `.npy` file is
memory-mapped, so only its header is read to check a config. The inputs' shape decides the kind of
data: (N, C, H, W) images, (N, T, F) sequences and (N, F) tables; a three-axis array is images
(N, H, W) when it holds bytes (uint8) and sequences otherwise, and `data.kind` decides when that
guess is wrong. The targets decide the task like `data=table`'s: strings, booleans or at most 20
distinct integers are classes, reals are regressed (one column or several).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dltrain.data.base import DATASETS, DataBundle, Split, classification_bundle, standardize, stratified_split
from dltrain.errors import ConfigError, UserError
from dltrain.schema import Fraction, NonNegativeInt

MAX_CLASS_INTEGERS = 20
KINDS = ("image", "sequence", "table")


def _files(path: str | None, x: str, y: str) -> tuple[Path, str, Path | None, str]:
    """(inputs file, its key, targets file or None for the same .npz, its key)."""
    if path is None:
        raise ConfigError("data.path", None, "give the arrays to train on: data.path=FILE.npz (keys x and y), or data.path=X.npy data.y=Y.npy")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("data.path", path, "no such file")
    suffix = file.suffix.lower()
    if suffix == ".npz":
        return file, x, None, y
    if suffix == ".npy":
        targets = Path(y).expanduser()
        if targets.suffix.lower() != ".npy":
            raise ConfigError("data.y", y, f"data.path={path} is one .npy file of inputs; allowed: the .npy file of its targets (data.y=Y.npy)")
        if not targets.is_file():
            raise ConfigError("data.y", y, "no such file")
        return file, "", targets, ""
    raise ConfigError("data.path", path, f"unknown file type {suffix or '(none)'!r}; allowed: .npz, or .npy with data.y=Y.npy")


def _header(file: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """An array's shape and dtype from its header alone (an .npz member is not decompressed)."""
    try:
        if not key:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
            return array.shape, array.dtype
        with zipfile.ZipFile(file) as z, z.open(key + ".npy") as f:  # the key was checked (_check_keys)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            return shape, dtype
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{file} is not a readable NumPy file ({str(e).splitlines()[0]}); nothing is unpickled") from None


def _load(file: Path, key: str, what: str) -> np.ndarray:
    try:
        if not key:
            return np.load(file, mmap_mode="r", allow_pickle=False)
        with np.load(file, allow_pickle=False) as z:
            return z[key]
    except ValueError as e:  # an object array needs unpickling
        raise UserError(f"{file}: the {what} ({key or file.name}) cannot be read without unpickling ({str(e).splitlines()[0]}); save numbers or fixed-width strings") from None


def _check_keys(file: Path, x: str, y: str) -> None:
    with zipfile.ZipFile(file) as z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    for key, name in (("data.x", x), ("data.y", y)):
        if name not in names:
            raise ConfigError(key, name, f"{file} has no array {name!r}; its arrays: {', '.join(names) or '(none)'}")


def _guess_kind(shape: tuple[int, ...], dtype: np.dtype, requested: str) -> str:
    ndim = len(shape)
    if ndim not in (2, 3, 4):
        raise ConfigError("data.x", f"shape {shape}", "allowed: (N, F) tables, (N, T, F) sequences, (N, H, W) or (N, C, H, W) images")
    if requested != "auto":
        fits = {"table": (2,), "sequence": (3,), "image": (3, 4)}[requested]
        if ndim not in fits:
            raise ConfigError("data.kind", requested, f"the inputs have shape {shape}; allowed: auto, or " + ", ".join(k for k, d in {"table": (2,), "sequence": (3,), "image": (3, 4)}.items() if ndim in d))
        return requested
    return {2: "table", 4: "image"}.get(ndim) or ("image" if dtype == np.uint8 else "sequence")


def arrays_kind(params: dict) -> str:
    file, x, yfile, y = _files(params.get("path"), params.get("x", "x"), params.get("y", "y"))
    if yfile is None:
        _check_keys(file, x, y)
    shape, dtype = _header(file, x)
    return _guess_kind(shape, dtype, params.get("kind", "auto"))


def _target_task(y: np.ndarray) -> str:
    if y.dtype.kind in "USb" or (y.dtype.kind in "iu" and y.ndim == 1 and len(np.unique(y)) <= MAX_CLASS_INTEGERS):
        return "classification"
    return "regression"


def arrays_task(params: dict) -> str:
    file, x, yfile, y = _files(params.get("path"), params.get("x", "x"), params.get("y", "y"))
    return _target_task(_targets(file, yfile, y))


def _targets(file: Path, yfile: Path | None, y: str) -> np.ndarray:
    return np.asarray(_load(yfile, "", "targets") if yfile is not None else _load(file, y, "targets"))


@DATASETS.register("arrays", kind=arrays_kind, task=arrays_task, tasks=("classification", "regression"))
def arrays(
    path: str | None = None,
    x: str = "x",
    y: str = "y",
    kind: Literal["auto", "image", "sequence", "table"] = "auto",
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.2,
    split_seed: NonNegativeInt = 0,
    task: str | None = None,
) -> DataBundle:
    """Your own NumPy arrays: data.path=FILE.npz (keys x, y), or data.path=X.npy data.y=Y.npy."""
    file, xkey, yfile, ykey = _files(path, x, y)
    if yfile is None:
        _check_keys(file, xkey, ykey)
    inputs = _load(file, xkey, "inputs")
    targets = _targets(file, yfile, ykey)
    shape = tuple(inputs.shape)
    kind = _guess_kind(shape, inputs.dtype, kind)
    if inputs.dtype.kind not in "biuf":
        raise ConfigError("data.x", xkey or str(file), f"holds {inputs.dtype} values; allowed: numbers")
    if len(targets) != shape[0]:
        raise UserError(f"{yfile or file}: {len(targets)} targets for {shape[0]} inputs; allowed: one target per input")
    if targets.ndim > 2:
        raise ConfigError("data.y", ykey or str(yfile), f"targets of shape {targets.shape}; allowed: (N,) classes or values, or (N, K) values")
    task = task if task in ("classification", "regression") else _target_task(targets)
    x_all = np.asarray(inputs, dtype=np.float32)  # a memory-mapped .npy is read here, once
    if kind == "image" and x_all.ndim == 3:
        x_all = x_all[:, None]
    where = f"{file.name}: {shape[0]:,} examples of shape {tuple(x_all.shape[1:])} ({kind})"
    if task == "classification":
        if targets.ndim != 1:
            raise ConfigError("task", "classification", f"the targets have shape {targets.shape}; allowed: one class per example (N,)")
        labels = targets.astype(str) if targets.dtype.kind in "USb" or targets.dtype.kind == "f" else targets
        class_values, codes = np.unique(labels, return_inverse=True)
        if len(class_values) < 2:
            raise ConfigError("data.y", ykey or str(yfile), f"every example is of one class ({class_values[0]!s}); allowed: 2 or more classes")
        if kind == "sequence":
            return _sequence_bundle(x_all, codes, class_values, val_fraction, test_fraction, split_seed, where)
        return classification_bundle("arrays", kind, x_all, codes, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed, class_names=[str(c) for c in class_values], note=where)
    if targets.dtype.kind not in "biuf":
        raise ConfigError("task", "regression", f"the targets hold {targets.dtype} values, not numbers; allowed: classification")
    values = targets.astype(np.float32).reshape(len(targets), -1)
    (xtr, ytr), (xva, yva), (xte, yte) = stratified_split(x_all, values, val_fraction, test_fraction, split_seed, by="quantile")
    (xtr, xva, xte), x_mean, x_std = _scale(kind, xtr, xva, xte)
    (ytr, yva, yte), y_mean, y_std = standardize(ytr, yva, yte, per_feature=True)
    as_split = lambda a, b: Split(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)))  # noqa: E731
    return DataBundle(
        name="arrays", kind=kind, task="regression", train=as_split(xtr, ytr), val=as_split(xva, yva), test=as_split(xte, yte),
        x_mean=x_mean, x_std=x_std, y_mean=y_mean, y_std=y_std, note=where,
        pixel_range=(float(x_all.min()), float(x_all.max())) if kind == "image" else None,
    )


def _scale(kind: str, *splits: np.ndarray):
    """Tables per feature, images by one scalar, sequences per feature over every step."""
    if kind != "sequence":
        return standardize(*splits, per_feature=kind == "table")
    train = splits[0].reshape(-1, splits[0].shape[-1])
    mean, std = train.mean(0, dtype=np.float64), train.std(0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    return [((a - mean) / std).astype(np.float32) for a in splits], mean.tolist(), std.tolist()


def _sequence_bundle(x, codes, class_values, val_fraction, test_fraction, split_seed, note) -> DataBundle:
    (xtr, ytr), (xva, yva), (xte, yte) = stratified_split(x, codes, val_fraction, test_fraction, split_seed, by="class")
    (xtr, xva, xte), mean, std = _scale("sequence", xtr, xva, xte)
    as_split = lambda a, b: Split(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(b.astype(np.int64)))  # noqa: E731
    names = [str(c) for c in class_values]
    return DataBundle(
        name="arrays", kind="sequence", task="classification", train=as_split(xtr, ytr), val=as_split(xva, yva), test=as_split(xte, yte),
        num_classes=len(names), class_names=names, x_mean=mean, x_std=std, note=note,
    )
