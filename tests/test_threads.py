"""trainer.threads=0: as many torch threads as make a step faster, never more than the free cores."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from dltrain.engine import device
from dltrain.engine.cpus import CpuLoad, usable_cpus
from tests.conftest import torch_threads

TINY = ("trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.limit_val_batches=1", "trainer.checkpoint.every_n_steps=3", "trainer.checkpoint.keep_last=0")


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def fake_step(seconds_at: dict[int, float], calls: list[int]):
    """A step that takes seconds_at[threads] (sleeping), recording the thread count of each call."""

    def step() -> None:
        n = torch.get_num_threads()
        calls.append(n)
        time.sleep(seconds_at[n])

    return step


def test_counts_tried():
    assert device.thread_counts(1) == [1]
    assert device.thread_counts(2) == [1, 2]
    assert device.thread_counts(6) == [1, 2, 4, 6]
    assert device.thread_counts(8) == [1, 2, 4, 8]


def test_more_threads_only_where_they_make_a_step_clearly_faster():
    calls: list[int] = []
    chosen, medians = device.choose_threads(fake_step({1: 0.010, 2: 0.005}, calls), 2)
    assert chosen == 2 and torch.get_num_threads() == 2 and medians[2] < medians[1]
    calls.clear()
    chosen, _ = device.choose_threads(fake_step({1: 0.010, 2: 0.010}, calls), 2)  # no gain: the fewer threads
    assert chosen == 1 and torch.get_num_threads() == 1 and 2 in calls
    # interleaved: every round tries each count once
    rounds = [calls[i : i + 2] for i in range(3, len(calls), 2)]
    assert rounds and all(r == [1, 2] for r in rounds), calls


def test_a_small_step_stays_on_one_thread_without_trying_more():
    calls: list[int] = []
    chosen, medians = device.choose_threads(fake_step({1: 0.0002, 2: 0.00001}, calls), 2)
    assert chosen == 1 and set(calls) == {1} and len(calls) == 2 and list(medians) == [1]


def test_a_long_step_is_timed_once_per_count():
    calls: list[int] = []
    chosen, medians = device.choose_threads(fake_step({1: 0.05, 2: 0.03}, calls), 2)
    assert calls == [1, 1, 2] and chosen == 2  # a warm-up and one timing at 1, one timing at 2


def test_cpu_load_sees_a_busy_process_beside_it():
    if not CpuLoad().start:
        pytest.skip("no /proc/stat here")
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # it is running
        load = CpuLoad()
        time.sleep(0.6)
        busy = load.busy_elsewhere()
        assert busy is not None and busy >= 0.6, busy
        assert load.free_cores() <= max(1, usable_cpus() - 1)  # the burner's core is not free
    finally:
        burner.kill()
        burner.wait()
    assert CpuLoad().busy_elsewhere() is None  # too little time to tell


def test_the_choice_is_recorded_and_resume_reuses_it(run_train, tmp_path, monkeypatch, two_threads):
    from dltrain import training
    from dltrain.engine.checkpoint import TrainingInterrupted

    def chooser(step, most):
        step()  # the real forward pass: it changes nothing in the run
        torch.set_num_threads(2)
        return 2, {1: 0.01, 2: 0.005}

    monkeypatch.setattr(training, "choose_threads", chooser)
    full = run_train(tmp_path / "full", *TINY)
    assert full["threads"] == 2
    monkeypatch.setattr(training, "choose_threads", lambda *a: (1, {1: 0.0}))  # were it asked again, it would differ
    alone = run_train(tmp_path / "alone", *TINY)
    assert alone["threads"] == 1

    monkeypatch.setattr(training, "choose_threads", chooser)
    monkeypatch.setenv("DLTRAIN_TEST_KILL", "sigint:5")
    with pytest.raises(TrainingInterrupted):
        run_train(tmp_path / "run", *TINY)
    monkeypatch.delenv("DLTRAIN_TEST_KILL")
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["threads"] == 2

    def never(*a):
        raise AssertionError("resume must reuse the recorded count")

    monkeypatch.setattr(training, "choose_threads", never)
    resumed = run_train(tmp_path / "run", *TINY, f"trainer.resume={tmp_path / 'run'}")
    assert resumed["threads"] == 2 and resumed["weights_sha256"] == full["weights_sha256"]


def test_no_free_core_means_one_thread_untimed(train_run, monkeypatch, two_threads):
    from dltrain import training

    monkeypatch.setattr(CpuLoad, "free_cores", lambda self: 1)
    monkeypatch.setattr(training, "choose_threads", lambda *a: pytest.fail("timed although no core is free"))
    summary, run = train_run("trainer.max_epochs=1", "trainer.limit_train_batches=2")
    assert summary["threads"] == 1


def test_set_threads_are_kept_and_not_timed(train_run, monkeypatch, two_threads):
    from dltrain import training

    monkeypatch.setattr(training, "choose_threads", lambda *a: pytest.fail("trainer.threads=2 was timed"))
    summary, _ = train_run("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.threads=2")
    assert summary["threads"] == 2


def test_the_probe_leaves_the_run_as_it_was(train_run, tmp_path, monkeypatch, two_threads):
    """Timing steps on a copy changes nothing: the same weights as a run that never timed."""
    from dltrain import training

    monkeypatch.setattr(device, "SHARED_STEP_S", 0.0)  # time even this small model
    timed, _ = train_run("trainer.max_epochs=1", "trainer.limit_train_batches=4", "model=cnn", "model.channels=4", "model.dropout=0.3", run_dir=tmp_path / "timed")
    monkeypatch.setattr(training, "choose_threads", lambda step, most: (torch.set_num_threads(timed["threads"]), (timed["threads"], {}))[1])
    untimed, _ = train_run("trainer.max_epochs=1", "trainer.limit_train_batches=4", "model=cnn", "model.channels=4", "model.dropout=0.3", run_dir=tmp_path / "untimed")
    assert untimed["weights_sha256"] == timed["weights_sha256"]
