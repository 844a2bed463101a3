"""GPU throughput: dltrain's CNN training vs a hand-written loop with the same tricks; time to 98%.

Both train dltrain's CNN (built from the registry) on MNIST-shaped data at batch 512 with the
fast-path tricks: the whole dataset resident on the device (batches gathered by index),
channels_last and bf16 autocast on a GPU (fp32, contiguous on a CPU), the same Adam; optionally torch.compile with the
same mode. Each validates once per epoch. Throughput is training samples per second over the
epochs after the first (the first compiles and warms up), median over epochs; the two are
measured interleaved in one process and their ratio printed (target >= 0.95).

Then time-to-accuracy: dltrain trains the CNN (random shifts of up to 2 pixels, on the device)
until validation accuracy reaches 98%, and reports the training seconds to that epoch (compile
time excluded and reported beside) and the final test accuracy.

Data: the real MNIST IDX files in --data (default data/mnist-test in the repo, the git-ignored
copy a GPU machine gets, or ../shared/data/mnist-test); without them, random IDX files of the
same shape (throughput only).

    python benchmarks/gpu_throughput.py [--data DIR] [--epochs 6] [--compile] [--mode reduce-overhead]
                                        [--device cuda] [--target-epochs 30]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from dltrain.composition import compose_checked
from dltrain.models import MODELS
from dltrain.training import train

REPO = Path(__file__).resolve().parents[1]
DATA_DIRS = (REPO / "data" / "mnist-test", REPO.parent / "shared" / "data" / "mnist-test")
BATCH = 512


def find_data(given: str | None) -> Path | None:
    for d in [Path(given)] if given else DATA_DIRS:
        if any(d.glob("t10k-images*")):
            return d
    return None


def write_random_idx(folder: Path, n: int = 10_000) -> Path:
    """MNIST-shaped IDX files of random pixels and labels (the t10k names), for throughput only."""
    import struct

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
    (folder / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, n, 28, 28) + pixels.numpy().tobytes())
    (folder / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.numpy().tobytes())
    return folder


def load_split(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val) exactly as dltrain splits and normalises them."""
    from dltrain.data import DATASETS

    data = DATASETS.build({"name": "mnist", "root": str(root), "download": False}, key="data")
    return data.train.x, data.train.y, data.val.x, data.val.y


def overrides(root: Path, device: str, precision: str, epochs: int, compile_mode: str | None) -> list[str]:
    return [
        "model=cnn", "data=mnist", f"data.root={root}", "data.download=false", f"data.batch_size={BATCH}", "optim=adam", "sched=none", f"trainer.device={device}",
        f"trainer.precision={precision}", f"trainer.max_epochs={epochs}", "trainer.progress=none", "trainer.eval_batch_size=2048",
        *(["trainer.compile=true", f"trainer.compile_mode={compile_mode}"] if compile_mode else []),
    ]


def dltrain_throughput(root, device, precision, epochs, compile_mode) -> tuple[float, float]:
    """(training samples/s after the first epoch, compile seconds) of a dltrain run."""
    cfg = compose_checked(overrides(root, device, precision, epochs, compile_mode))
    with tempfile.TemporaryDirectory() as run_dir:
        summary = train(cfg, run_dir, Console(quiet=True))
        rows = list(csv.DictReader((Path(run_dir) / "metrics.csv").open()))
    per_epoch = [float(r["seconds"]) for r in rows[1:]]
    return summary["dataset"]["sizes"]["train"] / statistics.median(per_epoch), summary["compile_seconds"]


def hand_written(x, y, xv, yv, device: torch.device, precision: str, epochs: int, compile_mode: str | None) -> float:
    """The fast loop written by hand: resident data, index batches, channels_last, autocast, compile."""
    torch.manual_seed(0)
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # dltrain's rule
    model = MODELS.build({"name": "cnn"}, in_shape=tuple(x.shape[1:]), out_features=10).to(device, memory_format=fmt)
    net = torch.compile(model, mode=None if compile_mode in (None, "default") else compile_mode) if compile_mode else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x, y = x.to(device).contiguous(memory_format=fmt), y.to(device)
    xv, yv = xv.to(device).contiguous(memory_format=fmt), yv.to(device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(net(x[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for i in range(0, len(xv), 2048):
                correct += (net(xv[i : i + 2048]).argmax(1) == yv[i : i + 2048]).sum()
        float(correct)  # one host sync per epoch, like dltrain's
        times.append(time.perf_counter() - t0)
    return len(x) / statistics.median(times[1:])


def time_to_accuracy(root: Path, device: str, precision: str, max_epochs: int, target: float = 0.98) -> dict:
    cfg = compose_checked([*overrides(root, device, precision, max_epochs, None), "sched=cosine", "optim.lr=0.003", "data.shift=2", "model.dropout=0.2"])
    with tempfile.TemporaryDirectory() as run_dir:
        summary = train(cfg, run_dir, Console(quiet=True))
        rows = list(csv.DictReader((Path(run_dir) / "metrics.csv").open()))
    seconds, reached = 0.0, None
    for r in rows:
        seconds += float(r["seconds"])
        if float(r["val_accuracy"]) >= target:
            reached = int(r["epoch"])
            break
    return {"epoch": reached, "seconds": seconds if reached else None, "test_accuracy": summary["test"]["accuracy"], "compile_seconds": summary["compile_seconds"], "epochs": len(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="folder with the MNIST IDX files (t10k-images-idx3-ubyte[.gz], ...)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=6, help="epochs per throughput run (the first is warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    ap.add_argument("--compile", action="store_true", help="torch.compile both (compile time excluded)")
    ap.add_argument("--mode", default="default", help="torch.compile mode (reduce-overhead: CUDA graphs)")
    ap.add_argument("--target-epochs", type=int, default=30, help="epoch budget for time-to-98%% (0: skip)")
    args = ap.parse_args()

    device = torch.device(args.device)
    precision = "bf16" if device.type == "cuda" else "32"
    found = find_data(args.data)
    scratch = tempfile.TemporaryDirectory()
    root = found or write_random_idx(Path(scratch.name))
    mode = args.mode if args.compile else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; data: {found or 'random MNIST-shaped IDX files'}; batch {BATCH}; precision {precision}; compile: {mode or 'off'}")
    x, y, xv, yv = load_split(root)
    ours, theirs, compiles = [], [], []
    for _ in range(args.rounds):
        sps, compile_s = dltrain_throughput(root, args.device, precision, args.epochs, mode)
        ours.append(sps)
        compiles.append(compile_s)
        theirs.append(hand_written(x, y, xv, yv, device, precision, args.epochs, mode))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"dltrain:      {a:12,.0f} samples/s (compile {statistics.median(compiles):.1f} s, not counted)")
    print(f"hand-written: {b:12,.0f} samples/s")
    print(f"ratio dltrain / hand-written: {a / b:.3f} (target >= 0.95)")
    if args.target_epochs and found is not None:
        r = time_to_accuracy(root, args.device, precision, args.target_epochs)
        if r["epoch"]:
            print(f"time to 98% val accuracy: {r['seconds']:.1f} s of training (epoch {r['epoch']}; compile {r['compile_seconds']:.1f} s beside); test accuracy after {r['epochs']} epochs: {r['test_accuracy']:.4f}")
        else:
            print(f"98% val accuracy not reached in {r['epochs']} epochs (test accuracy {r['test_accuracy']:.4f})")
    elif args.target_epochs:
        print("time to 98%: needs the MNIST files (--data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
