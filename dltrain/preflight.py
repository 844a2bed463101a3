"""Check a whole command line before anything runs: every job of a sweep, every corner of a search.

The CLI calls `check_command_line` before handing control to Hydra, so a typo anywhere (a group
choice, a key, a value, one combination of a sweep) fails at once with one line and exit code 2,
before a run directory exists.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dltrain import overrides as ov
from dltrain import private_api
from dltrain.composition import check_choices, compose, compose_checked, groups
from dltrain.config import validate
from dltrain.errors import UserError
from dltrain.search import is_search, probe_jobs, search_space
from dltrain.trust import check_hydra_node, check_hydra_overrides

# Sweeps larger than this are checked value by value rather than combination by combination.
MAX_CHECKED_COMBINATIONS = 512


@dataclass
class Checked:
    """What checking a command line found: whether every job was composed and validated (not so for
    an Optuna search, or a grid of more than MAX_CHECKED_COMBINATIONS), the `hydra` node (not
    resolved), and for a single run its plain config."""

    every_job: bool
    hydra: dict
    config: dict | None = None


def check_command_line(overrides: list[str], multirun: bool) -> Checked:
    """Validate every job the command line describes (every combination of a sweep), and what its
    Hydra config would make Hydra run (dltrain/trust.py)."""
    own = ov.without_hydra(overrides)
    parsed = ov.parse(own)
    check_choices(parsed, groups())
    if not multirun:
        for o in parsed:
            if o.is_sweep_override():
                raise UserError(f"{o.input_line} lists several values: that is a sweep; add -m (dltrain -m {o.input_line} ...) to run one job per value")
        cfg = compose_checked([*own, *_hydra_lines(overrides)], with_hydra=True)
        hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
        check_hydra_node(hydra)
        validate(cfg)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra")
        return Checked(True, hydra, OmegaConf.to_container(OmegaConf.create(plain), resolve=True))
    # a grid: every combination (too many: each swept value with the others at their first value);
    # an Optuna search: every choice and both ends of every range of its search space
    jobs, every_job, hydra = jobs_to_check(overrides, parsed, MAX_CHECKED_COMBINATIONS)
    bases: dict[tuple[str, ...], Any] = {}
    choices = groups()
    for job in jobs:
        try:
            validate(_compose_sharing(job, choices, bases))
        except UserError as e:
            raise UserError(f"{e} (in sweep job: {' '.join(job)})") from None
    return Checked(every_job, hydra)


def _compose_sharing(job: list[str], choices: Mapping[str, list[str]], bases: dict[tuple[str, ...], Any]) -> Any:
    """compose_checked(job), faster for a sweep: jobs with the same group choices share one Hydra
    composition (`bases`), and their value overrides are applied to a copy of it the way Hydra
    applies them. Anything unusual, or any error, goes through compose_checked (its messages)."""
    parsed = ov.parse(job)
    shared = tuple(o.input_line for o in parsed if o.key_or_group in choices or o.is_add() or o.is_delete() or o.is_force_add())
    if shared not in bases:
        bases[shared] = compose_checked(list(shared))
    cfg = copy.deepcopy(bases[shared])
    try:
        applied = private_api.apply_overrides([o for o in parsed if o.input_line not in shared], cfg)
    except Exception:  # noqa: BLE001  (compose_checked names the problem)
        return compose_checked(job)
    return cfg if applied else compose_checked(job)


def jobs_to_check(overrides: Sequence[str], parsed: Sequence, max_combinations: int) -> tuple[list[list[str]], bool, dict]:
    """The jobs a sweep command line describes, for validation before the first one runs, whether
    they are all of its jobs, and the sweep's (checked) `hydra` node.

    A grid sweep: every combination (or, beyond `max_combinations`, every value of each swept
    key with the others at their first value). An Optuna search: every categorical choice and
    both ends of every range, from the preset's space and the command line.
    """
    hydra = hydra_config(overrides, parsed)
    sweeper = hydra["sweeper"]
    if is_search(sweeper):
        own = [o.input_line for o in parsed]
        fixed, space = search_space(sweeper.get("params"), own)
        if not space:
            raise UserError("an Optuna search needs a search space: hydra.sweeper.params in the preset, or KEY=choice(...)/interval(...) on the command line")
        return probe_jobs(fixed, space), False, hydra

    for o in parsed:
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise UserError(f"{o.input_line}: a grid sweep takes lists of values (a,b,c or range(...)); interval(...) needs a search: add hparams_search=NAME")
    sweeps = [o for o in parsed if o.is_sweep_override()]
    total = math.prod(len(list(o.sweep_string_iterator())) for o in sweeps)
    if total <= max_combinations:
        return private_api.grid_jobs(parsed), True, hydra
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else o.input_line for o in parsed]
    return [first[:i] + [f"{o.get_key_element()}={v}"] + first[i + 1 :] for i, o in enumerate(parsed) if o.is_sweep_override() for v in o.sweep_string_iterator()], False, hydra


def sweeper_config(overrides: Sequence[str], parsed: Sequence) -> dict:
    """The `hydra.sweeper` node the command line selects (composed without its sweeps)."""
    return hydra_config(overrides, parsed)["sweeper"]


def hydra_config(overrides: Sequence[str], parsed: Sequence) -> dict:
    """The `hydra` node of a sweep's command line (composed without its sweeps, not resolved),
    after checking what it would make Hydra run."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    fixed = [o.input_line for o in parsed if not o.is_sweep_override()] + _hydra_lines(overrides)
    try:
        cfg = compose(fixed, with_hydra=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"cannot compose the config: {str(e).splitlines()[0]}") from None
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    check_hydra_node(hydra)
    return hydra


