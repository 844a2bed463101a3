"""Optuna search behind `dltrain -m hparams_search=NAME`: search spaces, studies, pruning.

Hydra sees a thin Sweeper (hydra_plugins/dltrain_optuna_sweeper) that calls `run_search`
here. It drives current Optuna through its ask-and-tell API: ask for a batch of trials, launch
them as Hydra jobs through whatever launcher is configured (in-process, joblib, submitit), tell
Optuna what each returned. Search spaces use Hydra's override grammar, in a preset's
`hydra.sweeper.params` or on the command line:

    optim.lr: tag(log, interval(1e-4, 1e-1))    # float, log scale
    model.hidden: choice(64, 128, 256)           # categorical (also: 64,128,256)
    model.layers: range(1, 4)                    # integers 1, 2, 3
    model.dropout: interval(0.0, 0.5)            # float, uniform

Pruning: each job reports its objective after every epoch (`epoch_reporter`), and stops when
Optuna's pruner says the trial is hopeless. A job finds its trial through an environment variable
the sweeper sets per job (`DLTRAIN_OPTUNA_TRIAL`): "<trial id>@<storage>".
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035  (Hydra's structured configs need typing's generics)

from dltrain import overrides as ov
from dltrain import private_api
from dltrain.errors import UserError, unknown_choice

log = logging.getLogger("dltrain")

SWEEPER_TARGET = "hydra_plugins.dltrain_optuna_sweeper.optuna_sweeper.OptunaSweeper"
TRIAL_ENV = "DLTRAIN_OPTUNA_TRIAL"
SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("median", "hyperband", "none")

# In-memory studies of this process, for jobs that run in the sweeper's own process.
_LOCAL_STUDIES: dict[str, Any] = {}


@dataclass
class OptunaSweeperConf:
    """The `hydra/sweeper=dltrain_optuna` config node (the hparams_search presets select it)."""

    _target_: str = SWEEPER_TARGET
    n_trials: int = 20  # trials in all (a continued study counts those it already has)
    n_jobs: Optional[int] = None  # trials launched at once; null: as many as the launcher runs in parallel
    sampler: str = "tpe"  # tpe (Bayesian, tree-structured Parzen estimator), gp (Gaussian process) or random
    seed: Optional[int] = 0  # the sampler's seed: the same search proposes the same trials
    startup_trials: int = 8  # random trials before the sampler models the space (also the pruner's)
    pruner: Optional[str] = None  # null, median or hyperband: stop hopeless trials early
    warmup_epochs: int = 3  # epochs every trial runs before it may be pruned
    storage: Optional[str] = None  # null: in memory; sqlite:///${hydra.sweep.dir}/optuna.db: a study to continue
    study_name: str = "dltrain"
    # the search space, in Hydra's override grammar: choice(...), range(...), interval(...), tag(log, interval(...))
    params: Dict[str, Any] = field(default_factory=dict)


def register_sweeper_config() -> None:
    """Put the sweeper's config node in Hydra's ConfigStore (what `hparams_search` presets select).
    Hydra's own plugin scan also stores it (hydra_plugins/dltrain_optuna_sweeper/config.py)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    if "dltrain_optuna.yaml" not in store.repo.get("hydra", {}).get("sweeper", {}):
        store.store(group="hydra/sweeper", name="dltrain_optuna", node=OptunaSweeperConf, provider="dltrain")


def is_search(sweeper_cfg: Mapping | None) -> bool:
    """Whether a `hydra.sweeper` config node selects dltrain's Optuna sweeper."""
    return bool(sweeper_cfg) and str(sweeper_cfg.get("_target_", "")) == SWEEPER_TARGET


# ---- search spaces ---------------------------------------------------------------------------


