"""The `hydra/sweeper=dltrain_optuna` config node. Hydra imports this module when it scans plugins."""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.dltrain_optuna_sweeper.optuna_sweeper.OptunaSweeper"
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


ConfigStore.instance().store(group="hydra/sweeper", name="dltrain_optuna", node=OptunaSweeperConf, provider="dltrain")
