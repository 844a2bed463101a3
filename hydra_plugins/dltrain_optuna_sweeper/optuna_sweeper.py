"""A thin Hydra Sweeper over Optuna's ask-and-tell API; the work is in dltrain.search.

Light at import (Hydra imports every plugin module on startup): Optuna is imported when a
search actually runs.
"""

from typing import Any, Dict, List, Optional

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        n_trials: int,
        n_jobs: Optional[int],
        sampler: str,
        seed: Optional[int],
        startup_trials: int,
        pruner: Optional[str],
        warmup_epochs: int,
        storage: Optional[str],
        study_name: str,
        params: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.n_trials, self.n_jobs, self.sampler, self.seed = n_trials, n_jobs, sampler, seed
        self.startup_trials, self.pruner, self.warmup_epochs = startup_trials, pruner, warmup_epochs
        self.storage, self.study_name = storage, study_name
        self.params = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else dict(params or {})
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from dltrain.search import run_search

        return run_search(self, arguments)


def register() -> None:
    """Make Hydra know this sweeper before `hydra.main` runs (its scan misses editable installs)."""
    from dltrain.private_api import register_hydra_plugin

    register_hydra_plugin(OptunaSweeper)
