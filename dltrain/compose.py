"""Compose configs with Hydra and check every override before a run starts.

The CLI calls `check_command_line` before handing control to Hydra, so a typo anywhere — a
group choice, a key, a value, one combination of a sweep — fails at once with one line and
exit code 2, before a run directory exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dltrain
from dltrain.errors import UserError, unknown_choice, unknown_key

# Sweeps larger than this are checked value by value rather than combination by combination.
MAX_CHECKED_COMBINATIONS = 512


def config_dir() -> Path:
    """configs/ inside an installed package, else the top-level configs/ of a source checkout."""
    here = Path(dltrain.__file__).resolve().parent
    installed = here / "configs"
    return installed if (installed / "config.yaml").exists() else here.parent / "configs"


def groups() -> dict[str, list[str]]:
    """Config groups and their choices, read from the folder (no imports: used by --help)."""
    from dltrain.recipe import recipe_choices

    root = config_dir()
    found = {
        d.name: sorted(f.stem for f in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != "hydra" and any(d.glob("*.yaml"))
    }
    return {**found, "recipe": recipe_choices()} if recipe_choices() else found


def compose(overrides: Iterable[str] = (), with_hydra: bool = False) -> Any:
    """The composed DictConfig for `overrides` (with the hydra node only if `with_hydra`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from dltrain.recipe import register_recipes
    from dltrain.search import register_sweeper

    register_recipes()
    register_sweeper()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise UserError(f"cannot parse override: {str(e).splitlines()[0]}") from None


def _check_choices(parsed, choices: Mapping[str, list[str]]) -> None:
    for o in parsed:
        group = o.key_or_group
        if group not in choices or o.is_delete():
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            for v in value if isinstance(value, list) else [value]:
                if str(v) not in choices[group]:
                    raise unknown_choice(group, v, choices[group])


def _explain(cfg: Mapping, key: str) -> UserError | None:
    """Name the first missing part of a dotted key, with the keys that do exist there."""
    node: Any = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return UserError(f"{'.'.join(parts[:i])} is a value, not a section; {key} does not exist")
        if part not in node:
            owner = f"{parts[0]} {node['name']!r}" if i == 1 and "name" in node else ("the config" if i == 0 else ".".join(parts[:i]))
            return unknown_key(".".join(parts[: i + 1]), [str(k) for k in node], owner)
        node = node[part]
    return None


def compose_checked(overrides: list[str]) -> Any:
    """Compose `overrides` (one job, no sweeps), turning Hydra's errors into one-line ones."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    parsed = _parse(overrides)
    _check_choices(parsed, groups())
    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        group_overrides = [o.input_line for o in parsed if o.key_or_group in groups()]
        base = OmegaConf.to_container(compose(group_overrides))
        for o in parsed:
            if not o.is_add() and not o.is_delete() and o.key_or_group not in groups() and not o.key_or_group.startswith("hydra"):
                problem = _explain(base, o.key_or_group)
                if problem:
                    raise problem from None
        raise UserError(f"cannot compose the config: {str(e).splitlines()[0]}") from None


def check_command_line(overrides: list[str], multirun: bool) -> bool:
    """Validate every job the command line describes (every combination of a sweep); return
    whether every job was composed and validated (not so for an Optuna search, or a grid of more
    than MAX_CHECKED_COMBINATIONS)."""
    from dltrain.config import validate

    own = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    parsed = _parse(own)
    _check_choices(parsed, groups())
    if not multirun:
        validate(compose_checked(own))
        return True
    from dltrain.sweep import jobs_to_check

    # a grid: every combination (too many: each swept value with the others at their first value);
    # an Optuna search: every choice and both ends of every range of its search space
    jobs, every_job = jobs_to_check(overrides, parsed, MAX_CHECKED_COMBINATIONS)
    bases: dict[tuple[str, ...], Any] = {}
    choices = groups()
    for job in jobs:
        try:
            validate(_compose_sharing(job, choices, bases))
        except UserError as e:
            raise UserError(f"{e} (in sweep job: {' '.join(job)})") from None
    return every_job


def _compose_sharing(job: list[str], choices: Mapping[str, list[str]], bases: dict[tuple[str, ...], Any]) -> Any:
    """compose_checked(job), faster for a sweep: jobs with the same group choices share one Hydra
    composition (`bases`), and their value overrides are applied to a copy of it the way Hydra
    applies them. Anything unusual, or any error, goes through compose_checked (its messages)."""
    import copy

    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
    except ImportError:  # another Hydra: compose each job
        return compose_checked(job)
    parsed = _parse(job)
    shared = tuple(o.input_line for o in parsed if o.key_or_group in choices or o.is_add() or o.is_delete() or o.is_force_add())
    if shared not in bases:
        bases[shared] = compose_checked(list(shared))
    cfg = copy.deepcopy(bases[shared])
    try:
        ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if o.input_line not in shared], cfg)
    except Exception:  # noqa: BLE001  (compose_checked names the problem)
        return compose_checked(job)
    return cfg

