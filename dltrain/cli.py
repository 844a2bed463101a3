"""The `dltrain` command. Training is the default verb; every other verb's module is imported
only when that verb runs, so `dltrain --help` imports neither torch nor Hydra.

    dltrain [overrides...]          train (Hydra composes configs/ with the overrides)
    dltrain -m [sweep overrides]    multirun sweep
    dltrain VERB ...                see VERBS below (`dltrain --help` lists them)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Hydra flags that inspect the config rather than run training: passed through unchecked.
INSPECT_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--hydra-help", "--resolve", "-p", "--package")


class Verb:
    """One verb of the command: `dltrain NAME ARGS...` calls `module.function`.

    With `options` (a dataclass of `module`), the arguments are parsed into it first: the
    `positional` ones, then KEY=VALUE pairs checked like config keys; `rewrite` (a function of
    `module`) may rewrite the arguments before that (compress: prune=0.5 -> prune.amount=0.5).
    Without, the function takes the argument list itself. (A plain class, not a dataclass:
    `--help` would pay for importing dataclasses.)
    """

    __slots__ = ("name", "help", "module", "function", "options", "positional", "rewrite")

    def __init__(self, name: str, help: str, module: str, function: str, options: str | None = None, positional: tuple[str, ...] = ("run_dir",), rewrite: str | None = None) -> None:
        self.name, self.help, self.module, self.function = name, help, module, function
        self.options, self.positional, self.rewrite = options, positional, rewrite

    def run(self, argv: list[str]) -> int:
        import importlib

        from dltrain.overrides import parse_options

        module = importlib.import_module(self.module)
        if self.rewrite:
            argv = getattr(module, self.rewrite)(argv)
        if self.options is None:
            return getattr(module, self.function)(argv) or 0
        opts = parse_options(argv, getattr(module, self.options), self.name, self.positional)
        code = getattr(module, self.function)(opts) or 0
        if self.module.startswith("dltrain.analysis.") and getattr(opts, "run_dir", None):
            from dltrain.report import try_run_report

            try_run_report(opts.run_dir, lambda m: sys.stderr.write(f"dltrain: warning: {m}\n"))  # the verb's outputs join the run's page
        return code


# The verb table: dispatch and `--help` are both made from it.
VERBS = {
    v.name: v
    for v in [
        Verb("train", "train a model (the default verb): dltrain [train] [overrides...]; continue a stopped run: dltrain resume=RUN_DIR [resume.force=true]", "dltrain.cli", "train_command"),
        Verb("ls", "list registered components: dltrain ls [GROUP] [PATTERN]", "dltrain.cli", "list_components"),
        Verb("cv", "k-fold cross-validation, one run per fold (a sweep: launcher=joblib runs them in parallel): dltrain cv [k=5] [overrides...]; dltrain cv summarize DIR", "dltrain.cli", "cv_command"),
        Verb("sweep", "re-create a sweep's sweep.csv, best.yaml, sweep.png and table: dltrain sweep summarize DIR [objective=val_accuracy] [direction=maximize]", "dltrain.sweeps", "summarize_command"),
        Verb("recipes", "pinned experiments: dltrain recipes [--dir DIR] | recipes show NAME | recipes cp NAME PATH; run one: dltrain recipe=NAME (yours: recipe=DIR/NAME.yaml)", "dltrain.recipe", "recipes_command"),
        Verb("verify", "run recipes and check their expected metrics (exit 1 on a miss): dltrain verify NAME...|all [overrides...]", "dltrain.recipe", "verify_command"),
        Verb("eval", "metrics and plots of a run on a split: dltrain eval RUN_DIR [ckpt=best|last] [split=test|val]", "dltrain.analysis.evaluate", "run_eval", "EvalOptions"),
        Verb("predict", "predict new data: dltrain predict RUN_DIR input=FILE.csv|.npz|IMAGE|FOLDER [output=FILE]", "dltrain.analysis.predict", "run_predict", "PredictOptions"),
        Verb("export", "export and check the model: dltrain export RUN_DIR format=onnx|torchscript", "dltrain.analysis.export", "run_export", "ExportOptions"),
        Verb("compress", "prune and/or quantize: dltrain compress RUN_DIR prune=0.5 [prune.kind=structured] [quantize=int8] [finetune_epochs=N]", "dltrain.analysis.compress", "run_compress", "CompressOptions", rewrite="shorthand"),
        Verb("explain", "attribution heatmaps: dltrain explain RUN_DIR method=integrated_gradients|saliency|occlusion [n=16]", "dltrain.analysis.explain", "run_explain", "ExplainOptions"),
        Verb("robust", "accuracy under attack: dltrain robust RUN_DIR attack=fgsm|pgd|noise [eps=[0,0.05,0.1,0.2]]", "dltrain.analysis.robust", "run_robust", "RobustOptions"),
        Verb("sample", "new images from a VAE or GAN run: dltrain sample RUN_DIR [n=64] [seed=0] [label=K]", "dltrain.analysis.sample", "run_sample", "SampleOptions"),
        Verb("runs", "list past runs, newest first: dltrain runs [DIR...] [model=cnn] [data=digits] [status=finished|interrupted|failed|running] [--json]", "dltrain.history", "runs_command"),
        Verb("compare", "runs side by side (differing keys, metrics, overlaid curves, compare.html): dltrain compare RUN RUN ... | SWEEP_DIR [out=DIR]", "dltrain.history", "compare_command"),
        Verb("report", "rebuild a run's report.html (or a sweep's or cv directory's): dltrain report RUN_DIR ...", "dltrain.history", "report_command"),
        Verb("plugins", "installed plugins (entry points dltrain.plugins) and --plugin files: version, what each registered", "dltrain.cli", "list_plugins"),
        Verb("help", "show this help", "dltrain.cli", "print_help"),
    ]
}



def fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"dltrain: error: {message}\n")
    return code


def print_help(argv: Sequence[str] = ()) -> int:
    from dltrain import __version__
    from dltrain.composition import groups

    lines = [
        f"dltrain {__version__}: declarative deep-learning training (Hydra + PyTorch)",
        "",
        "usage: dltrain [VERB] [GROUP=CHOICE ...] [KEY=VALUE ...] [-m] [--cfg job]",
        "   e.g. dltrain model=cnn optim=adam sched=cosine trainer.max_epochs=10",
        "        dltrain -m optim=sgd,adam optim.lr=1e-3,1e-2",
        "",
        "verbs:",
        *(f"  {v.name:<8} {v.help}" for v in VERBS.values()),
        "",
        "config groups (GROUP=CHOICE; reg takes a list: reg=[l2,dropout]):",
        *(f"  {g:<8} {', '.join(c)}" for g, c in groups().items()),
        "",
        "keys: any KEY=VALUE of the composed config, e.g. model.hidden=128 data.batch_size=64 seed=1;",
        "      `dltrain --cfg job` prints the whole config, `dltrain ls model` what each choice does.",
        "Hydra: -m/--multirun, --cfg job|hydra|all, --info, -sc install=bash (tab completion), --hydra-help",
        "The run directory (config.yaml, metrics.csv, summary.json, checkpoints/, plots/, train.log, report.html)",
        "is printed at the end of each run.",
    ]
    print("\n".join(lines))
    return 0


def list_components(args: Sequence[str]) -> int:

    from rich.console import Console
    from rich.table import Table

    from dltrain.errors import unknown_choice
    from dltrain.plugins import REGISTRIES, registry

    group = args[0] if args else None
    pattern = args[1] if len(args) > 1 else "*"
    if group is not None and group not in REGISTRIES:
        return fail(str(unknown_choice("ls GROUP", group, REGISTRIES)))
    table = Table(title="registered components" if group is None else f"{group} choices")
    table.add_column("group", style="cyan")
    table.add_column("name", style="bold")
    table.add_column("description")
    for g in [group] if group else REGISTRIES:
        components = registry(g)
        for name in components.names(pattern):
            table.add_row(g, name, components.get(name).help)
    Console().print(table)
    return 0


def list_plugins(args: Sequence[str]) -> int:
    from rich.console import Console
    from rich.table import Table

    from dltrain import plugins

    if args:
        return fail(f"dltrain plugins takes no arguments, got {' '.join(args)!r}")
    found = plugins.loaded()
    console = Console()
    if not found:
        console.print(f"no plugins: install a package with an entry point in the group {plugins.GROUP!r}, or pass --plugin FILE.py", highlight=False)
        return 0
    table = Table(title="plugins")
    for column in ("plugin", "from", "version / sha256", "registered", "configs"):
        table.add_column(column)
    for p in found:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in p.registered.items()) or "nothing"
        origin = f"{p.distribution} ({p.module})" if p.kind == "entry_point" else "--plugin file"
        table.add_row(p.name, origin, p.version or (p.sha256 or "")[:16], registered, p.configs or "")
    console.print(table)
    return 0


def train_command(argv: list[str]) -> int:
    """Check the command line, then let Hydra compose, sweep and run `dltrain.training`."""
    from dltrain import overrides as ov
    from dltrain import private_api
    from dltrain.errors import UserError

    multirun = "-m" in argv or "--multirun" in argv
    inspect_only = any(a.split("=")[0] in INSPECT_FLAGS for a in argv)
    from dltrain.engine.plots import stop_plot_process

    single = not multirun and not inspect_only
    with private_api.composing_once(ov.is_hydra, active=single) as single_run:  # the check's composition is the one Hydra runs
        try:
            argv = _checked_argv(argv, multirun, inspect_only, single_run)
            return _run_hydra(argv)
        except UserError as e:
            return fail(str(e))
        except NothingToDo as e:
            sys.stderr.write(f"dltrain: {e}\n")
            return 0
        finally:
            stop_plot_process()


def cv_command(argv: list[str]) -> int:
    """`dltrain cv [k=N] [overrides]`: the folds as a sweep (its summary adds cv.csv, cv.json, cv.png)."""
    from dltrain.crossval import cv_argv, cv_summarize_command
    from dltrain.errors import UserError

    try:
        if argv[:1] == ["summarize"]:
            return cv_summarize_command(argv[1:])
        argv = cv_argv(argv)
    except UserError as e:
        return fail(str(e))
    return train_command(argv)


def _checked_argv(argv: list[str], multirun: bool, inspect_only: bool, single_run) -> list[str]:
    """The command line checked (every job of a sweep), its run or sweep directory claimed, and the
    arguments to hand to Hydra; `single_run()` is called for a single run."""
    import os

    from dltrain import overrides as ov
    from dltrain.recipe_store import rewrite_file_overrides, sweeps_by_itself

    argv = rewrite_file_overrides(argv)  # recipe=PATH.yaml (a copied recipe) -> recipe=NAME
    argv = resume_argv(argv)  # resume=RUN_DIR -> the run's own overrides, back into RUN_DIR
    from dltrain.composition import add_config_dirs
    from dltrain.trust import check_config_dirs

    check_config_dirs(ov.config_dirs(argv))
    add_config_dirs(ov.config_dirs(argv))
    if inspect_only and not any(a in ("-sc", "--shell-completion") or a.startswith("--shell-completion=") for a in argv):
        from dltrain.preflight import check_trust

        check_trust(ov.from_argv(argv))
    if not inspect_only:
        from dltrain.preflight import check_command_line

        overrides = ov.from_argv(argv)
        multirun = multirun or sweeps_by_itself(overrides)
        if not multirun and os.environ.get("RANK", "0") == "0":  # a single process, or torchrun's rank 0
            from dltrain.engine.plots import start_plot_process

            start_plot_process()  # matplotlib is imported there while torch is imported here
        if multirun:
            from dltrain.sweeps import prewarm_workers

            prewarm_workers(overrides)  # launcher=joblib: workers start while the sweep is checked
        checked = check_command_line(overrides, multirun)
        if multirun:
            from dltrain import private_api
            from dltrain.sweeps import claim_sweep_dir, resume_dir

            if checked.every_job:
                private_api.skip_grid_revalidation()
            if "launcher=joblib" in overrides:
                private_api.wrap_joblib_launch(_reporting_dead_workers)
            argv = argv + resume_dir(overrides)  # sweep.resume=true: back into the earlier sweep's dir
            claim_sweep_dir(ov.from_argv(argv), checked.hydra)
        else:
            from dltrain.preflight import claim_run_dir

            claim_run_dir(checked)
            devices = (checked.config.get("trainer") or {}).get("devices", 1)
            if isinstance(devices, int) and devices > 1:
                from dltrain.engine.plots import stop_plot_process

                stop_plot_process()  # the ranks draw their own (rank 0); the cores are theirs
            if str(checked.hydra.get("mode")) in ("None", "RUN", "RunMode.RUN"):
                single_run()  # Hydra need not compose the config again to read hydra.mode
        from dltrain.engine.distributed import under_torchrun

        if under_torchrun():
            from dltrain.rank import join_torchrun

            argv = join_torchrun(argv, multirun)
    return argv


def _reporting_dead_workers(launch):
    """launcher=joblib: a job that kills its worker process (out of memory, a crash in native code)
    stops the sweep with loky's TerminatedWorkerError. Say so in one line, after writing the sweep
    summary of what finished (the dead job shows as incomplete), and exit 1: no traceback."""
    from dltrain.private_api import terminated_worker_error

    dead_worker = terminated_worker_error() or ()

    def launch_reporting(self, job_overrides, initial_job_idx):
        import re

        try:
            return launch(self, job_overrides, initial_job_idx)
        except dead_worker as e:
            from rich.console import Console

            from dltrain.errors import UserError
            from dltrain.sweeps import summarize

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
            exit_now(1)

    return launch_reporting


def resume_argv(argv: list[str]) -> list[str]:
    """`resume=RUN_DIR [resume.force=true] [KEY=VALUE ...]`: the run's recorded overrides
    (.hydra/overrides.yaml), then these, with trainer.resume and hydra.run.dir set to RUN_DIR.
    RUN_DIR may also be one of its checkpoints (RUN_DIR/checkpoints/step-N)."""
    from pathlib import Path

    import yaml

    from dltrain import overrides as ov
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
    mine = {ov.key(a) for a in ov.from_argv(rest)}
    original = [o for o in yaml.safe_load(recorded.read_text()) or [] if not ov.key(o).startswith(("trainer.resume", "hydra.")) and ov.key(o) not in mine]
    _stop_if_finished(run_dir, [*original, *rest])
    return [*original, *rest, f"trainer.resume={ov.quoted(target)}", f"trainer.resume_force={force}", f"hydra.run.dir={ov.quoted(str(run_dir))}", "hydra.output_subdir=null"]  # keep .hydra/ as the run recorded it


class NothingToDo(Exception):
    """The command has nothing to do (resume= of a finished run): say why, exit 0, write nothing."""


def _stop_if_finished(run_dir, overrides: list[str]) -> None:
    """resume= of a finished run does nothing, unless trainer.max_epochs asks for more epochs."""
    import json

    import yaml

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return
    asked = [yaml.safe_load(o.partition("=")[2]) for o in overrides if o.lstrip("+").startswith("trainer.max_epochs=")]
    done = summary.get("epochs", 0)
    if asked and isinstance(asked[-1], int) and asked[-1] > done and not summary.get("stopped_early"):
        return
    test = ", ".join(f"test {k} {v:.4g}" for k, v in (summary.get("test") or {}).items() if isinstance(v, (int, float)))
    why = "it stopped early" if summary.get("stopped_early") else f"raise trainer.max_epochs above {done} to train on"
    raise NothingToDo(f"resume: {run_dir} has finished ({done} epochs{'; ' + test if test else ''}); nothing to do ({why})")


def _run_hydra(argv: list[str]) -> int:
    import hydra

    from dltrain.composition import config_dir, prepare_hydra
    from hydra_plugins.dltrain_optuna_sweeper.optuna_sweeper import register as register_sweeper

    argv = prepare_hydra(argv)  # recipes, the sweeper's node, plugins' components and config folders
    register_sweeper()

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base=None)
    def hydra_entry(cfg) -> float | None:
        return _train_job(cfg)

    sys.argv = [sys.argv[0], *argv]
    hydra_entry()
    if "-m" in argv or "--multirun" in argv:
        exit_now()
    return 0


def exit_now(code: int = 0) -> None:
    """Every result is written (a sweep's, or a run's): exit now. A sweep's idle workers are
    stopped and the exit handlers run (joblib's temporary folders, loky's and multiprocessing's
    semaphores: nothing for their resource trackers to warn about), the log files are flushed and
    closed, but not the interpreter's own teardown: with torch loaded it takes about 0.9 s on 2
    cores (as long as training the default model) and frees nothing the OS would not."""
    import logging
    import os

    from dltrain import private_api

    executor = private_api.loky_executor()
    if executor is not None:
        stop = getattr(executor, "terminate", None) or executor.shutdown  # joblib's: also its temporary folders
        stop(kill_workers=True)  # idle: the sweep has collected every result
    private_api.run_exit_handlers()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train_job(cfg) -> float | None:
    """One Hydra job: train into Hydra's output dir and print the result; how it ends if it does
    not finish is the job shell's (dltrain/shell.py)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain import shell
    from dltrain.engine import distributed
    from dltrain.training import train

    hc = HydraConfig.get()
    console = Console(stderr=True)
    if hc.mode == RunMode.MULTIRUN:  # a failing job is recorded in its job.json and the sweep goes on
        from dltrain.sweeps import run_job

        return run_job(cfg, hc, console)
    ranks = distributed.current()  # several when torchrun started this process
    run_dir = hc.runtime.output_dir
    try:
        summary = train(cfg, run_dir, console, config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
    except Exception as e:  # noqa: BLE001  (the shell re-raises what is a bug)
        end = shell.ending(e, ranks, run_dir)
        if end is None:
            raise
        if end.code == 2 and ranks.main:
            _discard_if_unused(run_dir)
        shell.finish(end, console, hard=ranks.enabled)
    if ranks.enabled:
        distributed.leave()
    if not ranks.main:
        return None
    from dltrain.config import validate
    from dltrain.runs import print_summary

    print_summary(console, summary, run_dir)
    return summary["best"].get(validate(cfg).sweep.objective)  # what a sweep would optimise


def _discard_if_unused(run_dir: str) -> None:
    """Remove a run dir that holds only what Hydra wrote before the run failed to start."""
    import re
    import shutil
    from pathlib import Path

    path = Path(run_dir)
    hydra_only = {".hydra", "train.log", ".lock"}
    from dltrain.preflight import PREEXISTING

    if str(path.resolve()) in PREEXISTING:  # a folder the user named (a resume): never removed
        return
    if path.is_dir() and {p.name for p in path.iterdir()} <= hydra_only:
        shutil.rmtree(path)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name) and not any(path.parent.iterdir()):
            path.parent.rmdir()  # the dated folder of the default layout, when this was its only run


