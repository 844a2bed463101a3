"""distill.teacher: the loss against scipy and scikit-learn, its gradient against Hinton et al.'s
formula, a transparent wrapper, the teacher's checks, and (slow, on the MNIST files) a distilled
MLP that beats the same MLP trained alone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax
from sklearn.metrics import log_loss

from dltrain.tasks.distill import Distillation, soft_loss
from tests.conftest import MNIST_TEST, NO_MNIST, assert_one_line_exit_2
from tests.test_sweep import in_process

TEACHER = ("model=cnn", "model.channels=4", "optim.lr=0.01", "trainer.max_epochs=3")
STUDENT = ("model=mlp", "model.hidden=16", "optim.lr=0.01", "trainer.max_epochs=2", "trainer.limit_train_batches=10")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A small CNN trained on digits: a finished classification run directory."""
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain.composition import compose_checked
    from dltrain.training import train

    run = tmp_path_factory.mktemp("teacher") / "run"
    cfg = compose_checked(["trainer.progress=none", *TEACHER])
    train(cfg, run, Console(quiet=True), config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    return run


def test_the_soft_loss_is_the_temperature_scaled_kl_divergence():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 5)) * 3, rng.normal(size=(7, 5)) * 3
    for temperature in (1.0, 2.0, 4.0):
        p, log_p, log_q = softmax(t / temperature, 1), log_softmax(t / temperature, 1), log_softmax(s / temperature, 1)
        want = temperature**2 * np.mean(np.sum(p * (log_p - log_q), 1))  # KL(teacher || student) per example, averaged
        got = soft_loss(torch.tensor(s), torch.tensor(t), temperature)
        assert float(got) == pytest.approx(want, rel=1e-5)


def test_the_distillation_loss_mixes_soft_and_hard_and_its_gradient_is_hintons():
    """loss = alpha T^2 KL + (1 - alpha) cross-entropy (scikit-learn's log_loss); the soft term's
    gradient in the student's logits is T (softmax(s/T) - softmax(t/T)) / N (Hinton et al. 2015, eq. 2, times T^2)."""
    from dltrain.composition import compose_checked
    from dltrain.config import validate
    from dltrain.training import build

    built = build(validate(compose_checked(["model=mlp", "model.hidden=8"])), torch.device("cpu"))
    student, task = built.model.eval(), built.task
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = built.data.train.x[:16], built.data.train.y[:16]
    alpha, temperature = 0.7, 3.0
    loss = Distillation(task, teacher, temperature, alpha).step_loss(student, x, y, "main").detach()
    with torch.no_grad():
        s, t = student(x).double().numpy(), teacher(x).double().numpy()
    soft = temperature**2 * np.mean(np.sum(softmax(t / temperature, 1) * (log_softmax(t / temperature, 1) - log_softmax(s / temperature, 1)), 1))
    hard = log_loss(y.numpy(), softmax(s, 1), labels=list(range(10)))
    assert loss.item() == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=1e-5)

    logits = torch.tensor(s, requires_grad=True)
    soft_loss(logits, torch.tensor(t), temperature).backward()
    want = temperature * (softmax(s / temperature, 1) - softmax(t / temperature, 1)) / len(s)
    np.testing.assert_allclose(logits.grad.numpy(), want, rtol=1e-4, atol=1e-7)  # the loss is computed in float32


def test_alpha_zero_trains_exactly_as_without_a_teacher(train_run, teacher, tmp_path):
    plain, _ = train_run(*STUDENT, run_dir=tmp_path / "plain")
    none, _ = train_run(*STUDENT, f"distill.teacher={teacher}", "distill.alpha=0", run_dir=tmp_path / "alpha0")
    assert none["weights_sha256"] == plain["weights_sha256"] and none["test"] == plain["test"]


