"""Sample quality without a download: a reference classifier dltrain trains itself.

FID needs an Inception net from the internet; offline, dltrain trains a small CNN on the same
dataset (cached by a hash of the training data) and measures generated images with it:

- ``frechet``: the Frechet distance between Gaussians fitted to the classifier's penultimate
  features of real images and of samples, ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^1/2);
  the same formula as FID, on a feature space fitted to this dataset;
- ``confidence``: the classifier's mean top-class probability on samples (clear digits score high);
- ``classes_covered`` and ``max_class_fraction``: how many classes appear among the samples'
  predicted labels and the largest class's share (mode coverage; collapse shows as a high share).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dltrain.data.base import DataBundle
from dltrain.models.cnn import ConvNet

EPOCHS, BATCH = 8, 64


def cache_dir() -> Path:
    from dltrain.data.cache import cache_root

    return cache_root() / "reference"


def _key(data: DataBundle) -> str:
    h = hashlib.sha256(f"{data.name}|{EPOCHS}|{BATCH}|v1".encode())
    h.update(data.train.x.numpy().tobytes())
    h.update(data.train.y.numpy().tobytes())
    return h.hexdigest()[:16]


def _build(data: DataBundle) -> ConvNet:
    return ConvNet(data.in_shape, data.num_classes, channels=16, layers=2, kernel_size=3, hidden=64, activation="relu", dropout=0.0, batchnorm=True)


def reference_classifier(data: DataBundle, device: torch.device) -> ConvNet:
    """A CNN trained on `data`'s training split (seeded), loaded from the cache when present."""
    from safetensors.torch import load_file, save

    from dltrain.files import atomic_write

    path = cache_dir() / f"{data.name}-{_key(data)}.safetensors"
    # Its own RNG stream: whether the cache is warm must not change the run being measured.
    # It may be first needed inside an evaluation, so gradients are switched back on here.
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(0)
        model = _build(data)
        if path.is_file():
            try:
                model.load_state_dict(load_file(path))
                return model.to(device).eval()
            except Exception:  # a damaged cache entry is retrained, not trusted
                path.unlink(missing_ok=True)
        _fit(model.to(device), data, device)
    atomic_write(path, save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))
    return model.eval()


def _fit(model: ConvNet, data: DataBundle, device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = data.train.x.to(device), data.train.y.to(device)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator).to(device)
        for i in range(0, len(x), BATCH):
            idx = order[i : i + BATCH]
            if len(idx) < 2:  # batch norm needs two examples
                continue
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@torch.inference_mode()
def features_and_probs(model: ConvNet, x: torch.Tensor, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (float64) and class probabilities of normalised images."""
    feats, probs = [], []
    for i in range(0, len(x), batch):
        h = model.head[:-1](model.features(x[i : i + batch]))
        feats.append(h.double().cpu())
        probs.append(model.head[-1](h).softmax(-1).cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (rows are samples)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # near-singular products are expected with few samples
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # regularise, as the reference FID code does
            eps = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


def sample_quality(model: ConvNet, real_features: np.ndarray, samples: torch.Tensor, num_classes: int) -> dict[str, float]:
    """frechet, confidence, classes_covered and max_class_fraction of normalised samples."""
    feats, probs = features_and_probs(model, samples)
    counts = np.bincount(probs.argmax(1), minlength=num_classes)
    return {
        "frechet": frechet_distance(real_features, feats),
        "confidence": float(probs.max(1).mean()),
        "classes_covered": int((counts > 0).sum()),
        "max_class_fraction": float(counts.max() / counts.sum()),
    }


def class_histogram(model: ConvNet, samples: torch.Tensor, num_classes: int) -> list[int]:
    _, probs = features_and_probs(model, samples)
    return np.bincount(probs.argmax(1), minlength=num_classes).tolist()
