"""The engine's settings: how to train (epochs, device, precision, checkpoints, early stopping, ...).

Plain dataclasses; `dltrain.config` validates the `trainer` section of a composed config into a
`TrainerConfig` (its fields are the section's keys, their annotations the allowed values), so the
engine takes typed settings and knows nothing of Hydra or of config files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from dltrain.schema import NonNegative, NonNegativeInt, Pattern, Positive, PositiveInt, Probability

Device = Annotated[str, Pattern(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps")]
Precision = Literal["32", "bf16", "16"]


@dataclass
class EarlyStopConfig:
    patience: NonNegativeInt = 0  # epochs without improvement before stopping; 0 turns it off
    monitor: str = "auto"  # auto: the task's (val_loss; val_frechet for a GAN)
    min_delta: NonNegative = 0.0


@dataclass
class CheckpointConfig:
    monitor: str = "auto"  # which validation metric picks the best checkpoint; auto: the task's
    every_n_epochs: NonNegativeInt = 0  # a full training-state checkpoint every N epochs; 0: none
    every_n_steps: NonNegativeInt = 0  # also one every N optimizer steps (mid-epoch); 0: none
    every_n_minutes: NonNegative = 5.0  # also one at an epoch end when the last is older than this; 0: none. With any of these on, one after the last epoch too
    keep_last: NonNegativeInt = 2  # full checkpoints kept (the newest); 0: keep all
    writer: Literal["process", "thread", "sync"] = "process"  # who writes them while training goes on (engine/writer.py)


@dataclass
class EmaConfig:
    decay: Probability = 0.0  # an exponential moving average of the weights after every optimizer step; 0 turns it off


@dataclass
class SwaConfig:
    start: NonNegativeInt = 0  # stochastic weight averaging: the first epoch whose end-of-epoch weights are averaged; 0 turns it off
    lr: Positive | None = None  # the SWA learning rate SWALR anneals to from the epoch after `start`; null: the base schedule goes on
    anneal_epochs: NonNegativeInt = 5  # epochs SWALR takes to reach `lr`
    anneal_strategy: Literal["cos", "linear"] = "cos"
    bn_update: bool = True  # recompute batch-norm statistics for the averaged weights (one pass over the training data)


@dataclass
class TrainerConfig:
    max_epochs: PositiveInt = 30
    device: Device = "auto"
    precision: Precision = "32"
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"  # reduce-overhead: CUDA graphs
    devices: PositiveInt = 1  # data-parallel ranks on this machine (DDP through torchrun's launcher); torchrun itself sets its own
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: gloo on CPU, NCCL on CUDA
    dist_timeout: PositiveInt = 300  # seconds a rank waits for the others at a collective
    threads: NonNegativeInt = 0  # CPU intra-op threads per process; 0: timed, at most the free cores (training.pick_threads)
    accumulate: PositiveInt = 1  # gradient accumulation: optimizer step every N batches
    clip_grad: Positive | None = None  # max global gradient norm
    log_grad_norms: bool = False  # per-layer gradient and weight norms each epoch (metrics.csv, plots/grad_norms.png)
    deterministic: bool = False
    limit_train_batches: NonNegativeInt = 0  # 0: all
    limit_val_batches: NonNegativeInt = 0  # 0: all
    val_every_n_steps: NonNegativeInt = 0  # also validate every N optimizer steps inside an epoch (Lightning's val_check_interval); 0: at epoch ends only
    overfit_batches: NonNegativeInt = 0  # >0: train and validate on these first batches only
    eval_batch_size: PositiveInt = 1024
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    test_ckpt: Literal["best", "last"] = "best"
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    swa: SwaConfig = field(default_factory=SwaConfig)
    resume: str | None = None  # auto: the newest valid checkpoint of this config; or a run dir / checkpoint dir
    resume_force: bool = False  # resume even if the config changed (`dltrain resume=DIR resume.force=true`)
    nan: Literal["stop", "skip"] = "stop"  # a non-finite loss: stop naming the step, or skip the update
    nan_max_skips: PositiveInt = 10  # nan=skip: stop after this many consecutive skipped steps
