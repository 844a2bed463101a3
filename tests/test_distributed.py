"""Data-parallel training: 2 ranks on gloo (CPU) against one process, kills, signals, torchrun."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dltrain.engine.distributed import Ranks
from dltrain.engine.loader import TensorLoader
from tests.conftest import REPO, assert_one_line_exit_2

DLTRAIN = [sys.executable, "-m", "dltrain"]
# The digits training split has 1293 samples: 20 batches of 64 and one of 13, split 7 + 6 over
# two ranks, so the uneven last batch (each rank's loss weighted by its share) is exercised.
BASE = ("trainer.progress=none", "data.batch_size=64", "trainer.max_epochs=3")
NO_BATCHNORM = ("model.batchnorm=false",)  # CPU ranks keep per-rank batch statistics (SyncBatchNorm is CUDA-only)
KILLABLE = (*BASE, *NO_BATCHNORM, "model.dropout=0.2", "trainer.checkpoint.every_n_steps=20")


def cli(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*DLTRAIN, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "checkpoints" / "last.safetensors"), load_file(b / "checkpoints" / "last.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa)


# ---- sharding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch, world", [(1293, 64, 2), (10, 4, 3), (7, 7, 2), (100, 32, 4)])
def test_rank_shards_partition_every_global_batch_and_weights_average_to_one(n, batch, world):
    x, y = torch.arange(n).float().unsqueeze(1), torch.arange(n)
    kw = dict(device=torch.device("cpu"), shuffle=True)
    whole = TensorLoader(x, y, batch, generator=torch.Generator().manual_seed(3), **kw)
    shards = [TensorLoader(x, y, batch, generator=torch.Generator().manual_seed(3), shard=(r, world), **kw) for r in range(world)]
    # a rank whose part of a batch is empty (a last batch smaller than the world) skips it
    per_rank = [dict(zip((i for i in range(len(s)) if s._part(i)[1] < s._part(i)[2]), s.batches(), strict=False)) for s in shards]
    for i, (_, yb) in enumerate(whole.batches()):
        parts = [per_rank[r][i][1] if i in per_rank[r] else yb[:0] for r in range(world)]
        assert torch.equal(torch.cat(parts), yb)  # the ranks' parts, in rank order, are the global batch
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
        weights = [shards[r].weight(i) for r in range(world)]
        assert sum(w * len(yb) / world for w in weights) == pytest.approx(len(yb))
        assert sum(weights) / world == pytest.approx(1.0)


def test_a_single_process_is_rank_0_of_1():
    from dltrain.engine.distributed import current, under_torchrun

    assert current() == Ranks() and Ranks().main and not Ranks().enabled
    assert not under_torchrun() or "LOCAL_RANK" in os.environ


# ---- 2 ranks against 1 process -------------------------------------------------------------------


@pytest.mark.slow  # over 10 s on 2 cores: CI runs it; `make test-fast` stays under 5 minutes
def test_two_ranks_with_global_batch_b_match_one_process_with_batch_b(tmp_path):
    one = cli(*BASE, *NO_BATCHNORM, "trainer.devices=1", f"hydra.run.dir={tmp_path / 'one'}")
    two = cli(*BASE, *NO_BATCHNORM, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'two'}")
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert max_weight_diff(tmp_path / "one", tmp_path / "two") <= 1e-5
    s1, s2 = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert s2["ranks"] == 2 and s1["ranks"] == 1
    assert s1["steps"] == s2["steps"] == 3 * 21
    # the training loss is reduced over the ranks before it is logged: the same numbers
    for r1, r2 in zip(_rows(tmp_path / "one"), _rows(tmp_path / "two"), strict=True):
        assert float(r1["train_loss"]) == pytest.approx(float(r2["train_loss"]), abs=1e-5)
        assert float(r1["val_accuracy"]) == pytest.approx(float(r2["val_accuracy"]), abs=1e-6)
    # one run directory, written by rank 0 only; Hydra's files once
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [".hydra", ".lock", "checkpoints", "config.yaml", "metrics.csv", "plots", "report.html", "summary.json", "train.log"]
    assert "x 2 ranks" in two.stderr and "launching 2 ranks" in (tmp_path / "two" / "train.log").read_text()


def _rows(run: Path) -> list[dict]:
    return _rows_of(run / "metrics.csv")


@pytest.mark.slow  # over 10 s on 2 cores: CI runs it; `make test-fast` stays under 5 minutes
def test_bad_distributed_settings_are_one_line_before_any_rank_starts(tmp_path):
    assert_one_line_exit_2(_r(cli("trainer.devices=2", "optim=lbfgs", f"hydra.run.dir={tmp_path / 'a'}")), "trainer.devices=2", "lbfgs")
    if not torch.cuda.is_available():
        assert_one_line_exit_2(_r(cli("trainer.devices=2", "trainer.backend=nccl", f"hydra.run.dir={tmp_path / 'b'}")), "trainer.backend='nccl'", "gloo")
    assert_one_line_exit_2(_r(cli("trainer.devices=0")), "trainer.devices")
    assert_one_line_exit_2(_r(cli("trainer.backend=mpi")), "trainer.backend", "gloo")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _r(p: subprocess.CompletedProcess) -> tuple[int, str, str]:
    return p.returncode, p.stdout, p.stderr


# ---- kills, signals, resume ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The reference: 2 ranks with dropout (per-rank RNG), checkpoints every 20 steps, no kill."""
    run = tmp_path_factory.mktemp("ddp") / "full"
    done = cli(*KILLABLE, "trainer.devices=2", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr
    return summary(run)


@pytest.mark.slow
def test_killing_every_rank_mid_epoch_then_resume_is_bit_exact(tmp_path, uninterrupted):
    run = tmp_path / "run"
    killed = cli(*KILLABLE, "trainer.devices=2", f"hydra.run.dir={run}", env={"DLTRAIN_TEST_KILL": "step:50"})
    assert killed.returncode == 1
    assert "killed by SIGKILL" in killed.stderr and f"dltrain resume={run}" in killed.stderr
    assert "Traceback" not in killed.stderr
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000020", "step-00000040"]
    resumed = cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert summary(run)["weights_sha256"] == uninterrupted["weights_sha256"]


@pytest.mark.slow
def test_when_one_rank_dies_the_others_stop_at_once_and_resume_auto_is_exact(tmp_path, uninterrupted):
    t0 = time.monotonic()
    killed = cli(*KILLABLE, "trainer.devices=2", f"hydra.run.dir={tmp_path / 'a'}", env={"DLTRAIN_TEST_KILL": "step:50", "DLTRAIN_TEST_KILL_RANK": "1"}, timeout=120)
    assert time.monotonic() - t0 < 60
    assert killed.returncode == 1
    assert "rank 1 was killed by SIGKILL" in killed.stderr and "Traceback" not in killed.stderr
    resumed = cli(*KILLABLE, "trainer.devices=2", "trainer.resume=auto", f"hydra.run.dir={tmp_path / 'b'}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in (tmp_path / "b" / "train.log").read_text()
    assert summary(tmp_path / "b")["weights_sha256"] == uninterrupted["weights_sha256"]


@pytest.mark.slow
def test_ctrl_c_reaches_every_rank_saves_one_checkpoint_and_resumes_exactly(tmp_path, uninterrupted):
    run = tmp_path / "run"
    proc = subprocess.Popen([*DLTRAIN, *KILLABLE, "trainer.devices=2", f"hydra.run.dir={run}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130, err
    assert "stopped by SIGINT; checkpoint saved" in err and f"dltrain resume={run}" in err
    resumed = cli(f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert summary(run)["weights_sha256"] == uninterrupted["weights_sha256"]


@pytest.mark.slow
def test_torchrun_starts_the_ranks_and_they_share_one_run_directory(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dltrain", *BASE, *NO_BATCHNORM]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run = runs[0]
    assert (run / ".hydra" / "overrides.yaml").is_file() and (run / "train.log").stat().st_size > 0
    assert summary(run)["ranks"] == 2
    assert done.stderr.count("test accuracy") == 1  # rank 0 prints the result, once
    # a sweep under torchrun would run in every rank
    sweep = subprocess.run([*cmd, "-m", "optim.lr=0.01,0.02"], capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert sweep.returncode != 0 and "trainer.devices=N" in sweep.stderr


@pytest.mark.slow
def test_sweep_jobs_run_as_ranks_through_trainer_devices_and_through_submitit_tasks(tmp_path):
    """Hyperparameters are chosen once per job (by the sweep process); each job's ranks share them."""
    common = ("trainer.max_epochs=2", "trainer.progress=none", "optim.lr=0.001,0.01")
    for name, extra in (("devices", ("trainer.devices=2",)), ("tasks", ("launcher=submitit_local", "hydra.launcher.tasks_per_node=2"))):
        sweep = tmp_path / name
        done = cli("-m", *common, *extra, f"hydra.sweep.dir={sweep}")
        assert done.returncode == 0, done.stderr
        for job in ("0", "1"):
            assert summary(sweep / job)["ranks"] == 2
            assert json.loads((sweep / job / "job.json").read_text())["status"] == "completed"
        lrs = sorted(float(r["optim.lr"]) for r in _rows_of(sweep / "sweep.csv"))
        assert lrs == [0.001, 0.01]


def _rows_of(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open()))


# ---- the GPU path's pieces, on any device ------------------------------------------------------


def test_random_shift_moves_each_image_by_its_own_offset_within_the_limit():
    from dltrain.engine.loader import random_shift

    torch.manual_seed(0)
    x = torch.rand(64, 3, 9, 11)
    out = random_shift(x, 2)
    assert out.shape == x.shape and out.dtype == x.dtype
    offsets = set()
    for img, src in zip(out, x, strict=True):
        # which (dy, dx) in [-2, 2]^2 reproduces this image, with edges repeated?
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(img, src[:, (torch.arange(9) + dy).clamp(0, 8)][:, :, (torch.arange(11) + dx).clamp(0, 10)])]
        assert found, "not a shift of its own source image"
        offsets.add(found[0])
    assert len(offsets) > 10  # per-image offsets, not one for the batch
    assert torch.equal(random_shift(x, 0), x)
    assert random_shift(x, 1, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_data_shift_is_for_images_only(tmp_path):
    assert_one_line_exit_2(_r(cli("data=iris", "data.shift=1")), "data.shift")
    assert_one_line_exit_2(_r(cli("data.shift=-1")), "data.shift=-1")


@pytest.mark.slow
def test_an_optuna_trial_is_asked_once_and_its_ranks_train_with_its_values(tmp_path):
    sweep = tmp_path / "optuna"
    done = cli("-m", "hparams_search=mlp_digits", "hydra.sweeper.n_trials=2", "trainer.max_epochs=2", "trainer.devices=2", "trainer.progress=none", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr
    rows = _rows_of(sweep / "sweep.csv")
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    for r in rows:  # the values the sweep recorded are the ones the ranks trained with
        run = Path(r["run_dir"])
        assert summary(run)["ranks"] == 2
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["optim"]["lr"] == pytest.approx(float(r["optim.lr"]), rel=1e-5)
        assert config["optim"]["name"] == r["optim"] and config["trainer"]["devices"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gan", "vae"])
def test_generative_models_train_data_parallel_and_stop_early_together(tmp_path, model):
    """DDP wraps the training step, so a GAN's two networks (and a VAE's encoder and decoder)
    sync too; sampled validation metrics come from rank 0, so early stopping cannot split the ranks."""
    run = tmp_path / model
    done = cli(f"model={model}", "trainer.devices=2", "trainer.max_epochs=3", "trainer.early_stop.patience=1", "trainer.limit_train_batches=10", "trainer.progress=none", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr
    assert summary(run)["ranks"] == 2 and len(_rows(run)) >= 2
