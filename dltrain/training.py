"""Train one run from a composed config: validate, build from the registries, fit, write the run dir."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

import dltrain
from dltrain import plugins
from dltrain.config import RunSpec, validate
from dltrain.data import DATASETS, DataBundle, Split
from dltrain.data.base import fold_split
from dltrain.engine import distributed, test_hooks
from dltrain.engine.averaging import SwaSchedule, WeightAverage
from dltrain.engine.callbacks import EpochReport, MetricsLog, TaskEpochEnd
from dltrain.engine.checkpoint import LoopState, StopSignals, TrainingInterrupted, config_hash, restore, snapshot, threads_of
from dltrain.engine.checkpoint import checkpoints as checkpoints_of
from dltrain.engine.cpus import CpuLoad, command_started
from dltrain.engine.device import autocast, check_precision, choose_threads, configure_backends, describe, seed_everything, select_device, set_threads
from dltrain.engine.diagnostics import GradNorms
from dltrain.engine.loader import MemberLoader, TensorLoader
from dltrain.engine.loggers import LOGGERS
from dltrain.engine.loop import Phase, evaluate, fit
from dltrain.engine.plots import draw_history, draw_pictures
from dltrain.engine.progress import progress_display
from dltrain.engine.rundir import RunDir, check_run_dir, weights_sha256
from dltrain.engine.writer import make_writer
from dltrain.errors import ConfigError, UserError
from dltrain.files import FolderLock, writing
from dltrain.losses import LOSSES
from dltrain.models import MODELS
from dltrain.models.ensemble import Ensemble
from dltrain.models.layers import INITS, count_parameters
from dltrain.optim import OPTIMIZERS, build_schedule
from dltrain.regularization import Regularizer, WeightPenalty, build_regularizers
from dltrain.report import flatten, record_ending, try_run_report
from dltrain.tasks import TASKS
from dltrain.tasks.distill import Distillation
from dltrain.tasks.ensemble import EnsembleTraining

# The module each data-parallel rank runs (`python -m dltrain.rank CONFIG RUN_DIR`).
RANK_ENTRY = "dltrain.rank"
# Set for the ranks of trainer.devices=N: the launching process holds the run directory's lock.
LOCK_HELD = "DLTRAIN_RUN_LOCK_HELD_BY_LAUNCHER"

log = logging.getLogger("dltrain")
PRETRAINING = "pretraining.json"  # a DBN's per-layer RBM metrics, written before training starts
PREPROCESSING = "preprocessing.json"  # a user's own data: what was fitted on its training split (columns, imputation, encodings)


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


def model_config(spec: RunSpec, regs) -> dict[str, Any]:
    """The model section with the keys the regularizers set (reg=dropout: model.dropout)."""
    return {**spec.model, **{k: v for r in regs for k, v in r.model.items()}}


def build(spec: RunSpec, device: torch.device, fit_data: bool = True) -> Built:
    """Data, task, model (initialised, on `device`) and regularizers for `spec`. A model whose
    start depends on the data (an RBF network's k-means centres) is fitted to the training split
    unless `fit_data` is false (weights about to be loaded)."""
    data = DATASETS.build(spec.data, key="data", task=spec.task)  # task: what a user's table is read as (task=regression on integers)
    if spec.cv.k:
        data = fold_split(data, spec.cv.k, spec.cv.fold, seed=int(spec.data.get("split_seed", spec.seed)))
    check_data(data, spec)
    regs = list(build_regularizers(spec.reg).values())
    model_cfg = model_config(spec, regs)
    loss_cfg = {**spec.loss, **{k: v for r in regs for k, v in r.loss.items()}}
    task_cls = TASKS.get(spec.task).fn
    task = task_cls(data, LOSSES.get(loss_cfg["name"]), LOSSES.build(loss_cfg, key="loss"))
    shapes = dict(in_shape=data.in_shape, out_features=task_cls.out_features(data), **({"num_words": data.vocab_size} if data.vocab_size else {}))
    check_model_size(model_cfg, shapes, device)

    def initialised() -> nn.Module:
        model: nn.Module = MODELS.build(model_cfg, key="model", **shapes)
        INITS.build(spec.init, key="init")(model)
        if fit_data and hasattr(model, "fit_data"):  # its seed from the run's RNG: ensemble members differ
            model.fit_data(data, seed=int(torch.randint(2**31 - 1, ()).item()))
        return model

    model = initialised()
    if spec.ensemble.size > 1:  # the other members: the same architecture from the next initial weights the RNG gives
        members = [model]
        for _ in range(spec.ensemble.size - 1):
            members.append(initialised())
        model = Ensemble(members, "probs" if spec.task == "classification" else "mean", in_shape=data.in_shape)
    channels_last = device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    return Built(spec, device, data, task, model, regs, channels_last)


# data keys a teacher and its student may set differently: how batches are drawn, not which examples are in which split
SPLIT_FREE_KEYS = ("batch_size", "shift", "augment", "download")


def load_teacher(spec: RunSpec, data: DataBundle, device: torch.device) -> tuple[nn.Module, dict]:
    """distill.teacher's model with its best weights (safetensors: nothing is unpickled), frozen
    on `device`, and its summary. It must be a classification run on the same data and split
    (else its training examples could be this run's validation or test examples), for as many
    classes; its config names only registered components, like any other."""
    import json

    from omegaconf import OmegaConf

    from dltrain.engine.rundir import load_weights

    path = Path(spec.distill.teacher)
    where = f"distill.teacher={spec.distill.teacher}"
    if not path.is_dir():
        raise UserError(f"{where}: no such run directory; allowed: the directory of a finished classification run")
    weights = path / "checkpoints" / "best.safetensors"
    if not (path / "config.yaml").is_file() or not weights.is_file():
        raise UserError(f"{where}: not a finished dltrain run (it needs config.yaml and checkpoints/best.safetensors)")
    plugins.check_record(path)
    try:
        teacher = validate(OmegaConf.load(path / "config.yaml"))
    except UserError as e:
        raise UserError(f"{where}: its config.yaml does not validate: {e}") from None
    if teacher.task != "classification":
        raise UserError(f"{where}: that run trains task {teacher.task}; allowed: a classification run")
    for key in sorted(set(spec.data) | set(teacher.data)):
        mine, theirs = spec.data.get(key), teacher.data.get(key)
        if key == "root" and isinstance(mine, str) and isinstance(theirs, str):
            mine, theirs = (str(Path(v).expanduser().resolve()) for v in (mine, theirs))
        if key not in SPLIT_FREE_KEYS and mine != theirs:
            raise UserError(
                f"{where}: the teacher was trained with data.{key}={teacher.data.get(key)}, this run has data.{key}={spec.data.get(key)}; "
                f"allowed: a teacher trained on the same data and split (its training examples must not be this run's validation or test examples)"
            )
    if (teacher.cv.k, teacher.cv.fold) != (spec.cv.k, spec.cv.fold):
        raise UserError(f"{where}: the teacher was trained on cv fold {teacher.cv.fold} of {teacher.cv.k}, this run is fold {spec.cv.fold} of {spec.cv.k}; allowed: a teacher trained on the same fold")
    model_cfg = model_config(teacher, build_regularizers(teacher.reg).values())
    task_cls = TASKS.get(teacher.task).fn
    model: nn.Module = MODELS.build(model_cfg, key="model", in_shape=data.in_shape, out_features=task_cls.out_features(data))
    try:
        model.load_state_dict(load_weights(weights))
    except RuntimeError as e:
        raise UserError(f"{where}: {weights} does not fit its model={teacher.model['name']}: {str(e).splitlines()[0]}") from None
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    log.info("distilling from %s (model=%s, test %s)", path, teacher.model["name"], summary.get("test"))
    return model.to(device).eval(), summary


def check_data(data: DataBundle, spec: RunSpec) -> None:
    """Every split holds examples, and every input is a finite number: a wrong split or a NaN in
    the data is one line naming the key or the place, not a silent 0.0 (or nan) metric."""
    import torch

    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if len(split) == 0:
            if data.task == "forecasting":
                hint = "data.window + data.horizon leaves no windows in it; allowed: a shorter data.window or data.horizon, or a larger data.val_fraction / data.test_fraction"
            else:
                hint = "allowed: a larger data.val_fraction / data.test_fraction"
            raise UserError(f"data={data.name}: the {name} split is empty; {hint}")
        if split.x.is_floating_point() and not bool(torch.isfinite(split.x).all()):
            row = int((~torch.isfinite(split.x.reshape(len(split), -1))).any(1).nonzero()[0])
            raise UserError(f"data={data.name}: the {name} split holds a non-finite input (NaN or inf) in example {row}; fix the data or drop that example")


def check_model_size(model_cfg: Mapping[str, Any], shapes: Mapping[str, Any], device: torch.device) -> None:
    """Build the model on torch's meta device first (no memory) and refuse one that could not be
    trained here: weights, gradients and two optimizer moments larger than the machine's memory."""
    name = model_cfg["name"]
    big = {k: v for k, v in model_cfg.items() if isinstance(v, (int, list)) and not isinstance(v, bool)}
    try:
        with torch.device("meta"):
            probe = MODELS.build(model_cfg, key="model", **shapes)
    except (OverflowError, RuntimeError, ValueError, TypeError) as e:
        if isinstance(e, OverflowError) or any(w in str(e).lower() for w in ("overflow", "too large", "negative dimension", "invalid shape")):
            raise UserError(f"model={name} cannot be built with these sizes ({', '.join(f'model.{k}={v}' for k, v in big.items())}): {str(e).splitlines()[0][:120]}") from None
        return  # it does something the meta device cannot: built for real below
    weights = sum(t.numel() * t.element_size() for t in [*probe.parameters(), *probe.buffers()])
    memory = _memory_bytes(device)
    if memory and 4 * weights > memory:
        count = sum(p.numel() for p in probe.parameters())
        raise UserError(
            f"model={name} would have {count:,} parameters ({weights / 2**30:.1f} GiB of weights, about {4 * weights / 2**30:.1f} GiB to train), "
            f"more than this {device.type} device's {memory / 2**30:.1f} GiB; allowed: smaller sizes ({', '.join(f'model.{k}={v}' for k, v in big.items())})"
        )


def _memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def train(cfg: Mapping[str, Any], run_dir: str | Path, console=None, config_yaml: str | None = None, on_epoch=None) -> dict[str, Any]:
    """Run one training job described by `cfg` into `run_dir`; return the summary dict.

    `on_epoch(row)` is called with each epoch's metrics row (a sweep's pruning hook; it may raise).
    With trainer.devices=N (N > 1) this process launches N data-parallel ranks and returns their
    summary; in a rank (a process group is joined) it trains its shard and only rank 0 writes.
    """
    from rich.console import Console

    load = CpuLoad()  # what other processes use while this one starts: trainer.threads=0 leaves it to them
    started = command_started() or time.monotonic()  # the command's start, or (called from Python) now
    console = console or Console(stderr=True)
    spec = validate(cfg)
    trainer = spec.trainer
    plain, config_text = _plain_config(cfg, config_yaml)
    run = RunDir(run_dir)
    ranks = distributed.current()

    def note(message: str) -> None:
        log.info(message)
        if ranks.main:
            console.print(message, highlight=False, soft_wrap=True)

    if trainer.resume and trainer.resume != "auto":  # the plugins the run was trained with, or one line
        target = Path(trainer.resume)
        plugins.check_record(target.parent.parent if target.name.startswith("step-") else target)
    resume = find_resume(trainer, run.path, plain, log.warning, note)  # before anything is built: fail fast
    if isinstance(resume, dict):  # a finished run, nothing to continue: its summary, nothing rewritten
        return resume
    if ranks.main:
        check_run_dir(run.path, config_hash(plain), resuming=trainer.resume is not None)
    held = os.environ.get(LOCK_HELD) == str(run.path.resolve())  # our launcher's ranks: the launcher holds it
    with FolderLock(run.path) if ranks.main and not held else contextlib.nullcontext():
        if trainer.devices > 1 and not ranks.enabled:
            if on_epoch is not None:
                log.warning("trainer.devices=%d: per-epoch reports (a sweep's pruning) are off for data-parallel jobs", trainer.devices)
            os.environ[LOCK_HELD] = str(run.path.resolve())
            try:
                return distributed.launch(trainer.devices, trainer, config_text, run.path, RANK_ENTRY)
            finally:
                os.environ.pop(LOCK_HELD, None)
        with StopSignals() as stop:  # also around building and the final test: a signal there stops cleanly
            try:
                summary = _train(spec, plain, config_text, run, ranks, resume, stop, console, config_yaml, on_epoch, load, started)
            except (TrainingInterrupted, UserError) as e:
                if ranks.main and run.started:  # a run that began: its folder says how it ended
                    status = "interrupted" if isinstance(e, TrainingInterrupted) else "failed"
                    with contextlib.suppress(OSError, UserError):
                        record_ending(run.path, status, str(e))
                    try_run_report(run.path, log.warning, status, str(e))
                raise
            finally:
                for logger in run.loggers:  # a run that stopped early: each tracker marks it so
                    with contextlib.suppress(Exception):
                        logger.close()
        return summary


def _train(spec: RunSpec, plain: dict, config_text: str, run: RunDir, ranks, resume, stop: StopSignals, console, config_yaml: str | None, on_epoch, load: CpuLoad | None = None, started: float | None = None) -> dict[str, Any]:
    trainer = spec.trainer
    device = select_device(trainer.device)
    if ranks.enabled and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    check_precision(device, trainer.precision)
    configure_backends(device, trainer.precision, trainer.deterministic)
    resumed_threads = threads_of(resume[1]) if resume is not None and not trainer.threads else None
    threads = set_threads(device, trainer.threads or resumed_threads or 0, ranks.local_world)
    generator = seed_everything(spec.seed)

    built = build(spec, device, fit_data=resume is None)
    if ranks.rank:  # the same weights and data order everywhere, but each rank its own dropout and noise
        torch.manual_seed(spec.seed + ranks.rank)
    if ranks.enabled and device.type == "cuda":  # batch statistics over the whole batch (CPU ranks: per rank)
        built.model = nn.SyncBatchNorm.convert_sync_batchnorm(built.model)
    data, task, model, regs, channels_last = built.data, built.task, built.model, built.regs, built.channels_last
    teacher_summary = None
    if spec.ensemble.size > 1:
        task = built.task = EnsembleTraining(task, bagging=spec.ensemble.bagging)
    if spec.distill.teacher is not None:  # before anything is written: a wrong teacher is one line
        teacher, teacher_summary = load_teacher(spec, data, device)
        task = built.task = Distillation(task, teacher, spec.distill.temperature, spec.distill.alpha)
    needs_closure = bool(OPTIMIZERS.get(spec.optim["name"]).meta.get("closure"))
    if needs_closure and ranks.enabled:
        raise ConfigError("optim", spec.optim["name"], f"its line search differs per rank and cannot run on {ranks.world} ranks; allowed: an optimizer without a closure, or one rank")
    penalty = WeightPenalty(model, regs)

    train_split, val_split = data.train, data.val
    if trainer.overfit_batches:  # the same few batches for training and validation
        n = trainer.overfit_batches * spec.batch_size
        train_split = val_split = Split(data.train.x[:n], data.train.y[:n])
    loader_args = dict(device=device, channels_last=channels_last)
    batch_size = len(train_split) if spec.optim.get("full_batch") or getattr(model, "full_batch", False) else spec.batch_size
    rest = len(train_split) % batch_size
    ensemble = spec.ensemble.size > 1  # each member its own order (and with bagging its own sample)
    train_loader = (partial(MemberLoader, members=spec.ensemble.size, bootstrap=spec.ensemble.bagging) if ensemble else TensorLoader)(
        train_split.x, train_split.y, batch_size, **({} if ensemble else {"shuffle": not trainer.overfit_batches}),
        generator=generator, limit_batches=trainer.limit_train_batches,
        drop_last=rest == 1 or 0 < rest < ranks.world,  # a batch of one breaks batch norm; every rank needs a sample
        shard=(ranks.rank, ranks.world), shift=spec.shift, augment=spec.augment, **loader_args,
    )
    val_loader = TensorLoader(val_split.x, val_split.y, trainer.eval_batch_size, limit_batches=trainer.limit_val_batches, shard=(ranks.rank, ranks.world), **loader_args)
    test_loader = TensorLoader(data.test.x, data.test.y, trainer.eval_batch_size, limit_batches=trainer.limit_val_batches, **loader_args)
    steps_per_epoch = len(train_loader) if needs_closure else math.ceil(len(train_loader) / trainer.accumulate)
    clip_grad = trainer.clip_grad or next((r.clip_grad for r in regs if r.clip_grad), None)
    phases = [build_phase(spec, task, model, name, steps_per_epoch, clip_grad) for name in task.phases]
    probe_seconds = 0.0
    if not trainer.threads and not resumed_threads and device.type == "cpu" and not ranks.enabled:
        t0 = time.perf_counter()
        threads = pick_threads(threads, load, task, model, train_split, batch_size, phases[0].name, device, trainer.precision)
        probe_seconds = time.perf_counter() - t0
    first_step = _time_first_step(phases[0].optimizer, started if started is not None else time.monotonic())
    average = build_average(trainer, task, model, phases[0], train_loader, device)
    net = torch.compile(model, mode=None if trainer.compile_mode == "default" else trainer.compile_mode) if trainer.compile else model

    main = ranks.main  # only rank 0 writes the run directory
    if main:
        run.create()
        run.started = True
        if config_yaml is not None:
            run.write_config(config_yaml)
        with writing(run.path / plugins.RECORD):
            plugins.write_record(run.path)  # later verbs and resume load the same plugins
        if data.prep is not None:  # the steps predict applies to raw files of the same kind
            with writing(run.path / PREPROCESSING):
                (run.path / PREPROCESSING).write_text(json.dumps(data.prep, indent=2) + "\n")
        if getattr(model, "pretraining", None):  # a DBN's layer-wise pretraining: kept for the summary (resume does not redo it)
            with writing(run.path / PRETRAINING):
                (run.path / PRETRAINING).write_text(json.dumps(model.pretraining, indent=2) + "\n")
    start = None
    if resume is not None:
        start = restore(*resume, model=model, phases=phases, generator=generator)
        distributed.set_rank_rng(start.rank_rng, ranks)
        if main:
            run.restart_metrics(start.history)
        log.info("resuming from %s: epoch %d, batch %d, step %d", resume[0], start.epoch, start.batch, start.step)
        if average is not None and start.average is not None:
            average.load_state_dict(start.average)
        elif average is not None:
            log.warning("resume: checkpoint %s holds no averaged weights (resume.force): the %s average starts from here", resume[0], average.kind.upper())
    if average is not None:
        average.attach(phases[0].optimizer)

    # Periodic checkpoints go to a writer process started now; a run with only time-based, final
    # and interrupt checkpoints (the default) takes a few at most, written in the loop (~10 ms each).
    planned = trainer.checkpoint.every_n_steps or trainer.checkpoint.every_n_epochs
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()) if planned else 0
    kind = ("rank" if not main else trainer.checkpoint.writer if planned else "sync")
    writer = make_writer(kind, run.checkpoints, config_text, trainer.checkpoint.keep_last, state_bytes)
    config_sha256 = config_hash(plain)

    def save_checkpoint(loop: LoopState, model_state) -> Path:
        """Copy the state now; the writer hashes, fsyncs and commits it while training goes on.
        With several ranks, every rank's RNG state is gathered first (all ranks are at this step)."""
        name = f"step-{loop.step:08d}"
        loop.rank_rng = distributed.gather_rng(ranks)
        writer.submit(name, snapshot(loop, model_state, phases, generator, config_sha256))
        return run.checkpoints / name

    loggers = [LOGGERS.build({"name": name, **params}, key=f"logger.{name}", run_dir=run.path) for name, params in spec.logger.items()] if main else []
    run.loggers = loggers  # closed by train() if the run stops before it finishes them
    for logger in loggers:
        logger.log_params(flatten(plain))
    log.info("model=%s (%d parameters) data=%s task=%s device=%s%s", spec.model["name"], count_parameters(model), data.name, spec.task, describe(device), f" x {ranks.world} ranks" if ranks.enabled else "")
    if data.note:
        log.info(data.note)

    def warn(message: str) -> None:
        log.warning(message)
        console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)  # one line, however wide

    progress = progress_display(console, trainer.progress if main else "none", trainer.max_epochs, len(train_loader), batch_size, task.mode)
    grad_norms = GradNorms(model, [ph.optimizer for ph in phases], warn) if main and trainer.log_grad_norms else None
    callbacks = [*([grad_norms] if grad_norms else []), TaskEpochEnd(task, net, run.plots, warn), MetricsLog(run.append_metrics, loggers, by_step=bool(trainer.val_every_n_steps))] if main else []
    callbacks += [c for c in (progress, EpochReport(on_epoch) if on_epoch else None) if c is not None]
    callbacks += test_hooks.from_env(val_loader)
    try:
        with progress or contextlib.nullcontext():
            result = fit(
                net, task, phases, (train_loader, val_loader), trainer, device=device, ranks=ranks,
                penalty=penalty if penalty else None, weights=model.state_dict, callbacks=callbacks,
                save_checkpoint=save_checkpoint, start=start, stop=stop, average=average,
            )
    except (TrainingInterrupted, UserError):
        writer.close()  # the interrupt's checkpoint must be committed (or its error reported) before exiting
        raise
    except BaseException:
        writer.close(quiet=True)
        raise
    finally:
        if grad_norms:
            grad_norms.close()
        if average is not None:
            average.detach()
    writer.close()
    if not main:
        return {}
    curves = draw_history(result.history, run.plots)  # in the plot process, while the run finishes here

    last_checkpoint = checkpoints_of(run.checkpoints)[:1]

    def stopped_here(stage: str) -> None:
        """A signal during the final stages: stop with one line; resume finishes from the last checkpoint."""
        if stop.received is not None:
            raise TrainingInterrupted(stop.received, last_checkpoint[0] if last_checkpoint else None, f"during {stage}")

    last_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    averaging: dict[str, Any] = {}
    if average is not None:  # the averaged weights are the run's: saved and tested; the last trained ones are tested too
        averaging = {"averaging": average.describe()}
        if average.updates:
            averaging["test_unaveraged"] = evaluate(net, task, test_loader, device, trainer.precision, split="test")
            averaging["averaging"]["unaveraged_weights_sha256"] = weights_sha256(last_state)
            last_state = {k: v.detach().clone() for k, v in average.weights().items()}
            stopped_here("the final test")
        else:
            warn(f"trainer.swa.start={average.start} was never reached (the run stopped after epoch {result.epochs}): its weights are not averaged")
    run.save_weights("last", last_state, {"epoch": result.epochs, "step": result.steps})
    best_state = result.best_state or last_state
    run.save_weights("best", best_state, {"epoch": result.best["epoch"] or result.epochs})
    model.load_state_dict(best_state if trainer.test_ckpt == "best" else last_state)
    test_hooks.at("test")
    t0 = time.perf_counter()
    task.keep_predictions(True)  # a classifier's confusion matrix and mistakes, from this same pass
    try:
        test = evaluate(net, task, test_loader, device, trainer.precision, split="test")
        test_seconds = time.perf_counter() - t0
        pictures = task.test_pictures(data.test)
    finally:
        task.keep_predictions(False)
    drawing = draw_pictures(pictures, run.plots) if pictures else None  # in the plot process, after the curves
    members = _member_tests(model, task, test_loader, device, trainer.precision) if spec.ensemble.size > 1 else {}
    stopped_here("the final test")
    test_hooks.at("plots")
    with writing(run.plots):
        extras = task.end_fit(model, run.plots)
        curves.wait()
        if drawing:
            drawing.wait()
    stopped_here("the plots")
    if extras.get("preview"):
        console.print(extras.pop("preview"), highlight=False)

    summary = {
        "task": spec.task,
        "model": spec.model["name"],
        "data": data.name,
        "test": test,
        "test_ckpt": trainer.test_ckpt,
        **averaging,
        **({"cv": {"k": spec.cv.k, "fold": spec.cv.fold}} if spec.cv.k else {}),
        **members,
        **({"distill": {"teacher": spec.distill.teacher, "temperature": spec.distill.temperature, "alpha": spec.distill.alpha, "teacher_test": (teacher_summary or {}).get("test")}} if spec.distill.teacher is not None else {}),
        "best": result.best,
        "final": {k: v for k, v in result.history[-1].items() if k not in ("epoch", "step", "seconds") and "/" not in k},  # not the per-layer norms
        "epochs": result.epochs,
        "steps": result.steps,
        **_iteration_counts(phases),
        **(grad_norms.summary(result.history) if grad_norms else {}),
        **({"pretraining": json_load(run.path / PRETRAINING)} if (run.path / PRETRAINING).is_file() else {}),
        "stopped_early": result.stopped_early,
        "train_seconds": round(result.train_seconds, 4),
        "compile_seconds": round(result.compile_seconds, 4),
        "test_seconds": round(test_seconds, 4),
        "device": describe(device),
        "ranks": ranks.world,
        "threads": threads if device.type == "cpu" else None,
        "threads_probe_seconds": round(probe_seconds, 4),  # trainer.threads=0 timing steps at each count
        "startup_seconds": round(first_step[0], 4) if first_step else None,  # from the command (or train()) to the first optimizer step
        "precision": trainer.precision,
        "seed": spec.seed,
        "parameters": count_parameters(model),
        "weights_sha256": weights_sha256(last_state),
        "best_weights_sha256": weights_sha256(best_state),
        "dataset": data.describe(),
        **extras,
        "versions": {
            "dltrain": dltrain.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    run.write_summary(summary)
    try_run_report(run.path, log.warning, "finished")
    for logger in loggers:  # the trackers get the final metrics and the files, report.html too
        logger.finish(summary, run.path)
    run.loggers = []
    for logger in loggers:
        logger.close()
    return summary


def _member_tests(model: nn.Module, task, loader: TensorLoader, device: torch.device, precision: str) -> dict[str, Any]:
    """An ensemble's members on the test split, alone: each one's metrics, their mean, and for each
    metric the best member's value (the highest accuracy, the lowest loss, ...)."""
    ensemble = model.module if hasattr(model, "module") and isinstance(model.module, Ensemble) else model
    tests = [evaluate(m, task, loader, device, precision, split="test") for m in ensemble.members]
    best = {k: (max if task.mode(k) == "max" else min)(t[k] for t in tests) for k in tests[0]}  # each metric's best member
    return {
        "ensemble": {"size": len(tests), "bagging": bool(getattr(task, "bagging", False)), "vectorized": ensemble.vectorized, "members": tests},
        "test_member_mean": {k: sum(t[k] for t in tests) / len(tests) for k in tests[0]},
        "test_member_best": best,
    }


def build_average(trainer, task, model: nn.Module, phase: Phase, train_loader: TensorLoader, device: torch.device) -> WeightAverage | None:
    """trainer.ema / trainer.swa's averaged copy of `model` (None when both are off); with
    trainer.swa.lr, `phase`'s schedule becomes SWALR after epoch trainer.swa.start."""
    ema, swa = trainer.ema, trainer.swa
    if not (ema.decay or swa.start):
        return None
    if ema.decay:
        return WeightAverage(model, "ema", decay=ema.decay)

    def forward(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, trainer.precision):
            task.step_loss(module, x, y, phase.name)

    # batch-norm statistics over the training data (already where the run's loader keeps it) in a
    # fixed order and without augmentation: the run's loader and its generator stay untouched
    tl = train_loader
    bn_loader = TensorLoader(tl.x, tl.y, tl.batch_size, device=device, limit_batches=trainer.limit_train_batches, drop_last=len(tl.x) % tl.batch_size == 1)
    if swa.lr is not None:
        phase.schedule = SwaSchedule(phase.schedule, phase.optimizer, swa.start, swa.lr, swa.anneal_epochs, swa.anneal_strategy)
    return WeightAverage(model, "swa", start=swa.start, bn_update=swa.bn_update, forward=forward, bn_batches=lambda: iter(bn_loader))


def _iteration_counts(phases) -> dict:
    """A full-batch method's own counts (lbfgs, cg, newton keep them in their state):
    {"optim_counts": {"n_iter": iterations, "func_evals": loss-and-gradient evaluations, and
    for newton "hess_evals": Hessian-vector products}}, or nothing for the other optimizers."""
    optimizer = phases[0].optimizer
    first = next((p for group in optimizer.param_groups for p in group["params"]), None)
    state = optimizer.state.get(first, {}) if first is not None else {}
    counts = {k: int(state[k]) for k in ("n_iter", "func_evals", "hess_evals") if k in state}
    return {"optim_counts": counts} if counts else {}


def _time_first_step(optimizer: torch.optim.Optimizer, started: float) -> list[float]:
    """A list that receives, at the end of the first optimizer step, the seconds since `started`."""
    seconds: list[float] = []

    def first(opt, args, kwargs) -> None:
        if not seconds:  # stays registered: removing a hook while torch iterates over them fails beside other hooks
            seconds.append(time.monotonic() - started)

    optimizer.register_step_post_hook(first)
    return seconds


def pick_threads(most: int, load: CpuLoad | None, task, model: nn.Module, split: Split, batch_size: int, phase: str, device: torch.device, precision: str) -> int:
    """trainer.threads=0 on the CPU: at most the cores other processes leave free, and of those
    the count that runs a training batch's forward pass fastest (timed in eval mode without
    gradients, the random streams forked: the run's weights, statistics and draws are untouched).
    Returns the count, set."""
    free = load.free_cores() if load is not None else None
    most = min(most, free or most)
    if most <= 1:
        torch.set_num_threads(1)
        log.info("torch threads: 1 (%s)", "1 core free: other processes use the rest" if free == 1 else "the most this process may use")
        return 1
    try:
        x, y = split.x[:batch_size].to(device), split.y[:batch_size].to(device)

        def step() -> None:
            with torch.no_grad(), autocast(device, precision):
                task.step_loss(model, x, y, phase)

        model.eval()  # no batch-norm statistics updated, no dropout drawn: the run is as it was
        kept = {k: v.clone() if isinstance(v, torch.Tensor) and v.numel() <= 4096 else v for k, v in vars(task).items()}
        try:
            with torch.random.fork_rng(devices=[]):
                threads, medians = choose_threads(step, most)
        finally:  # the task's own counters (a GAN's discriminator wins) as they were
            vars(task).clear()
            vars(task).update(kept)
    except Exception as e:  # noqa: BLE001  (a model the probe cannot step: the training step will say what is wrong)
        torch.set_num_threads(most)
        log.info("torch threads: %d (not timed: %s)", most, str(e).splitlines()[0] if str(e) else type(e).__name__)
        return most
    finally:
        model.train()
    log.info("torch threads: %d (timed a forward pass: %s; %s cores free)", threads, ", ".join(f"{c}: {t * 1e3:.2f} ms" for c, t in medians.items()), free if free is not None else "?")
    return threads


def _plain_config(cfg: Mapping[str, Any], config_yaml: str | None) -> tuple[dict[str, Any], str]:
    """The config as a plain resolved dict (no hydra node) and as YAML text."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain = {k: v for k, v in plain.items() if k != "hydra"}
    return plain, config_yaml if config_yaml is not None else yaml.safe_dump(plain, sort_keys=False)


def find_resume(trainer, run_dir: Path, plain: dict[str, Any], warn, note=log.info) -> tuple[Path, dict[str, bytes]] | dict | None:
    """The checkpoint to continue from (verified), per trainer.resume; None to start afresh; or
    the summary of a finished run when there is nothing to continue (nothing is rewritten).

    A run dir resumes from its newest checkpoint, which must verify (a run dir without one yet
    starts from the beginning, and `note` says so); a checkpoint dir from itself; `auto` from
    the newest valid checkpoint of this config in this run dir or the unfinished run dirs beside
    it, falling back past damaged ones. A changed config fails with a diff of the changed keys
    unless trainer.resume_force; raising trainer.max_epochs is allowed, and `note` says what it
    changes.
    """

    from dltrain.engine.checkpoint import MANIFEST, checkpoints, config_hash, newest_valid

    if not trainer.resume:
        return None
    if trainer.resume == "auto":
        want, found = config_hash(plain), []
        root = run_dir.resolve().parent
        for ckdir in {run_dir / "checkpoints", *root.glob("*/checkpoints"), *root.parent.glob("*/*/checkpoints")}:
            if (ckdir.parent / "summary.json").is_file() and ckdir.parent.resolve() != run_dir.resolve():
                continue  # a finished run is never adopted
            for p in checkpoints(ckdir):
                try:
                    if json_load(p / "state.json").get("config_sha256") == want:
                        found.append(p)
                except (OSError, ValueError):
                    found.append(p)  # unreadable: newest_valid names and skips it
        if not found:
            log.info("trainer.resume=auto: no checkpoint of this config yet; starting afresh")
            return None
        found.sort(key=lambda p: ((p / MANIFEST).stat().st_mtime if (p / MANIFEST).exists() else 0, p.name), reverse=True)
        path, files = newest_valid(found, fallback=True, warn=warn)
    else:
        target = Path(trainer.resume)
        if (target / MANIFEST).exists() or target.name.startswith("step-"):
            path, files = newest_valid([target], fallback=False)
        else:
            if not target.is_dir():
                raise UserError(f"resume: run directory {str(target)!r} does not exist")
            found = checkpoints(target / "checkpoints")
            finished = _finished(target)
            if not found:
                if finished is not None:
                    if trainer.max_epochs > finished.get("epochs", 0) and not finished.get("stopped_early"):
                        raise UserError(f"resume: {target} finished without a checkpoint to continue from (trainer.checkpoint.every_n_minutes=0); train anew with trainer.max_epochs={trainer.max_epochs}")
                    note(f"resume: {target} has finished ({finished.get('epochs')} epochs); nothing to do")
                    return finished
                note(f"resume: {target} has no checkpoint yet (it stopped before its first); training it from the beginning in the same directory")
                return None
            path, files = newest_valid(found, fallback=False)
            if finished is not None and (trainer.max_epochs <= finished.get("epochs", 0) or finished.get("stopped_early")):
                _check_same_config(trainer, path, files, plain, note)
                note(f"resume: {target} has finished ({finished.get('epochs')} epochs{', stopped early' if finished.get('stopped_early') else ''}); nothing to do (raise trainer.max_epochs to train on)")
                return finished
    _check_same_config(trainer, path, files, plain, note)
    return path, files


def _check_same_config(trainer, path: Path, files: Mapping[str, bytes], plain: dict, note) -> None:
    """A resumed run keeps its config, but for display and cadence keys and a raised max_epochs."""
    import yaml

    from dltrain.engine.checkpoint import config_diff

    if "config.yaml" in files and not trainer.resume_force:
        old = yaml.safe_load(files["config.yaml"]) or {}
        diff = config_diff(old, plain)
        longer = _longer_run(old, plain, note)
        diff = [d for d in diff if not (longer and d.startswith("trainer.max_epochs:"))]
        if diff:
            raise UserError(f"resume: the config differs from checkpoint {path}'s: {'; '.join(diff)} (resume.force=true to resume anyway)")


def _finished(run_dir: Path) -> dict | None:
    """The summary of a finished run (summary.json), or None."""
    try:
        return json_load(run_dir / "summary.json")
    except (OSError, ValueError):
        return None


def _longer_run(old: dict, new: dict, note) -> bool:
    """Whether the only change is a raised trainer.max_epochs that the run can follow; says what it means."""
    before = (old.get("trainer") or {}).get("max_epochs")
    after = (new.get("trainer") or {}).get("max_epochs")
    if not isinstance(before, int) or not isinstance(after, int) or after <= before:
        return False
    sched = (new.get("sched") or {}).get("name")
    if sched == "onecycle":
        raise UserError(f"resume: trainer.max_epochs {before} -> {after}: sched=onecycle's cycle is fixed to the first {before} epochs; train anew, or resume.force=true with another sched")
    shape = f"; sched={sched} now spans {after} epochs, so the learning rate from here on follows the longer schedule" if sched in ("cosine", "warmup_cosine") else ""
    note(f"resume: trainer.max_epochs {before} -> {after}: training continues to epoch {after}{shape}")
    return True


def json_load(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def build_phase(spec: RunSpec, task, model: nn.Module, name: str, steps_per_epoch: int, clip_grad: float | None = None) -> Phase:
    """The optimizer, schedule and grad scaler of one task phase ("d" uses optim_d and sched_d)."""
    optim_cfg, sched_cfg, key = (spec.optim_d, spec.sched_d, "optim_d") if name == "d" else (spec.optim, spec.sched, "optim")
    params = list(task.phase_params(model, name))
    repeat = task.phase_repeats(model, name)
    optimizer = OPTIMIZERS.build(optim_cfg, key=key, params=params)
    schedule = build_schedule(sched_cfg, optimizer, steps_per_epoch * repeat, spec.trainer.max_epochs)
    device_type = params[0].device.type if params else "cpu"
    scaler = torch.amp.GradScaler(device_type, enabled=spec.trainer.precision == "16")
    entry = OPTIMIZERS.get(optim_cfg["name"])
    closure = bool(entry.meta.get("closure"))
    rule = model.learn if entry.meta.get("rule") else None  # optim=rule: the model's own learning rule
    return Phase(name, optimizer, schedule, params, repeat, scaler, closure, clip_grad, rule)
