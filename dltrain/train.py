"""Train one run from a composed config: validate, build from the registries, fit, write the run dir."""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dltrain
from dltrain.config import RunSpec, validate
from dltrain.errors import ConfigError, UserError
from dltrain.data import DATASETS, DataBundle, Split
from dltrain.engine.device import check_precision, configure_backends, describe, seed_everything, select_device
from dltrain.engine.loader import TensorLoader
from dltrain.engine.loggers import LOGGERS
from dltrain.engine.loop import evaluate, fit
from dltrain.engine.plots import plot_history
from dltrain.engine.progress import ProgressDisplay
from dltrain.engine.rundir import RunDir, load_weights, weights_sha256
from dltrain.losses import LOSSES
from dltrain.models import MODELS
from dltrain.models.layers import INITS, count_parameters
from dltrain.optim import OPTIMIZERS, build_schedule
from dltrain.regularization import Regularizer, WeightPenalty, build_regularizers
from dltrain.tasks import TASKS

log = logging.getLogger("dltrain")


@dataclass
class Built:
    """The objects one run is made of, built from a validated spec."""

    spec: RunSpec
    device: torch.device
    data: DataBundle
    task: Any
    model: nn.Module
    regs: list[Regularizer]
    channels_last: bool


def build(spec: RunSpec, device: torch.device) -> Built:
    """Data, task, model (initialised, on `device`) and regularizers for `spec`."""
    data = DATASETS.build(spec.data, key="data")
    regs = list(build_regularizers(spec.reg).values())
    model_cfg = {**spec.model, **{k: v for r in regs for k, v in r.model.items()}}
    loss_cfg = {**spec.loss, **{k: v for r in regs for k, v in r.loss.items()}}
    task_cls = TASKS.get(spec.task).fn
    task = task_cls(data, LOSSES.get(loss_cfg["name"]), LOSSES.build(loss_cfg, key="loss"))
    model: nn.Module = MODELS.build(model_cfg, key="model", in_shape=data.in_shape, out_features=task_cls.out_features(data))
    INITS.build(spec.init, key="init")(model)
    channels_last = device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    return Built(spec, device, data, task, model, regs, channels_last)


