"""The analysis verbs' PNG plots (matplotlib, headless): grids, heatmaps, curves, scatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)
    return path


def _show_image(ax, image: np.ndarray) -> None:
    """One (C, H, W) image with intensities in [0, 1]: grey for one channel, RGB for three."""
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.moveaxis(image[:3], 0, -1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(images: np.ndarray, titles: Sequence[str], path: Path, ncol: int = 8, suptitle: str = "") -> Path:
    """(N, C, H, W) images in [0, 1] with a title each, as one PNG."""
    plt = _plt()
    n = max(len(images), 1)
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.5 * ncol, 1.7 * nrow), dpi=110, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            _show_image(ax, images[i])
            ax.set_title(titles[i], fontsize=7)
        else:
            ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path)


def attribution_grid(images: np.ndarray, heatmaps: np.ndarray, titles: Sequence[str], path: Path, suptitle: str, ncol: int = 8) -> Path:
    """Each image above its attribution heatmap (red positive, blue negative, shared scale per image)."""
    plt = _plt()
    n = len(images)
    ncol = min(ncol, n)
    blocks = -(-n // ncol)
    fig, axes = plt.subplots(2 * blocks, ncol, figsize=(1.5 * ncol, 3.2 * blocks), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, ncol)
        top, bottom = axes[2 * r, c], axes[2 * r + 1, c]
        top.axis("on")
        _show_image(top, images[i])
        top.set_title(titles[i], fontsize=7)
        limit = float(np.abs(heatmaps[i]).max()) or 1.0
        bottom.imshow(heatmaps[i], cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
    fig.suptitle(suptitle, fontsize=9)
    return _save(fig, path)


def attribution_rows(heatmaps: np.ndarray, labels: Sequence[str], path: Path, suptitle: str, xlabel: str) -> Path:
    """Attributions of table/sequence inputs: one row per example (flattened features)."""
    plt = _plt()
    values = heatmaps.reshape(len(heatmaps), -1)
    limit = float(np.abs(values).max()) or 1.0
    features = values.shape[1]
    fig, ax = plt.subplots(figsize=(min(7 + 0.2 * features, 18), 1.2 + 0.3 * len(values)), dpi=110)
    im = ax.imshow(values, cmap="bwr", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if features <= 40:
        ax.set_xticks(range(features))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(xlabel)
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title(suptitle, fontsize=9)
    return _save(fig, path)


def confusion_matrix_png(cm: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> Path:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.45 * k, 1.6 + 0.45 * k), dpi=110)
    ConfusionMatrixDisplay(cm, display_labels=class_names).plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45 if k > 10 else "horizontal")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def scatter_png(true: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
    """Predicted against true values with the identity line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=110)
    ax.scatter(true.ravel(), pred.ravel(), s=10, alpha=0.6)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="pred = true")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def curves_png(x: Sequence[float], series: Mapping[str, Sequence[float]], path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """One or more lines over a shared x axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for label, ys in series.items():
        ax.plot(x, ys, marker="o" if len(x) <= 30 else None, ms=3, lw=1.2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
