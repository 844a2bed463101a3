"""Recipes: pinned experiment configs in recipes/ that state the result they reproduce.

Each recipe is one YAML file, `# @package _global_`, that pins every config group and the seed
and declares the metrics it must reach:

    # mlp_digits: ...                       what it is
    # Run:        dltrain recipe=mlp_digits the command that runs it
    # Reproduces: test accuracy 0.98        the result
    # Source:     our own measurement ...   where the number comes from
    # CPU time:   ~6 s                      on 2 cores; recipes under a minute are verified in CI
    # @package _global_
    defaults:
      - override /model: mlp
      ...
    expected:
      test.accuracy: {min: 0.97}

Hydra sees them as the config group `recipe` (registered in its ConfigStore from the files, so
the same files serve a source checkout and an installed package): `dltrain recipe=NAME`.
`dltrain verify NAME` runs one and checks `expected:`; exit code 1 on a miss.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dltrain
from dltrain.errors import UserError, did_you_mean, unknown_choice

GROUP = "recipe"
HEADER_FIELDS = ("Run", "Reproduces", "Source", "CPU time")
BOUNDS = ("min", "max")


def recipes_dir() -> Path:
    """recipes/ inside an installed package, else the top-level recipes/ of a source checkout."""
    here = Path(dltrain.__file__).resolve().parent
    installed = here / "recipes"
    return installed if installed.is_dir() and any(installed.glob("*.yaml")) else here.parent / "recipes"


def recipe_paths() -> dict[str, Path]:
    folder = recipes_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def recipe_names() -> list[str]:
    return list(recipe_paths())


def find(name_or_path: str) -> Path:
    """The file of a recipe name, or a recipe file path (e.g. one copied with `dltrain recipes cp`)."""
    paths = recipe_paths()
    if name_or_path in paths:
        return paths[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise unknown_choice("recipe", name_or_path, paths)


# Recipe files given by path on this command line (`recipe=./my_recipe.yaml`): registered last, so they win.
_EXTRA: dict[str, Path] = {}


_REGISTERED: tuple = ()  # what register_recipes last stored: (name, path, mtime) of each file


def register_recipes() -> None:
    """Put every recipe (and files named by path) in Hydra's ConfigStore as the group `recipe`."""
    global _REGISTERED
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    files = tuple((name, path, path.stat().st_mtime_ns) for name, path in [*recipe_paths().items(), *_EXTRA.items()])
    stored = store.repo.get(GROUP, {})
    if files == _REGISTERED and all(f"{name}.yaml" in stored for name, _, _ in files):
        return  # unchanged: reading a dozen YAML files per composition would double its cost
    for name, path, _ in files:
        store.store(group=GROUP, name=name, node=OmegaConf.load(path), package="_global_", provider="dltrain")
    _REGISTERED = files


