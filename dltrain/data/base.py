"""The in-memory dataset contract and the helpers every dataset shares (splits, normalisation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from dltrain.errors import UserError
from dltrain.registry import Registry

DATASETS = Registry("data")

# Keys of the data node used by the loader rather than the dataset builder: the batch size and,
# for images, a random shift of up to `shift` pixels and the `augment` list's random changes
# (flip, rotate, crop, noise), applied to training batches on the device.
LOADER_KEYS = ("batch_size", "shift", "augment")


@dataclass
class Split:
    """Inputs and targets of one split, as CPU tensors (float32 inputs)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class DataBundle:
    """Train/val/test splits plus what the builder needs to size the model and pick the task."""

    name: str
    kind: Literal["image", "table", "sequence", "tokens", "text"]  # tokens: integer token sequences (N, T), num_classes the vocabulary; text: word ids (N, T), prep["vocab"] the vocabulary
    task: str  # the default task for this data: classification, regression or forecasting
    train: Split
    val: Split
    test: Split
    num_classes: int | None = None  # classification
    class_names: list[str] | None = None
    # Normalisation fitted on train, kept so later verbs can apply it to new inputs.
    x_mean: list[float] = field(default_factory=list)
    x_std: list[float] = field(default_factory=list)
    # Regression targets are standardised for training; metrics are reported in original units.
    y_mean: list[float] | None = None
    y_std: list[float] | None = None
    # Raw pixel range of image data (digits: 0..16, MNIST: 0..1), for generative models.
    pixel_range: tuple[float, float] | None = None
    note: str = ""
    # A user's own file: how raw records become the inputs (columns, imputation, encodings, image
    # size), as JSON, so predict and export apply the same steps (data/table.py, data/folder.py).
    prep: dict | None = None

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> pixel intensities in [0, 1]."""
        lo, hi = self.pixel_range or (0.0, 1.0)
        return ((x * self.x_std[0] + self.x_mean[0]) - lo) / (hi - lo)

    def from_unit(self, u: torch.Tensor) -> torch.Tensor:
        """Pixel intensities in [0, 1] -> the normalised inputs models are trained on."""
        lo, hi = self.pixel_range or (0.0, 1.0)
        return (u * (hi - lo) + lo - self.x_mean[0]) / self.x_std[0]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def vocab_size(self) -> int | None:
        """Text: the number of word ids (padding and unknown included)."""
        return len(self.prep["vocab"]) if self.prep and self.prep.get("kind") == "text" else None

    @property
    def target_dim(self) -> int:
        return self.num_classes if self.num_classes else (1 if self.train.y.dim() == 1 else self.train.y.shape[1])

    def describe(self) -> dict:
        """What summary.json records about the data."""
        return {
            "name": self.name,
            "kind": self.kind,
            "in_shape": list(self.in_shape),
            "num_classes": self.num_classes,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "normalization": {"x_mean": self.x_mean, "x_std": self.x_std, "y_mean": self.y_mean, "y_std": self.y_std},
            "pixel_range": list(self.pixel_range) if self.pixel_range else None,
            **({"note": self.note} if self.note else {}),
        }


def data_kind(entry, params: dict) -> str:
    """The kind of inputs a dataset gives (image, table, sequence, tokens); a user's file decides
    it from what it holds (data=arrays: the array's shape)."""
    kind = entry.meta["kind"]
    return kind(params) if callable(kind) else kind


def data_task(entry, params: dict, requested: str | None = None) -> str:
    """The task a dataset's targets call for; a user's file decides it from its target (strings or
    few integers: classification, reals: regression), and `task=` may choose among `meta["tasks"]`."""
    if requested is not None and requested in entry.meta.get("tasks", ()):
        return requested
    task = entry.meta["task"]
    return task(params) if callable(task) else task


def quantile_bins(y: np.ndarray, bins: int = 10) -> np.ndarray:
    """Bin real-valued targets by quantile, so regression splits can be stratified too."""
    y = y.reshape(len(y), -1)[:, 0]
    return np.digitize(y, np.quantile(y, np.linspace(0, 1, bins + 1)[1:-1]))


def stratified_split(
    x: np.ndarray,
    y: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    by: Literal["class", "quantile"],
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Seeded train/val/test split, stratified by class, or by target decile for regression.

    Stratifying small regression sets keeps their test targets representative: on diabetes
    the spread of test R2 across split seeds halves.
    """
    strata = quantile_bins if by == "quantile" else (lambda t: t)
    from sklearn.model_selection import train_test_split  # when data is built (see tabular.py)

    groups = len(np.unique(strata(y)))  # a stratified split needs one example of each in every split
    n = len(y)
    n_test = math.ceil(test_fraction * n)  # scikit-learn's rounding
    n_val = math.ceil(val_fraction * (n - n_test)) if val_fraction > 0 else groups
    n_train = n - n_test - (n_val if val_fraction > 0 else 0)
    what = "classes" if by == "class" else "target deciles"
    for key, value, size, of in (("data.test_fraction", test_fraction, n_test, n), ("data.val_fraction", val_fraction, n_val, n - n_test)):
        if size < groups:
            raise UserError(f"{key}={value:g} gives {size} of {of} examples to that split, fewer than its {groups} {what}; allowed: at least {groups / of:.3g}")
    if n_train < groups:
        raise UserError(f"data.val_fraction={val_fraction:g} and data.test_fraction={test_fraction:g} leave {n_train} of {n} examples to train on, fewer than the {groups} {what}; allowed: smaller fractions")

    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=strata(y))
    if val_fraction > 0:
        x_train, x_val, y_train, y_val = train_test_split(
            x_rest, y_rest, test_size=val_fraction, random_state=seed, stratify=strata(y_rest)
        )
    else:
        x_train, y_train, x_val, y_val = x_rest, y_rest, x_rest[:0], y_rest[:0]
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def standardize(train: np.ndarray, *others: np.ndarray, per_feature: bool) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Scale every array by the train mean and std (per feature, or one scalar for images)."""
    axis = 0 if per_feature else None
    mean = train.mean(axis=axis, dtype=np.float64)
    std = train.std(axis=axis, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)
    scaled = [((a - mean) / std).astype(np.float32) for a in (train, *others)]
    return scaled, np.atleast_1d(mean).tolist(), np.atleast_1d(std).tolist()


def classification_bundle(
    name: str,
    kind: Literal["image", "table"],
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    class_names: list[str] | None = None,
    note: str = "",
) -> DataBundle:
    """Split, normalise on train and wrap a labelled dataset (images keep their (C, H, W) shape)."""
    (xtr, ytr), (xva, yva), (xte, yte) = stratified_split(x, y, val_fraction, test_fraction, split_seed, by="class")
    (xtr, xva, xte), mean, std = standardize(xtr, xva, xte, per_feature=kind == "table")
    num_classes = int(y.max()) + 1
    as_split = lambda a, b: Split(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(b.astype(np.int64)))  # noqa: E731
    return DataBundle(
        name=name,
        kind=kind,
        task="classification",
        train=as_split(xtr, ytr),
        val=as_split(xva, yva),
        test=as_split(xte, yte),
        num_classes=num_classes,
        class_names=class_names or [str(i) for i in range(num_classes)],
        x_mean=mean,
        x_std=std,
        pixel_range=(float(x.min()), float(x.max())) if kind == "image" else None,
        note=note,
    )


def fold_split(data: DataBundle, k: int, fold: int, seed: int) -> DataBundle:
    """`data` with fold `fold` of a k-fold split of its training and validation examples taken
    together (scikit-learn's StratifiedKFold, shuffled with `seed`; stratified by class, or by
    target decile for regression) as the validation split and the other k-1 folds as the training
    split. The test split keeps its examples. Inputs (and regression targets) are standardised
    again on the new training split, as the data builders do on theirs."""
    import dataclasses
    import warnings

    from sklearn.model_selection import StratifiedKFold

    if data.task == "forecasting":
        raise UserError(f"cv.k={k}: k-fold cross-validation mixes a time series' future into its past (data={data.name}); allowed: 0")
    per_feature = data.kind == "table"
    x_mean, x_std = torch.tensor(data.x_mean, dtype=torch.float64), torch.tensor(data.x_std, dtype=torch.float64)
    raw_x = lambda x: (x.double() * x_std + x_mean).numpy()  # noqa: E731  (the builder's scaling undone)
    pool_x = np.concatenate([raw_x(data.train.x), raw_x(data.val.x)])
    pool_y = torch.cat([data.train.y, data.val.y]).numpy()
    test_x, test_y = raw_x(data.test.x), data.test.y.numpy()
    regression = data.y_mean is not None
    if regression:
        y_mean, y_std = np.asarray(data.y_mean), np.asarray(data.y_std)
        pool_y, test_y = pool_y * y_std + y_mean, test_y * y_std + y_mean
    strata = quantile_bins(pool_y) if regression else pool_y
    smallest = int(np.unique(strata, return_counts=True)[1].min())
    if smallest < k:
        what = "target decile" if regression else "class"
        raise UserError(f"cv.k={k}: the smallest {what} has {smallest} examples in the training and validation splits, too few for {k} folds; allowed: 2 to {smallest}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # checked above
        train_idx, val_idx = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(strata)), strata))[fold]
    (xtr, xva, xte), mean, std = standardize(pool_x[train_idx], pool_x[val_idx], test_x, per_feature=per_feature)
    ys = (pool_y[train_idx], pool_y[val_idx], test_y)
    if regression:
        (ytr, yva, yte), new_y_mean, new_y_std = standardize(*[y.astype(np.float32) for y in ys], per_feature=True)
        ys = (ytr, yva, yte)
    as_split = lambda a, b: Split(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)).to(data.train.y.dtype))  # noqa: E731
    return dataclasses.replace(
        data,
        train=as_split(xtr, ys[0]), val=as_split(xva, ys[1]), test=as_split(xte, ys[2]), x_mean=mean, x_std=std,
        **({"y_mean": new_y_mean, "y_std": new_y_std} if regression else {}),
        note=(data.note + " " if data.note else "") + f"cv fold {fold} of {k}: {len(val_idx)} validation examples, {len(train_idx)} training",
    )
