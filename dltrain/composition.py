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


# Config folders this command adds to dltrain's: --config-dir DIR (the user's), plugins' configs/.
_USER_DIRS: list[Path] = []


def _scan(root: Path) -> dict[str, list[str]]:
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in sorted(root.iterdir()) if d.is_dir() and d.name != "hydra" and any(d.glob("*.yaml"))}


def add_config_dirs(folders: Iterable[str | Path]) -> None:
    """Add the user's config folders (--config-dir DIR). They may add choices to dltrain's groups;
    a file named like one of dltrain's own choices is refused, never silently ignored or obeyed."""
    ours = _scan(config_dir())
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        for group, names in _scan(path).items():
            clash = sorted(set(names) & set(ours.get(group, [])))
            if clash:
                raise UserError(f"{path}/{group}/{clash[0]}.yaml has the name of dltrain's own {group}={clash[0]}; give it another name (e.g. my_{clash[0]}.yaml): dltrain never lets a file shadow a built-in choice")
        if path not in _USER_DIRS:
            _USER_DIRS.append(path)


def extra_dirs() -> list[Path]:
    """The config folders beside dltrain's: the user's, then those plugins ship."""
    from dltrain import plugins

    return [*_USER_DIRS, *(Path(d) for d in plugins.config_dirs() if Path(d) not in _USER_DIRS)]


def groups() -> dict[str, list[str]]:
    """Config groups and their choices: dltrain's folder, the user's and plugins' folders, and
    what plugins registered (no imports of components: used by --help)."""
    from dltrain import plugins

    found = _scan(config_dir())
    for folder in extra_dirs():
        for group, names in _scan(folder).items():
            found[group] = sorted({*found.get(group, []), *names})
    for group, names in plugins.registered_choices().items():
        found[group] = sorted({*found.get(group, []), *names})
    return {**found, "recipe": recipe_choices()} if recipe_choices() else found


def prepare_hydra(overrides: Iterable[str]) -> list[str]:
    """Get Hydra's ConfigStore ready (recipes, the sweeper's node, plugin components without a
    YAML file) and return `overrides` with the extra config folders on Hydra's search path."""
    from dltrain.search import register_sweeper_config  # Optuna's module is light, but --help needs none of it

    register_recipes()
    register_sweeper_config()
    _register_plugin_defaults()
    overrides = list(overrides)
    dirs = [f"file://{d}" for d in extra_dirs()]
    if not dirs:
        return overrides
    given = [o for o in overrides if ov.key(o) == "hydra.searchpath"]
    if given:
        value = ov.parse(given[-1:])[0].value()
        dirs = [*(value if isinstance(value, list) else [value]), *dirs]
    return [*(o for o in overrides if ov.key(o) != "hydra.searchpath"), f"hydra.searchpath=[{','.join(ov.quoted(d) for d in dirs)}]"]


def _register_plugin_defaults() -> None:
    """A plugin component needs no YAML: its config node comes from its builder's signature."""
    from dltrain import plugins

    registered = plugins.registered_choices()
    if not registered:
        return
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    store = ConfigStore.instance()
    on_disk = _scan(config_dir())
    for folder in extra_dirs():
        for group, names in _scan(folder).items():
            on_disk.setdefault(group, []).extend(names)
    kinds = {g: k for k, gs in plugins.GROUPS_OF.items() for g in gs}
    regs = plugins.registries()
    for group, names in registered.items():
        for name in names:
            if name in on_disk.get(group, []) or f"{name}.yaml" in store.repo.get(group, {}):
                continue
            defaults = regs[kinds[group]].get(name).defaults()
            node = {name: defaults} if group in ("reg", "logger") else {"name": name, **defaults}  # groups of several choices
            store.store(group=group, name=name, node=OmegaConf.create(node), provider="dltrain-plugin")


def compose(overrides: Iterable[str] = (), with_hydra: bool = False) -> Any:
    """The composed DictConfig for `overrides` (with the hydra node only if `with_hydra`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = prepare_hydra(overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)


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
