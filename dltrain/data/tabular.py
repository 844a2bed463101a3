"""scikit-learn's bundled datasets: offline, small, and classic teaching sets.

scikit-learn is imported when a dataset is built, not when the registry is read: checking a
config (every `dltrain` command, a sweep's parent process) does not pay for its import. A built
split is cached on disk (data/cache.py), so later runs do not import it at all.
"""

from __future__ import annotations

import numpy as np
import torch

from dltrain.data.base import DATASETS, DataBundle, Split, classification_bundle, standardize, stratified_split
from dltrain.data.cache import cached
from dltrain.schema import Fraction, NonNegativeInt

ValFraction = TestFraction = Fraction


@DATASETS.register("digits", kind="image", task="classification")
@cached("scikit-learn")
def digits(val_fraction: ValFraction = 0.1, test_fraction: TestFraction = 0.2, split_seed: NonNegativeInt = 0) -> DataBundle:
    """8x8 handwritten digits (1,797 images, 10 classes), bundled with scikit-learn."""
    raw = _load("load_digits")
    x = raw.images.astype(np.float32)[:, None]  # (N, 1, 8, 8)
    return classification_bundle(
        "digits", "image", x, raw.target, val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed
    )


def _load(loader: str):
    from sklearn import datasets

    return getattr(datasets, loader)()


def _table(name: str, loader: str, val_fraction: float, test_fraction: float, split_seed: int) -> DataBundle:
    raw = _load(loader)
    return classification_bundle(
        name,
        "table",
        raw.data.astype(np.float32),
        raw.target,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        class_names=[str(c) for c in raw.target_names],
    )


@DATASETS.register("iris", kind="table", task="classification")
@cached("scikit-learn")
def iris(val_fraction: ValFraction = 0.1, test_fraction: TestFraction = 0.2, split_seed: NonNegativeInt = 0) -> DataBundle:
    """Fisher's iris: 150 flowers, 4 features, 3 species."""
    return _table("iris", "load_iris", val_fraction, test_fraction, split_seed)


@DATASETS.register("wine", kind="table", task="classification")
@cached("scikit-learn")
def wine(val_fraction: ValFraction = 0.1, test_fraction: TestFraction = 0.2, split_seed: NonNegativeInt = 0) -> DataBundle:
    """UCI wine recognition: 178 wines, 13 chemical features, 3 cultivars."""
    return _table("wine", "load_wine", val_fraction, test_fraction, split_seed)


@DATASETS.register("breast_cancer", kind="table", task="classification")
@cached("scikit-learn")
def breast_cancer(val_fraction: ValFraction = 0.1, test_fraction: TestFraction = 0.2, split_seed: NonNegativeInt = 0) -> DataBundle:
    """Wisconsin diagnostic breast cancer: 569 tumours, 30 features, malignant vs benign."""
    return _table("breast_cancer", "load_breast_cancer", val_fraction, test_fraction, split_seed)


@DATASETS.register("diabetes", kind="table", task="regression")
@cached("scikit-learn")
def diabetes(val_fraction: ValFraction = 0.1, test_fraction: TestFraction = 0.2, split_seed: NonNegativeInt = 0) -> DataBundle:
    """Diabetes progression: 442 patients, 10 features, a disease-progression score (regression)."""
    raw = _load("load_diabetes")
    (xtr, ytr), (xva, yva), (xte, yte) = stratified_split(
        raw.data.astype(np.float32), raw.target.astype(np.float32)[:, None], val_fraction, test_fraction, split_seed, by="quantile"
    )
    (xtr, xva, xte), x_mean, x_std = standardize(xtr, xva, xte, per_feature=True)
    (ytr, yva, yte), y_mean, y_std = standardize(ytr, yva, yte, per_feature=True)
    split = lambda a, b: Split(torch.from_numpy(a), torch.from_numpy(b))  # noqa: E731
    return DataBundle(
        name="diabetes",
        kind="table",
        task="regression",
        train=split(xtr, ytr),
        val=split(xva, yva),
        test=split(xte, yte),
        x_mean=x_mean,
        x_std=x_std,
        y_mean=y_mean,
        y_std=y_std,
    )
