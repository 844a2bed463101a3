"""What a config may make Hydra run: nothing but dltrain's own choices.

Hydra imports and calls whatever a `_target_` names, lets `hydra.job.env_set` reach every child
process, resolves `ext://` names and `()` factories of the logging config by importing them, and
adds config folders (`pkg://` ones by importing a package). Any override, recipe or config folder
could use them to run code, and Hydra's own blocklist is not a boundary. So before Hydra runs,
the composed `hydra` node is checked here:

- `_target_` (and `_args_`, `_partial_`) only where dltrain's own groups put them: the launcher
  and sweeper that `launcher=` and `hparams_search=` select, and dltrain's sweep-summary callback;
- `hydra.job.env_set` / `env_copy`: no PYTHON*, LD_*, DYLD_* or other loader variables;
- logging configs: handler and formatter classes from Python's `logging` only, no `()`
  factories, no `ext://` but sys.stdout and sys.stderr;
- `hydra.searchpath`: `file://` folders only; a launcher's `setup` shell lines: none.

User config folders (`--config-dir DIR`) may add choices to dltrain's groups, never to `hydra/`.
User code enters dltrain only by an explicit trust decision (an installed plugin package).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dltrain.errors import UserError

LAUNCHERS = frozenset({
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
})
SWEEPERS = frozenset({
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.dltrain_optuna_sweeper.optuna_sweeper.OptunaSweeper",
})
CALLBACKS = {"sweep_summary": "dltrain.sweeps.SweepSummary"}
CALL_KEYS = ("_target_", "_args_", "_partial_")
# Environment variables that make a process load code: the interpreter's, the dynamic loader's, shells'.
LOADER_VARIABLE = re.compile(r"(PYTHON|LD_|DYLD_|PERL5|RUBY|NODE_|JAVA_TOOL|_JAVA_|DLTRAIN_)\w*|PATH|BASH_ENV|ENV|IFS|GCONV_PATH|MALLOC_\w*", re.IGNORECASE)
SAFE_EXT = ("ext://sys.stdout", "ext://sys.stderr")


def check_hydra_node(hydra: Mapping[str, Any]) -> None:
    """Refuse, in one line, anything in a composed `hydra` node that would make Hydra run code
    dltrain did not choose (see the module docstring)."""
    hydra = dict(hydra or {})
    _only_target("hydra.launcher", hydra.get("launcher"), LAUNCHERS)
    _only_target("hydra.sweeper", hydra.get("sweeper"), SWEEPERS)
    callbacks = hydra.get("callbacks") or {}
    if not isinstance(callbacks, Mapping):
        raise _refuse("hydra.callbacks", callbacks, "dltrain's own (sweep_summary)")
    for name, node in callbacks.items():
        target = node.get("_target_") if isinstance(node, Mapping) else node
        if CALLBACKS.get(str(name)) != target or set(node) - {"_target_"}:
            raise _refuse(f"hydra.callbacks.{name}", target, "dltrain's own callback only (sweep_summary: dltrain.sweeps.SweepSummary)")
    for section in ("job_logging", "hydra_logging"):
        _check_logging(f"hydra.{section}", hydra.get(section))
    job = hydra.get("job") or {}
    for key in (job.get("env_set") or {}):
        if LOADER_VARIABLE.fullmatch(str(key)):
            raise _refuse(f"hydra.job.env_set.{key}", job["env_set"][key], "no variable that makes a process load code (PYTHON*, LD_*, DYLD_*, PATH, DLTRAIN_*, ...)")
    for key in job.get("env_copy") or []:
        if LOADER_VARIABLE.fullmatch(str(key)):
            raise _refuse("hydra.job.env_copy", key, "no variable that makes a process load code (PYTHON*, LD_*, DYLD_*, PATH, DLTRAIN_*, ...)")
    for entry in hydra.get("searchpath") or []:
        if not str(entry).startswith("file://"):
            raise _refuse("hydra.searchpath", entry, "file://FOLDER entries (a pkg:// entry imports a package); or --config-dir FOLDER")
    launcher = hydra.get("launcher") or {}
    if isinstance(launcher, Mapping) and launcher.get("setup"):
        raise _refuse("hydra.launcher.setup", launcher["setup"], "no shell lines: put them in your own job script")
    rest = {k: v for k, v in hydra.items() if k not in ("launcher", "sweeper", "callbacks")}
    where = _find_call(rest, "hydra")
    if where:
        raise _refuse(where, "...", "no _target_ in the hydra config but the launcher, the sweeper and dltrain's callback")


def check_hydra_overrides(parsed: Iterable) -> None:
    """The same rules for command-line overrides of hydra.job.env_set/env_copy, before composing
    (Hydra reads env_copy's variables while it composes)."""
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra.job.env_set.") and LOADER_VARIABLE.fullmatch(key.rsplit(".", 1)[1]):
            raise _refuse(key, o.value(), "no variable that makes a process load code (PYTHON*, LD_*, DYLD_*, PATH, DLTRAIN_*, ...)")
        if key == "hydra.searchpath":  # Hydra imports a pkg:// entry's package as it composes
            for entry in o.value() if isinstance(o.value(), list) else [o.value()]:
                if not str(entry).startswith("file://"):
                    raise _refuse(key, entry, "file://FOLDER entries (a pkg:// entry imports a package); or --config-dir FOLDER")
        if key == "hydra.job.env_copy":
            for name in o.value() if isinstance(o.value(), list) else [o.value()]:
                if LOADER_VARIABLE.fullmatch(str(name)):
                    raise _refuse(key, name, "no variable that makes a process load code (PYTHON*, LD_*, DYLD_*, PATH, DLTRAIN_*, ...)")


def check_config_dirs(folders: Iterable[str]) -> None:
    """A user config folder may add choices to dltrain's groups, not to Hydra's own (hydra/...)."""
    for folder in folders:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UserError(f"--config-dir {folder!r} is not a folder")
        hydra = path / "hydra"
        if hydra.exists() and any(p.is_file() for p in hydra.rglob("*")):
            raise UserError(f"--config-dir {folder}: its hydra/ folder would change what Hydra runs; a config folder may add choices to dltrain's groups (model/, data/, ...), not to hydra/")


def _only_target(key: str, node: Any, allowed: frozenset[str]) -> None:
    if node is None:
        return
    target = node.get("_target_") if isinstance(node, Mapping) else node
    if target not in allowed:
        raise _refuse(f"{key}._target_", target, "one of dltrain's choices (launcher=..., hparams_search=...)")
    inner = _find_call({k: v for k, v in node.items() if k != "_target_"}, key)
    if inner:
        raise _refuse(inner, "...", "no _target_ inside it")


def _check_logging(key: str, node: Any) -> None:
    """logging.config.dictConfig imports `class` and `()` names and `ext://` values."""
    if not isinstance(node, Mapping):
        return
    for path, k, v in _walk(node, key):
        if k == "()":
            raise _refuse(f"{path}.()", v, "no factories in a logging config")
        if k == "class" and not str(v).startswith("logging."):
            raise _refuse(f"{path}.class", v, "a class of Python's logging package (logging.StreamHandler, logging.FileHandler, ...)")
        if isinstance(v, str) and v.startswith("ext://") and v not in SAFE_EXT:
            raise _refuse(f"{path}.{k}", v, ", ".join(SAFE_EXT))


def _walk(node: Any, path: str):
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield path, str(k), v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield path, str(i), v
            yield from _walk(v, f"{path}[{i}]")


def _find_call(node: Any, path: str) -> str | None:
    for where, k, _ in _walk(node, path):
        if k in CALL_KEYS:
            return f"{where}.{k}"
    return None


def _refuse(key: str, value: Any, allowed: str) -> UserError:
    shown = value if isinstance(value, str) and len(value) < 120 else (repr(value)[:117] + "..." if len(repr(value)) > 120 else value)
    return UserError(f"{key}={shown!r} is not allowed; allowed: {allowed} (a config, recipe or override never runs code)")
