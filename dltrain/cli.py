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
    "train": "train a model (the default verb): dltrain [train] [overrides...]; continue a stopped run: dltrain resume=RUN_DIR [resume.force=true]",
    "ls": "list registered components: dltrain ls [GROUP] [PATTERN]",
    "sweep": "re-create a sweep's sweep.csv, best.yaml, sweep.png and table: dltrain sweep summarize DIR [objective=val_accuracy] [direction=maximize]",
    "recipes": "pinned experiments: dltrain recipes | recipes show NAME | recipes cp NAME PATH; run one: dltrain recipe=NAME",
    "verify": "run recipes and check their expected metrics (exit 1 on a miss): dltrain verify NAME...|all [overrides...]",
    "eval": "metrics and plots of a run on a split: dltrain eval RUN_DIR [ckpt=best|last] [split=test|val]",
    "predict": "predict new data: dltrain predict RUN_DIR input=FILE.csv|.npz|IMAGE|FOLDER [output=FILE]",
    "export": "export and check the model: dltrain export RUN_DIR format=onnx|torchscript",
    "compress": "prune and/or quantize: dltrain compress RUN_DIR prune=0.5 [prune.kind=structured] [quantize=int8] [finetune_epochs=N]",
    "explain": "attribution heatmaps: dltrain explain RUN_DIR method=integrated_gradients|saliency|occlusion [n=16]",
    "robust": "accuracy under attack: dltrain robust RUN_DIR attack=fgsm|pgd|noise [eps=[0,0.05,0.1,0.2]]",
    "sample": "new images from a VAE or GAN run: dltrain sample RUN_DIR [n=64] [seed=0] [label=K]",
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
    try:
        from dltrain.recipe import rewrite_file_overrides, sweeps_by_itself

        argv = rewrite_file_overrides(argv)  # recipe=PATH.yaml (a copied recipe) -> recipe=NAME
        argv = resume_argv(argv)  # resume=RUN_DIR -> the run's own overrides, back into RUN_DIR
        if not inspect_only:
            from dltrain.compose import check_command_line
            from dltrain.sweep import resume_dir

            overrides = _overrides(argv)
            multirun = multirun or sweeps_by_itself(overrides)
            if multirun:
                from dltrain.sweep import prewarm_workers

                prewarm_workers(overrides)  # launcher=joblib: workers start while the sweep is checked
            checked_every_job = check_command_line(overrides, multirun)
            if multirun and checked_every_job:
                _skip_second_check_of_grid_jobs()
            if multirun and "launcher=joblib" in overrides:
                _report_dead_workers()
            if multirun:
                argv = argv + resume_dir(overrides)  # sweep.resume=true: back into the earlier sweep's dir
            from dltrain.engine.distributed import under_torchrun

            if under_torchrun():
                argv = join_ranks(argv, _overrides(argv), multirun)
    except UserError as e:
        return fail(str(e))
    return _run_hydra(argv)


def _skip_second_check_of_grid_jobs() -> None:
    """Hydra's basic (grid) sweeper composes every job once more in this process before
    launching it, to validate it: about 0.25 s a job, all before the first job starts.
    check_command_line has just composed and validated every one of them, so skip that pass."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    BasicSweeper.validate_batch_is_legal = lambda self, batch: None


def _report_dead_workers() -> None:
    """launcher=joblib: a job that kills its worker process (out of memory, a crash in native code)
    stops the sweep with loky's TerminatedWorkerError. Say so in one line, after writing the sweep
    summary of what finished (the dead job shows as incomplete), and exit 1: no traceback."""
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
        from joblib.externals.loky.process_executor import TerminatedWorkerError
    except ImportError:
        return
    if getattr(JoblibLauncher.launch, "reports_dead_workers", False):
        return
    launch = JoblibLauncher.launch

    def launch_reporting(self, job_overrides, initial_job_idx):
        import re

        try:
            return launch(self, job_overrides, initial_job_idx)
        except TerminatedWorkerError as e:
            from rich.console import Console

            from dltrain.errors import UserError
            from dltrain.sweep import summarize

            sweep_dir = str(self.config.hydra.sweep.dir)
            try:
                summarize(sweep_dir, console=Console(stderr=True))
            except UserError:
                pass
            codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(e))
            fail(
                f"a worker process died while running a sweep job ({'exit ' + codes.group(1) if codes else 'killed'}; "
                f"out of memory, or a crash in native code); the sweep stopped: the jobs that finished are in {sweep_dir}/sweep.csv; "
                f"rerun the same command with sweep.resume=true to run the rest",
                1,
            )
            _exit_after_sweep(1)

    launch_reporting.reports_dead_workers = True
    JoblibLauncher.launch = launch_reporting


def join_ranks(argv: list[str], overrides: list[str], multirun: bool) -> list[str]:
    """A rank started by torchrun: join the process group before Hydra runs, and train into rank
    0's run directory; Hydra's own files (.hydra/, train.log) are rank 0's to write."""
    from omegaconf import OmegaConf

    from dltrain.compose import compose
    from dltrain.config import validate
    from dltrain.engine import distributed
    from dltrain.errors import UserError

    if multirun:
        raise UserError("a sweep under torchrun would run once in every rank; run it as dltrain -m ... trainer.devices=N (each job starts its own ranks)")
    cfg = compose(overrides, with_hydra=True)
    own_dir = str(OmegaConf.select(cfg, "hydra.run.dir"))  # this rank's clock; rank 0's wins
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    trainer = validate(cfg).trainer
    ranks = distributed.join(trainer.backend, trainer.device, trainer.dist_timeout)
    run_dir = distributed.agree_run_dir(own_dir)
    mine = [f"hydra.run.dir={_quoted(run_dir)}"] + ([] if ranks.main else ["hydra.output_subdir=null", "hydra/job_logging=disabled"])
    return [a for a in argv if not a.startswith("hydra.run.dir=")] + mine


