"""Every command the README shows works as written.

Each fenced block of README.md runs as a bash script, from a fresh folder, with `dltrain`,
`torchrun` and `python` on PATH: the `dltrain` there is dltrain itself with tiny training
settings appended (one epoch of two batches; two trials of a search), so that the whole README
runs in minutes. Placeholders (RUN_DIR, a dated run or sweep directory) are replaced by real ones
made first. Lines of a `$ dltrain ...` transcript must print exactly the line shown, exit 2.
Only the commands in SKIPPED do not run here, each for the reason it gives.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MNIST_TEST, REPO

README = REPO / "README.md"
TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
SKIPPED = {
    "--nnodes=2": "needs a second machine (HOST:29500)",
    "launcher=slurm": "needs a Slurm cluster",
    "verify all": "downloads the full MNIST (lenet5_mnist) and trains every recipe in full; CI verifies the recipes under a minute (test_recipes.py)",
    "trainer.swa.start=16": "averages from epoch 16, past the one epoch the README's runs get here; trainer.swa runs in test_averaging.py and recipe=mlp_swa_digits",
    "trainer.compile=true": "compiles C++ kernels, minutes on 2 CPU cores; a compiled run is tested in test_checkpoint.py",
}
RUNNABLE = ("dltrain", "torchrun ", "RUN=", "python -c")

SHIM = """#!{python}
# dltrain with tiny training settings appended (tests/test_readme.py), also to `cv`'s folds; `verify` runs in full
import sys

from dltrain.cli import main


def tiny(args):
    args = [a.replace("data.root=../shared/data/mnist-test", "data.root={mnist}") for a in args]
    rest = list(args)
    while rest[:1] and rest[0] in ("--plugin", "--config-dir", "-cd"):  # options that take a value
        rest = rest[2:]
    verb = rest[0] if rest and not rest[0].startswith("-") and "=" not in rest[0] else None
    inspect = any(a.split("=")[0] in ("--cfg", "--help", "-h", "-sc", "--shell-completion", "--info") for a in args)
    if (verb in (None, "train") or verb == "cv" and "summarize" not in rest) and not inspect:
        args += {tiny}
        if "-m" in args and any(a.startswith(("hparams_search=", "recipe=optuna")) for a in args):
            args.append("hydra.sweeper.n_trials=2")
        if "data=mnist" in args and not any(a.startswith("data.root=") for a in args):
            args.append("data.root={mnist}")
    return args


if __name__ == "__main__":  # parallel sweeps start workers that import this file again
    main(tiny(sys.argv[1:]))
"""

TORCHRUN = """#!/bin/sh
exec {torchrun} "$@" {tiny}
"""


PYTHON = """
import dltrain
from sklearn.datasets import load_digits

TINY = {tiny!r}
_train, _sweep = dltrain.train, dltrain.sweep
dltrain.train = lambda *overrides, **kw: _train(*overrides, *TINY, **kw)
dltrain.sweep = lambda *overrides, **kw: _sweep(*overrides, *TINY, **kw)
images = load_digits().images[:4]
"""


def blocks(language: str = "") -> list[list[str]]:
    """The lines of each fenced block in `language` ("": the unlabelled ones, shell commands)."""
    return [b.splitlines() for lang, b in re.findall(r"^```([a-z]*)\n(.*?)^```", README.read_text(), re.S | re.M) if lang == language]


def script_of(lines: list[str], places: dict[str, str]) -> tuple[str, list[str]]:
    """The block's runnable lines as a bash script (placeholders filled), and what was skipped."""
    out, skipped = ["set -euo pipefail", "set -x"], []
    for line in lines:
        text = line.strip()
        if not text.startswith(RUNNABLE) or text.startswith("CLI ("):
            continue
        reason = next((why for key, why in SKIPPED.items() if key in text), None)
        if reason is not None:
            skipped.append(f"{text}  ({reason})")
            continue
        for placeholder, value in places.items():
            text = text.replace(placeholder, value)
        out.append(text)
    return "\n".join(out) + "\n", skipped


