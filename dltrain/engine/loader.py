"""A lean loader for in-memory tensors: no per-sample Python, no worker processes.

Small datasets live on the training device (the GPU too); each epoch draws one permutation from
a seeded generator and yields index-gathered batches. Data too large for the device stays in
pinned host memory and each batch is copied asynchronously.

`shift` and `augment` change training images on the device (`random_shift`, `augment_images`),
from torch's RNG there, whose state checkpoints keep, so a resumed run draws the same. Data-parallel ranks share the
permutation (the same seeded generator) and each takes its contiguous part of every global batch
(`shard=(rank, world)`); `weight(i)` is that part's share of the batch, which makes the ranks'
averaged gradients the gradient of the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Datasets up to this size are moved to the accelerator once; larger ones are streamed per batch.
RESIDENT_LIMIT_BYTES = 2 * 1024**3


class TensorLoader:
    """Iterate ``(x, y)`` batches of in-memory tensors, optionally shuffled and truncated."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        device: torch.device,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        limit_batches: int = 0,
        channels_last: bool = False,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        shift: int = 0,
        augment: tuple[str, ...] = (),
    ) -> None:
        nbytes = x.nbytes + y.nbytes
        self.resident = device.type == "cpu" or nbytes <= RESIDENT_LIMIT_BYTES
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.resident:
            x, y = x.to(device), y.to(device)
        elif device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        self.x, self.y, self.device = x, y, device
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator
        self.rank, self.world = shard
        self.shift, self.augment, self.channels_last = shift, tuple(augment), channels_last
        self.order: torch.Tensor | None = None  # the current epoch's permutation (CPU)
        n_batches = len(x) // batch_size if drop_last and len(x) >= batch_size else -(-len(x) // batch_size)
        self.num_batches = min(n_batches, limit_batches) if limit_batches else n_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def _part(self, i: int) -> tuple[int, int, int]:
        """Global batch i's size and this rank's [lo, hi) within it (sizes differ by at most one)."""
        size = min(self.batch_size, len(self.x) - i * self.batch_size)
        q, r = divmod(size, self.world)
        lo = self.rank * q + min(self.rank, r)
        return size, lo, lo + q + (self.rank < r)

    def weight(self, i: int) -> float:
        """This rank's share of global batch i times the world size (1.0 for equal shards)."""
        size, lo, hi = self._part(i)
        return (hi - lo) * self.world / size

    def batches(self, start: int = 0, order: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's batches from batch `start` on; `order` replays a saved permutation (a resume)
        instead of drawing a new one. The permutation drawn is kept in `self.order` for checkpoints."""
        n, bs = len(self.x), self.batch_size
        if self.shuffle:
            if order is None:
                order = torch.randperm(n, generator=self.generator)
            self.order = order
            if self.resident and self.device.type != "cpu":
                order = order.to(self.device, non_blocking=True)
        for i in range(start, self.num_batches):
            a, b = i * bs, (i + 1) * bs
            if self.world > 1:  # this rank's part of the global batch
                _, lo, hi = self._part(i)
                if hi == lo:  # a batch smaller than the world (evaluation only: training drops it)
                    continue
                a, b = a + lo, a + hi
            if self.shuffle:
                idx = order[a:b]
                xb, yb = self.x[idx], self.y[idx]
            else:
                xb, yb = self.x[a:b], self.y[a:b]
            if not self.resident:
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            if self.shift:
                xb = random_shift(xb, self.shift, self.channels_last)
            if self.augment:
                xb = augment_images(xb, self.augment, self.channels_last)
            yield xb, yb


def random_shift(x: torch.Tensor, pixels: int, channels_last: bool = False) -> torch.Tensor:
    """Translate each image of an (N, C, H, W) batch by its own random offset of up to `pixels`
    rows and columns (edges repeated), where the batch is (the GPU too), from torch's RNG there."""
    n, c, h, w = x.shape
    dev = x.device
    d = torch.randint(-pixels, pixels + 1, (2, n, 1), device=dev)
    rows = (torch.arange(h, device=dev) + d[0]).clamp_(0, h - 1)  # (N, H)
    cols = (torch.arange(w, device=dev) + d[1]).clamp_(0, w - 1)  # (N, W)
    out = x[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


AUGMENTATIONS = ("flip", "rotate", "crop", "noise")
MAX_DEGREES, MIN_SCALE, NOISE_STD = 15.0, 0.8, 0.1


def augment_images(x: torch.Tensor, names: tuple[str, ...], channels_last: bool = False) -> torch.Tensor:
    """Random changes to each image of an (N, C, H, W) batch, drawn per image where the batch is:
    `flip` mirrors half of them left to right; `rotate` turns by up to 15 degrees and `crop`
    zooms into a random 80-100% of the image (one affine resampling for both, edges repeated);
    `noise` adds Gaussian noise of std 0.1 (the inputs are standardised: a tenth of their spread)."""
    import math

    import torch.nn.functional as F

    n, dev = len(x), x.device
    if "flip" in names:
        x = torch.where(torch.rand(n, 1, 1, 1, device=dev) < 0.5, x.flip(-1), x)
    if "rotate" in names or "crop" in names:
        angle = (torch.rand(n, device=dev) * 2 - 1) * math.radians(MAX_DEGREES) if "rotate" in names else torch.zeros(n, device=dev)
        scale = MIN_SCALE + torch.rand(n, device=dev) * (1 - MIN_SCALE) if "crop" in names else torch.ones(n, device=dev)
        shift = (torch.rand(2, n, device=dev) * 2 - 1) * (1 - scale)  # the crop's centre, inside the image
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        theta = torch.stack([torch.stack([cos, -sin, shift[0]], 1), torch.stack([sin, cos, shift[1]], 1)], 1).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x.contiguous(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if "noise" in names:
        x = x + NOISE_STD * torch.randn_like(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class MemberLoader(TensorLoader):
    """An ensemble's training batches: each of `members` members sees the split in its own
    shuffled order every epoch (and with `bootstrap`, its own bootstrap sample: len(x) draws with
    replacement, fixed for the run). Member k's draws come from seeds taken from `generator` (one
    for the run, one per epoch) plus k, so they do not depend on how many members there are, and a
    resumed run (the generator and the epoch's `order` restored) draws the same. A batch is
    (members, B, ...) inputs and (members, B) targets; `order` is (members, len(x)) indices."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, members: int, bootstrap: bool = False, generator: torch.Generator | None = None, **kwargs) -> None:
        super().__init__(x, y, batch_size, shuffle=True, generator=generator, **kwargs)
        self.members = members
        seed = int(torch.randint(2**62, (1,), generator=generator))
        n = len(x)
        self.samples = torch.stack([torch.randint(n, (n,), generator=torch.Generator().manual_seed(seed + k)) if bootstrap else torch.arange(n) for k in range(members)])

    def batches(self, start: int = 0, order: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self.x), self.batch_size
        if order is None:
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            order = torch.stack([s[torch.randperm(n, generator=torch.Generator().manual_seed(seed + k))] for k, s in enumerate(self.samples)])
        self.order = order
        if self.resident and self.device.type != "cpu":
            order = order.to(self.device, non_blocking=True)
        for i in range(start, self.num_batches):
            idx = order[:, i * bs : (i + 1) * bs]
            xb, yb = self.x[idx], self.y[idx]
            if not self.resident:
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            if self.shift:
                xb = random_shift(xb.flatten(0, 1), self.shift).reshape(xb.shape)
            if self.augment:
                xb = augment_images(xb.flatten(0, 1), self.augment).reshape(xb.shape)
            yield xb, yb