def train(cfg: Mapping[str, Any], run_dir: str | Path, console=None, config_yaml: str | None = None) -> dict[str, Any]:
    """Run one training job described by `cfg` into `run_dir`; return the summary dict."""
    from rich.console import Console

    console = console or Console(stderr=True)
    spec = validate(cfg)
    trainer = spec.trainer
    device = select_device(trainer.device)
    check_precision(device, trainer.precision)
    configure_backends(device, trainer.precision, trainer.deterministic)
    generator = seed_everything(spec.seed)

    built = build(spec, device)
    data, task, model, regs, channels_last = built.data, built.task, built.model, built.regs, built.channels_last
    clip_grad = trainer.clip_grad or next((r.clip_grad for r in regs if r.clip_grad), None)
    optim_entry = OPTIMIZERS.get(spec.optim["name"])
    optimizer = OPTIMIZERS.build(spec.optim, key="optim", params=model.parameters())
    penalty = WeightPenalty(model, regs)

    train_split, val_split = data.train, data.val
    if trainer.overfit_batches:  # the same few batches for training and validation
        n = trainer.overfit_batches * spec.batch_size
        train_split = val_split = Split(data.train.x[:n], data.train.y[:n])
    loader_args = dict(device=device, channels_last=channels_last)
    batch_size = len(train_split) if spec.optim.get("full_batch") else spec.batch_size
    train_loader = TensorLoader(
        train_split.x, train_split.y, batch_size, shuffle=not trainer.overfit_batches,
        generator=generator, limit_batches=trainer.limit_train_batches,
        drop_last=len(train_split) % batch_size == 1,  # a batch of one breaks batch norm
        **loader_args,
    )
    val_loader = TensorLoader(val_split.x, val_split.y, trainer.eval_batch_size, limit_batches=trainer.limit_val_batches, **loader_args)
    test_loader = TensorLoader(data.test.x, data.test.y, trainer.eval_batch_size, limit_batches=trainer.limit_val_batches, **loader_args)
    steps_per_epoch = len(train_loader) if optim_entry.meta.get("closure") else math.ceil(len(train_loader) / trainer.accumulate)
    schedule = build_schedule(spec.sched, optimizer, steps_per_epoch, trainer.max_epochs)
    net = torch.compile(model) if trainer.compile else model

    run = RunDir(run_dir)
    run.create()
    if config_yaml is not None:
        run.write_config(config_yaml)
    loggers = [LOGGERS.build(spec.logger, key="logger", run_dir=run.path)]
    log.info("model=%s (%d parameters) data=%s task=%s device=%s", spec.model["name"], count_parameters(model), data.name, spec.task, describe(device))
    if data.note:
        log.info(data.note)

    progress = ProgressDisplay(console, trainer.progress, trainer.max_epochs, len(train_loader), batch_size)
    try:
        with progress:
            result = fit(
                net, task, optimizer, schedule, train_loader, val_loader,
                trainer=trainer, device=device, run=run, progress=progress, loggers=loggers,
                penalty=penalty if penalty else None, clip_grad=clip_grad,
                needs_closure=bool(optim_entry.meta.get("closure")), state_of=model.state_dict,
            )
    finally:
        for logger in loggers:
            logger.close()

    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run.save_weights("last", last_state, {"epoch": result.epochs, "step": result.steps})
    best_state = result.best_state or last_state
    run.save_weights("best", best_state, {"epoch": result.best["epoch"] or result.epochs})
    if trainer.test_ckpt == "best":
        model.load_state_dict(best_state)
    t0 = time.perf_counter()
    test = evaluate(net, task, test_loader, device, trainer.precision)
    test_seconds = time.perf_counter() - t0
    plot_history(result.history, run.plots)

    summary = {
        "task": spec.task,
        "model": spec.model["name"],
        "data": data.name,
        "test": test,
        "test_ckpt": trainer.test_ckpt,
        "best": result.best,
        "final": {k: v for k, v in result.history[-1].items() if k not in ("epoch", "step", "seconds")},
        "epochs": result.epochs,
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 4),
        "test_seconds": round(test_seconds, 4),
        "device": describe(device),
        "precision": trainer.precision,
        "seed": spec.seed,
        "parameters": count_parameters(model),
        "weights_sha256": weights_sha256(last_state),
        "best_weights_sha256": weights_sha256(best_state),
        "dataset": data.describe(),
        "versions": {
            "dltrain": dltrain.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    run.write_summary(summary)
    return summary


@dataclass
class LoadedRun:
    """A finished run read back from its directory: its spec, data, task and trained model."""

    path: Path
    summary: dict[str, Any]
    built: Built
    checkpoint: Path


def load_run(run_dir: str | Path, ckpt: str = "best", device: str = "cpu") -> LoadedRun:
    """Rebuild a run's model from config.yaml and load checkpoints/<ckpt>.safetensors (eval mode).

    Every problem a user can cause (no such dir, not a run dir, missing or corrupt checkpoint,
    a checkpoint from a newer format or another model) is a one-line UserError.
    """
    import json

    from omegaconf import OmegaConf

    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory {str(path)!r} does not exist")
    if not (path / "config.yaml").is_file():
        raise UserError(f"{str(path)!r} is not a dltrain run directory: it has no config.yaml")
    spec = validate(OmegaConf.load(path / "config.yaml"))
    checkpoint = path / "checkpoints" / f"{ckpt}.safetensors"
    if not checkpoint.is_file():
        have = sorted(p.stem for p in (path / "checkpoints").glob("*.safetensors"))
        raise ConfigError("ckpt", ckpt, f"{path} has " + (f"checkpoints: {', '.join(have)}" if have else "no checkpoint (did the run finish?)"))
    state = load_weights(checkpoint)
    built = build(spec, select_device(device))
    try:
        built.model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{checkpoint} does not fit model={spec.model['name']}: {str(e).splitlines()[0]}") from None
    built.model.eval()
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return LoadedRun(path, summary, built, checkpoint)
