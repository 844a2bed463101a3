"""A lean loader for in-memory tensors: no per-sample Python, no worker processes.

Small datasets live on the training device (the GPU too); each epoch draws one permutation from
a seeded generator and yields index-gathered batches. Data too large for the device stays in
pinned host memory and each batch is copied asynchronously.
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
        self.order: torch.Tensor | None = None  # the current epoch's permutation (CPU)
        n_batches = len(x) // batch_size if drop_last and len(x) >= batch_size else -(-len(x) // batch_size)
        self.num_batches = min(n_batches, limit_batches) if limit_batches else n_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

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
            if self.shuffle:
                idx = order[i * bs : (i + 1) * bs]
                xb, yb = self.x[idx], self.y[idx]
            else:
                xb, yb = self.x[i * bs : (i + 1) * bs], self.y[i * bs : (i + 1) * bs]
            if not self.resident:
                xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
            yield xb, yb
