"""A short path from command to first step (issue 15): one Hydra composition per run, the curves
drawn by a plot process, the start-up time reported, no interpreter teardown once all is written.
The times themselves are measured in benchmarks/startup.py, not here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from dltrain import private_api
from dltrain.engine import cpus, plots
from tests.conftest import REPO

TINY = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress=none")
HISTORY = [
    {"epoch": 1, "step": 5, "train_loss": 1.2, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.01, "seconds": 0.1},
    {"epoch": 2, "step": 10, "train_loss": 0.7, "val_loss": 0.8, "val_accuracy": 0.75, "lr": 0.005, "seconds": 0.1},
]


@pytest.fixture
def loads(monkeypatch):
    """The number of configs Hydra composes (ConfigLoaderImpl.load_configuration calls)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    calls = []
    original = ConfigLoaderImpl.load_configuration

    def counting(self, *args, **kwargs):
        calls.append(args[1] if len(args) > 1 else kwargs.get("overrides"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counting)
    return calls


@pytest.fixture
def plot_process():
    plots.start_plot_process()
    yield plots._process
    plots.stop_plot_process()


def run_cli(capsys, *args: str) -> int:
    import logging

    from dltrain.cli import main

    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        with pytest.raises(SystemExit) as e:
            main(list(args))
    finally:
        for h in root.handlers[:]:
            if h not in handlers:  # Hydra's job logging: closed, so no later test writes to a removed run dir
                root.removeHandler(h)
                h.close()
    capsys.readouterr()
    return e.value.code


def test_a_single_run_composes_its_config_once(tmp_path, capsys, loads, compose):
    run = tmp_path / "run"
    assert run_cli(capsys, *TINY, "model.hidden=32", f"hydra.run.dir={run}") == 0
    assert len(loads) == 1, loads  # the check's composition is the one Hydra ran (it composed 3 before)
    assert (run / "summary.json").is_file()
    recorded = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert recorded == compose(*TINY, "model.hidden=32")  # what composing it anew gives
    assert OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.mode == "RUN"
    # a sweep still goes through Hydra's own path, and the patches are gone after the command
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.hydra import Hydra

    assert ConfigLoaderImpl.load_configuration.__name__ == "counting" and Hydra.get_mode.__name__ == "get_mode"


def test_composing_once_hands_out_copies_and_only_for_the_same_command(loads):
    from hydra._internal.hydra import Hydra
    from hydra.types import RunMode

    from dltrain.composition import compose
    from dltrain.overrides import is_hydra

    with private_api.composing_once(is_hydra) as single_run:
        a = compose(["model=cnn", "hydra.job.chdir=false"], with_hydra=True)
        b = compose(["model=cnn", "hydra.job.chdir=false"], with_hydra=True)
        assert len(loads) == 1 and OmegaConf.to_yaml(a) == OmegaConf.to_yaml(b)  # unresolved: ${now:...} differs by the microsecond
        a.model.channels = [1]
        assert b.model.channels != [1] and compose(["model=cnn", "hydra.job.chdir=false"]).model.channels != [1]
        compose(["hydra.job.chdir=false", "model=cnn"], with_hydra=True)  # Hydra's and the task's overrides interleaved: the same
        assert len(loads) == 1
        compose(["model=mlp"])
        compose(["model=cnn", "model.channels=[2,4]"])
        assert len(loads) == 3
        single_run()
        assert Hydra.get_mode(None, "config", []) == RunMode.RUN
    assert Hydra.get_mode.__name__ == "get_mode"
    compose(["model=mlp"])
    assert len(loads) == 4  # outside the block, every composition is Hydra's own


def test_the_plot_process_draws_what_this_process_would(tmp_path, plot_process):
    assert plot_process is not None and plot_process.proc.poll() is None
    there, here = tmp_path / "there", tmp_path / "here"
    there.mkdir(), here.mkdir()
    drawing = plots.draw_history(HISTORY, there)
    assert drawing.process is plot_process
    assert [p.name for p in drawing.wait()] == ["loss.png", "accuracy.png"]
    plots.plot_history(HISTORY, here)
    for name in ("loss.png", "accuracy.png"):
        assert (there / name).read_bytes() == (here / name).read_bytes()  # the same matplotlib, the same pixels
    assert plots.draw_history(HISTORY[:1], there).wait()  # it serves more than one request


def test_the_plot_process_draws_a_classifiers_pictures_after_the_curves_in_order(tmp_path, plot_process):
    pictures = {"classes": ["a", "b"], "confusion": [[5, 1], [0, 4]], "wrong": 1, "mistakes": [{"index": 3, "true": "a", "pred": "b", "confidence": 0.9}], "images": [[[[0], [255]], [[255], [0]]]]}
    there, here = tmp_path / "there", tmp_path / "here"
    there.mkdir(), here.mkdir()
    curves, drawn = plots.draw_history(HISTORY, there), plots.draw_pictures(pictures, there)
    assert drawn.process is plot_process
    assert [p.name for p in drawn.wait()] == ["confusion_matrix.png", "mistakes.csv", "mistakes.png"]  # waited for first: its reply is still the second
    assert [p.name for p in curves.wait()] == ["loss.png", "accuracy.png"]
    plots.plot_pictures(pictures, here)
    for name in ("confusion_matrix.png", "mistakes.csv", "mistakes.png"):
        assert (there / name).read_bytes() == (here / name).read_bytes()


def test_the_plot_process_reports_a_failed_write_and_survives_ctrl_c(tmp_path, plot_process):
    from dltrain.errors import UserError
    from dltrain.files import writing

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert plots.draw_history(HISTORY, tmp_path).wait()  # it is serving (its SIGINT handler is set)
    os.kill(plot_process.proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group: the run decides
    with pytest.raises(UserError, match=r"cannot write .*file: File exists"):
        with writing(not_a_folder):
            plots.draw_history(HISTORY, not_a_folder).wait()
    assert plot_process.proc.poll() is None


def test_without_a_plot_process_or_if_it_dies_the_run_draws_its_own(tmp_path):
    plots.stop_plot_process()
    drawing = plots.draw_history(HISTORY, tmp_path)
    assert drawing.process is None and not list(tmp_path.iterdir())  # drawn when waited for, inside the caller's `writing`
    assert len(drawing.wait()) == 2
    plots.start_plot_process()
    try:
        plots._process.proc.kill()
        plots._process.proc.wait()
        (tmp_path / "loss.png").unlink()
        assert len(plots.draw_history(HISTORY, tmp_path).wait()) == 2 and (tmp_path / "loss.png").is_file()
    finally:
        plots.stop_plot_process()


def test_a_busy_plot_process_is_not_another_process_s_load():
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(0.2)
        cpus.HELPERS.add(spin.pid)
        load = CpuLoadAfter(0.8)
        assert load < 0.5, load  # its core is this run's own
        cpus.HELPERS.discard(spin.pid)
        assert CpuLoadAfter(0.4) > 0.5  # not a helper: another process keeps a core busy
    finally:
        cpus.HELPERS.discard(spin.pid)
        spin.kill()
        spin.wait()


def CpuLoadAfter(seconds: float) -> float:
    load = cpus.CpuLoad()
    time.sleep(seconds)
    return load.busy_elsewhere()


def test_process_age_counts_from_the_process_start():
    code = "import time; time.sleep(0.3); from dltrain.engine import cpus; print(cpus.process_age())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout)
    assert 0.3 <= age < 5


@pytest.mark.parametrize(
    ("argv0", "program"),
    [("/venv/bin/dltrain", True), ("dltrain", True), ("/src/dltrain/__main__.py", True), ("/venv/bin/pytest", False), ("-c", False), ("", False)],
)
def test_only_the_command_itself_skips_the_interpreter_teardown(monkeypatch, argv0, program):
    from dltrain.cli import is_program

    monkeypatch.setattr(sys, "argv", [argv0])
    assert is_program() is program


def test_the_command_reports_its_start_up_and_leaves_every_file_whole(tmp_path):
    """`python -m dltrain` is the program: the plot process draws, the start-up is timed from the
    process's start, and the files are complete although the interpreter skips its teardown."""
    run = tmp_path / "run"
    t = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "dltrain", *TINY, f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert 0.5 < summary["startup_seconds"] < wall  # it counts the interpreter's start and torch's import
    assert {"loss.png", "accuracy.png"} <= {p.name for p in (run / "plots").iterdir()}
    assert "epoch 1" in (run / "train.log").read_text().splitlines()[-1]  # the log is flushed
    assert f"run directory: {run}" in result.stderr


def test_train_from_python_times_its_start_up_from_the_call(train_run):
    t = time.monotonic()
    summary, _ = train_run(*TINY)
    assert 0 < summary["startup_seconds"] < time.monotonic() - t


def test_no_plot_process_is_left_behind_by_a_failed_command(capsys, tmp_path):
    code = run_cli(capsys, *TINY, "model.hidden=-1", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and plots._process is None