def rewrite_file_overrides(overrides: list[str]) -> list[str]:
    """`recipe=path/to/file.yaml` -> `recipe=file`, with the file registered under that name."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key == GROUP and value.endswith((".yaml", ".yml")):
            path = find(value)
            _EXTRA[path.stem] = path.resolve()
            register_recipes()
            o = f"{GROUP}={path.stem}"
        out.append(o)
    return out


def recipe_choices() -> list[str]:
    """What `recipe=` accepts on this command line: the recipes, and files named by path."""
    return sorted({*recipe_paths(), *_EXTRA})


def sweeps_by_itself(overrides: Sequence[str]) -> bool:
    """Whether the command line picks a sweep recipe (one that sets hydra.mode: MULTIRUN)."""
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key == GROUP and (value in recipe_paths() or value in _EXTRA):
            return info(str(_EXTRA.get(value, value))).sweep
    return False


# ---- what a recipe says about itself -----------------------------------------------------------


@dataclass
class RecipeInfo:
    name: str
    path: Path
    header: dict[str, str]
    model: str
    data: str
    expected: dict[str, dict[str, float]]
    sweep: bool
    description: str = ""
    cpu_seconds: float | None = None
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def ci(self) -> bool:
        """Verified in CI: a single run that takes under a minute on a CPU."""
        return not self.sweep and self.cpu_seconds is not None and self.cpu_seconds < 60


def read_header(path: Path) -> tuple[str, dict[str, str]]:
    """The recipe's opening comment: its one-line description and its `Field: value` lines."""
    description, fields = "", {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        key, sep, value = text.partition(":")
        if sep and key.strip() in HEADER_FIELDS:
            fields[key.strip()] = value.strip()
        elif not description and not text.startswith("@package") and sep:
            description = value.strip()
    return description, fields


def info(name_or_path: str) -> RecipeInfo:
    import yaml

    path = find(name_or_path)
    body = yaml.safe_load(path.read_text()) or {}
    description, header = read_header(path)
    picks = {}
    for entry in body.get("defaults") or []:
        if isinstance(entry, Mapping):
            for k, v in entry.items():
                picks[str(k).removeprefix("override ").strip().lstrip("/")] = v
    seconds = re.search(r"([\d.]+)\s*(s|min)", header.get("CPU time", ""))
    cpu = float(seconds.group(1)) * (60 if seconds.group(2) == "min" else 1) if seconds else None
    mode = ((body.get("hydra") or {}).get("mode") or "").upper()
    return RecipeInfo(
        name=path.stem, path=path, header=header, description=description,
        model=str(picks.get("model", "mlp")), data=str(picks.get("data", "digits")),
        expected=flatten_expected(body.get("expected") or {}), sweep=mode == "MULTIRUN" or "hparams_search" in picks,
        cpu_seconds=cpu, body=body,
    )


def describe_bounds(bounds: Mapping[str, float]) -> str:
    parts = []
    if "min" in bounds:
        parts.append(f">= {bounds['min']:g}")
    if "max" in bounds:
        parts.append(f"<= {bounds['max']:g}")
    return " and ".join(parts)


# ---- expected metrics --------------------------------------------------------------------------


def flatten_expected(node: Mapping, prefix: str = "") -> dict[str, dict[str, Any]]:
    """{test: {accuracy: {min: 0.9}}} or {"test.accuracy": {min: 0.9}} -> {"test.accuracy": {"min": 0.9}}."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and set(v) <= set(BOUNDS):
            out[key] = {**out.get(key, {}), **v}
        elif isinstance(v, Mapping) and v:
            for k2, bounds in flatten_expected(v, key + ".").items():
                out[k2] = {**out.get(k2, {}), **bounds}
        else:
            raise UserError(f"expected.{key}={v!r} is not allowed; give bounds, e.g. expected: {{{key}: {{min: 0.9}}}}")
    return out


def producible(task_cls) -> list[str]:
    """The summary.json metrics a task writes, as `expected:` keys."""
    metrics = list(task_cls.metrics)
    return [*(f"test.{m}" for m in metrics), *(f"best.val_{m}" for m in metrics), *(f"final.val_{m}" for m in metrics), "final.train_loss"]


def check_expected(node: Any, task_cls) -> dict[str, dict[str, float]]:
    """Validate a recipe's `expected:` section against what the task produces."""
    from dltrain.schema import check_value

    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise UserError(f"expected={node!r} is not allowed; give metric bounds, e.g. expected: {{test.accuracy: {{min: 0.9}}}}")
    allowed = producible(task_cls)
    out = {}
    for key, bounds in flatten_expected(node).items():
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise UserError(f"expected.{key}: task {task_cls.name} never produces {key}; it produces: {', '.join(allowed)}" + (f" ({hint})" if hint else ""))
        out[key] = {b: check_value(f"expected.{key}.{b}", v, float) for b, v in bounds.items()}
        if "min" in out[key] and "max" in out[key] and out[key]["min"] > out[key]["max"]:
            raise UserError(f"expected.{key}: min {out[key]['min']:g} is above max {out[key]['max']:g}")
    return out


def metric_value(summary: Mapping[str, Any], key: str) -> float | None:
    node: Any = summary
    section, _, name = key.partition(".")
    node = (node.get(section) or {}) if isinstance(node, Mapping) else {}
    value = node.get(name) if isinstance(node, Mapping) else None
    return value if isinstance(value, (int, float)) else None


@dataclass
class Check:
    metric: str
    bounds: dict[str, float]
    value: float | None

    @property
    def ok(self) -> bool:
        v = self.value
        if v is None or v != v:
            return False
        return v >= self.bounds.get("min", -float("inf")) and v <= self.bounds.get("max", float("inf"))


def check_results(expected: Mapping[str, Mapping[str, float]], summary: Mapping[str, Any]) -> list[Check]:
    return [Check(k, dict(b), metric_value(summary, k)) for k, b in expected.items()]


# ---- verbs ---------------------------------------------------------------------------------------


def list_recipes(console) -> None:
    from rich.table import Table

    table = Table(title=f"recipes ({recipes_dir()})")
    for col in ("name", "model", "data", "expected", "CPU time", "what it is"):
        table.add_column(col, style="bold" if col == "name" else None)
    for name in recipe_names():
        r = info(name)
        expected = "; ".join(f"{k} {describe_bounds(b)}" for k, b in r.expected.items())
        kind = f"{r.model} (sweep)" if r.sweep else r.model
        table.add_row(r.name, kind, r.data, expected, r.header.get("CPU time", "?"), r.description)
    console.print(table)
    console.print("run one: dltrain recipe=NAME; check it: dltrain verify NAME; edit a copy: dltrain recipes cp NAME PATH", highlight=False)


def show(name: str) -> str:
    return find(name).read_text()


def copy(name: str, dest: str) -> Path:
    source = find(name)
    target = Path(dest).expanduser()
    if target.is_dir():
        target = target / source.name
    if target.suffix not in (".yaml", ".yml"):
        raise UserError(f"recipes cp: {str(target)!r} should end in .yaml (or be a folder)")
    if target.exists():
        raise UserError(f"recipes cp: {target} already exists; choose another path")
    if not target.parent.is_dir():
        raise UserError(f"recipes cp: folder {str(target.parent)!r} does not exist")
    shutil.copyfile(source, target)
    return target


def verify(targets: Sequence[str], overrides: Sequence[str], console) -> int:
    """Run each recipe and check its expected metrics; 0 if every metric is met, else 1."""
    from dltrain.compose import check_command_line

    names = recipe_names() if list(targets) == ["all"] else list(targets)
    if not names:
        raise UserError("dltrain verify needs a recipe: dltrain verify NAME|all [overrides...]; recipes: " + ", ".join(recipe_names()))
    recipes = [info(n) for n in names]  # every name checked before anything runs
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for r in recipes:
        if not r.expected:
            raise UserError(f"recipe {r.name} declares no expected: metrics to verify")
        check_command_line(rewrite_file_overrides([_recipe_override(r), *own]), r.sweep)
    missed = []
    for r in recipes:
        console.rule(f"verify {r.name}")
        try:
            summary, where = (_run_sweep if r.sweep else _run_single)(r, list(overrides), console)
        except UserError as e:  # e.g. data that cannot be found: this recipe fails, the others still run
            if len(recipes) == 1:
                raise
            console.print(f"[red]FAIL[/] {r.name}: {e}", highlight=False)
            missed.append(r.name)
            continue
        checks = check_results(_expected_of(r, own), summary)
        _print_checks(console, r, checks, where)
        if not all(c.ok for c in checks):
            missed.append(r.name)
    if len(recipes) > 1:
        console.print(f"verified {len(recipes) - len(missed)}/{len(recipes)} recipes" + (f"; missed: {', '.join(missed)}" if missed else ""), highlight=False)
    return 1 if missed else 0


def _recipe_override(r: RecipeInfo) -> str:
    return f"{GROUP}={r.name}" if r.path.parent == recipes_dir() else f"{GROUP}={r.path}"


def _expected_of(r: RecipeInfo, overrides: Sequence[str]) -> dict:
    from dltrain.compose import compose_checked
    from dltrain.config import validate

    return validate(compose_checked(rewrite_file_overrides([_recipe_override(r), *overrides]))).expected


def _run_single(r: RecipeInfo, overrides: list[str], console) -> tuple[dict, Path]:
    """Train the recipe in this process into a Hydra-style run dir (or hydra.run.dir=PATH)."""
    from omegaconf import OmegaConf

    from dltrain.cli import print_summary
    from dltrain.compose import compose_checked
    from dltrain.train import train

    run_dir = next((Path(o.partition("=")[2]) for o in overrides if o.startswith("hydra.run.dir=")), None)
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    cfg = compose_checked(rewrite_file_overrides([_recipe_override(r), *own]))
    run_dir = run_dir or Path("outputs") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-verify-{r.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.INFO)
    try:
        summary = train(cfg, run_dir, console, config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        handler.close()
    print_summary(console, summary, str(run_dir))
    return summary, run_dir


def _run_sweep(r: RecipeInfo, overrides: list[str], console) -> tuple[dict, Path]:
    """Run a sweep recipe as `dltrain -m recipe=NAME`; its best job's summary is what is checked."""
    sweep_dir = next((Path(o.partition("=")[2]) for o in overrides if o.startswith("hydra.sweep.dir=")), None)
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    sweep_dir = sweep_dir or Path("multirun") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-verify-{r.name}"
    command = [sys.executable, "-m", "dltrain", "-m", _recipe_override(r), *own, f"hydra.sweep.dir={sweep_dir}"]
    result = subprocess.run(command)
    if result.returncode != 0:
        raise UserError(f"verify {r.name}: the sweep exited with code {result.returncode}")
    best = sweep_dir / "best.yaml"
    if not best.is_file():
        raise UserError(f"verify {r.name}: no job of the sweep finished (see {sweep_dir / 'sweep.csv'})")
    import yaml

    run_dir = Path(yaml.safe_load(best.read_text())["run_dir"])
    return json.loads((run_dir / "summary.json").read_text()), run_dir


def _print_checks(console, r: RecipeInfo, checks: Sequence[Check], where: Path) -> None:
    from rich.table import Table

    table = Table(title=f"recipe {r.name}: expected metrics")
    for col in ("metric", "expected", "got", "result"):
        table.add_column(col, justify="right" if col == "got" else "left")
    for c in checks:
        got = "missing" if c.value is None else f"{c.value:.4f}"
        table.add_row(c.metric, describe_bounds(c.bounds), got, "[green]pass[/]" if c.ok else "[red]MISS[/]")
    console.print(table)
    verdict = "[green]PASS[/]" if all(c.ok for c in checks) else "[red]FAIL[/]"
    console.print(f"{verdict} {r.name} ({sum(c.ok for c in checks)}/{len(checks)} metrics): {where}", highlight=False)
