"""Extend dltrain without forking it: installed plugins, --plugin files, user config folders and the
Python API, each as a user meets them (subprocesses, real run directories)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, assert_one_line_exit_2

SCRIPT = Path(sys.executable).with_name("dltrain")
DLTRAIN = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-I", "-c", "import sys; from dltrain.cli import main; sys.argv[0] = 'dltrain'; main()"]
TINY = ["trainer.max_epochs=2", "trainer.progress=none"]
EXAMPLES = REPO / "examples"


def run(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> tuple[int, str, str]:
    r = subprocess.run([*DLTRAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "DLTRAIN_TEST_KILL": "", **(env or {})})
    return r.returncode, r.stdout, r.stderr


@pytest.fixture
def installed(tmp_path):
    """The example plugin package 'installed': its package and a dist-info with the entry point on
    a folder put on PYTHONPATH, as pip would leave them (nothing is installed into the venv)."""
    site = tmp_path / "site"
    shutil.copytree(EXAMPLES / "tinynet_plugin" / "tinynet_plugin", site / "tinynet_plugin")
    info = site / "dltrain_tinynet-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dltrain-tinynet\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[dltrain.plugins]\ntinynet = tinynet_plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow  # several runs in subprocesses: CI runs it
def test_an_installed_plugin_lists_trains_presets_and_resumes(tmp_path, installed):
    code, out, err = run("plugins", cwd=tmp_path, env={**installed, "COLUMNS": "200"})
    assert code == 0, err
    assert "tinynet" in out and "dltrain-tinynet" in out and "0.1.0" in out and "model: tinynet; data: blobs" in out
    code, out, _ = run("ls", "model", cwd=tmp_path, env={**installed, "COLUMNS": "200"})
    assert "tinynet" in out and "Two linear layers" in out
    assert "tinynet" not in run("ls", "model", cwd=tmp_path, env={"COLUMNS": "200"})[1]  # not installed: not there

    run_dir = tmp_path / "run"
    code, _, err = run("model=tinynet", "data=blobs", "model.width=16", "optim.lr=0.02", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path, env=installed)
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "tinynet" and summary["test"]["accuracy"] > 0.8
    record = json.loads((run_dir / "plugins.json").read_text())
    assert record[0]["kind"] == "entry_point" and record[0]["distribution"] == "dltrain-tinynet" and record[0]["version"] == "0.1.0"

    code, _, err = run(f"resume={run_dir}", "trainer.max_epochs=3", cwd=tmp_path, env=installed)
    assert code == 0, err
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 3
    assert run("eval", str(run_dir), cwd=tmp_path, env=installed)[0] == 0
    assert_one_line_exit_2(run("eval", str(run_dir), cwd=tmp_path), "plugin tinynet", "not installed")

    preset = tmp_path / "preset"
    assert run("model=tinynet_wide", "data=blobs", *TINY, f"hydra.run.dir={preset}", cwd=tmp_path, env=installed)[0] == 0
    assert "width: 256" in (preset / "config.yaml").read_text()


@pytest.mark.slow  # several runs in subprocesses: CI runs it
def test_a_plugin_file_named_on_the_command_line_trains_and_is_asked_for_again(tmp_path):
    plugin = tmp_path / "my_model.py"
    shutil.copy(EXAMPLES / "my_model.py", plugin)
    run_dir = tmp_path / "run"
    code, _, err = run("--plugin", str(plugin), "model=wide_linear", "model.width=64", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert code == 0, err
    record = json.loads((run_dir / "plugins.json").read_text())
    assert record[0]["kind"] == "file" and record[0]["name"] == str(plugin.resolve()) and len(record[0]["sha256"]) == 64
    assert_one_line_exit_2(run("eval", str(run_dir), cwd=tmp_path), "local plugin", f"--plugin {plugin.resolve()}")
    assert run("--plugin", str(plugin), "eval", str(run_dir), cwd=tmp_path)[0] == 0
    assert run(f"plugins=[{plugin}]", "export", str(run_dir), "format=onnx", cwd=tmp_path)[0] == 0
    plugin.write_text(plugin.read_text() + "\n# changed\n")
    assert_one_line_exit_2(run("--plugin", str(plugin), "eval", str(run_dir), cwd=tmp_path), "has changed")


def test_a_plugin_may_not_shadow_a_name_nor_come_from_a_recipe(tmp_path):
    clash = tmp_path / "clash.py"
    clash.write_text("from dltrain import MODELS\n\n@MODELS.register('mlp')\ndef mlp(in_shape, out_features):\n    pass\n")
    assert_one_line_exit_2(run("--plugin", str(clash), *TINY, cwd=tmp_path), "model 'mlp' is registered already", "another name")
    broken = tmp_path / "broken.py"
    broken.write_text("import nosuchmodule\n")
    assert_one_line_exit_2(run("--plugin", str(broken), *TINY, cwd=tmp_path), "broken.py failed to load", "ModuleNotFoundError")
    recipe = tmp_path / "shared.yaml"
    recipe.write_text(f"# @package _global_\nplugins: [{clash}]\n")
    assert_one_line_exit_2(run(f"recipe={recipe}", *TINY, cwd=tmp_path), "only on the command line")


@pytest.mark.slow  # trains in a subprocess: CI runs it
def test_a_user_config_folder_adds_presets_and_never_shadows(tmp_path):
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "wide_mlp.yaml").write_text("name: mlp\nhidden: 48\nlayers: 1\n")
    run_dir = tmp_path / "run"
    code, _, err = run("--config-dir", str(mine), "model=wide_mlp", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert code == 0, err
    assert "hidden: 48" in (run_dir / "config.yaml").read_text()
    (mine / "model" / "mlp.yaml").write_text("name: mlp\nhidden: 8\n")
    assert_one_line_exit_2(run("--config-dir", str(mine), *TINY, cwd=tmp_path), "mlp.yaml", "dltrain's own model=mlp")


def test_user_recipe_folders_list_and_never_shadow(tmp_path):
    mine = tmp_path / "recipes"
    mine.mkdir()
    (mine / "my_mlp.yaml").write_text("# my_mlp: a wider default MLP\n# @package _global_\nmodel:\n  hidden: 48\nexpected:\n  test.accuracy: {min: 0.5}\n")
    code, out, err = run("recipes", "--dir", str(mine), cwd=tmp_path, env={"COLUMNS": "200"})
    assert code == 0 and "my_mlp" in out and "mlp_digits" in out, err
    (mine / "mlp_digits.yaml").write_text("# @package _global_\n")
    assert_one_line_exit_2(run("recipes", "--dir", str(mine), cwd=tmp_path), "mlp_digits", "rename it")


@pytest.mark.slow  # several runs in subprocesses: CI runs it
def test_the_python_api_writes_a_run_every_verb_reads(tmp_path):
    """dltrain.train in a child Python; then eval, export and resume on its run directory."""
    code = (
        "import dltrain, numpy as np\n"
        "run = dltrain.train('model.hidden=32', {'trainer.max_epochs': 2, 'trainer.progress': 'none'}, run_dir='api')\n"
        "assert run.summary['epochs'] == 2 and run.dir.name == 'api'\n"
        "rows = run.predict(np.zeros((3, 8, 8)))\n"
        "assert len(rows) == 3 and 'pred' in rows[0]\n"
        "assert dltrain.load_run('api').summary == run.summary and run.model().training is False\n"
        "try:\n    dltrain.train('model.hiden=3')\nexcept dltrain.UserError as e:\n    print('ERR', e)\n"
        "print(dltrain.compose('model=cnn').model.name)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "ERR model.hiden" in r.stdout and r.stdout.strip().endswith("cnn")
    api = tmp_path / "api"
    assert run("eval", str(api), cwd=tmp_path)[0] == 0
    assert run("export", str(api), "format=torchscript", cwd=tmp_path)[0] == 0
    code_, _, err = run(f"resume={api}", "trainer.max_epochs=3", cwd=tmp_path)
    assert code_ == 0, err
    assert json.loads((api / "summary.json").read_text())["epochs"] == 3


def test_import_dltrain_is_light_and_exports_the_registries():
    code = "import sys, dltrain\nassert 'torch' not in sys.modules\nfrom dltrain import MODELS, DATASETS, LOSSES, OPTIMIZERS, SCHEDULES, REGULARIZERS, INITS, TASKS, LOGGERS\nassert 'mlp' in MODELS and 'digits' in DATASETS and 'adam' in OPTIMIZERS\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_the_example_notebook_runs(tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / "notebook.py")], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "UserError: model.hiden" in r.stdout and "cnn" in r.stdout


@pytest.mark.slow
def test_the_python_api_runs_a_sweep(tmp_path):
    code = (
        "import dltrain\n"
        "result = dltrain.sweep('optim.lr=1e-3,1e-2', 'trainer.max_epochs=2', 'trainer.progress=none', sweep_dir='grid')\n"
        "print([j.status for j in result.jobs], result.best.run_dir.name)\n"
        "try:\n    dltrain.sweep('optim.lr=1e-3,-1')\nexcept dltrain.UserError as e:\n    print('ERR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "['completed', 'completed']" in r.stdout and "ERR optim.lr=-1" in r.stdout
