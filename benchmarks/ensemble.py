"""What an ensemble costs: 5 MLP members trained in one run (ensemble.size=5) against one member
alone, both ways the members can run: vectorised (torch.func vmap over their stacked parameters,
the default on a GPU) and one after another (the default on a CPU, and for batch-norm models), on
digits, interleaved round by round in one process. Target: 5 members <= 2.5x one member (an
accelerator's target: on a CPU the members' arithmetic alone is 5x). Times are the runs'
train_seconds (validation included), medians of the rounds.

    python benchmarks/ensemble.py [--rounds 7] [--threads 1] [--size 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

import torch
from rich.console import Console

from dltrain.composition import compose_checked
from dltrain.models import ensemble
from dltrain.training import train

TARGET = 2.5
RUN = ["model=mlp", "model.batchnorm=false", "trainer.max_epochs=10", "trainer.checkpoint.every_n_minutes=0"]


def seconds(*overrides: str, vectorize: bool | None = None) -> float:
    cfg = compose_checked(["trainer.progress=none", *RUN, *overrides])
    keep = ensemble.use_vmap
    if vectorize is not None:
        ensemble.use_vmap = lambda member, device: vectorize
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            summary = train(cfg, run_dir, Console(quiet=True))
    finally:
        ensemble.use_vmap = keep
    if "ensemble" in summary and vectorize is not None:
        assert summary["ensemble"]["vectorized"] == vectorize
    return summary["train_seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check", action="store_true", help="exit 1 if the ratio misses its target")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = f"ensemble.size={args.size}"
    threads = f"trainer.threads={args.threads} trainer.device={args.device}".split()
    seconds(*threads), seconds(*threads, size)  # warm-up: imports, the data cache, kernels
    cases: dict[str, list[float]] = {"one member": [], f"{args.size} vectorised": [], f"{args.size} one by one": []}
    for _ in range(args.rounds):
        cases["one member"].append(seconds(*threads))
        cases[f"{args.size} vectorised"].append(seconds(*threads, size, vectorize=True))
        cases[f"{args.size} one by one"].append(seconds(*threads, size, vectorize=False))
    m = {k: statistics.median(v) for k, v in cases.items()}
    print(f"device={args.device} threads={torch.get_num_threads()} rounds={args.rounds} torch={torch.__version__}")
    for k, v in cases.items():
        print(f"{k:>16}: median {m[k]:.3f} s  ({' '.join(f'{t:.3f}' for t in v)})")
    vec, loop = m[f"{args.size} vectorised"] / m["one member"], m[f"{args.size} one by one"] / m["one member"]
    print(f"{args.size} vectorised members / one member: {vec:.2f}")
    print(f"{args.size} members one by one / one member: {loop:.2f}")
    best = min(vec, loop)
    print(f"{args.size} members, the faster way / one member: {best:.2f}  (target <= {TARGET}; {'met' if best <= TARGET else 'missed'})")
    return 1 if args.check and best > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