def distribution(override) -> Any:
    """The Optuna distribution of one sweep override (choice, comma list, range, interval, tag(log, ...))."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise UserError(f"{key}={override.get_value_element_as_str()} is an empty range")
        if all(isinstance(v, int) for v in values):
            step = int(value.step)
            return IntDistribution(min(values), max(values), step=abs(step))
        return FloatDistribution(min(values), max(values), step=abs(float(value.step)))
    if isinstance(value, IntervalSweep):
        low, high, log_scale = value.start, value.end, "log" in value.tags
        if low >= high:
            raise UserError(f"{key}: interval({low}, {high}) needs low < high")
        if log_scale and low <= 0:
            raise UserError(f"{key}: a log-scale interval needs low > 0, got {low}")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise UserError(f"{key}={override.get_value_element_as_str()} is not a search space; use choice(...), range(...) or interval(...)")


def search_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """Split preset params and command-line arguments into fixed overrides and a search space.

    A command-line override of a key replaces the preset's entry for it.
    """
    lines = {str(k): f"{k}={v}" for k, v in (params or {}).items()}
    for o in ov.parse(arguments, "search space"):
        lines[o.get_key_element()] = o.input_line
    fixed, space = [], {}
    for o in ov.parse(lines.values(), "search space"):
        if o.is_sweep_override():
            space[o.get_key_element()] = distribution(o)
        else:
            fixed.append(o.input_line)
    return fixed, space


def format_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def probe_jobs(fixed: Sequence[str], space: Mapping[str, Any]) -> list[list[str]]:
    """Jobs that touch every categorical choice and both ends of every range: checked before a search starts."""
    from optuna.distributions import CategoricalDistribution

    corners = {k: (list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]) for k, d in space.items()}
    first = {k: v[0] for k, v in corners.items()}
    jobs = []
    for key, values in corners.items():
        for v in values:
            point = {**first, key: v}
            jobs.append([*fixed, *(f"{k}={format_value(x)}" for k, x in point.items())])
    return jobs or [list(fixed)]


# ---- studies ---------------------------------------------------------------------------------


def quiet_optuna():
    """Optuna's messages through Python logging (the run's log), warnings and up only."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    return optuna


def make_sampler(name: str, seed: int | None, startup_trials: int, parallel: bool):
    import optuna

    if name == "tpe":
        # constant_liar keeps parallel workers from proposing the same point
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials, constant_liar=parallel)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials)
    raise unknown_choice("hydra.sweeper.sampler", name, SAMPLERS)


def make_pruner(name: str | None, warmup_epochs: int, startup_trials: int):
    import optuna

    if name in (None, "none"):
        return optuna.pruners.NopPruner()
    if name == "median":
        # steps are epochs (1, 2, ...): the first `warmup_epochs` are never pruned
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs + 1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=warmup_epochs + 1)
    raise unknown_choice("hydra.sweeper.pruner", name, PRUNERS)


def make_storage(url: str | None):
    """None (in memory), an RDB URL such as sqlite:///path/optuna.db, or journal:PATH (multi-process safe)."""
    if not url:
        return None
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def parallel_jobs(n_jobs: int | None, launcher_cfg: Mapping | None) -> int:
    """Trials to launch at once: n_jobs, else as many as the launcher runs in parallel."""
    from dltrain.engine.cpus import jobs_at_once

    if n_jobs is None:
        n_jobs = (launcher_cfg or {}).get("n_jobs") or 1
    return jobs_at_once(int(n_jobs))


