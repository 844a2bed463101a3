"""The `dltrain` command. Training is the default verb; heavy modules are imported lazily.

    dltrain [overrides...]          train (Hydra composes configs/ with the overrides)
    dltrain -m [sweep overrides]    multirun sweep
    dltrain ls [GROUP] [PATTERN]    list registered components
    dltrain --help                  groups, choices and verbs
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Hydra flags that inspect the config rather than run training: passed through unchecked.
INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--hydra-help", "--resolve", "-p", "--package")

# verb -> one-line help; each verb's handler is `_verb_<name>(argv) -> exit code` below.
VERBS = {
    "train": "train a model (the default verb): dltrain [train] [overrides...]",
    "ls": "list registered components: dltrain ls [GROUP] [PATTERN]",
    "help": "show this help",
}

# `dltrain ls` groups -> (module, registry attribute)
LISTABLE = {
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


def fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"dltrain: error: {message}\n")
    return code


def print_help() -> int:
    from dltrain import __version__
    from dltrain.compose import groups

    lines = [
        f"dltrain {__version__}: declarative deep-learning training (Hydra + PyTorch)",
        "",
        "usage: dltrain [VERB] [GROUP=CHOICE ...] [KEY=VALUE ...] [-m] [--cfg job]",
        "   e.g. dltrain model=cnn optim=adam sched=cosine trainer.max_epochs=10",
        "        dltrain -m optim=sgd,adam optim.lr=1e-3,1e-2",
        "",
        "verbs:",
        *(f"  {v:<8} {h}" for v, h in VERBS.items()),
        "",
        "config groups (GROUP=CHOICE; reg takes a list: reg=[l2,dropout]):",
        *(f"  {g:<8} {', '.join(c)}" for g, c in groups().items()),
        "",
        "keys: any KEY=VALUE of the composed config, e.g. model.hidden=128 data.batch_size=64 seed=1;",
        "      `dltrain --cfg job` prints the whole config, `dltrain ls model` what each choice does.",
        "Hydra: -m/--multirun, --cfg job|hydra|all, --info, -sc install=bash (tab completion), --hydra-help",
        "The run directory (config.yaml, metrics.csv, summary.json, checkpoints/, plots/, train.log)",
        "is printed at the end of each run.",
    ]
    print("\n".join(lines))
    return 0


def list_components(args: Sequence[str]) -> int:
    import importlib

    from rich.console import Console
    from rich.table import Table

    from dltrain.errors import unknown_choice

    group = args[0] if args else None
    pattern = args[1] if len(args) > 1 else "*"
    if group is not None and group not in LISTABLE:
        return fail(str(unknown_choice("ls GROUP", group, LISTABLE)))
    table = Table(title="registered components" if group is None else f"{group} choices")
    table.add_column("group", style="cyan")
    table.add_column("name", style="bold")
    table.add_column("description")
    for g in [group] if group else LISTABLE:
        module, attr = LISTABLE[g]
        registry = getattr(importlib.import_module(module), attr)
        for name in registry.names(pattern):
            table.add_row(g, name, registry.get(name).help)
    Console().print(table)
    return 0


def train_command(argv: list[str]) -> int:
    """Check the command line, then let Hydra compose, sweep and run `dltrain.train`."""
    from dltrain.errors import UserError

    multirun = "-m" in argv or "--multirun" in argv
    inspect_only = any(a.split("=")[0] in INSPECT_FLAGS for a in argv)
    if not inspect_only:
        overrides = _overrides(argv)
        try:
            from dltrain.compose import check_command_line

            check_command_line(overrides, multirun)
        except UserError as e:
            return fail(str(e))
    return _run_hydra(argv)


def _overrides(argv: list[str]) -> list[str]:
    """The KEY=VALUE arguments of a Hydra command line (skipping flags and their values)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun")
        else:
            out.append(a)
    return out


def _run_hydra(argv: list[str]) -> int:
    import hydra

    from dltrain.compose import config_dir

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
    def hydra_entry(cfg) -> float | None:
        return _train_job(cfg)

    sys.argv = [sys.argv[0], *argv]
    hydra_entry()
    return 0