def resume_argv(argv: list[str]) -> list[str]:
    """`resume=RUN_DIR [resume.force=true] [KEY=VALUE ...]`: the run's recorded overrides
    (.hydra/overrides.yaml), then these, with trainer.resume and hydra.run.dir set to RUN_DIR.
    RUN_DIR may also be one of its checkpoints (RUN_DIR/checkpoints/step-N)."""
    from pathlib import Path

    import yaml

    from dltrain.errors import UserError

    target = next((a.partition("=")[2] for a in argv if a.startswith("resume=")), None)
    if target is None:
        if any(a.startswith("resume.") for a in argv):
            raise UserError("resume.force needs resume=RUN_DIR")
        return argv
    force = next((a.partition("=")[2] for a in argv if a.startswith("resume.force=")), "false")
    rest = [a for a in argv if not a.startswith(("resume=", "resume.force="))]
    path = Path(target)
    run_dir = path.parent.parent if path.name.startswith("step-") else path
    if not run_dir.is_dir():
        raise UserError(f"resume: run directory {target!r} does not exist")
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        raise UserError(f"resume: {run_dir} has no .hydra/overrides.yaml (not started by the dltrain command); use its overrides with trainer.resume={target}")
    mine = {a.split("=")[0].lstrip("+~") for a in _overrides(rest)}
    skip = ("trainer.resume", "trainer.resume_force", "hydra.")
    original = [o for o in yaml.safe_load(recorded.read_text()) or [] if not o.lstrip("+~").startswith(skip) and o.split("=")[0].lstrip("+~") not in mine]

    return [*original, *rest, f"trainer.resume={_quoted(target)}", f"trainer.resume_force={force}", f"hydra.run.dir={_quoted(str(run_dir))}", "hydra.output_subdir=null"]  # keep .hydra/ as the run recorded it


def _quoted(value: str) -> str:
    """`value` as a quoted Hydra override value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


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
    from dltrain.recipe import register_recipes
    from dltrain.search import register_sweeper

    register_recipes()  # the `recipe` group lives in recipes/, outside the config dir
    register_sweeper()

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
    def hydra_entry(cfg) -> float | None:
        return _train_job(cfg)

    sys.argv = [sys.argv[0], *argv]
    hydra_entry()
    if "-m" in argv or "--multirun" in argv:
        _exit_after_sweep()
    return 0


def _exit_after_sweep(code: int = 0) -> None:
    """Every result of the sweep is written: exit now. The idle workers are stopped and the exit
    handlers run (joblib's temporary folders, loky's and multiprocessing's semaphores: nothing
    for their resource trackers to warn about), but not the interpreter's own teardown: with
    torch loaded it takes about half a second and frees nothing the OS would not."""
    import atexit
    import logging
    import os

    loky = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(loky, "_executor", None) if loky else None
    if executor is not None:
        stop = getattr(executor, "terminate", None) or executor.shutdown  # joblib's: also its temporary folders
        stop(kill_workers=True)  # idle: the sweep has collected every result
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train_job(cfg) -> float | None:
    """One Hydra job: train into Hydra's output dir, print the result; user errors are one line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain.engine import distributed
    from dltrain.engine.checkpoint import TrainingInterrupted
    from dltrain.errors import UserError
    from dltrain.train import train

    hc = HydraConfig.get()
    console = Console(stderr=True)
    if hc.mode == RunMode.MULTIRUN:  # a failing job is recorded in its job.json and the sweep goes on
        from dltrain.sweep import run_job

        return run_job(cfg, hc, console)
    ranks = distributed.current()  # several when torchrun started this process
    try:
        summary = train(cfg, hc.runtime.output_dir, console, config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    except TrainingInterrupted as e:  # SIGINT/SIGTERM: checkpoint saved; exit 130/143
        if ranks.main:
            console.print(f"{e}; continue with: dltrain resume={hc.runtime.output_dir}", highlight=False, soft_wrap=True)
        distributed.exit_rank(e.code) if ranks.enabled else sys.exit(e.code)
    except UserError as e:
        if ranks.main:
            _discard_if_unused(hc.runtime.output_dir)
            fail(str(e))
        distributed.exit_rank(2) if ranks.enabled else sys.exit(2)
    except distributed.RanksFailed as e:  # trainer.devices=N: the ranks have said what went wrong
        if e.code in (130, 143):
            console.print(e.message, highlight=False, soft_wrap=True)
        elif e.message:
            fail(e.message)
        if e.code == 2:
            _discard_if_unused(hc.runtime.output_dir)
        sys.exit(e.code)
    except Exception as e:
        if ranks.enabled and distributed.is_peer_failure(e):
            distributed.exit_rank(fail(distributed.peer_failure_message(e, ranks), 1))
        raise
    if ranks.enabled:
        distributed.leave()
    if not ranks.main:
        return None
    print_summary(console, summary, hc.runtime.output_dir)
    from dltrain.config import validate

    return summary["best"].get(validate(cfg).sweep.objective)  # what a sweep would optimise


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
    if summary.get("compile_seconds"):
        table.add_row("compile seconds", f"{summary['compile_seconds']:.2f}")
    table.add_row("device", summary["device"] + (f" x {summary['ranks']} ranks" if summary.get("ranks", 1) > 1 else ""))
    console.print(table)
    console.print(f"run directory: [bold]{run_dir}[/]", highlight=False, soft_wrap=True)  # one line, to copy


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
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        # a dotted key (prune.kind=structured) fills a nested dataclass field
        *parents, leaf = key.split(".")
        node = values
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"dltrain {verb}: {key} conflicts with {'.'.join(parents[: i + 1])}={node!r}")
        node[leaf] = value
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


