"""Plugins: components from outside dltrain, entering only by an explicit trust decision.

- **Installed packages**: entry points in the group `dltrain.plugins`; in a plugin's pyproject.toml

      [project.entry-points."dltrain.plugins"]
      tinynet = "tinynet_plugin"          # a module that registers components when imported

  Installing the package is the trust decision. They are loaded when a command needs the
  registries (training, `ls`, the verbs), never for `--help`.
- **Local files**: `dltrain --plugin FILE.py ...` (or `plugins=[FILE.py]`) imports the file
  before composing. Only from the command line or the Python API, never from a recipe or a
  config file: naming the file there is the trust decision.

A plugin registers with the public registries (`from dltrain import MODELS`); a name that is
already registered is refused. It may ship YAML for its components: a `configs/` folder beside
its module (or package), one folder per config group (`configs/model/tinynet.yaml`); without
one, a component's defaults come from its builder's signature.

A run records its plugins in `plugins.json` (entry point, distribution and version; or path and
sha256). `resume` and the verbs that read a run load the installed ones and refuse, with one
line, a run whose plugin is missing or whose file has changed; a local file must be named again
(`--plugin FILE.py`): a run directory never makes dltrain import anything by itself.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dltrain.errors import UserError

GROUP = "dltrain.plugins"
RECORD = "plugins.json"
# config groups fed by each registry (optim_d and sched_d choose among the optimizers and schedules)
GROUPS_OF = {"model": ["model"], "data": ["data"], "loss": ["loss"], "optim": ["optim", "optim_d"], "sched": ["sched", "sched_d"], "reg": ["reg"], "init": ["init"], "logger": ["logger"]}


@dataclass
class Plugin:
    kind: str  # "entry_point" or "file"
    name: str  # the entry point's name, or the file's path
    module: str
    version: str | None = None  # an entry point's distribution version
    distribution: str | None = None
    sha256: str | None = None  # a file's
    registered: dict[str, list[str]] = field(default_factory=dict)  # registry kind -> names
    configs: str | None = None  # its configs/ folder


_LOADED: dict[str, Plugin] = {}  # key: "entry_point:NAME" or "file:RESOLVED PATH"
_SCANNED = [False]


# Every public registry: group -> (module, attribute). `dltrain ls`, `from dltrain import MODELS`
# and the plugin loader all read this one table.
REGISTRIES = {
    "model": ("dltrain.models", "MODELS"),
    "data": ("dltrain.data", "DATASETS"),
    "loss": ("dltrain.losses", "LOSSES"),
    "optim": ("dltrain.optim", "OPTIMIZERS"),
    "sched": ("dltrain.optim", "SCHEDULES"),
    "reg": ("dltrain.regularization", "REGULARIZERS"),
    "init": ("dltrain.models.layers", "INITS"),
    "activation": ("dltrain.models.layers", "ACTIVATIONS"),
    "task": ("dltrain.tasks", "TASKS"),
    "logger": ("dltrain.engine.loggers", "LOGGERS"),
}


def registry(group: str) -> Any:
    """The registry of `group` (importing its components)."""
    module, attr = REGISTRIES[group]
    return getattr(importlib.import_module(module), attr)


def registries() -> dict[str, Any]:
    """Every public registry by group (importing the components)."""
    return {group: registry(group) for group in REGISTRIES}


def _import(load, what: str) -> tuple[Any, dict[str, list[str]]]:
    """Run `load()` (an import) and note what it registered; its failure is one line."""
    regs = registries()
    before = {k: set(r.names()) for k, r in regs.items()}
    try:
        module = load()
    except UserError as e:
        raise UserError(f"{what}: {e}") from None
    except Exception as e:  # noqa: BLE001  (the plugin's own bug: named, in one line)
        raise UserError(f"{what} failed to load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (run it with python to see where)") from None
    added = {k: sorted(set(r.names()) - before[k]) for k, r in regs.items()}
    return module, {k: v for k, v in added.items() if v}


def _configs_of(module: Any) -> str | None:
    folder = Path(getattr(module, "__file__", "") or ".").resolve().parent / "configs"
    return str(folder) if folder.is_dir() else None


def load_installed() -> list[Plugin]:
    """Import every installed plugin (entry points of GROUP), once per process."""
    if _SCANNED[0]:
        return [p for p in _LOADED.values() if p.kind == "entry_point"]
    from importlib.metadata import entry_points

    _SCANNED[0] = True
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        key = f"entry_point:{ep.name}"
        if key in _LOADED:
            continue
        dist = getattr(ep, "dist", None)
        module, registered = _import(ep.load, f"plugin {ep.name} ({ep.value})")
        _LOADED[key] = Plugin(
            "entry_point", ep.name, ep.value, version=getattr(dist, "version", None), distribution=getattr(dist, "name", None),
            registered=registered, configs=_configs_of(module),
        )
    return [p for p in _LOADED.values() if p.kind == "entry_point"]


def load_file(path: str | Path) -> Plugin:
    """Import a local plugin file (named on the command line) once; its sha256 is recorded."""
    path = Path(path).expanduser()
    if path.suffix != ".py" or not path.is_file():
        raise UserError(f"--plugin {str(path)!r}: not a .py file")
    key = f"file:{path.resolve()}"
    if key in _LOADED:
        return _LOADED[key]
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    name = f"dltrain_plugin_{path.stem}_{sha[:8]}"

    def load():
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module

    module, registered = _import(load, f"plugin {path}")
    plugin = Plugin("file", str(path.resolve()), name, sha256=sha, registered=registered, configs=_configs_of(module))
    _LOADED[key] = plugin
    return plugin


def loaded() -> list[Plugin]:
    return list(_LOADED.values())


def config_dirs() -> list[str]:
    """The configs/ folders the loaded plugins ship."""
    return [p.configs for p in _LOADED.values() if p.configs]


def registered_choices() -> dict[str, list[str]]:
    """Config group -> the names loaded plugins registered for it (no imports: for --help and checks)."""
    out: dict[str, list[str]] = {}
    for p in _LOADED.values():
        for kind, names in p.registered.items():
            for group in GROUPS_OF.get(kind, []):
                out.setdefault(group, []).extend(names)
    return out


def record() -> list[dict]:
    """What a run's plugins.json holds: every loaded plugin."""
    return [{k: v for k, v in asdict(p).items() if v not in (None, {}, [])} for p in _LOADED.values()]


