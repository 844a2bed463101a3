"""The training loop, readable top to bottom: train an epoch, validate, keep the best, checkpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dltrain.engine import distributed
from dltrain.engine.averaging import WeightAverage
from dltrain.engine.callbacks import Callback, per_step
from dltrain.engine.checkpoint import LoopState, NonFiniteWeights, StopSignals, TrainingInterrupted, _task_state, load_task_state
from dltrain.engine.device import autocast
from dltrain.engine.distributed import Ranks
from dltrain.engine.loader import TensorLoader
from dltrain.engine.settings import TrainerConfig
from dltrain.errors import UserError
from dltrain.optim import Schedule

log = logging.getLogger("dltrain")
_NO_CONTEXT = contextlib.nullcontext()  # reusable

# Data-parallel ranks agree on whether a stop signal arrived every this many optimizer steps (and
# at every epoch end): one all-reduce per step would cost a small model a fifth of its step time.
SIGNAL_SYNC_STEPS = 16


@dataclass
class FitResult:
    epochs: int
    steps: int
    train_seconds: float  # without compile_seconds
    stopped_early: bool
    best: dict[str, float]
    best_state: dict[str, torch.Tensor] | None
    history: list[dict] = field(default_factory=list)
    compile_seconds: float = 0.0  # trainer.compile: the steps with a new input shape and the first evaluation


@dataclass
class Phase:
    """One optimisation phase of a training step: its optimizer, schedule, parameters and how it steps.

    Most tasks have one phase; a GAN has two (discriminator "d" then generator "g"). `scaler` is a
    GradScaler, enabled only for trainer.precision=16 (disabled, each of its calls is a no-op);
    `closure`: the optimizer re-evaluates the loss itself (L-BFGS, CG, Newton); `clip_grad`: the largest
    global gradient norm allowed; `rule`: the model's own learning rule, ``rule(x, y, lr)``, applied
    instead of a gradient step (optim=rule: the perceptron rule, a least-squares solve).
    """

    name: str
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    params: list[nn.Parameter]
    repeat: int = 1
    scaler: torch.amp.GradScaler | None = None
    closure: bool = False
    clip_grad: float | None = None
    rule: Callable[[torch.Tensor, torch.Tensor, float], None] | None = None

    def __post_init__(self) -> None:
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler(enabled=False)


@torch.inference_mode()
def evaluate(model: nn.Module, task, loader: TensorLoader, device: torch.device, precision: str, split: str = "val", ranks: Ranks = Ranks()) -> dict[str, float]:
    """The task's metrics over every batch of `loader` (one host sync at the end).

    With several ranks, each evaluates its shard of the loader and the task's state (sums) is
    added up over ranks; rank 0's metrics are then everyone's, so that early stopping and best
    checkpoints decide alike on every rank (a GAN's sample metrics draw per-rank noise)."""
    was_training = model.training
    model.eval()
    state = task.new_state(device)
    with autocast(device, precision):
        for x, y in loader:
            task.update(state, model, x, y)
    if ranks.enabled:
        distributed.sum_over_ranks_(state)
    metrics = task.finish_evaluation(model, task.compute(state), split)
    model.train(was_training)
    return distributed.from_rank_0(metrics, ranks)


def _better(value: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    return value < best - min_delta if mode == "min" else value > best + min_delta


def fit(
    model: nn.Module,
    task,
    phases: Sequence[Phase],
    loaders: tuple[TensorLoader, TensorLoader],
    trainer: TrainerConfig,
    *,
    device: torch.device,
    ranks: Ranks = Ranks(),
    penalty: Callable[[], torch.Tensor] | None = None,
    weights: Callable[[], Mapping[str, torch.Tensor]] | None = None,
    callbacks: Sequence[Callback] = (),
    save_checkpoint: Callable[[LoopState, Mapping[str, torch.Tensor]], Path] | None = None,
    start: LoopState | None = None,
    stop: StopSignals | None = None,
    average: WeightAverage | None = None,
) -> FitResult:
    """Train `model` on `loaders` (train, val) for trainer.max_epochs, or until early stopping.

    `penalty()` is added to every loss (L1/L2 regularisers). `weights()` returns the weights to
    keep as "best" and to checkpoint (the uncompiled module's state dict; default: `model`'s).
    `callbacks` act at the points engine/callbacks.py lists. `save_checkpoint(loop_state,
    weights)` writes a full checkpoint (every_n_steps, every_n_epochs, on SIGINT/SIGTERM;
    NonFiniteWeights if the weights are not finite); `start` continues from a restored
    checkpoint exactly where it stopped; `stop` are the caller's signal handlers (default: fit's
    own). Checkpoints are taken every_n_steps, every_n_epochs, at an epoch end when the last one
    is older than every_n_minutes, after the last epoch (when any of them is on), and on a signal.
    With several `ranks`, DDP wraps the training step, each rank trains on its shard of every
    batch and the training loss is averaged over ranks. With an `average` (trainer.ema,
    trainer.swa), the averaged weights are validated, kept as best and checkpointed once they
    stand for the model (EMA: always; SWA: from its first averaged epoch, and from then on only
    averaged epochs compete for best).
    """
    train_loader, val_loader = loaders
    accumulate, closure = trainer.accumulate, any(ph.closure for ph in phases)
    amp = autocast(device, trainer.precision)
    weights = weights or model.state_dict
    monitor, stop_monitor, patience = trainer.checkpoint.monitor, trainer.early_stop.monitor, trainer.early_stop.patience
    every_steps, every_epochs = trainer.checkpoint.every_n_steps, trainer.checkpoint.every_n_epochs
    every_seconds = trainer.checkpoint.every_n_minutes * 60
    checkpointing = bool(every_steps or every_epochs or every_seconds)
    n_batches, loss_names = len(train_loader), ["train_loss"] if len(phases) == 1 else [f"train_{p.name}_loss" for p in phases]
    nan_skip, max_skips, skips = trainer.nan == "skip", trainer.nan_max_skips, 0
    step_callbacks = per_step(callbacks)
    val_every = trainer.val_every_n_steps  # validations inside an epoch too: a row, best and early stopping each

    s = start or LoopState()
    step, history, best_state, stopped_early = s.step, list(s.history), s.best_state, False
    best = s.best or {"epoch": 0, monitor: math.inf if task.mode(monitor) == "min" else -math.inf}
    stop_best = s.stop_best if start else (math.inf if task.mode(stop_monitor) == "min" else -math.inf)
    bad_epochs = s.bad_epochs
    first_epoch = s.epoch + 1 if s.epoch_done else s.epoch
    if start and s.epoch_done:
        load_task_state(task, s.task)
    if start and patience and bad_epochs >= patience:  # it had stopped early (perhaps inside an epoch): nothing more to train
        first_epoch, stopped_early = trainer.max_epochs + 1, True

    def forward_loss(x: torch.Tensor, y: torch.Tensor, phase: str, weight: float = 1.0) -> torch.Tensor:
        with amp:
            loss = task.step_loss(model, x, y, phase)
            if weight != 1.0:  # this rank's share of an unevenly split batch
                loss = loss * weight
            return loss + penalty() if penalty else loss

    ddp = ranks.enabled  # read once: the per-step path below tests it
    train_step = distributed.wrap(model, forward_loss, ranks, device, len(phases)) if ddp else forward_loss

    def check_finite(batch: int) -> None:
        """Per-batch losses stay on the device; they are checked here (epoch end, before a
        checkpoint) so the per-step path has no host sync, and the first bad step is named."""
        if nan_skip or math.isfinite(losses.sum().item()):  # rows past `batch` are zeros; one reduction
            return
        bad = (~torch.isfinite(losses[:batch])).any(1).nonzero()
        if not len(bad):  # the sum overflowed: every loss is finite
            return
        j = int(bad[0]) + 1  # the first bad batch
        bad_step = epoch_step0 + (j if closure else -(-j // accumulate))
        raise UserError(
            f"training diverged: the loss became non-finite at step {bad_step} (epoch {epoch}, batch {j}); "
            f"no checkpoint holds non-finite weights; lower optim.lr, add reg=grad_clip, use trainer.precision=32 or trainer.nan=skip"
        )

    def checkpoint(epoch: int, batch: int, done: bool) -> Path | None:
        if save_checkpoint is None:
            return None
        check_finite(batch)
        loop = LoopState(
            epoch=epoch, batch=batch, epoch_done=done, step=step, losses=None if done else distributed.mean_over_ranks(losses, ranks), best=best,
            stop_best=stop_best, bad_epochs=bad_epochs, history=history, train_seconds=elapsed + time.perf_counter() - t_start - compile_seconds,
            task=_task_state(task), order=train_loader.order, best_state=best_state,
            average=average.state_dict() if average is not None else None,
        )
        try:
            saved_at[0] = time.monotonic()
            return save_checkpoint(loop, weights())
        except NonFiniteWeights:
            raise UserError(f"training diverged: the weights became non-finite by step {step} (epoch {epoch}); not checkpointed; lower optim.lr or add reg=grad_clip") from None

    def judge(row: dict[str, Any], averaged: bool) -> None:
        """A validation's row: the best weights so far, and early stopping (its patience counts
        validations: epochs, or with val_every_n_steps every validation)."""
        nonlocal best, best_state, stop_best, bad_epochs, stopped_early
        if _better(row[monitor], best[monitor], task.mode(monitor)):
            best = {"epoch": row["epoch"], **({"step": row["step"]} if val_every else {}), **{k: v for k, v in row.items() if k.startswith("val_")}}
            best_state = {k: v.detach().clone() for k, v in (average.weights() if averaged else weights()).items()}
        if patience:
            if _better(row[stop_monitor], stop_best, task.mode(stop_monitor), trainer.early_stop.min_delta):
                stop_best, bad_epochs = row[stop_monitor], 0
            else:
                bad_epochs += 1
                stopped_early = bad_epochs >= patience

    def validation(epoch: int, averaged: bool) -> dict[str, float]:
        """The val_* metrics of the model now (of its averaged weights if `averaged`); the first
        evaluation of a compiled model is compile time."""
        nonlocal compile_seconds, first_eval
        for cb in callbacks:
            cb.on_validation_start(epoch)
        t_eval = time.perf_counter()
        val = evaluate(average.module if averaged else model, task, val_loader, device, trainer.precision, ranks=ranks)
        if first_eval:
            compile_seconds, first_eval = compile_seconds + _seconds_since(t_eval, device), False
        return {f"val_{k}": v for k, v in val.items()}

    def validate_inside(epoch: int, batch: int) -> None:
        """trainer.val_every_n_steps: validate after `batch` of `epoch` (not its last); the row's
        epoch is fractional (2.25: a quarter into the 3rd), its train losses the epoch's so far."""
        check_finite(batch)
        so_far = (distributed.mean_over_ranks(losses, ranks) if ddp else losses)[:batch].mean(0).tolist()
        averaged = average is not None and average.active(epoch - 1)  # SWA: the mean of the epochs before this one
        row = {"epoch": epoch - 1 + min(max(batch * 1000 // n_batches, 1), 999) / 1000, "step": step, **dict(zip(loss_names, so_far, strict=True)), **validation(epoch, averaged)}
        row["lr"] = phases[-1].optimizer.param_groups[0]["lr"]
        row["seconds"] = time.perf_counter() - t_epoch
        history.append(row)
        for cb in callbacks:
            cb.on_validation_end(row)
        judge(row, averaged)

    saved_at = [time.monotonic()]  # when the last checkpoint was taken (every_n_minutes)
    elapsed, t_start = s.train_seconds, time.perf_counter()
    # trainer.compile: steps with an input shape not seen before (the first, an epoch's last
    # partial batch) and the first evaluation are where compiling happens; timed apart
    compile_on = trainer.compile
    compile_seconds, compiled_shapes, first_eval = 0.0, set(), compile_on
    model.train()
    with contextlib.nullcontext(stop) if stop is not None else StopSignals() as stop:
        for epoch in range(first_epoch, trainer.max_epochs + 1):
            t_epoch = time.perf_counter()
            for cb in callbacks:
                cb.on_epoch_start(epoch)
            task.start_epoch(epoch)
            resumed = start is not None and not s.epoch_done and epoch == s.epoch
            losses = torch.zeros(n_batches, len(phases), device=device)  # each batch's loss per phase
            if resumed:  # mid-epoch: the same permutation, from the next unseen batch
                load_task_state(task, s.task)
                if s.batch:
                    losses[: s.batch] = torch.as_tensor(s.losses, dtype=torch.float32)[: s.batch].to(device)
                batches = train_loader.batches(start=s.batch, order=s.order)
            else:
                batches = train_loader.batches()
            epoch_step0 = step - (s.batch if closure else -(-s.batch // accumulate)) if resumed else step
            for i, (x, y) in enumerate(batches, start=s.batch + 1 if resumed else 1):
                weight = train_loader.weight(i - 1) if ddp else 1.0
                compiling = compile_on and x.shape not in compiled_shapes
                t_step = time.perf_counter() if compiling else 0.0
                for k, ph in enumerate(phases):
                    opt, scaler = ph.optimizer, ph.scaler
                    for _ in range(ph.repeat):
                        if ph.rule is not None:  # no gradients: the batch's loss before the model's rule updates it

                            def apply_rule(lr: float, ph=ph, x=x, y=y, weight=weight) -> torch.Tensor:
                                loss = train_step(x, y, ph.name, weight)
                                ph.rule(x, y, lr)
                                return loss

                            loss = opt.step(apply_rule)  # under no_grad; step hooks (EMA, SWA) run
                            ph.schedule.after_step()
                            continue
                        if ph.closure:  # quasi-Newton: the optimizer re-evaluates loss and gradient itself

                            def step_closure(backward: bool = True, opt=opt, ph=ph, x=x, y=y, weight=weight) -> torch.Tensor:
                                # backward=False: the loss with its graph, gradients untouched (Newton differentiates twice)
                                if not backward:
                                    return train_step(x, y, ph.name, weight)
                                opt.zero_grad(set_to_none=True)
                                loss = train_step(x, y, ph.name, weight)
                                loss.backward()
                                return loss

                            loss = opt.step(step_closure)
                            ph.schedule.after_step()
                            continue
                        if (i - 1) % accumulate == 0:  # a new accumulation group (other phases may have left grads)
                            opt.zero_grad(set_to_none=True)
                        boundary = i % accumulate == 0 or i == n_batches
                        with train_step.no_sync() if ddp and not boundary else _NO_CONTEXT:
                            loss = train_step(x, y, ph.name, weight)
                            scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
                        if boundary:
                            if nan_skip and not scaler.is_enabled() and not _grads_finite(loss, ph.params):
                                skips = _skipped(skips, max_skips, step, epoch)  # the host sync is the price of nan=skip
                                opt.zero_grad(set_to_none=True)
                                continue
                            if ph.clip_grad:
                                scaler.unscale_(opt)
                                nn.utils.clip_grad_norm_(ph.params, ph.clip_grad)
                            scale = scaler.get_scale()  # disabled: 1.0, no sync
                            scaler.step(opt)
                            scaler.update()
                            if scaler.get_scale() < scale:  # inf/nan gradients: the scaler skipped the step,
                                skips = _skipped(skips, max_skips, step, epoch) if nan_skip else skips
                                continue  # ... and the schedule does not advance
                            ph.schedule.after_step()
                            skips = 0
                    losses[i - 1, k] = loss.detach()
                if closure or i % accumulate == 0 or i == n_batches:
                    step += 1
                    if val_every and step % val_every == 0 and i < n_batches:
                        validate_inside(epoch, i)
                    if (every_steps and step % every_steps == 0) or (stopped_early and checkpointing):
                        checkpoint(epoch, i, False)
                    if ddp:  # every rank agrees, so all of them stop at the same step
                        signum = distributed.agree_signal(stop.received) if step % SIGNAL_SYNC_STEPS == 0 else None
                    else:
                        signum = stop.received
                    if signum is not None:  # Ctrl-C / SIGTERM: stop at this safe point
                        raise TrainingInterrupted(signum, checkpoint(epoch, i, False))
                for cb in step_callbacks:
                    cb.on_step_end(epoch, i, step, losses)
                if compiling:
                    compile_seconds += _seconds_since(t_step, device)
                    compiled_shapes.add(x.shape)
                if stopped_early:  # by a validation inside the epoch
                    break
            if stopped_early:
                log.info("early stopping: %s did not improve for %d validations", stop_monitor, patience)
                break

            if ddp:  # each rank's weighted share: the mean over ranks is the whole batch's loss
                losses = distributed.mean_over_ranks(losses, ranks)
            check_finite(n_batches)
            train_losses = losses.mean(0).tolist()
            for name, value in zip(loss_names, train_losses, strict=True):
                if not math.isfinite(value) and not nan_skip:
                    raise UserError(
                        f"training diverged: {name}={value} in epoch {epoch} (step {step}); "
                        f"lower optim.lr, add reg=grad_clip, or use trainer.precision=32"
                    )
            if average is not None:
                average.end_epoch(epoch)  # SWA: this epoch's weights into the mean
            averaged = average is not None and average.active(epoch)
            row = {"epoch": epoch, "step": step, **dict(zip(loss_names, train_losses, strict=True)), **validation(epoch, averaged)}
            for ph in phases:
                ph.schedule.after_epoch(row.get(task.monitor, row.get("val_loss")))
            row["lr"] = phases[-1].optimizer.param_groups[0]["lr"]
            row["seconds"] = time.perf_counter() - t_epoch
            history.append(row)
            for cb in callbacks:  # metrics.csv, loggers, the task's grids, the display; a sweep's pruning may raise
                cb.on_epoch_end(row)

            if averaged and average.kind == "swa" and epoch == average.start:  # from here on only averaged weights compete
                best = {"epoch": 0, monitor: math.inf if task.mode(monitor) == "min" else -math.inf}
            judge(row, averaged)
            due = (every_epochs and epoch % every_epochs == 0) or (every_seconds and time.monotonic() - saved_at[0] >= every_seconds)
            last = stopped_early or epoch == trainer.max_epochs  # a finished run can be continued (trainer.max_epochs raised)
            if ddp and every_seconds and not every_epochs:  # ranks' clocks differ: rank 0 decides
                due = bool(distributed.from_rank_0({"due": float(bool(due))}, ranks)["due"])
            saved = checkpoint(epoch, n_batches, True) if due or (last and checkpointing) else None
            signum = distributed.agree_signal(stop.received) if ddp else stop.received
            if signum is not None:
                raise TrainingInterrupted(signum, saved or checkpoint(epoch, n_batches, True))
            if stopped_early:
                log.info("early stopping: %s did not improve for %d epochs", stop_monitor, patience)
                break

    return FitResult(
        epochs=sum(1 for row in history if float(row["epoch"]).is_integer()),  # not the validations inside epochs
        steps=step,
        train_seconds=elapsed + time.perf_counter() - t_start - compile_seconds,
        stopped_early=stopped_early,
        best=best,
        best_state=best_state,
        history=history,
        compile_seconds=compile_seconds,
    )


def _seconds_since(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _skipped(skips: int, max_skips: int, step: int, epoch: int) -> int:
    """Count one more consecutive skipped update; too many is divergence."""
    if skips + 1 > max_skips:
        raise UserError(f"training diverged: {skips + 1} consecutive non-finite steps up to step {step + 1} (epoch {epoch}); trainer.nan_max_skips={max_skips}")
    return skips + 1


def _grads_finite(loss: torch.Tensor, params: Sequence[nn.Parameter]) -> bool:
    """Is this update finite (loss and every gradient)? One host sync."""
    checks = [torch.isfinite(loss.detach()).all()]
    checks += [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
    return bool(torch.stack(checks).all())