def test_a_distilled_student_records_its_teacher_and_stands_alone_after(train_run, teacher, tmp_path, capsys):
    summary, run = train_run(*STUDENT, f"distill.teacher={teacher}", "distill.alpha=1.0", "trainer.limit_train_batches=0", run_dir=tmp_path / "student")
    teacher_summary = json.loads((teacher / "summary.json").read_text())
    assert summary["distill"] == {"teacher": str(teacher), "temperature": 4.0, "alpha": 1.0, "teacher_test": teacher_summary["test"]}
    plain, _ = train_run(*STUDENT, "trainer.limit_train_batches=0", run_dir=tmp_path / "plain")
    assert summary["weights_sha256"] != plain["weights_sha256"]

    # what it was trained for: the student's softened predictions are nearer the teacher's (KL at T=4) than those of the same net trained on labels
    from dltrain.runs import load_run

    t, s, p = (load_run(r) for r in (teacher, run, tmp_path / "plain"))
    x = t.built.data.test.x
    with torch.no_grad():
        target = t.built.model(x)
        kl = {name: float(soft_loss(r.built.model(x), target, 4.0)) for name, r in (("student", s), ("plain", p))}
    assert kl["student"] < 0.8 * kl["plain"], kl


def test_a_student_is_evaluated_without_its_teacher(train_run, teacher, tmp_path, capsys):
    borrowed = tmp_path / "teacher"
    shutil.copytree(teacher, borrowed)
    summary, run = train_run(*STUDENT, f"distill.teacher={borrowed}", run_dir=tmp_path / "student")
    shutil.rmtree(borrowed)
    code, out, err = in_process(capsys, "eval", str(run))
    assert code == 0, err
    assert f"{summary['test']['accuracy']:.4f}" in out + err


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda t, tmp: (f"distill.teacher={tmp / 'nowhere'}",), ("distill.teacher=", "no such run directory")),
        (lambda t, tmp: (f"distill.teacher={tmp}",), ("not a finished dltrain run",)),
        (lambda t, tmp: (f"distill.teacher={t}", "data.split_seed=1"), ("data.split_seed=0", "data.split_seed=1", "same data and split")),
        (lambda t, tmp: (f"distill.teacher={t}", "data=wine"), ("data.name=digits", "data.name=wine")),
        (lambda t, tmp: (f"distill.teacher={t}", "data=diabetes"), ("distill.teacher=", "task regression")),
        (lambda t, tmp: ("distill.alpha=1.5",), ("distill.alpha",)),
        (lambda t, tmp: ("distill.temperature=0",), ("distill.temperature",)),
    ],
)
def test_a_wrong_teacher_or_setting_is_one_line_exit_2_and_writes_nothing(capsys, teacher, tmp_path, make, fragments):
    run = tmp_path / "out" / "run"
    assert_one_line_exit_2(in_process(capsys, *STUDENT, *make(teacher, tmp_path), f"hydra.run.dir={run}"), *fragments)
    assert not run.exists()


def test_a_regression_run_is_no_teacher(capsys, train_run, tmp_path):
    _, regression = train_run("data=diabetes", "model.hidden=8", "trainer.max_epochs=1", run_dir=tmp_path / "reg")
    run = tmp_path / "student"
    assert_one_line_exit_2(in_process(capsys, *STUDENT, f"distill.teacher={regression}", f"hydra.run.dir={run}"), "that run trains task regression", "a classification run")
    assert not run.exists()


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").exists(), reason=NO_MNIST)
def test_on_mnist_a_distilled_mlp_beats_the_same_mlp_trained_alone(train_run, tmp_path, one_torch_thread):
    """recipe=mlp_distill_mnist on the t10k files, its teacher recipe=lenet5_mnist: the numbers its header states."""
    data = (f"data.root={MNIST_TEST}", "data.download=false", "trainer.device=cpu")
    teacher, teacher_dir = train_run("recipe=lenet5_mnist", *data, run_dir=tmp_path / "teacher")
    distilled, _ = train_run("recipe=mlp_distill_mnist", *data, f"distill.teacher={teacher_dir}", run_dir=tmp_path / "distilled")
    alone, _ = train_run("recipe=mlp_distill_mnist", *data, "distill.teacher=null", run_dir=tmp_path / "alone")
    print(teacher["test"], distilled["test"], alone["test"])
    assert distilled["test"]["accuracy"] > alone["test"]["accuracy"] and distilled["test"]["loss"] < alone["test"]["loss"]
    assert distilled["test"]["accuracy"] >= 0.93 > alone["test"]["accuracy"]
