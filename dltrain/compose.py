"""Compose configs with Hydra: the config folder, its groups and choices, one job's config.

`compose_checked` turns Hydra's composition errors into one line naming the key or choice;
`dltrain.preflight` uses it to check a whole command line (every job of a sweep) before anything
runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dltrain import overrides as ov
from dltrain.errors import ConfigError, UserError, unknown_choice, unknown_key
from dltrain.recipe_store import recipe_choices, register_recipes


def config_dir() -> Path:
    """configs/ inside an installed package, else the top-level configs/ of a source checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "configs"
    return installed if (installed / "config.yaml").exists() else here.parent / "configs"


def groups() -> dict[str, list[str]]:
    """Config groups and their choices, read from the folder (no imports: used by --help)."""
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

    from dltrain.search import register_sweeper_config  # Optuna's module is light, but --help needs none of it

    register_recipes()
    register_sweeper_config()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def check_choices(parsed, choices: Mapping[str, list[str]]) -> None:
    for o in parsed:
        group = o.key_or_group
        if group not in choices or o.is_delete():
            continue
        values = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for value in values:
            for v in value if isinstance(value, list) else [value]:
                if str(v) not in choices[group]:
                    raise unknown_choice(group, v, choices[group])
            if isinstance(value, list) and len(set(map(str, value))) < len(value):
                twice = next(str(v) for i, v in enumerate(value) if str(v) in map(str, value[:i]))
                raise ConfigError(group, o.get_value_element_as_str(), f"each choice once ({twice} is listed twice); set its keys instead, e.g. {group}.{twice}.KEY=VALUE")


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


def compose_checked(overrides: list[str], with_hydra: bool = False) -> Any:
    """Compose `overrides` (one job, no sweeps), turning Hydra's errors into one-line ones."""
    from omegaconf import OmegaConf

    parsed = ov.parse(overrides)
    check_choices(parsed, groups())
    try:
        return compose(overrides, with_hydra)
    except Exception as e:  # noqa: BLE001  (Hydra and OmegaConf fail on odd overrides with many types; each is the input's)
        if o_add := next((o for o in parsed if o.is_add() and o.key_or_group in groups()), None):
            raise UserError(f"{o_add.input_line}: {o_add.key_or_group} is chosen already; choose it without the +: {o_add.input_line.lstrip('+')}") from None
        group_overrides = [o.input_line for o in parsed if o.key_or_group in groups()]
        try:
            base = OmegaConf.to_container(compose(group_overrides))
        except Exception:  # noqa: BLE001
            raise UserError(f"cannot compose the config: {(str(e) or type(e).__name__).splitlines()[0]}") from None
        for o in parsed:
            if not o.is_add() and not o.is_delete() and o.key_or_group not in groups() and not ov.is_hydra(o.key_or_group):
                problem = _explain(base, o.key_or_group)
                if problem:
                    raise problem from None
        raise UserError(f"cannot compose the config: {str(e).splitlines()[0]}") from None
