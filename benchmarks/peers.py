"""dltrain beside its peers: the same MLP on the same digits split, by hand, with dltrain, with
Lightning and with Keras 3 (torch backend), per step and end to end.

    python benchmarks/peers.py [--epochs 20] [--rounds 3] [--threads 1]
    pip install -e ".[bench]"     # Lightning and Keras, for their rows (nothing is installed here)

Per step: each trains dltrain's default MLP (64-256-256-10, batch norm, ReLU) with Adam (lr 1e-3),
batch 32, shuffled, validating once per epoch, for --epochs epochs in this process at --threads
torch threads; the rounds are interleaved and the medians compared with the hand-written loop.
Whole process: each trains 1 epoch in a fresh process (`python -c` for the hand-written loop,
Lightning and Keras; the `dltrain trainer.max_epochs=1` command), wall time from start to exit,
median of --rounds, also interleaved. A peer that is not installed is left out, and said so.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = {"lightning": "lightning", "keras": "keras"}  # name -> the module it needs


def digits():
    """dltrain's digits split (the same normalised tensors for everyone)."""
    from dltrain.data import DATASETS

    data = DATASETS.build({"name": "digits"})
    flat = lambda t: t.reshape(len(t), -1)  # noqa: E731  (8x8 images; dltrain's MLP flattens them too)
    return flat(data.train.x), data.train.y, flat(data.val.x), data.val.y


def torch_mlp():
    from torch import nn

    return nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 10))


def hand_written(epochs: int, seed: int = 0) -> float:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x, y, xv, yv = digits()
    model = torch_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            if len(idx) < 2:
                continue
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            (model(xv).argmax(1) == yv).float().mean().item()
    return time.perf_counter() - start


def with_dltrain(epochs: int, seed: int = 0) -> float:
    from rich.console import Console

    from dltrain.composition import compose_checked
    from dltrain.training import train

    cfg = compose_checked(["sched=none", f"trainer.max_epochs={epochs}", f"seed={seed}", "trainer.progress=none", "trainer.checkpoint.every_n_minutes=0", f"trainer.threads={torch_threads()}"])
    with tempfile.TemporaryDirectory() as run_dir:
        return train(cfg, run_dir, Console(quiet=True))["train_seconds"]


def with_lightning(epochs: int, seed: int = 0) -> float:
    import logging
    import warnings

    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    warnings.filterwarnings("ignore")  # its deprecation notes, per step
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(seed)
    x, y, xv, yv = digits()

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.loss = torch_mlp(), nn.CrossEntropyLoss()

        def training_step(self, batch, _):
            return self.loss(self.net(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_accuracy", (self.net(batch[0]).argmax(1) == batch[1]).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    train_loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, drop_last=len(x) % 32 == 1)
    val_loader = DataLoader(TensorDataset(xv, yv), batch_size=len(xv))
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(Module(), train_loader, val_loader)
    return time.perf_counter() - start


def with_keras(epochs: int, seed: int = 0) -> float:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(seed)
    x, y, xv, yv = (t.numpy() for t in digits())
    layers = [keras.Input((64,))]
    for _ in range(2):
        layers += [keras.layers.Dense(256), keras.layers.BatchNormalization(), keras.layers.ReLU()]
    model = keras.Sequential([*layers, keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, validation_data=(xv, yv), validation_batch_size=len(xv), verbose=0)
    return time.perf_counter() - start


RUNNERS = {"hand-written": hand_written, "dltrain": with_dltrain, "lightning": with_lightning, "keras": with_keras}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def installed() -> list[str]:
    found = ["hand-written", "dltrain"]
    for name, module in PEERS.items():
        if importlib.util.find_spec(module) is not None:
            found.append(name)
        else:
            print(f"{name}: not installed, left out (pip install -e '.[bench]' to compare with it)")
    return found


def whole_process(name: str, tmp: Path, i: int, threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "KERAS_BACKEND": "torch"}
    if name == "dltrain":
        exe = shutil.which("dltrain") or str(Path(sys.executable).with_name("dltrain"))
        cmd = [exe, "trainer.max_epochs=1", "sched=none", "trainer.progress=none", f"trainer.threads={threads}", f"hydra.run.dir={tmp / f'run-{i}'}"]
    else:
        cmd = [sys.executable, __file__, "--one", name, "--epochs", "1", "--threads", str(threads)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for everyone")
    parser.add_argument("--one", choices=list(RUNNERS), help=argparse.SUPPRESS)  # a whole-process run
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.one:
        RUNNERS[args.one](args.epochs)
        return 0
    names = installed()
    for name in names:
        RUNNERS[name](1)  # warm-up: imports, allocator, kernels
    step: dict[str, list[float]] = {n: [] for n in names}
    whole: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in names:
                step[name].append(RUNNERS[name](args.epochs, r))
            for name in names:
                whole[name].append(whole_process(name, Path(tmp), r, args.threads))
    base = statistics.median(step["hand-written"])
    print(f"digits MLP, Adam, batch 32, {args.epochs} epochs, {args.threads} torch thread(s), medians of {args.rounds} interleaved rounds, torch {torch.__version__}")
    print(f"{'':14s} {'per step (to hand-written)':>28s} {'whole process, 1 epoch':>24s}")
    for name in names:
        s, w = statistics.median(step[name]), statistics.median(whole[name])
        print(f"{name:14s} {s / base:21.2f} ({s:5.2f} s) {w:22.2f} s")
    ratio = statistics.median(step["dltrain"]) / base
    print(f"dltrain per step / hand-written: {ratio:.3f} (target <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
