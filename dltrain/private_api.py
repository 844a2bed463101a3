"""Every private API of Hydra, loky (joblib's executor), Optuna, torch and CPython that dltrain uses.

Each function here wraps one use, says why dltrain needs it, and is guarded: if an upgrade moves
or removes what it relies on, dltrain falls back to a slower or plainer path that gives the same
result (or does without the nicety). `tests/test_private_api.py` pins every one of them against
the installed versions, so such an upgrade fails loudly there instead of silently degrading.
Nothing else in dltrain touches these libraries' private names.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

# ---- Hydra -----------------------------------------------------------------------------------


def grid_jobs(parsed: Sequence) -> list[list[str]]:
    """The jobs of a grid sweep, in the order (and so with the job numbers) Hydra's basic sweeper
    launches them. dltrain validates every job before the first runs and must number them alike.
    Hydra: `BasicSweeper.split_arguments` (a static helper of its internal sweeper)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        return BasicSweeper.split_arguments(list(parsed), None)[0]
    except (ImportError, AttributeError, TypeError):  # the same product, computed here
        lists = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line] for o in parsed]
        return [list(job) for job in itertools.product(*lists)]


def apply_overrides(parsed: Sequence, cfg: Any) -> bool:
    """Apply value overrides to a composed config in place, the way Hydra applies them while
    composing; False when this Hydra lacks the function (the caller then composes the job).
    Checking a sweep composes one config per choice of groups and applies each job's values to a
    copy: 16 jobs in 0.3 s instead of 4 s. Hydra: `ConfigLoaderImpl._apply_overrides_to_config`."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        apply = ConfigLoaderImpl._apply_overrides_to_config
    except (ImportError, AttributeError):
        return False
    apply(list(parsed), cfg)
    return True


def skip_grid_revalidation() -> None:
    """Hydra's basic (grid) sweeper composes every job once more before launching it, to validate
    it: about 0.25 s a job, all before the first job starts. dltrain has just composed and
    validated every one of them, so that pass is skipped. Hydra: `BasicSweeper.validate_batch_is_legal`
    (a method of its internal sweeper); without it, the jobs are validated twice."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    except ImportError:
        return
    if hasattr(BasicSweeper, "validate_batch_is_legal"):
        BasicSweeper.validate_batch_is_legal = lambda self, batch: None