# Analysis verbs read a finished run directory and write under its analysis/<verb>/ folder.


def _verb_eval(argv: list[str]) -> int:
    from dltrain.analysis.evaluate import EvalOptions, run_eval

    return run_eval(verb_options(argv, EvalOptions, "eval", positional=("run_dir",)))


def _verb_predict(argv: list[str]) -> int:
    from dltrain.analysis.predict import PredictOptions, run_predict

    return run_predict(verb_options(argv, PredictOptions, "predict", positional=("run_dir",)))


def _verb_export(argv: list[str]) -> int:
    from dltrain.analysis.export import ExportOptions, run_export

    return run_export(verb_options(argv, ExportOptions, "export", positional=("run_dir",)))


def _verb_compress(argv: list[str]) -> int:
    from dltrain.analysis.compress import CompressOptions, run_compress, shorthand

    return run_compress(verb_options(shorthand(argv), CompressOptions, "compress", positional=("run_dir",)))


def _verb_explain(argv: list[str]) -> int:
    from dltrain.analysis.explain import ExplainOptions, run_explain

    return run_explain(verb_options(argv, ExplainOptions, "explain", positional=("run_dir",)))


def _verb_robust(argv: list[str]) -> int:
    from dltrain.analysis.robust import RobustOptions, run_robust

    return run_robust(verb_options(argv, RobustOptions, "robust", positional=("run_dir",)))


def _verb_sample(argv: list[str]) -> int:
    from dltrain.analysis.sample import SampleOptions, run_sample

    return run_sample(verb_options(argv, SampleOptions, "sample", positional=("run_dir",)))


def _verb_sweep(argv: list[str]) -> int:
    from dataclasses import dataclass

    from rich.console import Console

    from dltrain.errors import UserError, unknown_choice
    from dltrain.sweep import summarize

    @dataclass
    class SummarizeOptions:
        dir: str
        objective: str | None = None  # default: the sweep's own (sweep.objective)
        direction: str | None = None  # minimize or maximize; default: the sweep's own

    if not argv or argv[0] != "summarize":
        if argv and "=" not in argv[0]:
            raise unknown_choice("sweep ACTION", argv[0], ["summarize"])
        raise UserError("usage: dltrain sweep summarize DIR [objective=METRIC] [direction=minimize|maximize]")
    opts = verb_options(argv[1:], SummarizeOptions, "sweep summarize", positional=("dir",))
    if opts.direction not in (None, "minimize", "maximize"):
        raise unknown_choice("direction", opts.direction, ["maximize", "minimize"])
    summarize(opts.dir, opts.objective, opts.direction, Console(stderr=True))
    return 0


def _verb_recipes(argv: list[str]) -> int:
    from rich.console import Console

    from dltrain import recipe
    from dltrain.errors import UserError, unknown_choice

    action, args = (argv[0], argv[1:]) if argv else ("list", [])
    usage = {"list": 0, "show": 1, "cp": 2}
    if action not in usage:
        raise unknown_choice("recipes ACTION", action, usage)
    if len(args) != usage[action]:
        raise UserError(f"usage: dltrain recipes [show NAME | cp NAME PATH]; `recipes {action}` takes {usage[action]} argument(s)")
    if action == "list":
        recipe.list_recipes(Console())
    elif action == "show":
        sys.stdout.write(recipe.show(args[0]))
    else:
        target = recipe.copy(*args)
        print(f"copied recipe {args[0]} to {target}; run it with: dltrain recipe={target}")
    return 0


def _verb_verify(argv: list[str]) -> int:
    from rich.console import Console

    from dltrain.recipe import verify

    targets = [a for a in argv if "=" not in a]
    overrides = [a for a in argv if "=" in a]
    return verify(targets, overrides, Console(stderr=True))
