"""Device selection, precision and the backend switches that make each device fast."""

from __future__ import annotations

import contextlib
import os
import random
import time

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


# trainer.threads=0 takes more threads only where they make a step at least this much faster ...
THREAD_GAIN = 0.95
# ... and only for steps (the timed forward pass) at least this long on one thread.
SHARED_STEP_S = 0.001
# Steps this long vary little: each count is timed once.
LONG_STEP_S = 0.02


def thread_counts(most: int) -> list[int]:
    """The counts the probe tries: 1, 2, 4, ... and `most`."""
    counts, n = [1], 2
    while n < most:
        counts.append(n)
        n *= 2
    return counts + ([most] if most > 1 else [])


def choose_threads(step, most: int, budget_s: float = 0.2, max_rounds: int = 9) -> tuple[int, dict[int, float]]:
    """The intra-op thread count that runs `step()` (a training step's forward pass) fastest, of
    thread_counts(most): the fewest threads unless more are at least 1/THREAD_GAIN times faster.
    A step under SHARED_STEP_S on one thread stays there untimed at other counts (a second
    thread's hand-off costs what it would save); one of LONG_STEP_S or more is timed once per
    count; others in interleaved rounds within `budget_s` (the median of each). On a busy machine
    torch's threads wait at barriers for a core, and one thread comes out fastest.
    Returns the count (set) and the seconds per count tried."""
    import statistics

    def timed(c: int) -> float:
        torch.set_num_threads(c)
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    timed(1)  # warm-up: oneDNN's kernels and the allocator (the first training step's work, done now)
    single = timed(1)
    counts = thread_counts(most)
    if single < SHARED_STEP_S or len(counts) == 1:
        torch.set_num_threads(1)
        return 1, {1: single}
    times: dict[int, list[float]] = {1: [single], **{c: [] for c in counts[1:]}}
    if single >= LONG_STEP_S:
        for c in counts[1:]:
            times[c].append(timed(c))
    else:
        for c in counts[1:]:
            timed(c)  # its warm-up
        t_start = time.perf_counter()
        for done in range(max_rounds):
            if done >= 3 and time.perf_counter() - t_start > budget_s:
                break
            for c in counts:
                times[c].append(timed(c))
    medians = {c: statistics.median(v) for c, v in times.items()}
    best = 1
    for c in counts[1:]:
        if medians[c] < THREAD_GAIN * medians[best]:
            best = c
    torch.set_num_threads(best)
    return best, medians


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