def is_program() -> bool:
    """Whether this process is the `dltrain` command (its console script, `python -m dltrain`, or a
    script named dltrain), not Python code that called `main` (a test, a notebook): only then may
    a finished command skip the interpreter's teardown (exit_now)."""
    from pathlib import Path

    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return program.name == "dltrain" or program.parts[-2:] == ("dltrain", "__main__.py")


def main(argv: Sequence[str] | None = None) -> None:
    from dltrain import plugins
    from dltrain.engine import cpus
    from dltrain.errors import UserError

    if is_program():
        cpus.mark_command_start()  # a run reports the time from here to its first step (startup_seconds)

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, plugin_files = plugins.split_argv(argv)  # --plugin FILE.py: the user's explicit trust decision
    except UserError as e:
        sys.exit(fail(str(e)))
    verb = argv[0] if argv and not argv[0].startswith("-") and "=" not in argv[0] else None
    if argv[:1] in (["-h"], ["--help"]) or verb == "help":
        sys.exit(print_help())
    if argv[:1] == ["--version"]:
        from dltrain import __version__

        print(f"dltrain {__version__}")
        sys.exit(0)
    if verb in VERBS and verb != "train":
        try:
            plugins.load_named(plugin_files)
            sys.exit(VERBS[verb].run(argv[1:]))
        except UserError as e:
            sys.exit(fail(str(e)))
    try:
        plugins.load_named(plugin_files)
    except UserError as e:
        sys.exit(fail(str(e)))
    if verb == "train":
        argv = argv[1:]
    elif verb is not None:
        from dltrain.errors import did_you_mean

        hint = did_you_mean(verb, VERBS)
        sys.exit(fail(f"unknown verb {verb!r}; verbs: {', '.join(VERBS)}; overrides look like KEY=VALUE" + (f" ({hint})" if hint else "")))
    try:
        code = train_command(argv)
    except KeyboardInterrupt:
        sys.exit(fail("interrupted", 130))
    if is_program():
        exit_now(code)
    sys.exit(code)