def check_trust(overrides: Sequence[str]) -> None:
    """Only the trust check (dltrain/trust.py), for commands that only inspect the config (--cfg):
    a config that does not compose is left for Hydra to report."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    fixed = [o.input_line for o in ov.parse(ov.without_hydra(overrides)) if not o.is_sweep_override()] + _hydra_lines(overrides)
    try:
        cfg = compose(fixed, with_hydra=True)
    except (HydraException, OmegaConfBaseException):
        return
    check_hydra_node(OmegaConf.to_container(cfg.hydra, resolve=False))


def _hydra_lines(overrides: Sequence[str]) -> list[str]:
    """The command line's overrides of Hydra's own config (never swept)."""
    lines = ov.parse([o for o in overrides if ov.is_hydra(o)])
    check_hydra_overrides(lines)
    for o in lines:
        if o.is_sweep_override():
            raise UserError(f"{o.input_line}: Hydra's own settings cannot be swept; a search space goes on the command line as KEY=interval(...) or KEY=choice(...)")
    return [o.input_line for o in lines]


# Run directories that existed before this command (never removed when a run fails to start).
PREEXISTING: set[str] = set()


def claim_run_dir(checked: Checked, run_dir: str | None = None) -> Path | None:
    """Before Hydra writes anything (.hydra/, train.log): a run directory named on the command line
    must be new, empty, or an unfinished run of this config (a resume: any run of its own); it
    is locked for this process. Wherever the run goes, its folder must be writable."""
    from dltrain.engine.checkpoint import config_hash
    from dltrain.engine.rundir import check_run_dir
    from dltrain.files import FolderLock, check_writable

    where = run_dir or str(checked.hydra.get("run", {}).get("dir", "outputs"))
    if "${" in where:  # generated (outputs/<date>/<time with microseconds>): new by construction
        check_writable(Path(where.split("${")[0] or "."), "hydra.run.dir")
        return None
    path = Path(where)
    check_writable(path, "hydra.run.dir")
    resuming = bool((checked.config.get("trainer") or {}).get("resume"))
    check_run_dir(path, config_hash(checked.config), resuming)
    if path.exists():
        PREEXISTING.add(str(path.resolve()))
    FolderLock(path).acquire()  # held until this process ends
    return path
