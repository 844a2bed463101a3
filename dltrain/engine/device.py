"""Device selection, precision and the backend switches that make each device fast."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from dltrain.engine.cpus import usable_cpus  # noqa: F401  (re-exported)
from dltrain.errors import ConfigError


def select_device(name: str) -> torch.device:
    """'auto' picks cuda > mps > cpu; an explicit device that is not available is a user error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    here = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if cuda else []) + (["mps"] if mps else [])
    if name.startswith("cuda") and (not cuda or (":" in name and int(name.split(":")[1]) >= torch.cuda.device_count())):
        raise ConfigError("trainer.device", name, "this machine has " + ("no CUDA device" if not cuda else f"{torch.cuda.device_count()} CUDA device(s)") + "; allowed here: " + ", ".join(here))
    if name == "mps" and not mps:
        raise ConfigError("trainer.device", name, "MPS is not available here; allowed here: " + ", ".join(here))
    return torch.device(name)


def configure_backends(device: torch.device, precision: str, deterministic: bool) -> None:
    """TF32 matmuls on CUDA (unless determinism is asked for), deterministic algorithms if asked."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not deterministic
        torch.backends.cudnn.allow_tf32 = not deterministic
        torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(device: torch.device, threads: int, local_ranks: int = 1) -> int:
    """Intra-op threads for CPU work: `threads` if set; else at most the usable cores shared among
    the ranks on this machine (never more than already set: a sweep launcher, OMP_NUM_THREADS or
    the caller may have chosen fewer). More threads than cores makes small steps many times
    slower: torch's default counts the machine's cores, not a container's quota. Returns the count."""
    if threads:
        torch.set_num_threads(threads)
    elif device.type == "cpu":
        torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cpus() // max(1, local_ranks))))
    return torch.get_num_threads()


def autocast(device: torch.device, precision: str):
    """The autocast context for a precision; a no-op context for full precision."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(device: torch.device, precision: str) -> None:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("trainer.precision", precision, "this GPU has no bf16 support; allowed here: 32, 16")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a generator for the data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
