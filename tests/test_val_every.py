"""trainer.val_every_n_steps: validation inside long epochs (Lightning's val_check_interval), with
metrics.csv rows, the best checkpoint, early stopping, loggers and exact resume following it."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from dltrain.engine import checkpoint as ck
from tests.test_checkpoint import crash_after

MLP = ("model=mlp", "model.hidden=32", "trainer.max_epochs=3", "trainer.limit_train_batches=10")  # 10 steps an epoch


def rows(run: Path) -> list[dict]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_it_validates_every_n_steps_inside_epochs_and_leaves_the_training_as_it_was(run_train, tmp_path):
    plain = run_train(tmp_path / "plain", *MLP)
    inside = run_train(tmp_path / "inside", *MLP, "trainer.val_every_n_steps=4")
    got = rows(tmp_path / "inside")
    assert [(r["epoch"], r["step"]) for r in got] == [("0.4", "4"), ("0.8", "8"), ("1", "10"), ("1.2", "12"), ("1.6", "16"), ("2", "20"), ("2.4", "24"), ("2.8", "28"), ("3", "30")]
    epoch_rows = [r for r in got if "." not in r["epoch"]]
    assert [r["val_loss"] for r in epoch_rows] == [r["val_loss"] for r in rows(tmp_path / "plain")]  # the epoch ends: the same numbers
    assert inside["weights_sha256"] == plain["weights_sha256"] and inside["epochs"] == 3 and inside["steps"] == 30
    assert float(got[0]["train_loss"]) > float(got[1]["train_loss"])  # the epoch's mean loss so far


def test_two_validations_an_epoch_like_lightning_hydra_templates_double_loop(run_train, tmp_path):
    run_train(tmp_path / "r", "model=mlp", "model.hidden=16", "trainer.max_epochs=2", "trainer.limit_train_batches=8", "trainer.val_every_n_steps=4")
    assert [r["step"] for r in rows(tmp_path / "r")] == ["4", "8", "12", "16"]  # the epoch's end is its second validation, not a third


def test_the_best_checkpoint_and_early_stopping_follow_validations_inside_epochs(run_train, tmp_path):
    summary = run_train(tmp_path / "r", *MLP, "trainer.val_every_n_steps=1", "trainer.early_stop.patience=2", "optim.lr=0.3", "optim=sgd", "trainer.max_epochs=20")
    got = rows(tmp_path / "r")
    best = min(got, key=lambda r: float(r["val_loss"]))
    assert summary["stopped_early"] and summary["steps"] < 200
    assert summary["best"]["step"] == int(best["step"]) and summary["best"]["epoch"] == float(best["epoch"])
    losses = [float(r["val_loss"]) for r in got]
    assert len(losses) - 1 - losses.index(min(losses)) == 2  # stopped at the 2nd validation after the best
    assert int(got[-1]["step"]) == summary["steps"]  # stopped right there, inside its epoch
    from dltrain.api import load_run
    from dltrain.engine.loader import TensorLoader
    from dltrain.engine.loop import evaluate

    built = load_run(tmp_path / "r").loaded().built  # best.safetensors: the weights of that validation
    cpu = torch.device("cpu")
    val = evaluate(built.model, built.task, TensorLoader(built.data.val.x, built.data.val.y, 1024, device=cpu), cpu, "32")
    assert val["loss"] == pytest.approx(float(best["val_loss"]), rel=1e-5)


def test_resume_after_a_checkpoint_between_validations_inside_an_epoch_is_bit_exact(run_train, tmp_path):
    every = (*MLP, "trainer.val_every_n_steps=4", "trainer.checkpoint.every_n_steps=6", "trainer.checkpoint.keep_last=0", "trainer.early_stop.patience=50")
    full = run_train(tmp_path / "full", *every)
    for at in (6, 12, 18):  # after the validation at step 4 (epoch 1), at the one at step 12, mid epoch 2
        run = crash_after(tmp_path / "full", tmp_path / f"r{at}", at)
        resumed = run_train(run, *every, f"trainer.resume={run}")
        assert resumed["weights_sha256"] == full["weights_sha256"] and resumed["best"] == full["best"]
        untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in rows(d)] for d in (run, tmp_path / "full")]
        assert untimed[0] == untimed[1] and len(untimed[0]) == 9


def test_an_early_stop_inside_an_epoch_resumes_as_stopped(run_train, tmp_path):
    args = (*MLP, "trainer.val_every_n_steps=1", "trainer.early_stop.patience=2", "optim.lr=0.3", "optim=sgd", "trainer.max_epochs=20", "trainer.checkpoint.every_n_epochs=1")
    first = run_train(tmp_path / "r", *args)
    assert first["stopped_early"]
    last = ck.checkpoints(tmp_path / "r" / "checkpoints")[0]
    assert int(last.name[5:]) == first["steps"]  # the stop itself was checkpointed
    (tmp_path / "r" / "summary.json").unlink()
    again = run_train(tmp_path / "r", *args, f"trainer.resume={tmp_path / 'r'}")
    assert again["stopped_early"] and again["steps"] == first["steps"] and again["weights_sha256"] == first["weights_sha256"]


def test_runs_made_before_the_key_existed_resume_without_a_force():
    new = {"trainer": {"max_epochs": 3, "val_every_n_steps": 0}, "seed": 0}
    old = {"trainer": {"max_epochs": 3}, "seed": 0}
    assert ck.config_hash(new) == ck.config_hash(old) and ck.config_diff(old, new) == []
    assert ck.config_diff(old, {**new, "trainer": {"max_epochs": 3, "val_every_n_steps": 5}}) == ["trainer.val_every_n_steps: 0 -> 5"]


def test_loggers_plot_by_step_and_grad_norm_columns_join_metrics_csv(run_train, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_train(tmp_path / "r", *MLP, "trainer.val_every_n_steps=5", "logger=[tensorboard]", "trainer.log_grad_norms=true", "trainer.max_epochs=2")
    got = rows(tmp_path / "r")
    norm = next(k for k in got[1] if k.startswith("grad_norm/"))  # a column the first row did not have
    assert [r["step"] for r in got] == ["5", "10", "15", "20"]
    assert got[0][norm] == "" and float(got[1][norm]) > 0 and float(got[3][norm]) > 0  # epoch ends only
    events = EventAccumulator(str(next((tmp_path / "r" / "tensorboard").rglob("events.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [5, 10, 15, 20]


def test_a_bad_value_is_one_line(tmp_path):
    from tests.test_cli import assert_user_error, dltrain

    result = dltrain("trainer.val_every_n_steps=-1", f"hydra.run.dir={tmp_path / 'x'}", cwd=tmp_path)
    assert_user_error(result, "trainer.val_every_n_steps", "-1")
    assert not (tmp_path / "x").exists()