def transcript(lines: list[str]) -> list[tuple[str, str]]:
    """(command, the line it prints) of each `$ dltrain ...` in a block."""
    pairs = []
    for i, line in enumerate(lines):
        if line.startswith("$ dltrain") and i + 1 < len(lines):
            pairs.append((line[2:], lines[i + 1]))
    return pairs


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """run(script) in a fresh folder with the shims first on PATH -> CompletedProcess."""
    bin_dir = tmp_path_factory.mktemp("bin")
    mnist = str(MNIST_TEST)
    (bin_dir / "dltrain").write_text(SHIM.format(python=sys.executable, tiny=repr(TINY), mnist=mnist))
    (bin_dir / "torchrun").write_text(TORCHRUN.format(torchrun=Path(sys.executable).parent / "torchrun", tiny=" ".join(TINY)))
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    for p in ("dltrain", "torchrun", "python"):
        (bin_dir / p).chmod(0o755)
    # `pip install -e examples/tinynet_plugin`, as the README says: the package and its entry point
    # on PYTHONPATH (nothing installed into the venv)
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(REPO / "examples" / "tinynet_plugin" / "tinynet_plugin", site / "tinynet_plugin")
    (site / "dltrain_tinynet-0.1.0.dist-info").mkdir()
    (site / "dltrain_tinynet-0.1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: dltrain-tinynet\nVersion: 0.1.0\n")
    (site / "dltrain_tinynet-0.1.0.dist-info" / "entry_points.txt").write_text("[dltrain.plugins]\ntinynet = tinynet_plugin\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "120", "DLTRAIN_TEST_KILL": ""}

    def run(script: str, cwd: Path, extra_env: dict | None = None, timeout: float = 1200, python: bool = False) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", script] if python else ["bash", "-c", script]
        return subprocess.run(command, cwd=cwd, env={**env, **(extra_env or {})}, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_TEST.is_dir(), reason="the README trains on the MNIST test files")
def test_every_readme_command_runs_as_written(shell, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(REPO / "examples", work / "examples")  # the README's commands run from the repository's root
    # what the placeholders stand for: a GAN run (sample), stopped runs (resume), a sweep (summarize)
    made = shell("dltrain model=gan model.conditional=true hydra.run.dir=made/gan && dltrain -m optim.lr=1e-3,1e-2 hydra.sweep.dir=made/sweep && dltrain cv k=2 hydra.sweep.dir=made/cv", work)
    assert made.returncode == 0, made.stderr[-3000:]
    for name in ("stopped", "stopped2"):
        stop = shell(f"dltrain hydra.run.dir=made/{name}", work, {"DLTRAIN_TEST_KILL": "sigterm:1"})
        assert stop.returncode == 143, stop.stderr[-3000:]
    places = {
        "sample RUN_DIR": f"sample {work / 'made/gan'}",
        "resume=outputs/2026-11-25/17-03-12-123456": f"resume={work / 'made/stopped'}",
        "resume=RUN_DIR": f"resume={work / 'made/stopped2'}",
        "multirun/2026-01-31/12-00-00": str(work / "made/sweep"),
        "cv/2026-01-31/12-00-00": str(work / "made/cv"),
        " [overrides]": "",
    }
    ran, skipped, failures = 0, [], []
    bare = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}  # the transcripts' lists: no plugin installed
    for lines in blocks():
        for command, expected in transcript(lines):
            result = shell(command, work, bare)
            ran += 1
            if result.returncode != 2 or result.stderr.strip() != expected:
                failures.append(f"{command}: exit {result.returncode}, printed {result.stderr.strip()!r}, README shows {expected!r}")
        if transcript(lines):  # a transcript: its other lines are what the commands print
            continue
        script, skip = script_of(lines, places)
        skipped += skip
        if script.count("\n") <= 2:
            continue
        result = shell(script, work)
        ran += script.count("\n") - 2
        if result.returncode != 0:
            failed = [line for line in result.stderr.splitlines() if line.startswith("+ ")][-1:]
            failures.append(f"{failed[0][2:] if failed else script}: exit {result.returncode}\n{result.stderr[-1500:]}")
    for lines in blocks("python"):  # a file shown in full is that file; the others run, tiny
        code = "\n".join(lines) + "\n"
        if code.startswith("import math"):
            assert code in (work / "examples/my_model.py").read_text(), "the README's my_model.py differs from examples/my_model.py"
            continue
        code = code.replace('"outputs/2026-11-25/17-03-12-123456"', repr(str(work / "made/gan")))
        result = shell(PYTHON.format(tiny=TINY) + code, work, python=True)
        ran += 1
        if result.returncode != 0:
            failures.append(f"the README's Python block failed:\n{result.stderr[-2500:]}")
    assert not failures, "\n\n".join(failures)
    assert ran >= 50 and len(skipped) <= len(SKIPPED) + 3, (ran, skipped)
    # it really trained and analysed: the analysis block's run has every verb's output
    run = max((p.parent for p in (work / "outputs").glob("*/*/summary.json") if json.loads(p.read_text())["model"] == "cnn"), key=lambda p: p.stat().st_mtime)
    assert {p.name for p in (run / "analysis").iterdir()} >= {"eval", "predict", "export", "compress", "explain", "robust"}


def test_the_readme_command_lines_parse_as_shell():
    """Cheap and always on: every runnable line is valid shell and the skip list still matches."""
    found = set()
    for lines in blocks():
        for line in lines:
            text = line.strip().removeprefix("$ ")
            if text.startswith(RUNNABLE):
                shlex.split(text, comments=True)
                found |= {key for key in SKIPPED if key in text}
    assert found == set(SKIPPED), set(SKIPPED) - found