@contextlib.contextmanager
def composing_once(is_hydra: Callable[[str], bool], active: bool = True) -> Iterator[Callable[[], None]]:
    """Within the block, a config Hydra has composed once is not composed again: dltrain's check of
    a single run composes its config (and validates it), then Hydra composes the same config twice
    more, once to read `hydra.mode` and once to run it: about 0.25 s each on 2 cores. The first
    composition is kept (a copy) and handed out again for the same config folders, config name,
    run mode and overrides (compared as Hydra splits them: the task's in order, Hydra's own in
    order); Hydra mutates what it is given, so each caller gets its own copy. Calling what the
    block yields says the command is a single run whose config leaves hydra.mode unset (or RUN),
    so Hydra's `get_mode` need not compose to find that out.
    Not `active` (a sweep: its jobs are composed for another run mode, nothing would be reused),
    the block changes nothing.
    Hydra: `ConfigLoaderImpl.load_configuration` and `Hydra.get_mode` (both internal); without
    them, Hydra composes as it always does."""
    if not active:
        yield lambda: None
        return
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra._internal.hydra import Hydra
        from hydra.types import RunMode
    except ImportError:
        yield lambda: None
        return
    load, get_mode = ConfigLoaderImpl.load_configuration, Hydra.get_mode
    kept: dict[tuple, Any] = {}

    def load_once(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        import copy

        try:
            folders = tuple(str(e.path) for e in self.config_search_path.get_path())
        except AttributeError:
            return load(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
        task = tuple(o for o in overrides if not is_hydra(o))
        key = (folders, config_name, task, tuple(o for o in overrides if is_hydra(o)), run_mode, validate_sweep_overrides)
        if key in kept:
            return copy.deepcopy(kept[key])
        cfg = load(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
        kept[key] = copy.deepcopy(cfg)
        return cfg

    def single_run() -> None:
        Hydra.get_mode = lambda self, config_name, overrides: RunMode.RUN

    ConfigLoaderImpl.load_configuration = load_once
    try:
        yield single_run
    finally:
        ConfigLoaderImpl.load_configuration, Hydra.get_mode = load, get_mode


def job_return_value(result: Any) -> Any:
    """What a Hydra job returned, or the exception it raised. `JobReturn.return_value` re-raises a
    failed job's exception; the Optuna sweeper needs it as a value (a pruned trial raises
    TrialPruned). Hydra: `JobReturn._return_value`."""
    return getattr(result, "_return_value", None)


def register_hydra_plugin(cls: type) -> None:
    """Register a Hydra plugin class that Hydra's scan of the `hydra_plugins` namespace misses
    (editable installs hide it from pkgutil). Hydra: `Plugins.class_name_to_class` and `register`."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    name = f"{cls.__module__}.{cls.__name__}"
    known = getattr(plugins, "class_name_to_class", None)
    if known is None or name not in known:
        plugins.register(cls)


def wrap_joblib_launch(wrap: Callable[[Callable], Callable]) -> bool:
    """Replace Hydra's joblib launcher's `launch` with `wrap(launch)`, once; False when the launcher
    is not installed. dltrain turns loky's TerminatedWorkerError (a job killed its worker) into a
    sweep summary and one line instead of a traceback."""
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    except ImportError:
        return False
    if not getattr(JoblibLauncher.launch, "dltrain_wrapped", False):
        wrapped = wrap(JoblibLauncher.launch)
        wrapped.dltrain_wrapped = True
        JoblibLauncher.launch = wrapped
    return True


# ---- loky (joblib's process executor) ----------------------------------------------------------


def terminated_worker_error() -> type[BaseException] | None:
    """The exception loky raises when a worker process dies mid-task (loky: `process_executor`)."""
    try:
        from joblib.externals.loky.process_executor import TerminatedWorkerError
    except ImportError:
        return None
    return TerminatedWorkerError


def loky_executor() -> Any | None:
    """joblib's reusable loky executor, if this process started one: a sweep that has collected
    every result stops its idle workers before exiting. loky: `reusable_executor._executor`."""
    import sys

    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    return getattr(module, "_executor", None) if module else None


def loky_forkserver() -> bool:
    """Make loky start its workers through multiprocessing's forkserver (forked in milliseconds from
    one warm process instead of each importing torch). loky: `backend.context.set_start_method`;
    without it, workers start loky's usual way."""
    try:
        from joblib.externals.loky.backend.context import set_start_method
    except ImportError:
        return False
    set_start_method("forkserver", force=True)
    return True


# ---- Optuna ------------------------------------------------------------------------------------


def trial_id(trial: Any) -> int:
    """A trial's storage id (not its number): a job in another process finds its trial by it to
    report each epoch for pruning. Optuna: `Trial._trial_id`."""
    return int(trial._trial_id)


def trial_by_id(study: Any, trial_id: int) -> Any:
    """The running trial with storage id `trial_id`, for reporting and pruning from a job process.
    Optuna: constructing `optuna.trial.Trial(study, trial_id)` directly (documented as internal)."""
    import optuna

    return optuna.trial.Trial(study, trial_id)


# ---- torch -------------------------------------------------------------------------------------


def strong_wolfe() -> Callable:
    """torch's strong-Wolfe line search, the one `torch.optim.LBFGS` runs, for optim=cg and
    optim=newton: `search(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9,
    max_ls=25) -> (f, g, t, evaluations)`, `obj_func(x, t, d) -> (f, g)` at x + t d. torch:
    `torch.optim.lbfgs._strong_wolfe`; without it, backtracking to the Armijo condition (plainer:
    sufficient decrease only, so CG may need more iterations and restarts)."""
    try:
        from torch.optim.lbfgs import _strong_wolfe

        return _strong_wolfe
    except ImportError:
        return backtracking


def backtracking(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """Halve t until f(x + t d) <= f + c1 t gtd (`c2` is unused: no curvature condition)."""
    gtd = float(gtd)
    for evals in range(1, max_ls + 1):
        f_new, g_new = obj_func(x, t, d)
        if f_new <= f + c1 * t * gtd or t * float(d.abs().max()) < tolerance_change:
            return f_new, g_new, t, evals
        t /= 2
    return f_new, g_new, t, max_ls


# ---- CPython -----------------------------------------------------------------------------------


def run_exit_handlers() -> None:
    """Run the atexit handlers now (joblib's temporary folders, loky's and multiprocessing's
    semaphores), before an `os._exit` that skips the interpreter's slow teardown after a sweep.
    CPython: `atexit._run_exitfuncs`; without it the handlers are skipped."""
    import atexit

    run = getattr(atexit, "_run_exitfuncs", None)
    if run is not None:
        run()
