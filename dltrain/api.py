"""dltrain from Python: the CLI's runs, as objects.

    import dltrain

    run = dltrain.train("model=cnn", "optim=adam", run_dir="runs/cnn")   # or a list, or a dict
    run.summary["test"]["accuracy"]
    model = run.model()                 # the best weights, in eval mode
    run.predict(images)                 # raw inputs, as the data came: the run's normalisation applied
    again = dltrain.load_run("runs/cnn")
    cfg = dltrain.compose("model=cnn")  # the validated config, nothing run
    result = dltrain.sweep("optim.lr=1e-3,1e-2", "model=mlp,cnn")        # a grid, one run per job

`train` checks and composes exactly as `dltrain ...` does and writes the same run directory
(config.yaml, .hydra/overrides.yaml, train.log, ...), so every verb, `dltrain resume=` and
`load_run` work on it. Every error is a `dltrain.UserError` carrying the CLI's one-line
message (no SystemExit); signal handlers are installed only in the main thread, and Ctrl-C in a
notebook stops at the next step with a checkpoint (TrainingInterrupted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dltrain.errors import UserError


def _overrides(args: tuple, kwargs_overrides: Mapping | None = None) -> list[str]:
    """Overrides from strings, lists of strings or mappings ({"model": "cnn", "optim.lr": 1e-3})."""
    import yaml

    out: list[str] = []
    for a in args:
        if isinstance(a, str):
            out.append(a)
        elif isinstance(a, Mapping):
            for k, v in a.items():
                out.append(f"{k}={v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}")
        elif isinstance(a, Iterable):
            out += _overrides(tuple(a))
        else:
            raise UserError(f"dltrain.train: {a!r} is not an override (give strings like 'model=cnn', lists of them, or a dict)")
    return out


def _prepare(overrides: list[str], plugins: Iterable[str], config_dirs: Iterable[str]) -> None:
    from dltrain import plugins as plugin_loader
    from dltrain.composition import add_config_dirs
    from dltrain.trust import check_config_dirs

    plugin_loader.load_named(list(plugins))
    check_config_dirs(list(config_dirs))
    add_config_dirs(list(config_dirs))


def compose(*overrides: Any, plugins: Iterable[str] = (), config_dirs: Iterable[str] = ()):
    """The validated, composed config (an OmegaConf DictConfig) for `overrides`; nothing runs."""
    from dltrain.composition import compose_checked
    from dltrain.preflight import check_command_line

    lines = _overrides(overrides)
    _prepare(lines, plugins, config_dirs)
    check_command_line(lines, multirun=False)
    return compose_checked(lines)


def train(*overrides: Any, run_dir: str | Path | None = None, plugins: Iterable[str] = (), config_dirs: Iterable[str] = (), console=None) -> Run:
    """Train one run as `dltrain OVERRIDES...` would, into `run_dir` (default: outputs/<date>/<time>
    under the working directory); return it. `plugins`: local plugin files to load first."""
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain import overrides as ov
    from dltrain.composition import compose_checked
    from dltrain.files import atomic_write
    from dltrain.preflight import check_command_line, claim_run_dir
    from dltrain.recipe_store import rewrite_file_overrides
    from dltrain.training import train as run_training

    lines = rewrite_file_overrides(_overrides(overrides))
    if any(ov.key(o) == "hydra.run.dir" for o in lines):
        if run_dir is not None:
            raise UserError("dltrain.train: give the run directory once: run_dir=... or hydra.run.dir=...")
        run_dir = str(ov.parse([next(o for o in reversed(lines) if ov.key(o) == "hydra.run.dir")])[0].value())
    lines = [o for o in lines if ov.key(o) != "hydra.run.dir"]
    _prepare(lines, plugins, config_dirs)
    checked = check_command_line(lines, multirun=False)
    path = Path(run_dir) if run_dir is not None else Path("outputs") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{time.time_ns() // 1000 % 1_000_000:06d}"
    claim_run_dir(checked, str(path))
    cfg = compose_checked(lines)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    import yaml

    hydra_dir = path / ".hydra"  # what `dltrain resume=` reads, as the CLI's runs have it
    if not (hydra_dir / "overrides.yaml").exists() or not OmegaConf.select(cfg, "trainer.resume"):
        atomic_write(hydra_dir / "overrides.yaml", yaml.safe_dump(lines).encode())
        atomic_write(hydra_dir / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    handler = logging.FileHandler(path / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("dltrain")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run_training(cfg, path, console or Console(stderr=True), config_yaml=config_yaml)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()
    return Run(path)


def load_run(run_dir: str | Path) -> Run:
    """Any run directory (of the CLI, of `train`, of a sweep's job) as a Run."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise UserError(f"{str(path)!r} is not a dltrain run directory: it has no config.yaml")
    return Run(path)


def sweep(*overrides: Any, sweep_dir: str | Path | None = None, plugins: Iterable[str] = ()):
    """Run a sweep (`dltrain -m OVERRIDES...`) in a child process; return its SweepResult (jobs
    best first, with their metrics and run directories)."""
    import subprocess

    from dltrain.child import python_command
    from dltrain.sweeps import collect

    lines = _overrides(overrides)
    where = Path(sweep_dir) if sweep_dir is not None else Path("multirun") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{time.time_ns() // 1000 % 1_000_000:06d}"
    extra = [x for f in plugins for x in ("--plugin", str(f))]
    result = subprocess.run(python_command("dltrain", *extra, "-m", *lines, f"hydra.sweep.dir={where}"), capture_output=True, text=True)
    if result.returncode == 2:
        raise UserError(result.stderr.strip().splitlines()[-1].removeprefix("dltrain: error: ") if result.stderr.strip() else "the sweep failed")
    if result.returncode != 0:
        raise UserError(f"the sweep exited with code {result.returncode}: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}")
    return collect(where)


class Run:
    """A run directory: `dir`, `summary` (summary.json), `config` (config.yaml), `model()`, `predict()`."""

    def __init__(self, path: Path) -> None:
        self.dir = Path(path)

    def __repr__(self) -> str:
        test = ", ".join(f"{k}={v:.4g}" for k, v in (self.summary.get("test") or {}).items())
        return f"Run({str(self.dir)!r}{', ' + test if test else ''})"

    @property
    def summary(self) -> dict:
        import json

        try:
            return json.loads((self.dir / "summary.json").read_text())
        except FileNotFoundError:
            return {}

    @property
    def config(self):
        from omegaconf import OmegaConf

        return OmegaConf.load(self.dir / "config.yaml")

    def loaded(self, ckpt: str = "best"):
        """The run rebuilt: its spec, data, task and model (runs.LoadedRun)."""
        from dltrain.runs import load_run as rebuild

        return rebuild(self.dir, ckpt, device="cpu")

    def model(self, ckpt: str = "best"):
        """The trained model with its `ckpt` (best or last) weights, in eval mode, on the CPU."""
        return self.loaded(ckpt).built.model

    def predict(self, x, ckpt: str = "best") -> list[dict]:
        """Predictions for raw inputs (an array or tensor shaped like the data, or a file or folder
        `dltrain predict` reads): one dict per example, as predictions.csv's rows."""
        import numpy as np

        from dltrain.analysis.common import predict_outputs
        from dltrain.analysis.predict import check_finite, fit_shape, normalize, prediction_rows, read_inputs, tokens_of

        loaded = self.loaded(ckpt)
        data = loaded.built.data
        if isinstance(x, (str, Path)):
            raw, names = read_inputs(Path(x), data)
        else:
            array = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
            if array.dtype.kind not in "biuf":
                raise UserError(f"predict: the inputs are {array.dtype} values; give numbers")
            raw = fit_shape(array.astype(np.float32), data.in_shape, Path("<array>"), data.name)
            names = [str(i) for i in range(len(raw))]
        where = Path("<array>") if not isinstance(x, (str, Path)) else Path(x)
        check_finite(raw, names, where)
        inputs = tokens_of(raw, data, where) if data.kind == "tokens" else normalize(data, raw)
        outputs = predict_outputs(loaded.built.model, inputs, 1024)
        return prediction_rows(data, loaded.built.spec.task, outputs, names, inputs)
