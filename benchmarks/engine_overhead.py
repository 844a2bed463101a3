"""Engine overhead: dltrain's fit vs a minimal hand-written loop over in-memory tensors.

Both train the same MLP (dltrain's default, built from the registry) on the same digits split
with Adam, batch 32, for the same number of epochs, validating once per epoch, in one process,
interleaved round by round. Prints the median time of each and their ratio (target <= 1.10).

With --checkpoint-every-n-steps N it also times dltrain writing a full checkpoint every N
optimizer steps (trainer.checkpoint.writer, default process) and prints its ratio to dltrain
without checkpoints (target <= 1.05 for N=50: 760 steps of about 1 ms, so 15 checkpoints of
1.4 MB, every file fsynced, in under a second of training), plus the save time and size.

    python benchmarks/engine_overhead.py [--epochs 20] [--rounds 5] [--threads T] [--check]
                                         [--checkpoint-every-n-steps 50 [--writer process]]
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

from dltrain.composition import compose_checked
from dltrain.data import DATASETS
from dltrain.models import MODELS
from dltrain.training import train

# checkpoints off: the hand-written loop saves nothing (benchmarks/checkpoint_cost.py measures what they cost)
OVERRIDES = ["model=mlp", "optim=adam", "sched=none", "data.batch_size=32", "trainer.progress=lines", "trainer.checkpoint.every_n_minutes=0"]


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


def with_dltrain(epochs: int, seed: int, *extra: str) -> float:
    cfg = compose_checked([*OVERRIDES, f"trainer.max_epochs={epochs}", f"seed={seed}", *extra])
    with tempfile.TemporaryDirectory() as run_dir:
        summary = train(cfg, run_dir, Console(quiet=True))
    assert summary["final"]["val_accuracy"] > 0.9, summary["final"]
    return summary["train_seconds"]


def save_cost(writer: str) -> tuple[float, int]:
    """(seconds, bytes) of one checkpoint of the default model written start to commit, waited for."""
    from pathlib import Path

    from dltrain.engine.checkpoint import LoopState, snapshot
    from dltrain.engine.writer import make_writer

    model = MODELS.build({"name": "mlp"}, in_shape=(64,), out_features=10)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(32, 64)).sum().backward()
    opt.step()
    from dltrain.engine.loop import Phase
    from dltrain.optim import Schedule

    phases = [Phase("main", opt, Schedule(None, "step"), list(model.parameters()))]
    loop = LoopState(best_state={k: v.clone() for k, v in model.state_dict().items()}, order=torch.randperm(1203))
    with tempfile.TemporaryDirectory() as tmp:
        w = make_writer(writer, Path(tmp), "model: mlp\n", 2, state_bytes=1 << 20)
        times = []
        for step in range(1, 12):
            t = time.perf_counter()
            w.submit(f"step-{step:08d}", snapshot(loop, model.state_dict(), phases, None, "0"))
            w.wait()
            times.append(time.perf_counter() - t)
        w.close()
        size = sum(f.stat().st_size for f in (Path(tmp) / f"step-{11:08d}").iterdir())
    return statistics.median(times[1:]), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--checkpoint-every-n-steps", type=int, default=0, help="also time dltrain checkpointing every N steps")
    parser.add_argument("--writer", default="process", choices=["process", "thread", "sync"], help="trainer.checkpoint.writer")
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio misses its target")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = [f"trainer.checkpoint.every_n_steps={args.checkpoint_every_n_steps}", f"trainer.checkpoint.writer={args.writer}"]
    hand_written(2, 0), with_dltrain(2, 0)  # warm-up: imports, allocator, kernels
    base, ours, saving = [], [], []
    for r in range(args.rounds):
        base.append(hand_written(args.epochs, r))
        ours.append(with_dltrain(args.epochs, r))
        if args.checkpoint_every_n_steps:
            saving.append(with_dltrain(args.epochs, r, *ckpt))
    b, o = statistics.median(base), statistics.median(ours)
    ratio = o / b
    print(f"threads={torch.get_num_threads()} epochs={args.epochs} rounds={args.rounds} torch={torch.__version__}")
    print(f"hand-written loop: median {b:.3f} s  ({_all(base)})")
    print(f"dltrain fit:       median {o:.3f} s  ({_all(ours)})")
    print(f"ratio dltrain / hand-written: {ratio:.3f}  (target <= 1.10)")
    failed = ratio > 1.10
    if saving:
        c = statistics.median(saving)
        seconds, size = save_cost(args.writer)
        print(f"dltrain fit, a checkpoint every {args.checkpoint_every_n_steps} steps (writer={args.writer}): median {c:.3f} s  ({_all(saving)})")
        print(f"ratio with / without checkpoints: {c / o:.3f}  (target <= 1.05)")
        print(f"one checkpoint of the default model: {size / 1e6:.2f} MB, {seconds * 1e3:.1f} ms from snapshot to committed (writer={args.writer})")
        failed = failed or c / o > 1.05
    return 1 if args.check and failed else 0


def _all(values: list[float]) -> str:
    return " ".join(f"{t:.3f}" for t in values)


if __name__ == "__main__":
    sys.exit(main())
