"""Image grids as PNG (via Pillow, fast enough to write every epoch) and a terminal preview."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def grid(images: torch.Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) intensities in [0, 1] -> one (rows*H, nrow*W[, 3]) uint8 array."""
    x = images.detach().float().clamp(0, 1).cpu().numpy()
    n, c, h, w = x.shape
    rows = -(-n // nrow)
    out = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = x[i]
    out = (out * 255).round().astype(np.uint8)
    return out[0] if c == 1 else out[:3].transpose(1, 2, 0)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, scale: int = 0, label: str = "") -> Path:
    """Write a grid PNG; small images are enlarged (nearest neighbour) to about 40 px per tile;
    `label` (e.g. "samples, epoch 3") is written in a band above the grid."""
    from PIL import Image, ImageDraw

    array = grid(images, nrow)
    scale = scale or max(1, 40 // images.shape[-1])
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if label:
        band = 16
        labelled = Image.new(img.mode, (img.width, img.height + band), 255 if img.mode == "L" else (255, 255, 255))
        labelled.paste(img, (0, band))
        ImageDraw.Draw(labelled).text((4, 2), label, fill=0 if img.mode == "L" else (0, 0, 0))
        img = labelled
    path.parent.mkdir(parents=True, exist_ok=True)
    import io

    from dltrain.files import atomic_write

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(Path(path), buf.getvalue())  # never through a symbolic link
    return path


SHADES = " .:-=+*#%@"


def preview(images: torch.Tensor, columns: int = 78, width: int = 14) -> str:
    """As many grey images side by side as fit in `columns`, as text for a terminal."""
    x = images[:, 0].detach().float().clamp(0, 1).cpu()
    if x.shape[-1] > width:  # shrink large images to about `width` columns
        x = torch.nn.functional.adaptive_avg_pool2d(x[:, None], (width * x.shape[1] // x.shape[2], width))[:, 0]
    x = x[: max(1, (columns + 2) // (2 * x.shape[2] + 2))]
    rows = []
    for r in range(x.shape[1]):
        rows.append("  ".join("".join(SHADES[int(v * (len(SHADES) - 1))] * 2 for v in img[r]) for img in x))
    return "\n".join(rows)
