"""Small files of each kind a user brings (data=table, data=arrays, data=image_folder), written
once per test process, and the data keys that point a config at them."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np

# which sample each source trains on in the registry-wide tests
SOURCES = ("table", "arrays", "image_folder", "series", "text")


@functools.cache
def folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="dltrain-own-data-"))


def iris_frame():
    """scikit-learn's iris as a user would have it: named columns, species as strings, an id column."""
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    frame["species"] = np.array(["setosa", "versicolor", "virginica"])[frame.pop("target").to_numpy()]
    frame.insert(0, "flower_id", [f"f{i:03d}" for i in range(len(frame))])
    return frame


@functools.cache
def iris_csv() -> Path:
    path = folder() / "iris.csv"
    iris_frame().to_csv(path, index=False)
    return path


@functools.cache
def digits_npz() -> Path:
    from sklearn.datasets import load_digits

    d = load_digits()
    path = folder() / "digits.npz"
    np.savez(path, x=d.images.astype(np.uint8) * 15, y=d.target)
    return path


@functools.cache
def sine_csv() -> Path:
    """data=sine's series as a user's file: a date per day, the series and a second, lagged one."""
    import pandas as pd

    from dltrain.data.sequence import sine_series

    values = sine_series(1200, noise=0.1, seed=0)
    path = folder() / "sine.csv"
    frame = pd.DataFrame({"day": pd.date_range("2020-01-01", periods=len(values), freq="D").strftime("%Y-%m-%d"), "value": values, "lagged": np.roll(values, 3)})
    frame.sample(frac=1.0, random_state=0).to_csv(path, index=False)  # shuffled rows: data.time puts them in order
    return path


POSITIVE = ["great", "wonderful", "loved", "superb", "enjoyable", "brilliant", "charming", "moving"]
NEGATIVE = ["awful", "boring", "hated", "dull", "terrible", "clumsy", "tedious", "weak"]
FILLER = ["the", "film", "plot", "acting", "was", "and", "a", "story", "cast", "really", "quite", "ending"]


@functools.cache
def reviews_csv() -> Path:
    """Short generated film reviews: a few sentiment words among filler, rated pos or neg."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for i in range(600):
        positive = i % 2 == 0
        words = list(rng.choice(FILLER, rng.integers(4, 12))) + list(rng.choice(POSITIVE if positive else NEGATIVE, rng.integers(1, 3)))
        rng.shuffle(words)
        rows.append({"review": " ".join(words).capitalize() + ".", "rating": "pos" if positive else "neg"})
    path = folder() / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_images(root: Path, images: np.ndarray, labels, names=None) -> Path:
    """uint8 images (N, H, W) or (N, H, W, 3) as PNGs under root/<label>/."""
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = root / str(names[label] if names else label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{i:05d}.png")
    return root


@functools.cache
def digits_folder() -> Path:
    """scikit-learn's digits as a folder of 8x8 PNGs, one subfolder per class."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return write_images(folder() / "digits-png", (d.images * 15).astype(np.uint8), d.target)


def params(name: str) -> dict:
    """The data keys that point `name` at its sample file."""
    return {
        "table": lambda: {"path": str(iris_csv()), "target": "species"},
        "arrays": lambda: {"path": str(digits_npz())},
        "image_folder": lambda: {"root": str(digits_folder())},
        "series": lambda: {"path": str(sine_csv()), "time": "day"},
        "text": lambda: {"path": str(reviews_csv()), "text": "review", "target": "rating"},
    }[name]()


def overrides(name: str) -> list[str]:
    return [f"data.{k}={v}" for k, v in params(name).items()]
