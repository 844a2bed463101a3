"""trainer.ema and trainer.swa: the averages against hand computations from the run's own
per-step and per-epoch checkpoints, batch-norm statistics against their definition and torch's
update_bn, SWALR's learning rates against torch's, exact resume, and bad settings."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from safetensors.torch import load_file

from dltrain.engine import checkpoint as ck
from dltrain.errors import UserError
from tests.conftest import assert_one_line_exit_2
from tests.test_checkpoint import crash_after
from tests.test_sweep import in_process

SMALL = ("model=mlp", "model.hidden=16", "model.batchnorm=true", "trainer.limit_train_batches=5", "trainer.limit_val_batches=1", "trainer.checkpoint.keep_last=0", "trainer.checkpoint.every_n_minutes=0")


def raw_weights(run) -> dict[int, dict[str, torch.Tensor]]:
    """The trained (unaveraged) weights after each checkpointed step: {step: state}."""
    return {int(p.name[5:]): load_file(p / "model.safetensors") for p in ck.checkpoints(run / "checkpoints")}


def floats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in state.items() if v.is_floating_point()}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=tol, atol=tol, msg=k)


def test_ema_is_the_moving_average_of_the_weights_after_every_step(train_run, tmp_path):
    decay = 0.8
    summary, run = train_run(*SMALL, f"trainer.ema.decay={decay}", "trainer.max_epochs=2", "trainer.checkpoint.every_n_steps=1", "trainer.test_ckpt=last")
    raw = raw_weights(run)
    assert sorted(raw) == list(range(1, 11))
    emas = {1: floats(raw[1])}  # the first step copies
    for step in range(2, 11):
        emas[step] = {k: decay * emas[step - 1][k] + (1 - decay) * w for k, w in floats(raw[step]).items()}  # running statistics too
    last = load_file(run / "checkpoints" / "last.safetensors")
    assert_close(floats(last), emas[10])
    assert summary["averaging"] == {"kind": "ema", "decay": decay, "updates": 10, "unaveraged_weights_sha256": summary["averaging"]["unaveraged_weights_sha256"]}
    from dltrain.engine.rundir import weights_sha256

    assert summary["averaging"]["unaveraged_weights_sha256"] == weights_sha256(raw[10]) != summary["weights_sha256"]
    assert summary["test"] != summary["test_unaveraged"]
    # validated with the averaged weights: the best weights are the EMA at the end of the best epoch
    assert_close(floats(load_file(run / "checkpoints" / "best.safetensors")), emas[5 * summary["best"]["epoch"]])


def test_swa_is_the_mean_of_epoch_end_weights_with_batch_norm_statistics_recomputed(train_run, tmp_path, compose):
    summary, run = train_run(*SMALL, "trainer.swa.start=2", "trainer.max_epochs=4", "trainer.checkpoint.every_n_epochs=1", "trainer.test_ckpt=last")
    raw = raw_weights(run)
    assert sorted(raw) == [5, 10, 15, 20]
    last = load_file(run / "checkpoints" / "last.safetensors")
    params = [k for k in last if "running" not in k and "num_batches" not in k]
    mean = {k: sum(raw[s][k].double() for s in (10, 15, 20)) / 3 for k in params}
    assert_close({k: last[k] for k in params}, mean)
    assert summary["averaging"]["updates"] == 3 and summary["averaging"]["bn_update"] is True

    # the statistics are those of the averaged weights over the five training batches (of 32) the run used
    from torch.optim.swa_utils import update_bn

    from dltrain.config import validate
    from dltrain.training import build

    built = build(validate(compose(*SMALL, "trainer.swa.start=2")), torch.device("cpu"))
    model, x = built.model, built.data.train.x[: 5 * 32]  # digits: batches of 32
    model.load_state_dict(last)
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():  # the first batch-norm layer's running mean is, by definition, the mean of its inputs
        torch.testing.assert_close(first_bn.running_mean, first_linear(x.flatten(1)).mean(0), rtol=1e-4, atol=1e-5)
    update_bn([x[i : i + 32] for i in range(0, len(x), 32)], model)  # torch's utility over the same batches
    got = {k: v for k, v in last.items() if "running" in k}
    assert got and all(torch.allclose(got[k], model.state_dict()[k], rtol=1e-5, atol=1e-6) for k in got)


def test_without_bn_update_the_averaged_model_keeps_the_trained_statistics(train_run):
    summary, run = train_run(*SMALL, "trainer.swa.start=1", "trainer.swa.bn_update=false", "trainer.max_epochs=2", "trainer.checkpoint.every_n_epochs=1")
    last, raw = load_file(run / "checkpoints" / "last.safetensors"), raw_weights(run)[10]
    assert all(torch.equal(last[k], raw[k]) for k in last if "running" in k)
    assert summary["averaging"]["bn_update"] is False


def test_swa_lr_follows_torchs_swalr_after_the_base_schedule(train_run):
    from torch.optim.swa_utils import SWALR

    start, swa_lr, anneal = 2, 1e-4, 2
    summary, run = train_run(*SMALL, "sched=step", "sched.step_size=1", "sched.gamma=0.5", "optim=sgd", "optim.lr=0.1", f"trainer.swa.start={start}", f"trainer.swa.lr={swa_lr}", f"trainer.swa.anneal_epochs={anneal}", "trainer.swa.anneal_strategy=linear", "trainer.max_epochs=6")
    lrs = [float(r["lr"]) for r in csv.DictReader((run / "metrics.csv").open())]  # each epoch's end: the next epoch's rate

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    base = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    want, swalr = [], None
    for epoch in range(1, 7):
        opt.step()
        if epoch < start:
            base.step()
        else:
            swalr = swalr or SWALR(opt, swa_lr=swa_lr, anneal_epochs=anneal, anneal_strategy="linear")
            swalr.step()
        want.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx(want, rel=1e-6)
    assert lrs[0] == pytest.approx(0.05) and lrs[-1] == pytest.approx(swa_lr) and lrs[1] != pytest.approx(0.025)


@pytest.mark.parametrize("averaging", [("trainer.ema.decay=0.9",), ("trainer.swa.start=2", "trainer.swa.lr=0.0003", "trainer.swa.anneal_epochs=1")])
def test_resume_with_an_average_is_bit_exact(run_train, tmp_path, averaging):
    tiny = (*SMALL, *averaging, "trainer.max_epochs=3", "trainer.checkpoint.every_n_epochs=1", "trainer.checkpoint.every_n_steps=3", "sched=cosine")
    full = run_train(tmp_path / "full", *tiny)
    for at in (5, 9, 10, 12):  # epoch ends (before and after SWA starts) and mid-epoch
        run = crash_after(tmp_path / "full", tmp_path / f"r{at}", at)
        resumed = run_train(run, *tiny, f"trainer.resume={run}")
        assert resumed["weights_sha256"] == full["weights_sha256"], at
        assert resumed["best_weights_sha256"] == full["best_weights_sha256"], at
        assert resumed["averaging"] == full["averaging"] and resumed["test"] == full["test"], at


def test_an_average_that_never_started_is_said_and_not_used(train_run, caplog):
    # min_delta so large that the second epoch is no improvement: early stopping after epoch 2, before swa.start=3
    summary, run = train_run(*SMALL, "trainer.swa.start=3", "trainer.max_epochs=4", "trainer.early_stop.patience=1", "trainer.early_stop.min_delta=100")
    assert summary["epochs"] == 2 and summary["averaging"]["updates"] == 0 and "test_unaveraged" not in summary
    assert "trainer.swa.start=3 was never reached" in caplog.text
    assert summary["best"]["epoch"] in (1, 2)  # the trained weights' best, as without averaging


def test_swa_best_is_chosen_among_averaged_epochs_only(train_run):
    summary, run = train_run(*SMALL, "trainer.swa.start=3", "trainer.max_epochs=4", "optim.lr=0.05")
    assert summary["best"]["epoch"] in (3, 4)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert summary["best"]["val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in rows[2:]))


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (("trainer.ema.decay=0.9", "trainer.swa.start=1"), ("trainer.swa.start=1", "one of them")),
        (("trainer.ema.decay=1.0",), ("trainer.ema.decay",)),
        (("model=gan", "trainer.ema.decay=0.9"), ("trainer.ema.decay=0.9", "alternates 2 optimizers")),
        (("trainer.swa.start=5", "trainer.devices=2"), ("trainer.swa.start=5", "one process")),
        (("trainer.swa.start=31",), ("trainer.swa.start=31", "trainer.max_epochs=30", "1 to 30")),
        (("trainer.swa.start=2", "trainer.swa.lr=0.01", "optim=lbfgs"), ("trainer.swa.lr=0.01", "line search")),
        (("trainer.swa.start=2", "trainer.swa.anneal_strategy=step"), ("trainer.swa.anneal_strategy", "cos", "linear")),
        (("trainer.swa.start=-1",), ("trainer.swa.start",)),
    ],
)
def test_bad_averaging_settings_are_one_line_exit_2(capsys, tmp_path, overrides, fragments):
    assert_one_line_exit_2(in_process(capsys, *overrides, f"hydra.run.dir={tmp_path / 'run'}"), *fragments)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_recipes_may_bound_the_unaveraged_test_metrics_only_when_averaging(compose):
    from dltrain.config import validate

    spec = validate(compose("trainer.ema.decay=0.9", "+expected={test_unaveraged.accuracy: {min: 0.5}}"))
    assert spec.expected == {"test_unaveraged.accuracy": {"min": 0.5}}
    with pytest.raises(UserError, match="never produces test_unaveraged.accuracy"):
        validate(compose("+expected={test_unaveraged.accuracy: {min: 0.5}}"))


def test_averaging_is_in_the_checkpoint_and_off_by_default(train_run, tmp_path):
    summary, run = train_run(*SMALL, "trainer.max_epochs=1", "trainer.checkpoint.every_n_epochs=1")
    assert "averaging" not in summary and "test_unaveraged" not in summary
    _, run = train_run(*SMALL, "trainer.ema.decay=0.5", "trainer.max_epochs=1", "trainer.checkpoint.every_n_epochs=1", run_dir=tmp_path / "ema")
    (path,) = ck.checkpoints(run / "checkpoints")
    loop, *_ = ck.decode(path, ck.verify(path))
    assert loop.average is not None and int(loop.average["n_averaged"]) == 5
    assert all(math.isfinite(float(v.double().sum())) for v in loop.average.values())


def test_the_per_step_ema_is_torchs_averaged_model_bit_for_bit():
    """The sync-free EMA step against torch's AveragedModel.update_parameters on the same weights."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from dltrain.engine.averaging import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    ours, torchs = WeightAverage(model, "ema", decay=0.7), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.7), use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ours.attach(opt)
    for _ in range(6):
        opt.zero_grad()
        model(torch.randn(8, 5)).square().mean().backward()  # batch norm's statistics and counter move too
        opt.step()
        torchs.update_parameters(model)
    assert ours.updates == 6
    want = torchs.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in ours.state_dict().items())
