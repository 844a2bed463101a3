"""MNIST and Fashion-MNIST from the official IDX files (gzipped or not), downloaded when missing.

With all four files in ``root`` the official split is used (60,000 train, val carved from it;
10,000 test). With only the two ``t10k`` files (offline machines), a seeded stratified split
of those 10,000 images serves as train/val/test, and the bundle's note says so.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from dltrain.data.base import DATASETS, DataBundle, Split, classification_bundle, standardize
from dltrain.errors import UserError
from dltrain.schema import Fraction, NonNegativeInt

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# Base URLs tried in order for each missing file; tests point these at a local server.
MIRRORS: dict[str, list[str]] = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DOWNLOAD_TIMEOUT_S = 20.0


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an MNIST-family IDX file (``.gz`` or raw) into a read-only uint8 array.

    Images (magic 2051) come back as (count, rows, cols), labels (magic 2049) as (count,).
    A file that is not such an IDX file, or whose size disagrees with its header, is a UserError.
    """
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except PermissionError:
        raise UserError(f"cannot read IDX file {path}: permission denied (data.root must be readable by this user)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # truncated gzip streams raise EOFError
        raise UserError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 8:
        raise UserError(f"{path} is not an IDX file: {len(data)} bytes, shorter than the header")
    magic, count = struct.unpack(">II", data[:8])
    if magic == IMAGES_MAGIC:
        if len(data) < 16:
            raise UserError(f"{path} is truncated: {len(data)} bytes, shorter than the 16-byte image header")
        rows, cols = struct.unpack(">II", data[8:16])
        header, shape = 16, (count, rows, cols)
    elif magic == LABELS_MAGIC:
        header, shape = 8, (count,)
    else:
        raise UserError(
            f"{path} is not an MNIST IDX file: magic number {magic}, expected {IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels)"
        )
    if count == 0:
        raise UserError(f"{path} holds no {'images' if magic == IMAGES_MAGIC else 'labels'} (its header says 0)")
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "corrupt (trailing bytes)"
        raise UserError(f"{path} is {what}: its header promises shape {shape} ({expected} bytes) but it holds {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def download_file(dataset: str, filename: str, root: str | Path) -> Path:
    """Fetch `filename` of `dataset` into `root` from the first mirror that answers.

    The bytes go to a temp file in `root`, are checked against the published md5, and only then
    renamed into place, so an interrupted or tampered download never leaves a file that looks
    complete. Raises UserError when no mirror delivers a file with the right checksum.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    expected = MD5[dataset][filename]
    failures = []
    for base in MIRRORS[dataset]:
        url = base + filename
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{filename}.", suffix=".part")
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() == expected:
                os.replace(tmp, root / filename)
                return root / filename
            failures.append(f"{url}: md5 checksum mismatch (got {digest.hexdigest()}, expected {expected})")
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts; cut-off bodies
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
        finally:
            Path(tmp).unlink(missing_ok=True)  # a no-op once the file has been moved into place
    raise UserError(f"could not download {filename}: " + "; ".join(failures))


def _find(root: Path, stems: tuple[str, ...]) -> list[Path] | None:
    """The files for `stems` in `root` (gzipped or raw), or None unless all are there."""
    found = []
    for stem in stems:
        candidates = [p for p in (root / f"{stem}.gz", root / stem) if p.is_file()]
        if not candidates:
            return None
        found.append(candidates[0])
    return found


def _load_images(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (N, 1, H, W) in [0, 1] and int64 labels, checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise UserError(f"{images_path} holds labels, not images (IDX magic {LABELS_MAGIC})")
    if labels.ndim != 1:
        raise UserError(f"{labels_path} holds images, not labels (IDX magic {IMAGES_MAGIC})")
    if len(images) != len(labels):
        raise UserError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if labels.max(initial=0) >= num_classes:
        raise UserError(f"{labels_path} has label {labels.max()}, expected 0..{num_classes - 1}")
    return (images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)


def _official_bundle(
    name: str,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    val_fraction: float,
    split_seed: int,
    class_names: list[str],
) -> DataBundle:
    """Like `classification_bundle`, but the test set is given: only val is carved from train."""
    from sklearn.model_selection import train_test_split  # when data is built (see tabular.py)

    xtr, xva, ytr, yva = train_test_split(*train, test_size=val_fraction, random_state=split_seed, stratify=train[1])
    (xtr, xva, xte), mean, std = standardize(xtr, xva, test[0], per_feature=False)
    as_split = lambda x, y: Split(torch.from_numpy(x), torch.from_numpy(y))  # noqa: E731
    return DataBundle(
        name=name,
        kind="image",
        task="classification",
        train=as_split(xtr, ytr),
        val=as_split(xva, yva),
        test=as_split(xte, test[1]),
        num_classes=len(class_names),
        class_names=class_names,
        x_mean=mean,
        x_std=std,
        pixel_range=(0.0, 1.0),
    )


def _fetch_missing(dataset: str, root: str, path: Path, download: bool) -> None:
    """Download the official files missing from `path`, or raise the one-line error saying what to put there."""
    if download:
        created = [p for p in [path, *path.parents] if not p.exists()]  # the folders a failed download must not leave behind
        try:
            for stem in TRAIN_FILES + TEST_FILES:
                if _find(path, (stem,)) is None:
                    download_file(dataset, f"{stem}.gz", path)
            return
        except (UserError, OSError) as e:  # OSError: root itself cannot be created
            reason = f"the download failed ({e})"
            for folder in created:  # deepest first; only if still empty
                try:
                    folder.rmdir()
                except OSError:
                    break
    else:
        reason = "download is off (data.download=false)"
    wanted = ", ".join(f"{stem}.gz" for stem in TRAIN_FILES + TEST_FILES)
    raise UserError(
        f"data.root={root!r} has no {TITLES[dataset]} files and {reason}; put {wanted} there (or at least the two t10k files)"
    )


def load_mnist_family(
    dataset: str, root: str, download: bool, val_fraction: float, test_fraction: float, split_seed: int, class_names: list[str]
) -> DataBundle:
    """Build the bundle for `dataset` from `root`, downloading only when no usable set is there."""
    path = Path(root).expanduser()
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"data.root={root!r} cannot be read by this user (permission denied)")
    if _find(path, TEST_FILES) is None:  # the t10k files alone are a usable set; only then stay offline
        _fetch_missing(dataset, root, path, download)
    train, test = _find(path, TRAIN_FILES), _find(path, TEST_FILES)
    x_test, y_test = _load_images(*test, len(class_names))
    if train is None:
        note = (
            f"only the official 10,000-image test set was found in {path}; train/val/test are a seeded stratified "
            f"split of it (test_fraction={test_fraction}, val_fraction={val_fraction} of the rest)"
        )
        return classification_bundle(
            dataset,
            "image",
            x_test,
            y_test,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            class_names=class_names,
            note=note,
        )
    train_set = _load_images(*train, len(class_names))
    return _official_bundle(
        dataset, train_set, (x_test, y_test), val_fraction=val_fraction, split_seed=split_seed, class_names=class_names
    )


@DATASETS.register("mnist", kind="image", task="classification")
def mnist(
    root: str = "~/.cache/dltrain/mnist",
    download: bool = True,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.2,
    split_seed: NonNegativeInt = 0,
) -> DataBundle:
    """MNIST handwritten digits: 28x28 grey images, 10 classes (IDX files in root, fetched if missing)."""
    return load_mnist_family("mnist", root, download, val_fraction, test_fraction, split_seed, [str(i) for i in range(10)])


@DATASETS.register("fashion_mnist", kind="image", task="classification")
def fashion_mnist(
    root: str = "~/.cache/dltrain/fashion_mnist",
    download: bool = True,
    val_fraction: Fraction = 0.1,
    test_fraction: Fraction = 0.2,
    split_seed: NonNegativeInt = 0,
) -> DataBundle:
    """Zalando's Fashion-MNIST: 28x28 grey clothing images, 10 classes (IDX files in root, fetched if missing)."""
    return load_mnist_family("fashion_mnist", root, download, val_fraction, test_fraction, split_seed, FASHION_CLASSES)
