"""What the default checkpoints cost a default run: `dltrain` as it comes (trainer.checkpoint.
every_n_minutes=5, plus one after the last epoch, written in the loop) against the same run with
checkpoints off (every_n_minutes=0), interleaved round by round in one process. Target <= 1.02.

Also the periodic case: a checkpoint every 50 optimizer steps (the writer process) against none,
at 1 thread. Target <= 1.05. Times are the runs' train_seconds (checkpoints taken inside fit
included), medians of the rounds.

    python benchmarks/checkpoint_cost.py [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import torch
from rich.console import Console

from dltrain.composition import compose_checked
from dltrain.training import train


def seconds(*overrides: str) -> float:
    cfg = compose_checked(["trainer.progress=none", *overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        return train(cfg, run_dir, Console(quiet=True))["train_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check", action="store_true", help="exit 1 if a ratio misses its target")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    off = ["trainer.checkpoint.every_n_minutes=0"]
    periodic = ["trainer.checkpoint.every_n_steps=50", "sched=none", "data.batch_size=32", "trainer.max_epochs=20"]
    none = ["sched=none", "data.batch_size=32", "trainer.max_epochs=20", *off]
    seconds(), seconds(*off)  # warm-up: imports, the data cache, kernels
    cases = {"default": [], "off": [], "every 50 steps": [], "none": []}
    for _ in range(args.rounds):
        cases["default"].append(seconds())
        cases["off"].append(seconds(*off))
        cases["every 50 steps"].append(seconds(*periodic))
        cases["none"].append(seconds(*none))
    m = {k: statistics.median(v) for k, v in cases.items()}
    print(f"threads={torch.get_num_threads()} rounds={args.rounds} torch={torch.__version__}")
    for k, v in cases.items():
        print(f"{k:>15}: median {m[k]:.3f} s  ({' '.join(f'{t:.3f}' for t in v)})")
    default_ratio, periodic_ratio = m["default"] / m["off"], m["every 50 steps"] / m["none"]
    print(f"default run, checkpoints as they come / off: {default_ratio:.3f}  (target <= 1.02)")
    print(f"a checkpoint every 50 steps / none: {periodic_ratio:.3f}  (target <= 1.05)")
    return 1 if args.check and (default_ratio > 1.02 or periodic_ratio > 1.05) else 0


if __name__ == "__main__":
    sys.exit(main())
