"""The `dltrain` command as a user runs it: a subprocess, its exit code, output and run dir."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MNIST_TEST, NO_MNIST, REPO

DLTRAIN = [sys.executable, "-m", "dltrain"]


def dltrain(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*DLTRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one line on stderr naming every fragment, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_help_lists_groups_choices_and_verbs_without_importing_torch(tmp_path):
    code = "import sys\nfrom dltrain.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\nassert 'torch' not in sys.modules and 'hydra' not in sys.modules\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = dltrain("--help", cwd=tmp_path).stdout
    for text in ("verbs:", "train", "ls", "model ", "autoencoder, cnn, dbn, embedding_bag, gan, gru, lstm, mlp, perceptron, rbf, rbm, resnet, rnn, seq2seq, vae", "optim ", "lbfgs", "sched ", "warmup_cosine", "reg ", "elastic_net", "trainer ", "debug, default, overfit"):
        assert text in out


def test_ls_lists_registered_components(tmp_path):
    result = dltrain("ls", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0
    for name in ("mlp", "lstm", "digits", "cross_entropy", "lbfgs", "onecycle", "elastic_net", "orthogonal", "classification", "tensorboard"):
        assert name in result.stdout
    model_only = dltrain("ls", "model", cwd=tmp_path, env={"COLUMNS": "200"}).stdout
    assert "lstm" in model_only and "Long short-term memory" in model_only and "adam" not in model_only
    assert "mlp" not in dltrain("ls", "model", "*nn", cwd=tmp_path, env={"COLUMNS": "200"}).stdout
    assert_user_error(dltrain("ls", "modle", cwd=tmp_path), "'modle'", "did you mean 'model'?")


def test_unknown_verb_is_a_user_error(tmp_path):
    assert_user_error(dltrain("trian", cwd=tmp_path), "'trian'", "did you mean 'train'?")


def test_default_run_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    result = dltrain("trainer.max_epochs=3", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stderr and f"run directory: {run}" in result.stderr
    for name in ("config.yaml", "metrics.csv", "summary.json", "train.log", "checkpoints/last.safetensors", "checkpoints/best.safetensors", "plots/loss.png", "plots/accuracy.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"epoch", "step", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"} <= set(rows[0])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["epochs"] == 3 and summary["seed"] == 0
    assert summary["test"]["accuracy"] > 0.85 and summary["device"] == "cpu"
    assert {"best", "train_seconds", "versions", "weights_sha256"} <= set(summary)
    assert "model:\n  name: mlp" in (run / "config.yaml").read_text()
    assert "epoch 3" in (run / "train.log").read_text()

    from safetensors.torch import load_file

    from dltrain.engine.rundir import weights_sha256

    assert weights_sha256(load_file(run / "checkpoints/last.safetensors")) == summary["weights_sha256"]


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = dltrain("model=cnn", "optim=sgd", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: cnn" in result.stdout and "name: sgd" in result.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["model=cnnn"], ["model='cnnn'", "did you mean 'cnn'?"]),
        (["model.hiden=3"], ["model.hiden", "did you mean 'hidden'?"]),
        (["optim.lr=-1"], ["optim.lr=-1", "> 0"]),
        (["trainer.max_epochs=abc"], ["trainer.max_epochs='abc'", "integer"]),
        (["trainer.device=gpu"], ["trainer.device='gpu'", "cuda"]),
        (["reg=[l2,dropuot]"], ["reg='dropuot'", "did you mean 'dropout'?"]),
        (["data=iris", "model=cnn"], ["model=cnn", "data=iris"]),
        (["data=diabetes", "loss=cross_entropy"], ["loss=cross_entropy", "mse"]),
        (["data=mnist", "data.root={missing}", "data.download=false"], ["{missing}", "t10k-images-idx3-ubyte.gz"]),
        (["model=[mlp"], ["cannot parse override"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, args, fragments):
    run, missing = tmp_path / "run", str(tmp_path / "no-such-folder")
    args, fragments = [a.replace("{missing}", missing) for a in args], [f.replace("{missing}", missing) for f in fragments]
    assert_user_error(dltrain(*args, f"hydra.run.dir={run}", cwd=tmp_path), *fragments)
    assert not run.exists()


@pytest.mark.slow  # several seconds on 2 cores: CI runs it; `make test-fast` stays under 5 minutes
def test_multirun_runs_every_combination(tmp_path):
    sweep = tmp_path / "sweep"
    result = dltrain("-m", "optim=sgd,adam", "model.hidden=16,32", "trainer=debug", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == 4
    assert {json.loads(p.read_text())["parameters"] for p in summaries} == {json.loads(s.read_text())["parameters"] for s in summaries[:2]} | {json.loads(s.read_text())["parameters"] for s in summaries[2:]}
    assert len({(p.parent / "config.yaml").read_text() for p in summaries}) == 4


def test_multirun_checks_every_combination_before_the_first_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = dltrain("-m", "model=mlp,cnn", "optim.lr=0.1,-1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert_user_error(result, "optim.lr=-1", "sweep job")
    assert not sweep.exists()


def test_tab_completion(tmp_path):
    script = dltrain("-sc", "install=bash", cwd=tmp_path)
    assert script.returncode == 0 and "complete" in script.stdout
    query = dltrain("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "dltrain model=", "COMP_POINT": "14"})
    assert "model=lstm" in query.stdout


def test_tensorboard_logger_writes_event_files(tmp_path):
    run = tmp_path / "run"
    result = dltrain("logger=tensorboard", "trainer=debug", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_non_editable_install_works_from_any_directory(tmp_path):
    """Build a wheel, install it without the source tree, run it from an unrelated folder."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", str(REPO), "-w", str(wheel_dir)], check=True, capture_output=True, text=True)
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr  # every config folder is declared
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), *map(str, wheel_dir.glob("*.whl"))], check=True, capture_output=True)
    # A fresh interpreter that sees the dependencies and the installed wheel, but not the source.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    code = "import sys, runpy; sys.path[:0] = sys.argv[1].split(':'); sys.argv = ['dltrain', *sys.argv[2:]]; import dltrain; assert 'site' in dltrain.__file__, dltrain.__file__; runpy.run_module('dltrain', run_name='__main__')"
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, ":".join([str(site), *deps]), "trainer=debug", f"hydra.run.dir={run}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (run / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_TEST.is_dir(), reason=NO_MNIST)
def test_mnist_files_train_from_the_cli(tmp_path):
    run = tmp_path / "run"
    result = dltrain("data=mnist", f"data.root={MNIST_TEST}", "model=cnn", "trainer.max_epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"]["in_shape"] == [1, 28, 28] and summary["test"]["accuracy"] > 0.9