def write_record(run_dir: Path) -> None:
    from dltrain.files import atomic_write

    plugins = record()
    if plugins:
        atomic_write(Path(run_dir) / RECORD, (json.dumps(plugins, indent=2) + "\n").encode())


def check_record(run_dir: Path) -> None:
    """Load what a run was trained with, or refuse in one line: an installed plugin that is
    missing, a local file that is not named again (--plugin FILE.py) or has changed."""
    try:
        records = json.loads((Path(run_dir) / RECORD).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        raise UserError(f"{Path(run_dir) / RECORD} is damaged; it should list the run's plugins") from None
    if any(r.get("kind") == "entry_point" for r in records):
        load_installed()
    for r in records:
        if r.get("kind") == "entry_point":
            if f"entry_point:{r.get('name')}" not in _LOADED:
                raise UserError(f"{run_dir} was trained with plugin {r.get('name')} ({r.get('distribution')} {r.get('version')}), which is not installed here; install it first")
        elif r.get("kind") == "file":
            mine = _LOADED.get(f"file:{r.get('name')}")
            if mine is None:
                raise UserError(f"{run_dir} was trained with the local plugin {r.get('name')}; name it again: dltrain --plugin {r.get('name')} ...")
            if mine.sha256 != r.get("sha256"):
                raise UserError(f"{run_dir} was trained with plugin {r.get('name')} at sha256 {str(r.get('sha256'))[:12]}..., and that file has changed since (now {mine.sha256[:12]}...); restore it")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without them, the files) of `--plugin FILE`, `--plugin=FILE` and `plugins=[A,B]`."""
    files, rest, skip = [], [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a == "--plugin":
            if i + 1 >= len(argv):
                raise UserError("--plugin needs a file: dltrain --plugin FILE.py ...")
            files.append(argv[i + 1])
            skip = True
        elif a.startswith("--plugin="):
            files.append(a.partition("=")[2])
        elif a.startswith("plugins="):
            value = a.partition("=")[2].strip()
            items = value[1:-1].split(",") if value.startswith("[") and value.endswith("]") else [value]
            files += [x.strip().strip("'\"") for x in items if x.strip()]
        else:
            rest.append(a)
    return rest, files


# Set by the dltrain command for its own child processes (sweep workers, data-parallel ranks): the
# local plugin files the user named, so that each child loads the same ones. The trust check
# refuses DLTRAIN_* in hydra.job.env_set, so no config can set it.
FILES_ENV = "DLTRAIN_PLUGIN_FILES"


def load_named(files: list[str]) -> None:
    """Load the files the user named, then the installed plugins; pass the files to child processes."""
    import os

    for f in files:
        load_file(f)
    load_installed()
    named = [p.name for p in _LOADED.values() if p.kind == "file"]
    if named:
        os.environ[FILES_ENV] = os.pathsep.join(named)


def load_for_child() -> None:
    """In a child process of the dltrain command: the same plugins as the parent."""
    import os

    load_named([f for f in os.environ.get(FILES_ENV, "").split(os.pathsep) if f])
