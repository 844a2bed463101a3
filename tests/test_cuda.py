"""On a CUDA GPU: training, mixed precision, torch.compile, exact resume, augmentation and
vectorised ensembles where the device is a GPU (skipped without one; CI has none)."""

from __future__ import annotations

import pytest
import torch

from dltrain.models.ensemble import Ensemble
from tests.test_checkpoint import MODELS, TINY, crash_after, rows
from tests.test_ensemble import MLP, SHORT, members

pytestmark = pytest.mark.cuda
GPU = ("trainer.device=cuda",)


def test_the_default_model_trains_on_the_gpu(train_run):
    summary, _ = train_run(*GPU, "trainer.max_epochs=5")
    assert summary["device"].startswith("cuda")
    assert summary["test"]["accuracy"] >= 0.93


@pytest.mark.parametrize("precision", ["bf16", "16"])
def test_mixed_precision_trains_as_well_as_fp32(train_run, tmp_path, precision):
    full, _ = train_run(*GPU, "model=cnn", "trainer.max_epochs=3", run_dir=tmp_path / "fp32")
    mixed, _ = train_run(*GPU, "model=cnn", "trainer.max_epochs=3", f"trainer.precision={precision}", run_dir=tmp_path / "mixed")
    assert mixed["precision"] == precision
    assert mixed["test"]["accuracy"] >= full["test"]["accuracy"] - 0.03


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_run_on_the_gpu_trains(train_run, mode):
    summary, _ = train_run(*GPU, "model=cnn", "trainer.max_epochs=2", "trainer.compile=true", f"trainer.compile_mode={mode}")
    assert summary["compile_seconds"] > 0 and summary["test"]["accuracy"] >= 0.85


@pytest.mark.parametrize("model", ["mlp", "cnn_augment", "lstm"])
def test_resume_on_the_gpu_is_bit_exact(run_train, tmp_path, model):
    """As tests/test_checkpoint.py on a CPU, with deterministic kernels (cuDNN's autotuner off)."""
    same = (*GPU, "trainer.deterministic=true", *MODELS[model], *TINY)
    full = run_train(tmp_path / "full", *same)
    assert full["device"].startswith("cuda")
    run = crash_after(tmp_path / "full", tmp_path / "r9", 9)
    resumed = run_train(run, *same, f"trainer.resume={run}")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert [r["val_loss"] for r in rows(run)] == [r["val_loss"] for r in rows(tmp_path / "full")]


def test_vectorised_members_match_one_after_another_on_the_gpu():
    x = torch.randn(32, 6, device="cuda")
    vec = Ensemble(members(), "probs", vectorize=True).cuda().train()
    loop = Ensemble(members(), "probs", vectorize=False).cuda().train()
    torch.testing.assert_close(vec(x), loop(x), rtol=1e-4, atol=1e-5)


def test_an_ensemble_on_the_gpu_is_vectorised_by_default(train_run):
    summary, _ = train_run(*GPU, *MLP, *SHORT, "ensemble.size=3")
    assert summary["ensemble"]["vectorized"] is True and len(summary["ensemble"]["members"]) == 3
