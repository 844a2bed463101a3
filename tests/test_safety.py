"""Nothing runs that was not asked, nothing is lost: each code-execution route gets a planted
payload that must never run; run and sweep directories are never overwritten, followed through a
symlink or shared; resume always works; bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_exit_2

# The dltrain command as installed (its own script: the working directory is not on its path,
# as for a user). Without the venv script: the same with Python's isolated mode.
SCRIPT = Path(sys.executable).with_name("dltrain")
DLTRAIN = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-I", "-c", "import sys; from dltrain.cli import main; sys.argv[0] = 'dltrain'; main()"]
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress=none"]


def run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    r = subprocess.run([*DLTRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "DLTRAIN_TEST_KILL": "", **(env or {})})
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def payload(tmp_path):
    """(marker file, python code that creates it): the payload must never run."""
    marker = tmp_path / "PAYLOAD-RAN"
    return marker, f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"


# ---- code no one asked for ---------------------------------------------------------------------


def test_a_hydra_callback_from_the_command_line_never_runs(tmp_path, payload):
    marker, code = payload
    site = tmp_path / "site"
    site.mkdir()
    (site / "evil.pth").write_text(f"import os; exec({code!r})\n")
    result = run("+hydra.callbacks.a._target_=site.addsitedir", f"+hydra.callbacks.a._args_=[{site}]", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_exit_2(result, "hydra.callbacks.a", "never runs code")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_recipe_cannot_run_code(tmp_path, payload):
    marker, code = payload
    site = tmp_path / "site"
    site.mkdir()
    (site / "evil.pth").write_text(f"import os; exec({code!r})\n")
    recipe = tmp_path / "shared_recipe.yaml"
    recipe.write_text(f"# @package _global_\nhydra:\n  callbacks:\n    evil:\n      _target_: site.addsitedir\n      _args_: [{site}]\n")
    assert_one_line_exit_2(run(f"recipe={recipe}", *TINY, cwd=tmp_path), "hydra.callbacks.evil", "never runs code")
    recipe.write_text("# @package _global_\nhydra:\n  job:\n    env_set:\n      LD_PRELOAD: /tmp/evil.so\n")
    assert_one_line_exit_2(run(f"recipe={recipe}", *TINY, cwd=tmp_path), "hydra.job.env_set.LD_PRELOAD")
    recipe.write_text("# @package _global_\nhydra:\n  job_logging:\n    version: 1\n    handlers:\n      h:\n        class: os.system\n")
    assert_one_line_exit_2(run(f"recipe={recipe}", *TINY, cwd=tmp_path), "handlers.h.class", "logging")
    assert not marker.exists()


def test_a_user_config_folder_cannot_add_to_hydras_groups(tmp_path, payload):
    marker, code = payload
    (tmp_path / "mine" / "hydra" / "callbacks").mkdir(parents=True)
    (tmp_path / "mine" / "hydra" / "callbacks" / "evil.yaml").write_text("evil:\n  _target_: builtins.exec\n  _args_: [" + json.dumps(code) + "]\n")
    assert_one_line_exit_2(run("--config-dir", str(tmp_path / "mine"), "hydra/callbacks=evil", *TINY, cwd=tmp_path), "--config-dir", "hydra/")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("+hydra.job.env_set.PYTHONPATH={site}", "env_set.PYTHONPATH"),
        ("+hydra.job.env_set.PYTHONSTARTUP={site}/sitecustomize.py", "env_set.PYTHONSTARTUP"),
        ("hydra.job.env_copy=[LD_PRELOAD]", "env_copy"),
        ("hydra.searchpath=[pkg://site]", "hydra.searchpath"),
        ("+hydra.job_logging.formatters.f.()=builtins.exec", "formatters.f.()"),
        ("+hydra.job_logging.handlers.h.stream=ext://os.system", "handlers.h.stream"),
        ("-m hparams_search=mlp_digits +hydra.sweeper.params._target_=builtins.exec", "hydra.sweeper.params._target_"),
    ],
)
def test_loader_variables_and_importing_names_are_refused(tmp_path, payload, override, named):
    marker, code = payload
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code)
    result = run(*override.format(site=site).split(), "trainer.checkpoint.every_n_epochs=1", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_exit_2(result, named)
    assert not marker.exists()

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_child_processes_never_import_from_the_working_directory(tmp_path, payload):
    """A folder holding dltrain/ and hydra_plugins/ packages: the checkpoint writer process (a
    child) and Hydra's plugin scan never import them."""
    marker, code = payload
    for module in ("dltrain/__init__.py", "dltrain/engine/__init__.py", "dltrain/engine/writer_process.py", "dltrain/engine/atomic.py", "hydra_plugins/evil/__init__.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(code)
    code_, _, err = run("trainer.checkpoint.every_n_epochs=1", "trainer.checkpoint.writer=process", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert code_ == 0, err
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")]  # the writer process wrote it
    assert not marker.exists(), marker.read_text()


@pytest.mark.slow
def test_ranks_and_verify_children_never_import_from_the_working_directory(tmp_path, payload):
    marker, code = payload
    for module in ("dltrain/__init__.py", "dltrain/rank.py", "hydra_plugins/evil/__init__.py"):
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(code)
    code_, _, err = run("trainer.devices=2", *TINY, f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path, timeout=600)
    assert code_ == 0, err
    code_, _, err = run("verify", "optuna_mlp_digits", "hydra.sweeper.n_trials=1", *TINY, cwd=tmp_path, timeout=600)
    assert code_ in (0, 1), err  # 1: one tiny trial misses the recipe's bound
    assert not marker.exists(), marker.read_text()


# ---- run and sweep directories ---------------------------------------------------------------------


def test_someones_folder_is_never_trained_into(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "config.txt").write_text("mine")
    result = run(*TINY, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert_one_line_exit_2(result, str(folder), "not a dltrain run's", "config.txt")
    assert sorted(p.name for p in folder.iterdir()) == ["config.txt"] and (folder / "config.txt").read_text() == "mine"

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_a_symlink_in_a_run_directory_is_never_followed(tmp_path):
    run_dir, target = tmp_path / "run", tmp_path / "precious.csv"
    run_dir.mkdir()
    target.write_text("keep me\n")
    (run_dir / "metrics.csv").symlink_to(target)
    assert_one_line_exit_2(run(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path), "metrics.csv", "symbolic link")
    assert target.read_text() == "keep me\n"

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_a_finished_run_or_another_configs_run_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    assert run(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)[0] == 0
    before = (run_dir / "summary.json").read_bytes()
    assert_one_line_exit_2(run(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path), "finished run", "resume=")
    assert_one_line_exit_2(run(*TINY, "model.hidden=8", f"hydra.run.dir={run_dir}", cwd=tmp_path), "finished run")
    assert (run_dir / "summary.json").read_bytes() == before

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_one_process_per_run_directory_and_per_sweep_directory(tmp_path):
    from dltrain.files import FolderLock

    held = tmp_path / "held"
    with FolderLock(held):
        assert_one_line_exit_2(run(*TINY, f"hydra.run.dir={held}", cwd=tmp_path), str(held), f"process {os.getpid()}")
        assert_one_line_exit_2(run("-m", "optim.lr=1e-3,1e-2", *TINY, f"hydra.sweep.dir={held}", cwd=tmp_path), f"process {os.getpid()}")
    sweep = tmp_path / "sweep"
    assert run("-m", "optim.lr=1e-3", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)[0] == 0
    assert_one_line_exit_2(run("-m", "optim.lr=1e-3", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path), "holds a sweep already", "sweep.resume=true")

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_two_sweeps_started_together_get_their_own_directories(tmp_path):
    procs = [subprocess.Popen([*DLTRAIN, "-m", "optim.lr=1e-3", *TINY], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    sweeps = sorted(tmp_path.glob("multirun/*/*/multirun.yaml"))
    assert len(sweeps) == 2


# ---- resume always works ------------------------------------------------------------------------

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path):
    run_dir = tmp_path / "run"
    code, _, _ = run(*TINY, "trainer.max_epochs=2", f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"DLTRAIN_TEST_KILL": "step:1"})
    assert code == -9 and not list((run_dir / "checkpoints").glob("step-*"))
    code, _, err = run(f"resume={run_dir}", cwd=tmp_path)
    assert code == 0, err
    assert "no checkpoint yet" in err and "from the beginning" in err
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_resume_of_a_finished_run_says_so_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    assert run(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)[0] == 0
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    code, out, err = run(f"resume={run_dir}", cwd=tmp_path)
    assert code == 0 and "has finished" in err and len(err.strip().splitlines()) == 1, err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()} == before

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_resume_with_more_epochs_continues_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    assert run(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)[0] == 0
    code, _, err = run(f"resume={run_dir}", "trainer.max_epochs=3", cwd=tmp_path)
    assert code == 0, err
    assert "trainer.max_epochs 1 -> 3" in err and "sched=cosine now spans 3 epochs" in err
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 3

@pytest.mark.slow  # trains in a subprocess: CI runs it

def test_resume_auto_never_adopts_a_finished_sibling(tmp_path):
    assert run(*TINY, f"hydra.run.dir={tmp_path / 'runs' / 'a'}", cwd=tmp_path)[0] == 0
    code, _, err = run(*TINY, "trainer.resume=auto", f"hydra.run.dir={tmp_path / 'runs' / 'b'}", cwd=tmp_path)
    assert code == 0, err
    assert "resuming from" not in (tmp_path / "runs" / "b" / "train.log").read_text()


@pytest.mark.slow  # trains in a subprocess: CI runs it
@pytest.mark.parametrize("stage", ["test", "plots"])
def test_sigterm_during_the_final_stages_stops_cleanly_and_resume_finishes(tmp_path, stage):
    run_dir = tmp_path / "run"
    code, _, err = run(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"DLTRAIN_TEST_KILL": f"sigterm@{stage}"})
    assert code == 143 and "Traceback" not in err, err
    assert "stopped by SIGTERM during" in err and f"resume={run_dir}" in err
    assert not (run_dir / "summary.json").exists()
    code, _, err = run(f"resume={run_dir}", cwd=tmp_path)
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1


@pytest.mark.slow  # trains in a subprocess: CI runs it
@pytest.mark.parametrize("name", ["metrics.csv", "summary.json", "loss.png", "best.safetensors", ".hydra"])
def test_a_full_disk_anywhere_is_one_line_and_no_finished_looking_run(tmp_path, name):
    run_dir = tmp_path / "run"
    result = run(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"DLTRAIN_TEST_WRITE_ERROR": f"ENOSPC:{name}"})
    assert_one_line_exit_2(result, "No space left on device")
    assert not (run_dir / "summary.json").exists()


