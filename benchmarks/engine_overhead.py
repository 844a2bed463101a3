"""Engine overhead: dltrain's fit vs a minimal hand-written loop over in-memory tensors.

Both train the same MLP (dltrain's default, built from the registry) on the same digits split
with Adam, batch 32, for the same number of epochs, validating once per epoch, in one process,
interleaved round by round. Prints the median time of each and their ratio (target <= 1.10).

    python benchmarks/engine_overhead.py [--epochs 20] [--rounds 5] [--check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
from rich.console import Console
from torch import nn

from dltrain.compose import compose_checked
from dltrain.data import DATASETS
from dltrain.models import MODELS
from dltrain.train import train

OVERRIDES = ["model=mlp", "optim=adam", "sched=none", "data.batch_size=32", "trainer.progress=lines"]


def hand_written(epochs: int, seed: int) -> float:
    """The loop a person writes by hand: shuffle, slice, forward, backward, step; validate."""
    torch.manual_seed(seed)
    data = DATASETS.build({"name": "digits"})
    x, y, xv, yv = data.train.x, data.train.y, data.val.x, data.val.y
    model = MODELS.build({"name": "mlp"}, in_shape=data.in_shape, out_features=data.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            out = model(xv)
            val_loss, val_acc = loss_fn(out, yv).item(), (out.argmax(1) == yv).float().mean().item()
    assert val_acc > 0.9, val_loss
    return time.perf_counter() - start


def with_dltrain(epochs: int, seed: int) -> float:
    cfg = compose_checked([*OVERRIDES, f"trainer.max_epochs={epochs}", f"seed={seed}"])
    with tempfile.TemporaryDirectory() as run_dir:
        summary = train(cfg, run_dir, Console(quiet=True))
    assert summary["final"]["val_accuracy"] > 0.9, summary["final"]
    return summary["train_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 if the ratio exceeds 1.10")
    args = parser.parse_args()
    hand_written(2, 0), with_dltrain(2, 0)  # warm-up: imports, allocator, kernels
    base, ours = [], []
    for r in range(args.rounds):
        base.append(hand_written(args.epochs, r))
        ours.append(with_dltrain(args.epochs, r))
    b, o = statistics.median(base), statistics.median(ours)
    ratio = o / b
    print(f"threads={torch.get_num_threads()} epochs={args.epochs} rounds={args.rounds} torch={torch.__version__}")
    print(f"hand-written loop: median {b:.3f} s  ({' '.join(f'{t:.3f}' for t in base)})")
    print(f"dltrain fit:       median {o:.3f} s  ({' '.join(f'{t:.3f}' for t in ours)})")
    print(f"ratio dltrain / hand-written: {ratio:.3f}  (target <= 1.10)")
    return 1 if args.check and ratio > 1.10 else 0


if __name__ == "__main__":
    sys.exit(main())
