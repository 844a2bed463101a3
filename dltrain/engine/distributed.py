"""Data-parallel training on several processes: torch.distributed, torchrun's launcher and DDP.

Two ways in, one way of training:
- `dltrain trainer.devices=N` on one machine: the dltrain process composes and checks the config,
  then starts N ranks with torchrun's own launcher (`elastic_launch`, what `torchrun
  --standalone --nproc_per_node=N` runs) and waits; each rank runs the entry module it is
  given (`python -m dltrain.rank CONFIG RUN_DIR`) and trains. A sweep job with trainer.devices=N
  does the same, so an Optuna sweep samples its hyperparameters once, not per rank.
- `torchrun [--nnodes ... --rdzv-endpoint ...] -m dltrain ...`: torchrun starts the ranks; each
  joins the process group before Hydra runs and takes rank 0's run directory (`agree_run_dir`).

Every rank builds the same model, reads the same seeded permutation of the data and trains on
its shard of each global batch (`TensorLoader(shard=...)`); DDP averages the gradients; each
rank's loss is weighted by its share of the batch, so the update is the single-process update
of the whole batch. Each rank validates its shard of the validation set, the metric sums are
added up over ranks and rank 0's metrics are broadcast, so every rank takes the same early-stop
and best-checkpoint decisions; the training loss is averaged over ranks before it is logged.
Only rank 0 writes the run directory and checkpoints; a checkpoint holds every rank's RNG state
and is taken at a collective, so all ranks checkpoint the same step and every rank can resume
from it.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltrain.child import python_argv
from dltrain.errors import ConfigError

log = logging.getLogger("dltrain")


class RanksFailed(Exception):
    """A rank of a `trainer.devices=N` run failed; `code` is the exit code for the dltrain process.
    `message` is empty when the rank has already printed its own one-line error."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code, self.message = code, message
        super().__init__(message or f"a rank exited with code {code}")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job: its rank among `world` (and on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """Is this process one rank of several started by torchrun (or our launcher)?"""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Ranks:
    """This process's ranks once it has joined a process group; a single process otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    env = os.environ
    return Ranks(dist.get_rank(), dist.get_world_size(), int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", dist.get_world_size())))


def join(backend: str, device: str, timeout_s: int) -> Ranks:
    """Join torchrun's process group (env:// rendezvous). `backend` auto: gloo on CPU; on CUDA,
    NCCL for CUDA tensors and gloo for the few CPU ones (flags, RNG states)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return current()
    cuda = device not in ("cpu", "mps") and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    check_devices(backend, cuda, max(local + 1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if cuda:
        torch.cuda.set_device(local)
    spec = "cpu:gloo,cuda:nccl" if cuda and backend in ("auto", "nccl") else "gloo"
    dist.init_process_group(spec, timeout=timedelta(seconds=timeout_s))
    return current()


def check_devices(backend: str, cuda: bool, per_node: int) -> None:
    """NCCL needs CUDA, and each rank on a machine needs a CUDA device of its own."""
    if backend == "nccl" and not cuda:
        raise ConfigError("trainer.backend", backend, "NCCL needs CUDA devices and there are none here; allowed here: auto, gloo")
    if cuda and per_node > torch.cuda.device_count():
        raise ConfigError("trainer.devices", per_node, f"this machine has {torch.cuda.device_count()} CUDA device(s); allowed: at most that many ranks per machine, or trainer.device=cpu")


def join_submitit_tasks(backend: str, device: str, timeout_s: int) -> Ranks:
    """A sweep job that submitit started as several tasks (launcher=slurm with nodes and
    tasks_per_node, or submitit_local with tasks_per_node): each task joins as one rank, with the
    rendezvous submitit derives from the Slurm job (first host, a port seeded by the job id)."""
    if os.environ.get("SUBMITIT_EXECUTOR") is None:
        return current()
    import submitit

    if submitit.JobEnvironment().num_tasks <= 1:
        return current()
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return join(backend, device, timeout_s)


def agree_run_dir(default: str) -> str:
    """Rank 0's run directory, for every rank (ranks started by torchrun each ran Hydra's clock).
    Sent as UTF-8 bytes in tensors: nothing that crosses between ranks is unpickled."""
    import torch.distributed as dist

    mine = torch.frombuffer(bytearray(default.encode()), dtype=torch.uint8)
    size = torch.tensor([mine.numel()], dtype=torch.int64)
    dist.broadcast(size, src=0)
    data = mine if dist.get_rank() == 0 else torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return bytes(data.tolist()).decode()


def leave() -> None:
    """Leave the process group after a run that ended normally on every rank.

    With gloo, a plain destroy_process_group() while a DDP model and its optimizer are still
    alive often aborts rank 0 at exit ("terminate called without an active exception"). The
    caller has already dropped them (they lived in `train`'s frame); collect what cycles keep
    alive, wait for every rank, then destroy the group.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


# ---- inside the training loop ----------------------------------------------------------------


class TrainStep(nn.Module):
    """The task's training loss as one module, so that DDP can wrap any task's step: a
    classifier's forward, a VAE's encode/decode, or both networks of a GAN."""

    def __init__(self, model: nn.Module, step_loss) -> None:
        super().__init__()
        self.model = model  # registered: DDP syncs its parameters and buffers
        self.step_loss = step_loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, phase: str, weight: float) -> torch.Tensor:
        return self.step_loss(x, y, phase, weight)


def wrap(model: nn.Module, step_loss, ranks: Ranks, device: torch.device, phases: int) -> nn.Module:
    """DistributedDataParallel over the training step. It broadcasts rank 0's weights now, so
    every rank starts equal; a GAN's phases each leave the other network without gradients."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(TrainStep(model, step_loss), device_ids=ids, find_unused_parameters=phases > 1)


def agree_signal(received: int | None) -> int | None:
    """The stop signal if any rank received one (all ranks stop at the same step)."""
    import torch.distributed as dist

    flag = torch.tensor([received or 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag) or None


def mean_over_ranks(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of `t` over all ranks (a copy; `t` itself if there is one rank)."""
    if not ranks.enabled:
        return t
    import torch.distributed as dist

    out = t.clone()
    dist.all_reduce(out)
    return out.div_(ranks.world)


def sum_over_ranks_(t: torch.Tensor) -> None:
    """Add `t` up over all ranks, in place."""
    import torch.distributed as dist

    dist.all_reduce(t)


def from_rank_0(metrics: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """Rank 0's metrics on every rank (the same names everywhere: the same task computed them).
    Sent as one float64 tensor, nothing pickled; rank 0 keeps its own dict as it is."""
    if not ranks.enabled:
        return metrics
    import torch.distributed as dist

    values = torch.tensor([float(v) for v in metrics.values()], dtype=torch.float64)
    dist.broadcast(values, src=0)
    return metrics if ranks.main else dict(zip(metrics, values.tolist(), strict=True))


def gather_rng(ranks: Ranks) -> list[torch.Tensor] | None:
    """Every rank's torch RNG state (CPU, then the current CUDA device's), rank 0 first. A
    collective: all ranks call it at the same step, which also makes it the checkpoint's barrier."""
    if not ranks.enabled:
        return None
    import torch.distributed as dist

    mine = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine = torch.cat([mine, torch.cuda.get_rng_state()])
    states = [torch.empty_like(mine) for _ in range(ranks.world)]
    dist.all_gather(states, mine)
    return states


def set_rank_rng(states: Sequence[torch.Tensor] | None, ranks: Ranks) -> None:
    """Restore this rank's RNG from a checkpoint's per-rank states (when the world size matches)."""
    if not ranks.enabled or not states:
        return
    if len(states) != ranks.world:
        log.warning("the checkpoint has RNG states of %d ranks, this run has %d: dropout and noise will not repeat exactly", len(states), ranks.world)
        return
    state = states[ranks.rank]
    n = torch.get_rng_state().numel()
    torch.set_rng_state(state[:n].contiguous())
    if state.numel() > n and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[n:].contiguous())


# ---- launching ranks on this machine ---------------------------------------------------------


def launch(devices: int, trainer, config_yaml: str, run_dir: Path, entry: str) -> dict[str, Any]:
    """Train with `devices` ranks on this machine through torchrun's launcher; return the summary.

    Each rank runs module `entry` with CONFIG_FILE RUN_DIR (the resolved config, in a temporary
    file, and the run directory), started so that the working directory is not on its path. The
    launcher forwards SIGINT/SIGTERM to the ranks (they checkpoint at the next safe step) and, if
    a rank dies, stops the others at once.
    """
    import json
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    cuda = trainer.device.startswith("cuda") or (trainer.device == "auto" and torch.cuda.is_available())
    check_devices(trainer.backend, cuda, devices)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
    )
    for name in list(logging.root.manager.loggerDict):  # torch sets each of its loggers' level
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # the ranks and this process say what happened
    with tempfile.TemporaryDirectory(prefix="dltrain-ranks-") as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(config_yaml)
        log.info("launching %d ranks (torch.distributed elastic launch) into %s", devices, run_dir)
        try:
            elastic_launch(config, sys.executable)(*python_argv(entry, str(config_file), str(run_dir)))
        except SignalException as e:  # the ranks got the signal too, and saved a checkpoint
            raise RanksFailed(128 + int(e.sigval), f"continue with: dltrain resume={run_dir}") from None
        except ChildFailedError as e:
            raise _failure(e, run_dir) from None
    summary = Path(run_dir) / "summary.json"
    if not summary.is_file():
        raise RanksFailed(1, f"the ranks finished but wrote no {summary}")
    return json.loads(summary.read_text())


def _failure(e, run_dir: Path) -> RanksFailed:
    """The exit code and message for the first rank that failed."""
    import signal

    # the rank that died first: one killed from outside before those the launcher then stopped
    # (SIGTERM) or that lost it (an error exit), then the earliest
    def first(kv):
        code = kv[1].exitcode
        return (0 if code < 0 and -code != signal.SIGTERM else 1 if code < 0 else 2, kv[1].timestamp, kv[0])

    rank, failure = min(e.failures.items(), key=first)
    code = failure.exitcode
    if code < 0:  # killed by a signal
        name = signal.Signals(-code).name
        return RanksFailed(1, f"rank {rank} was killed by {name}; the other ranks were stopped; continue with: dltrain resume={run_dir}")
    if code in (2, 130, 143):  # a user error or a saved interrupt: the rank said so itself
        return RanksFailed(code)
    return RanksFailed(code, f"rank {rank} failed with exit code {code} (its error is printed above); the other ranks were stopped")


def exit_rank(code: int) -> None:
    """Exit a rank that failed or was stopped, without the interpreter's teardown: with a process
    group whose peers are gone, that teardown can abort and hide the exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def peer_failure_message(e: BaseException, ranks: Ranks) -> str:
    """One line for a collective that failed because another rank is gone."""
    import re

    detail = re.sub(r"^\[[^\]]*\]\s*", "", str(e).splitlines()[0]).split(". ")[0][:160]
    return f"rank {ranks.rank}: lost the other ranks ({detail})"


def is_peer_failure(e: BaseException) -> bool:
    """Is `e` a collective failing because another rank is gone?"""
    import torch.distributed as dist

    kinds = tuple(k for k in (getattr(dist, "DistError", None), getattr(dist, "DistBackendError", None)) if k)
    text = str(e).lower()
    return isinstance(e, kinds) or any(w in text for w in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe"))