def test_checkpoints_are_on_by_default(train_run, tmp_path):
    _, run_dir = train_run(*TINY)
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*")] == ["step-00000002"]  # after the last epoch


# ---- bad input: one line, exit 2 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["=5"], ["'=5'", "KEY"]),
        (["+model=cnn"], ["+model=cnn", "model=cnn"]),
        (["model.hidden=1e30"], ["model.hidden", "2**63"]),
        (["seed=99999999999999999999"], ["seed="]),
        (["seed=4294967296"], ["seed=4294967296", "<= 4294967295"]),
        (["optim.lr=inf"], ["optim.lr=inf", "finite"]),
        (["optim.lr=1e-3,1e-2"], ["optim.lr=1e-3,1e-2", "-m"]),
        (["reg=[l1,l1]"], ["reg=", "l1 is listed twice"]),
        (["a" * 3000 + "=1"], ["3000 characters"]),
        (["data=iris", "data.val_fraction=0.99"], ["data.val_fraction=0.99", "to train on"]),
        (["data.val_fraction=0.001"], ["data.val_fraction=0.001", "10 classes"]),
        (["data=sine", "model=gru", "data.horizon=400"], ["val split is empty", "data.horizon"]),
        (["model=vae", "model.latent_dim=1e12"], ["model=vae", "parameters", "GiB"]),
        (["model.hidden=1e12"], ["model=mlp", "model.hidden="]),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch, args, fragments):
    from tests.test_sweep import in_process

    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(in_process(capsys, *args, *TINY), *fragments)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))


