"""The recipe files: where they are, what each says about itself, and their place in Hydra.

Hydra sees the recipes as the config group `recipe`, registered in its ConfigStore from the
files (so the same files serve a source checkout and an installed package): `dltrain recipe=NAME`.
A recipe copied elsewhere runs by path: `dltrain recipe=./my.yaml`. The verbs that list, copy,
print and verify recipes are in `dltrain.recipe`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dltrain.errors import UserError, unknown_choice

GROUP = "recipe"
HEADER_FIELDS = ("Run", "Reproduces", "Source", "CPU time")


def recipes_dir() -> Path:
    """recipes/ inside an installed package, else the top-level recipes/ of a source checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "recipes"
    return installed if installed.is_dir() and any(installed.glob("*.yaml")) else here.parent / "recipes"


# The user's recipe folders of this command (`dltrain recipes --dir DIR`).
_USER_DIRS: list[Path] = []


def add_recipe_dir(folder: str | Path) -> None:
    """Add a folder of the user's own recipes; a recipe named like one of dltrain's is refused."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise UserError(f"recipes --dir {str(folder)!r} is not a folder")
    ours = recipe_paths()
    clash = sorted(p.stem for p in path.glob("*.yaml") if p.stem in ours)
    if clash:
        raise UserError(f"{path / clash[0]}.yaml has the name of dltrain's recipe {clash[0]}; rename it: a recipe never silently shadows another")
    _USER_DIRS.append(path)


def recipe_paths() -> dict[str, Path]:
    """Recipe name -> file: dltrain's recipes/, then the user's folders (recipes --dir DIR)."""
    found = {}
    for folder in [recipes_dir(), *_USER_DIRS]:
        if folder.is_dir():
            found.update({p.stem: p for p in sorted(folder.glob("*.yaml")) if p.stem not in found})
    return found


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
        try:
            read_recipe(path)
        except UserError:  # not a YAML mapping: not a choice (`recipe=PATH` says why, see rewrite_file_overrides)
            continue
        store.store(group=GROUP, name=name, node=OmegaConf.load(path), package="_global_", provider="dltrain")
    _REGISTERED = files


def read_recipe(path: Path) -> dict:
    """A recipe file's body: YAML holding a mapping; anything else is one UserError line."""
    import yaml

    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"recipe {path}: cannot read it ({e})") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise UserError(f"recipe {path} is not valid YAML" + (f" (line {where.line + 1}, column {where.column + 1})" if where else "")) from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise UserError(f"recipe {path} holds a {type(body).__name__}, not a mapping of config keys (defaults:, trainer:, expected:, ...)")
    return body


def rewrite_file_overrides(overrides: list[str]) -> list[str]:
    """`recipe=path/to/file.yaml` -> `recipe=file`, with the file registered under that name."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key == GROUP and value.endswith((".yaml", ".yml")):
            path = find(value)
            read_recipe(path)  # a file that is not a YAML mapping is one line, not Hydra's traceback
            builtin = recipe_paths().get(path.stem)
            if builtin is not None and builtin.resolve() != path.resolve():  # named by path: it wins, visibly
                import sys

                sys.stderr.write(f"dltrain: recipe={path.stem} is your file {path}, not dltrain's recipe of that name\n")
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

    from dltrain.expectations import flatten_expected

    path = find(name_or_path)
    body = read_recipe(path)
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