def run_search(sweeper, arguments: list[str]) -> list:
    """The body of OptunaSweeper.sweep: ask, launch, tell, until n_trials have finished."""
    import optuna
    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    from dltrain.config import validate

    config = sweeper.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")

    task_cfg = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
    objective = validate(OmegaConf.create(task_cfg)).sweep
    fixed, space = search_space(sweeper.params, arguments)
    if not space:
        raise UserError("an Optuna search needs a search space: hydra.sweeper.params in the preset, or KEY=choice(...)/interval(...) on the command line")

    launcher_cfg = OmegaConf.to_container(config.hydra.launcher, resolve=True)
    n_parallel = parallel_jobs(sweeper.n_jobs, launcher_cfg)
    in_process = "BasicLauncher" in str(launcher_cfg.get("_target_", ""))
    storage_url = sweeper.storage
    if sweeper.pruner not in (None, "none") and not storage_url and not in_process:
        storage_url = f"journal:{(sweep_dir / 'optuna.journal').resolve()}"  # jobs in other processes report here
    quiet_optuna()
    study = optuna.create_study(
        storage=make_storage(storage_url),
        study_name=sweeper.study_name,
        direction=objective.direction,
        sampler=make_sampler(sweeper.sampler, sweeper.seed, sweeper.startup_trials, n_parallel > 1),
        pruner=make_pruner(sweeper.pruner, sweeper.warmup_epochs, sweeper.startup_trials),
        load_if_exists=True,
    )
    handle_storage = storage_url or f"memory:{uuid.uuid4().hex}"
    if not storage_url:
        _LOCAL_STUDIES[handle_storage] = study
    stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:  # left running by an interrupted sweep
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    finished = sum(t.state.is_finished() for t in study.trials)
    if finished:
        log.info("continuing study %r: %d of %d trials already finished", sweeper.study_name, finished, sweeper.n_trials)
        if sweeper.seed is not None:  # a fresh RNG with the same seed would propose the first trials again
            study.sampler = make_sampler(sweeper.sampler, sweeper.seed + len(study.trials), sweeper.startup_trials, n_parallel > 1)
    remaining = sweeper.n_trials - finished
    pruning = sweeper.pruner not in (None, "none")

    returns = []
    while remaining > 0:
        trials = [study.ask(space) for _ in range(min(n_parallel, remaining))]
        batch = []
        for t in trials:
            job = [*fixed, *(f"{k}={format_value(v)}" for k, v in t.params.items())]
            if pruning:
                job.append(f"+hydra.job.env_set.{TRIAL_ENV}='{private_api.trial_id(t)}@{handle_storage}'")
            batch.append(job)
        sweeper.validate_batch_is_legal(batch)
        results = sweeper.launcher.launch(batch, initial_job_idx=trials[0].number)
        for t, r in zip(trials, results, strict=True):
            value = private_api.job_return_value(r)
            if r.status == JobStatus.FAILED and isinstance(value, optuna.TrialPruned):
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
            elif r.status == JobStatus.COMPLETED and isinstance(value, (int, float)) and math.isfinite(value):
                study.tell(t, float(value))
            else:
                if r.status == JobStatus.FAILED:
                    log.error("trial %d failed: %s", t.number, value)
                study.tell(t, state=optuna.trial.TrialState.FAIL)
        returns.append(results)
        remaining -= len(trials)
    _LOCAL_STUDIES.pop(handle_storage, None)
    return returns


# ---- the job side ----------------------------------------------------------------------------


def job_trial(hydra_cfg) -> Any | None:
    """This job's Optuna trial when it runs under a pruning search, else None."""
    sweeper = hydra_cfg.get("sweeper") or {}
    handle = os.environ.get(TRIAL_ENV)
    if not handle or not is_search(sweeper) or sweeper.get("pruner") in (None, "none"):
        return None
    import optuna

    trial_id, _, storage = handle.partition("@")
    if storage.startswith("memory:"):
        study = _LOCAL_STUDIES.get(storage)
        if study is None:
            return None
    else:
        quiet_optuna()
        study = optuna.load_study(
            study_name=sweeper.get("study_name"),
            storage=make_storage(storage),
            pruner=make_pruner(sweeper.get("pruner"), sweeper.get("warmup_epochs", 0), sweeper.get("startup_trials", 0)),
        )
    return private_api.trial_by_id(study, int(trial_id))


def epoch_reporter(trial, objective: str) -> Callable[[Mapping[str, Any]], None]:
    """on_epoch callback: report the objective to Optuna; raise TrialPruned when the pruner says stop."""
    import optuna

    def report(row: Mapping[str, Any]) -> None:
        value = row.get(objective)
        if value is None or not math.isfinite(value):
            return
        trial.report(float(value), int(row["epoch"]))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} ({objective}={value:.4g})")

    return report
