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
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dltrain.child import python_command
from dltrain.errors import UserError
from dltrain.expectations import Check, check_results, describe_bounds
from dltrain.recipe_store import GROUP, RecipeInfo, find, info, recipe_names, recipes_dir, rewrite_file_overrides

# ---- verbs ---------------------------------------------------------------------------------------


def recipes_command(argv: list[str]) -> int:
    """`dltrain recipes [--dir DIR] | recipes show NAME | recipes cp NAME PATH` (DIR: your own recipes too)."""
    from rich.console import Console

    from dltrain.errors import unknown_choice
    from dltrain.recipe_store import add_recipe_dir

    while "--dir" in argv:
        i = argv.index("--dir")
        if i + 1 >= len(argv):
            raise UserError("recipes --dir needs a folder: dltrain recipes --dir DIR")
        add_recipe_dir(argv[i + 1])
        argv = argv[:i] + argv[i + 2 :]
    action, args = (argv[0], argv[1:]) if argv else ("list", [])
    usage = {"list": 0, "show": 1, "cp": 2}
    if action not in usage:
        raise unknown_choice("recipes ACTION", action, usage)
    if len(args) != usage[action]:
        raise UserError(f"usage: dltrain recipes [show NAME | cp NAME PATH]; `recipes {action}` takes {usage[action]} argument(s)")
    if action == "list":
        list_recipes(Console())
    elif action == "show":
        sys.stdout.write(show(args[0]))
    else:
        target = copy(*args)
        print(f"copied recipe {args[0]} to {target}; run it with: dltrain recipe={target}")
    return 0


def verify_command(argv: list[str]) -> int:
    """`dltrain verify NAME...|all [overrides...]`."""
    from rich.console import Console

    return verify([a for a in argv if "=" not in a], [a for a in argv if "=" in a], Console(stderr=True))


def _user_recipe_dirs() -> list:
    from dltrain.recipe_store import _USER_DIRS

    return list(_USER_DIRS)


def list_recipes(console) -> None:
    from rich.table import Table

    recipes = [info(name) for name in recipe_names()]
    folders = ", ".join(str(d) for d in [recipes_dir(), *_user_recipe_dirs()])
    rows = [(r.name, f"{r.model} (sweep)" if r.sweep else r.model, r.data, "; ".join(f"{k} {describe_bounds(b)}" for k, b in r.expected.items()), r.header.get("CPU time", "?"), r.description) for r in recipes]
    if console.width >= 120:
        table = Table(title=f"recipes ({folders})", title_justify="left")
        for col in ("name", "model", "data", "expected", "CPU time", "what it is"):
            table.add_column(col, style="bold" if col == "name" else None, no_wrap=col in ("name", "model", "data"), ratio=2 if col == "what it is" else None)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:  # narrower: two lines per recipe, nothing cut (dltrain recipes show NAME: what each is)
        console.print(f"recipes ({folders}); dltrain recipes show NAME: what each is", highlight=False, soft_wrap=True)
        for name, model, data, expected, cpu, _ in rows:
            console.print(f"[bold]{name}[/]  {model} on {data}, CPU time {cpu}", highlight=False)
            console.print(f"    expected: {expected}", highlight=False)
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
    from dltrain.preflight import check_command_line

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
            run = _run_sweep if r.sweep else _run_folds if _folds(r, own) else _run_single
            summary, where = run(r, list(overrides), console)
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
    from dltrain.composition import compose_checked
    from dltrain.config import validate

    return validate(compose_checked(rewrite_file_overrides([_recipe_override(r), *overrides]))).expected


def _run_single(r: RecipeInfo, overrides: list[str], console) -> tuple[dict, Path]:
    """Train the recipe in this process into a Hydra-style run dir (or hydra.run.dir=PATH)."""
    from omegaconf import OmegaConf

    from dltrain.composition import compose_checked
    from dltrain.runs import print_summary
    from dltrain.training import train

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


def _folds(r: RecipeInfo, overrides: Sequence[str]) -> int:
    """cv.k of the recipe (with the command's overrides): 0, or K folds to verify."""
    from dltrain.composition import compose_checked
    from dltrain.config import validate

    return validate(compose_checked(rewrite_file_overrides([_recipe_override(r), *overrides]))).cv.k


def _run_folds(r: RecipeInfo, overrides: list[str], console) -> tuple[dict, Path]:
    """A recipe with cv.k=K: its K folds, one after another in this process, into RUN_DIR/fold-I
    (as `dltrain cv` lays them out), then cv.csv, cv.json and cv.png in RUN_DIR. What is checked:
    the folds' mean validation metrics (best.cv_val_*) and their mean test metrics (test.*)."""
    from dltrain.crossval import fold_means

    base = next((Path(o.partition("=")[2]) for o in overrides if o.startswith("hydra.run.dir=")), None)
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    base = base or Path("cv") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-verify-{r.name}"
    for fold in range(_folds(r, own)):
        _run_single(r, [*own, f"cv.fold={fold}", f"hydra.run.dir={base / f'fold-{fold}'}"], console)
    means = fold_means(base, console)
    return {"best": means["best"], "test": means["test"]}, base


def _run_sweep(r: RecipeInfo, overrides: list[str], console) -> tuple[dict, Path]:
    """Run a sweep recipe as `dltrain -m recipe=NAME`; its best job's summary is what is checked."""
    sweep_dir = next((Path(o.partition("=")[2]) for o in overrides if o.startswith("hydra.sweep.dir=")), None)
    own = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    sweep_dir = sweep_dir or Path("multirun") / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-verify-{r.name}"
    command = python_command("dltrain", "-m", _recipe_override(r), *own, f"hydra.sweep.dir={sweep_dir}")  # cwd not on its path
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