def test_a_long_run_directory_name_is_one_line(capsys, tmp_path, monkeypatch):
    from tests.test_sweep import in_process

    monkeypatch.chdir(tmp_path)
    assert_one_line_exit_2(in_process(capsys, *TINY, f"hydra.run.dir={tmp_path / ('b' * 3000)}"), "255 bytes")


@pytest.mark.parametrize(("body", "fragment"), [("a: [1, 2\n", "not valid YAML"), ("- a\n- b\n", "holds a list")])
def test_a_recipe_that_is_not_a_yaml_mapping_is_one_line(capsys, tmp_path, monkeypatch, body, fragment):
    from tests.test_sweep import in_process

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(body)
    assert_one_line_exit_2(in_process(capsys, "recipe=bad.yaml", *TINY), "bad.yaml", fragment)


def test_idx_files_with_no_images_and_unreadable_roots(tmp_path):
    import gzip
    import struct

    from dltrain.data.mnist import read_idx
    from dltrain.errors import UserError

    empty = tmp_path / "t10k-images-idx3-ubyte.gz"
    empty.write_bytes(gzip.compress(struct.pack(">IIII", 2051, 0, 28, 28)))
    with pytest.raises(UserError, match="holds no images"):
        read_idx(empty)


def test_predict_refuses_what_it_cannot_read(tmp_path, train_run, capsys):
    import numpy as np
    from PIL import Image

    from tests.test_sweep import in_process

    _, run_dir = train_run(*TINY)
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(["0"] * 64) + "\n" + ",".join(["1"] * 10 + ["nan"] + ["1"] * 53) + "\n")
    assert_one_line_exit_2(in_process(capsys, "predict", str(run_dir), f"input={bad}"), "row 2, column 11", "not a finite number")
    np.savez(tmp_path / "text.npz", x=np.array([["a"] * 64]))
    assert_one_line_exit_2(in_process(capsys, "predict", str(run_dir), f"input={tmp_path / 'text.npz'}"), "text.npz", "give numbers")
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    assert_one_line_exit_2(in_process(capsys, "predict", str(run_dir), f"input={tmp_path / 'objects.npz'}"), "objects.npz", "not numeric")
    np.savez(tmp_path / "empty.npz")
    assert_one_line_exit_2(in_process(capsys, "predict", str(run_dir), f"input={tmp_path / 'empty.npz'}"), "empty.npz")
    Image.new("L", (8000, 8000)).save(tmp_path / "bomb.png")  # 64 M pixels from a small file
    assert_one_line_exit_2(in_process(capsys, "predict", str(run_dir), f"input={tmp_path / 'bomb.png'}"), "bomb.png", "decompression bomb")
    np.savez(tmp_path / "ok.npz", x=np.zeros((2, 64)))
    assert_one_line_exit_2(in_process(capsys, "predict", str(run_dir), f"input={tmp_path / 'ok.npz'}", f"output={tmp_path}"), "is a folder")


