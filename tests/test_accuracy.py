"""The numbers the spine promises, reached by the commands users type (slow: CI runs them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import MNIST_TEST, NO_MNIST

pytestmark = pytest.mark.slow


def run_cli(tmp_path, *overrides: str) -> dict:
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "dltrain", *overrides, f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    return json.loads((run / "summary.json").read_text())


def test_default_run_reaches_97_percent_on_digits(tmp_path):
    summary = run_cli(tmp_path)
    assert summary["model"] == "mlp" and summary["data"] == "digits"
    assert summary["test"]["accuracy"] >= 0.97
    assert summary["train_seconds"] < 30


def test_cnn_with_adam_reaches_98_percent_on_digits(tmp_path):
    assert run_cli(tmp_path, "model=cnn", "optim=adam")["test"]["accuracy"] >= 0.98


def test_lstm_reaches_95_percent_on_digits(tmp_path):
    assert run_cli(tmp_path, "model=lstm")["test"]["accuracy"] >= 0.95


def test_mlp_regression_on_diabetes_reaches_r2_0_4(tmp_path):
    summary = run_cli(tmp_path, "data=diabetes", "model=mlp", "loss=mse")
    assert summary["task"] == "regression" and summary["test"]["r2"] >= 0.4


def test_gru_forecasts_the_sine_series(tmp_path):
    summary = run_cli(tmp_path, "data=sine", "model=gru")
    assert summary["task"] == "forecasting" and summary["test"]["r2"] >= 0.9


@pytest.mark.skipif(not MNIST_TEST.is_dir(), reason=NO_MNIST)
def test_cnn_reaches_97_percent_on_real_mnist_images(tmp_path):
    summary = run_cli(tmp_path, "data=mnist", f"data.root={MNIST_TEST}", "model=cnn", "trainer.max_epochs=10")
    assert summary["dataset"]["sizes"]["test"] == 2000
    assert summary["test"]["accuracy"] >= 0.97
