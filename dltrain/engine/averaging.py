"""Weight averaging (trainer.ema, trainer.swa): the averaged weights are the ones validated, kept
as best, checkpointed, tested and saved.

- EMA (`trainer.ema.decay=d`): after every optimizer step, avg <- d * avg + (1 - d) * weights,
  parameters and buffers alike (batch-norm statistics included); the first step copies.
- SWA (`trainer.swa.start=s`): the mean of the weights at the end of epochs s, s+1, ...; its
  batch-norm statistics are recomputed for the averaged weights over the training data after
  each update (`bn_update`), and with `trainer.swa.lr` the learning rate anneals to that value
  from epoch s+1 on (SWALR) instead of following the base schedule.

Both are torch's own `torch.optim.swa_utils` (AveragedModel, SWALR, update_bn). Their state
(the averaged weights and the number of updates; SWALR's and the base schedule's) is part of a
full checkpoint, so a resumed run continues the same average bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn

from dltrain.optim import Schedule


class WeightAverage:
    """An EMA or SWA of `model`'s weights (`kind` "ema" or "swa").

    `forward(module, x, y)` runs one training forward pass of `module` (the task's loss: batch
    norm sees what it sees in training); `bn_batches()` yields the (x, y) batches that SWA's
    batch-norm statistics are recomputed over, in a fixed order. Neither touches the run's
    random streams (dropout during the statistics pass draws from a forked generator).
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        *,
        decay: float = 0.0,
        start: int = 0,
        bn_update: bool = True,
        forward: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any] | None = None,
        bn_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ) -> None:
        if kind not in ("ema", "swa"):
            raise ValueError(f"kind={kind!r}: allowed: ema, swa")
        self.model, self.kind, self.decay, self.start = model, kind, decay, start
        if kind == "ema":
            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        else:
            self.averaged = AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn(), use_buffers=False)
        self.averaged.requires_grad_(False)  # a copy: never trained, no gradients
        self.bn = kind == "swa" and bn_update and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        self.forward, self.bn_batches = forward, bn_batches
        if self.bn and (forward is None or bn_batches is None):
            raise ValueError("bn_update needs forward and bn_batches")
        self.updates = 0  # a Python count of self.averaged.n_averaged (no device sync to read it)
        self._hook = None
        self._pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]] | None = None  # EMA: (averaged, trained) tensors per dtype

    @property
    def module(self) -> nn.Module:
        """The averaged model (same parameter and buffer names as `model`)."""
        return self.averaged.module

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """EMA: update after every step of `optimizer` (a step a grad scaler skips is no step)."""
        if self.kind == "ema" and self._hook is None:
            self._hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: self._update())

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _update(self) -> None:
        if self.kind == "ema" and self.updates:  # the per-step path: no host sync
            self._ema_step()
        else:
            self.averaged.update_parameters(self.model)  # reads n_averaged on the host: fine once an epoch
        self.updates += 1

    def _ema_step(self) -> None:
        """AveragedModel.update_parameters' EMA after its first (copying) update, without its two
        host syncs on n_averaged per call: the same `multi_avg_fn` on the same tensors, grouped by dtype."""
        if self._pairs is None:
            from itertools import chain

            groups: dict[torch.dtype, tuple[list, list]] = {}
            mine, theirs = chain(self.module.parameters(), self.module.buffers()), chain(self.model.parameters(), self.model.buffers())
            for a, m in zip(mine, theirs, strict=True):
                groups.setdefault(a.dtype, ([], []))
                groups[a.dtype][0].append(a.detach())
                groups[a.dtype][1].append(m.detach())
            self._pairs = list(groups.values())
        for averaged, current in self._pairs:
            self.averaged.multi_avg_fn(averaged, current, self.averaged.n_averaged)
        self.averaged.n_averaged += 1

    def active(self, epoch: int) -> bool:
        """Whether the averaged weights stand for the model at the end of `epoch` (validated,
        kept as best): EMA once it has been updated, SWA from its first averaged epoch."""
        return self.updates > 0 and (self.kind == "ema" or epoch >= self.start)

    def end_epoch(self, epoch: int) -> None:
        """SWA: add this epoch's final weights to the mean and recompute batch-norm statistics."""
        if self.kind != "swa" or epoch < self.start:
            return
        self._update()
        if self.bn:
            self.update_bn()

    def update_bn(self) -> None:
        """Batch-norm running statistics of the averaged weights: torch's `update_bn` (stats
        reset, cumulative averages over one pass of the training data, train mode inside)."""
        device = next(self.module.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            update_bn(([batch] for batch in self.bn_batches()), _Forward(self.module, self.forward))

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights as `model.state_dict()` names them (live tensors)."""
        return self.module.state_dict()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.averaged.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.averaged.load_state_dict(state)
        self.updates = int(self.averaged.n_averaged)

    def describe(self) -> dict[str, Any]:
        """summary.json's `averaging`."""
        if self.kind == "ema":
            return {"kind": "ema", "decay": self.decay, "updates": self.updates}
        return {"kind": "swa", "start": self.start, "updates": self.updates, "bn_update": self.bn}


class _Forward(nn.Module):
    """What torch's update_bn calls: `module` holds the batch-norm layers it resets and
    refills; each batch goes through the task's training forward pass."""

    def __init__(self, module: nn.Module, forward: Callable) -> None:
        super().__init__()
        self.module, self.fn = module, forward

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor]) -> Any:
        return self.fn(self.module, *batch)


class SwaSchedule(Schedule):
    """trainer.swa.lr: the base schedule up to the end of epoch `start`, then SWALR: from where
    the base schedule left the learning rate to `lr` over `anneal_epochs` epochs (cos or linear),
    then constant. SWALR is made at the end of epoch `start` (made earlier, with anneal_epochs=0
    it would set the rate at once). Its checkpoint state is {"base", "swa", "epochs"}."""

    def __init__(self, base: Schedule, optimizer: torch.optim.Optimizer, start: int, lr: float, anneal_epochs: int, strategy: str) -> None:
        super().__init__(None, "epoch")
        self.base, self.optimizer, self.start = base, optimizer, start
        self.lr, self.anneal_epochs, self.strategy = lr, anneal_epochs, strategy
        self.swalr: SWALR | None = None
        self.epochs = 0  # epochs finished
        self.scheduler = self  # what a checkpoint saves: state_dict / load_state_dict below

    def after_step(self) -> None:
        if self.swalr is None:
            self.base.after_step()

    def after_epoch(self, monitored: float | None) -> None:
        self.epochs += 1
        if self.swalr is None and self.epochs >= self.start:
            self.swalr = self._make()
        if self.swalr is not None:
            self.swalr.step()
        else:
            self.base.after_epoch(monitored)

    def _make(self) -> SWALR:
        return SWALR(self.optimizer, swa_lr=self.lr, anneal_epochs=self.anneal_epochs, anneal_strategy=self.strategy)

    def state_dict(self) -> dict[str, Any]:
        base = self.base.scheduler.state_dict() if self.base.scheduler is not None else None
        return {"base": base, "swa": self.swalr.state_dict() if self.swalr is not None else None, "epochs": self.epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.base.scheduler is not None and state["base"] is not None:
            self.base.scheduler.load_state_dict(state["base"])
        self.epochs = int(state["epochs"])
        if state["swa"] is not None:
            lrs = [group["lr"] for group in self.optimizer.param_groups]  # as the optimizer's state has them
            self.swalr = self._make()  # its first step may change them: put back, then its own state
            for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            self.swalr.load_state_dict(state["swa"])