def test_sample_refuses_an_impossible_count(tmp_path, train_run, capsys):
    from tests.test_sweep import in_process

    _, run_dir = train_run("model=gan", "model.hidden=16", *TINY)
    assert_one_line_exit_2(in_process(capsys, "sample", str(run_dir), "n=100000000"), "n=100000000", "100000")


def test_compress_twice_keeps_only_the_second_runs_files(tmp_path, train_run, capsys):
    from tests.test_sweep import in_process

    _, run_dir = train_run(*TINY)
    assert in_process(capsys, "compress", str(run_dir), "quantize=int8", "repeats=1")[0] == 0
    assert (run_dir / "analysis" / "compress" / "model_int8.pt").exists()
    assert in_process(capsys, "compress", str(run_dir), "prune=0.5", "repeats=1")[0] == 0
    assert not (run_dir / "analysis" / "compress" / "model_int8.pt").exists()


def test_a_failed_download_leaves_no_empty_folder(tmp_path, monkeypatch):
    from dltrain.data import DATASETS, mnist
    from dltrain.errors import UserError

    monkeypatch.setattr(mnist, "MIRRORS", {k: ["http://127.0.0.1:9/"] for k in mnist.MIRRORS})
    root = tmp_path / "new" / "mnist"
    with pytest.raises(UserError, match="download failed"):
        DATASETS.build({"name": "mnist", "root": str(root)})
    assert not (tmp_path / "new").exists()


def test_the_trust_check_knows_every_launcher_dltrain_offers(compose):
    from omegaconf import OmegaConf

    from dltrain.composition import compose as compose_with_hydra
    from dltrain.composition import groups
    from dltrain.trust import check_hydra_node

    for launcher in groups()["launcher"]:
        check_hydra_node(OmegaConf.to_container(compose_with_hydra([f"launcher={launcher}", "hparams_search=mlp_digits"], with_hydra=True).hydra, resolve=False))
    check_hydra_node(OmegaConf.to_container(compose_with_hydra([], with_hydra=True).hydra, resolve=False))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads every folder: needs a non-root user")
def test_a_data_root_this_user_cannot_read_is_one_line(tmp_path):
    from dltrain.data import DATASETS
    from dltrain.errors import UserError

    root = tmp_path / "locked"
    root.mkdir()
    root.chmod(0)
    try:
        with pytest.raises(UserError, match="cannot be read by this user"):
            DATASETS.build({"name": "mnist", "root": str(root), "download": False})
    finally:
        root.chmod(0o755)
