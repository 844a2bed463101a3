"""Test hooks: signals and kills at exact points of a run, for the tests that run dltrain as a
subprocess (a kill cannot be monkeypatched into another process).

    DLTRAIN_TEST_KILL=step:N     SIGKILL right after optimizer step N (pending checkpoints written first)
    DLTRAIN_TEST_KILL=sigint:N   SIGINT after step N (sigterm:N: SIGTERM; sigint2:N: two SIGINTs)
    DLTRAIN_TEST_KILL=sigterm2:N two SIGTERMs, 0.15 s apart, after step N
    DLTRAIN_TEST_KILL=eval:N     SIGKILL during epoch N's validation, after its first batch
    DLTRAIN_TEST_KILL=sigterm@test   SIGTERM as the final test begins (sigterm@plots: the plots)
    DLTRAIN_TEST_KILL_RANK=K     data-parallel runs: only rank K fires
    (save:N is engine/atomic.py's: a kill in the middle of the N-th checkpoint write)

Read once, when a run starts: unset, `from_env` returns no callback and the loop has no hook.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable

import torch

from dltrain.engine.callbacks import Callback
from dltrain.engine.writer import Writer

SIGNALS = {"sigint": [signal.SIGINT], "sigint2": [signal.SIGINT] * 2, "sigterm": [signal.SIGTERM], "sigterm2": [signal.SIGTERM] * 2}


def from_env(val_loader: Iterable) -> list[Callback]:
    """The hook DLTRAIN_TEST_KILL asks for, as a callback list (empty when none is set for this rank)."""
    what, _, n = os.environ.get("DLTRAIN_TEST_KILL", "").partition(":")
    rank = os.environ.get("RANK", "0")
    if os.environ.get("DLTRAIN_TEST_KILL_RANK", rank) != rank:
        return []
    if what == "step" or what in SIGNALS:
        return [AfterStep(what, int(n))]
    if what == "eval":
        return [DuringValidation(int(n), val_loader)]
    return []


def _kill() -> None:
    Writer.flush_all()  # "killed after step N" means after the checkpoints taken so far are on disk
    os.kill(os.getpid(), signal.SIGKILL)


class AfterStep(Callback):
    def __init__(self, what: str, step: int) -> None:
        self.what, self.step, self.fired = what, step, False

    def on_step_end(self, epoch: int, batch: int, step: int, losses: torch.Tensor) -> None:
        if step != self.step or self.fired:
            return
        self.fired = True
        if self.what == "step":
            _kill()
        signals = SIGNALS[self.what]
        os.kill(os.getpid(), signals[0])
        if self.what == "sigterm2":  # the second arrives while the first one's checkpoint is being saved
            threading.Timer(0.15, os.kill, (os.getpid(), signals[1])).start()
        elif len(signals) > 1:
            os.kill(os.getpid(), signals[1])


class DuringValidation(Callback):
    def __init__(self, epoch: int, val_loader: Iterable) -> None:
        self.epoch, self.val_loader = epoch, val_loader

    def on_validation_start(self, epoch: int) -> None:
        if epoch == self.epoch:
            next(iter(self.val_loader))  # the first validation batch is computed
            _kill()


def at(stage: str) -> None:
    """Send SIGTERM at a stage after training (`stage`: test, plots) if DLTRAIN_TEST_KILL asks."""
    if os.environ.get("DLTRAIN_TEST_KILL") == f"sigterm@{stage}":
        os.kill(os.getpid(), signal.SIGTERM)