def _train_job(cfg) -> float | None:
    """One Hydra job: train into Hydra's output dir, print the result; user errors are one line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain.errors import UserError
    from dltrain.train import train

    hc = HydraConfig.get()
    console = Console(stderr=True)
    try:
        summary = train(cfg, hc.runtime.output_dir, console, config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    except UserError as e:
        if hc.mode == RunMode.MULTIRUN:  # the sweep goes on; the failure is in the job's log
            import logging

            logging.getLogger("dltrain").error(str(e))
            console.print(f"[red]job {hc.job.num} failed:[/] {e}", highlight=False)
            return None
        _discard_if_unused(hc.runtime.output_dir)
        sys.exit(fail(str(e)))
    print_summary(console, summary, hc.runtime.output_dir)
    return summary["best"].get("val_loss")


def _discard_if_unused(run_dir: str) -> None:
    """Remove a run dir that holds only what Hydra wrote before the run failed to start."""
    import re
    import shutil
    from pathlib import Path

    path = Path(run_dir)
    hydra_only = {".hydra", "train.log"}
    if path.is_dir() and {p.name for p in path.iterdir()} <= hydra_only:
        shutil.rmtree(path)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name) and not any(path.parent.iterdir()):
            path.parent.rmdir()  # the dated folder of the default layout, when this was its only run


def print_summary(console, summary: dict, run_dir: str) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['model']} on {summary['data']}: test metrics ({summary['test_ckpt']} checkpoint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in summary["test"].items():
        table.add_row(f"test {k}", f"{v:.4f}")
    table.add_row("best epoch", str(summary["best"]["epoch"]))
    table.add_row("epochs", f"{summary['epochs']}" + (" (early stop)" if summary["stopped_early"] else ""))
    table.add_row("train seconds", f"{summary['train_seconds']:.2f}")
    table.add_row("device", summary["device"])
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/]", highlight=False)


def verb_options(argv: Sequence[str], cls: type, verb: str, positional: Sequence[str] = ()):
    """Parse a verb's ``KEY=VALUE`` arguments (after its positional ones) into dataclass `cls`.

    Validation is the config's: a bad key or value is a one-line UserError naming it.
    """
    import yaml

    from dltrain.errors import UserError
    from dltrain.schema import parse_dataclass

    args, values = list(argv), {}
    for name in positional:
        if not args or "=" in args[0]:
            raise UserError(f"dltrain {verb} needs {name.upper()}: dltrain {verb} {' '.join(p.upper() for p in positional)} [KEY=VALUE ...]")
        values[name] = args.pop(0)
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep:
            raise UserError(f"dltrain {verb}: expected KEY=VALUE, got {arg!r}")
        try:
            values[key] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            values[key] = raw
    return parse_dataclass(cls, values, "")


def _run_verb(handler, argv: list[str]) -> int:
    from dltrain.errors import UserError

    try:
        return handler(argv) or 0
    except UserError as e:
        return fail(str(e))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = argv[0] if argv and not argv[0].startswith("-") and "=" not in argv[0] else None
    if argv[:1] in (["-h"], ["--help"]) or verb == "help":
        sys.exit(print_help())
    if argv[:1] == ["--version"]:
        from dltrain import __version__

        print(f"dltrain {__version__}")
        sys.exit(0)
    if verb in VERBS and verb != "train":
        sys.exit(_run_verb(globals()[f"_verb_{verb}"], argv[1:]))
    if verb == "train":
        argv = argv[1:]
    elif verb is not None:
        from dltrain.errors import did_you_mean

        hint = did_you_mean(verb, VERBS)
        sys.exit(fail(f"unknown verb {verb!r}; verbs: {', '.join(VERBS)}; overrides look like KEY=VALUE" + (f" ({hint})" if hint else "")))
    try:
        sys.exit(train_command(argv))
    except KeyboardInterrupt:
        sys.exit(fail("interrupted", 130))


# ---- verbs: thin wrappers that import their module only when used --------------------------


def _verb_ls(argv: list[str]) -> int:
    return list_components(argv)
