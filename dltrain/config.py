"""The typed run configuration and its validation.

Fixed sections (``seed``, ``task``, ``sweep``; ``trainer``, whose dataclass is the engine's
`TrainerConfig`) are dataclasses; component sections
(``model``, ``data``, ``loss``, ``optim``, ``sched``, ``init``, ``reg``, ``logger``) are checked
against the signature of the registered component they name. Everything is validated before
anything is built or written; a problem is one `UserError` line naming key, value and choices.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from dltrain.engine.settings import CheckpointConfig, EarlyStopConfig, TrainerConfig
from dltrain.errors import ConfigError, UserError, unknown_choice, unknown_key
from dltrain.expectations import check_expected
from dltrain.schema import NonNegativeInt, Positive, PositiveInt, Range, check_value, parse_dataclass

Seed = Annotated[int, Range(0, 2**32 - 1)]  # numpy's seeds are 32-bit

__all__ = ["CheckpointConfig", "CvConfig", "DistillConfig", "EarlyStopConfig", "EnsembleConfig", "RunSpec", "SweepConfig", "TrainerConfig", "check_sweep", "validate"]

@dataclass
class SweepConfig:
    """What a sweep optimises (the value each job returns) and whether a rerun skips finished jobs."""

    objective: str = "auto"  # a validation metric, e.g. val_loss or val_accuracy; auto: the task's monitor
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: from the metric (accuracy, r2: maximize)
    resume: bool = False  # rerunning the same sweep command skips jobs that already finished


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015): soft targets from a finished classification run."""

    teacher: str | None = None  # the teacher's run directory (its best weights); null: no distillation
    temperature: Positive = 4.0  # both models' logits are divided by T before the softmax
    alpha: Annotated[float, Range(0, 1)] = 0.9  # the soft loss's weight (scaled by T^2); 1 - alpha: the hard labels' loss


@dataclass
class CvConfig:
    """k-fold cross-validation (`dltrain cv k=5` runs every fold): this run's fold."""

    k: NonNegativeInt = 0  # folds of the training and validation examples together; 0: the data's own split
    fold: NonNegativeInt = 0  # which of them validates (0 to k-1); the other k-1 train


@dataclass
class EnsembleConfig:
    """Deep ensembles: several members of the model, trained side by side in one run."""

    size: PositiveInt = 1  # members (different initial weights); 1: no ensemble
    bagging: bool = False  # each member trains on its own bootstrap sample of the training split


@dataclass
class RunSpec:
    """A validated run: every section with its defaults filled in."""

    seed: int
    task: str
    model: dict[str, Any]
    data: dict[str, Any]
    loss: dict[str, Any]
    optim: dict[str, Any]
    sched: dict[str, Any]
    init: dict[str, Any]
    reg: dict[str, dict[str, Any]]
    logger: dict[str, dict[str, Any]]  # logger=[tensorboard,mlflow]: each chosen logger by name, with its keys
    trainer: TrainerConfig
    batch_size: int
    shift: int = 0  # data.shift: random translation of training images, in pixels
    augment: tuple[str, ...] = ()  # data.augment: random flips, rotations, crops, noise of training images
    optim_d: dict[str, Any] | None = None  # a GAN's discriminator
    sched_d: dict[str, Any] | None = None
    sweep: SweepConfig = field(default_factory=SweepConfig)
    expected: dict[str, dict[str, float]] = field(default_factory=dict)  # a recipe's metric bounds
    distill: DistillConfig = field(default_factory=DistillConfig)
    cv: CvConfig = field(default_factory=CvConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)


def check_sweep(sweep: SweepConfig, task_cls, cv_k: int = 0) -> SweepConfig:
    """Resolve `sweep.objective`/`direction` "auto" for the task and check the objective is one of
    its metrics: a validation metric, or with cv.k=K its mean over K folds (cv_val_*)."""
    allowed = [f"val_{m}" for m in task_cls.metrics] + [f"cv_val_{m}" for m in task_cls.metrics]
    if sweep.objective == "auto":
        sweep.objective = task_cls.monitor
    if sweep.objective not in allowed:
        raise unknown_choice("sweep.objective", sweep.objective, allowed)
    if sweep.objective.startswith("cv_") and cv_k < 2:
        raise ConfigError("sweep.objective", sweep.objective, "the mean over cross-validation folds needs cv.k=K (2 or more: each job then trains K folds); allowed: " + ", ".join(a for a in allowed if not a.startswith("cv_")) + ", or set cv.k")
    if sweep.direction == "auto":
        sweep.direction = "maximize" if sweep.objective.removeprefix("cv_").removeprefix("val_") in task_cls.higher_is_better else "minimize"
    return sweep


COMPONENT_SECTIONS = ("model", "data", "loss", "optim", "sched", "init")
OPTIONAL_SECTIONS = ("optim_d", "sched_d")  # present only for models with a second optimizer
TOP_LEVEL = (*COMPONENT_SECTIONS, *OPTIONAL_SECTIONS, "reg", "logger", "trainer", "seed", "task", "sweep", "expected", "distill", "cv", "ensemble")


def _component(registry, node: Any, key: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(node, Mapping) or "name" not in node:
        raise ConfigError(key, node, "choose one with " + f"{key}=NAME from: " + ", ".join(registry.names()))
    params = {k: v for k, v in node.items() if k != "name" and k not in skip}
    name = node["name"]
    return {"name": name, **registry.check(str(name), params, key)}


def _chosen(registry, node: Any, key: str, example: str) -> dict[str, dict[str, Any]]:
    """A group of which several choices may be taken at once (reg, logger): each chosen entry by
    name, its keys checked against its builder."""
    node = node or {}
    if key == "logger" and isinstance(node, Mapping) and isinstance(node.get("name"), str):  # a run of dltrain 0.1's first layout
        node = {node["name"]: {k: v for k, v in node.items() if k != "name"}}
    if not isinstance(node, Mapping):
        raise ConfigError(key, node, f"choose a list such as {example} from: " + ", ".join(registry.names()))
    out = {}
    for name, params in node.items():
        registry.get(str(name), key)
        if params is not None and not isinstance(params, Mapping):
            keys = ", ".join(registry.get(str(name)).params()) or "none"
            raise ConfigError(f"{key}.{name}", params, f"allowed: a mapping of its keys ({keys}), e.g. {key}.{name}.KEY=VALUE")
        out[str(name)] = registry.check(str(name), dict(params or {}), f"{key}.{name}")
    return out


def validate(cfg: Mapping[str, Any]) -> RunSpec:
    """Check a composed config (plain dict or DictConfig) and return the typed `RunSpec`."""
    from omegaconf import DictConfig, OmegaConf, open_dict

    from dltrain.data import DATASETS, LOADER_KEYS
    from dltrain.data.base import data_kind, data_task
    from dltrain.engine.loggers import LOGGERS
    from dltrain.losses import LOSSES
    from dltrain.models import MODELS
    from dltrain.models.layers import INITS
    from dltrain.optim import OPTIMIZERS, SCHEDULES
    from dltrain.regularization import REGULARIZERS
    from dltrain.tasks import TASKS

    if isinstance(cfg, DictConfig):
        if "hydra" in cfg:  # Hydra's node resolves only inside a Hydra run (hydra.job.num, ...)
            cfg = cfg.copy()
            with open_dict(cfg):
                del cfg["hydra"]
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True)
        except Exception as e:  # an interpolation that does not resolve
            raise UserError(f"config does not resolve: {e}".splitlines()[0]) from None
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    if "plugins" in cfg:
        raise UserError("plugins: local plugin files are accepted only on the command line (dltrain --plugin FILE.py ...), never from a recipe or a config file")
    for k in cfg:
        if k not in TOP_LEVEL:
            raise unknown_key(str(k), TOP_LEVEL, "the config")

    registries = dict(model=MODELS, data=DATASETS, loss=LOSSES, optim=OPTIMIZERS, sched=SCHEDULES, init=INITS, logger=LOGGERS, optim_d=OPTIMIZERS, sched_d=SCHEDULES)
    auto_loss = isinstance(cfg.get("loss"), Mapping) and cfg["loss"].get("name") == "auto"  # loss=auto: chosen below, by the task
    parts = {s: _component(registries[s], cfg.get(s), s, LOADER_KEYS if s == "data" else ()) for s in COMPONENT_SECTIONS if not (s == "loss" and auto_loss)}
    parts.update({s: _component(registries[s], cfg[s], s) for s in OPTIONAL_SECTIONS if cfg.get(s) is not None})
    batch_size = check_value("data.batch_size", (cfg.get("data") or {}).get("batch_size", 64), PositiveInt)
    shift = check_value("data.shift", (cfg.get("data") or {}).get("shift", 0), NonNegativeInt)
    augment = tuple(check_value("data.augment", (cfg.get("data") or {}).get("augment") or [], list[Literal["flip", "rotate", "crop", "noise"]]))

    reg = _chosen(REGULARIZERS, cfg.get("reg"), "reg", "reg=[l2,dropout]")
    logger = _chosen(LOGGERS, cfg.get("logger"), "logger", "logger=[tensorboard,mlflow]")
    for name in logger:  # an optional extra that is not installed: one line before anything runs
        package, hint = LOGGERS.get(name).meta.get("requires", (None, ""))
        if package and importlib.util.find_spec(package) is None:
            raise UserError(hint)

    trainer = parse_dataclass(TrainerConfig, cfg.get("trainer"), "trainer")
    seed = check_value("seed", cfg.get("seed", 0), Seed)

    data_entry = DATASETS.get(parts["data"]["name"])
    model_entry = MODELS.get(parts["model"]["name"])
    # a user's file decides these from what it holds (data=table: the target column's values)
    kind, data_tasks = data_kind(data_entry, parts["data"]), data_task(data_entry, parts["data"], cfg.get("task"))
    task = cfg.get("task") or model_entry.meta.get("task") or data_tasks
    task_cls = TASKS.get(str(task), "task").fn
    if auto_loss:
        parts["loss"] = _component(LOSSES, {**cfg["loss"], "name": auto_loss_for(str(task), LOSSES)}, "loss")
    if model_entry.meta.get("task") and task != model_entry.meta["task"]:
        raise ConfigError("task", task, f"model={model_entry.name} trains as task {model_entry.meta['task']}; allowed: {model_entry.meta['task']} or null")
    if "d" in task_cls.phases:
        parts.setdefault("optim_d", dict(parts["optim"]))
        parts.setdefault("sched_d", dict(parts["sched"]))
    else:
        for section in OPTIONAL_SECTIONS:
            if section in parts:
                raise UserError(f"{section}={parts[section]['name']} is for a model with a discriminator (model=gan); model={model_entry.name} has one optimizer: use {section[:-2]}=")
    for section in (trainer.checkpoint, trainer.early_stop):
        if section.monitor == "auto":
            section.monitor = task_cls.monitor
    _check_compatible(parts, reg, trainer, task, task_cls, data_entry, kind, data_tasks, MODELS, LOSSES, OPTIMIZERS, REGULARIZERS, DATASETS)
    distill = parse_dataclass(DistillConfig, cfg.get("distill"), "distill")
    cv = parse_dataclass(CvConfig, cfg.get("cv"), "cv")
    sweep = check_sweep(parse_dataclass(SweepConfig, cfg.get("sweep"), "sweep"), task_cls, cv.k)
    ensemble = parse_dataclass(EnsembleConfig, cfg.get("ensemble"), "ensemble")
    _check_ensemble(ensemble, task, trainer, OPTIMIZERS.get(parts["optim"]["name"]), distill)
    if cv.k == 1:
        raise ConfigError("cv.k", cv.k, "one fold leaves nothing to validate on; allowed: 0 (the data's own split) or 2 and more")
    if cv.fold >= max(cv.k, 1):
        raise ConfigError("cv.fold", cv.fold, f"allowed: 0 to {cv.k - 1} (cv.k={cv.k})" if cv.k else "allowed: 0 (cv.k=0: no folds)")
    if cv.k and task == "seq2seq":
        raise ConfigError("cv.k", cv.k, f"folds are stratified by class, and data={data_entry.name}'s targets are sequences; allowed: 0")
    if cv.k and data_tasks == "forecasting":
        raise ConfigError("cv.k", cv.k, f"k-fold cross-validation would mix data={data_entry.name}'s future into its past; allowed: 0")
    if distill.teacher is not None and OPTIMIZERS.get(parts["optim"]["name"]).meta.get("rule"):
        raise ConfigError("distill.teacher", distill.teacher, f"model={model_entry.name} learns by its own rule, which a teacher's soft targets do not change; allowed: null")
    if distill.teacher is not None and task != "classification":
        raise ConfigError("distill.teacher", distill.teacher, f"distillation matches class probabilities, and task {task} has none; allowed: null, or a classification run")
    expected = check_expected(cfg.get("expected"), task_cls, grad_norms=trainer.log_grad_norms, averaged=bool(trainer.ema.decay or trainer.swa.start), ensemble=ensemble.size > 1, cv=cv.k >= 2)
    if shift and kind != "image":
        raise ConfigError("data.shift", shift, f"data={data_entry.name} is {kind} data, not images; allowed: 0")
    if augment and kind != "image":
        raise ConfigError("data.augment", list(augment), f"data={data_entry.name} is {kind} data, not images; allowed: []")
    if len(set(augment)) < len(augment):
        raise ConfigError("data.augment", list(augment), "names an augmentation twice; allowed: each of flip, rotate, crop, noise at most once")
    return RunSpec(seed=seed, task=task, reg=reg, logger=logger, trainer=trainer, batch_size=batch_size, shift=shift, augment=augment, sweep=sweep, expected=expected, distill=distill, cv=cv, ensemble=ensemble, **parts)


# loss=auto: the usual loss of each task the data can decide
AUTO_LOSS = {"classification": "cross_entropy", "regression": "mse", "forecasting": "mse"}


def auto_loss_for(task: str, LOSSES) -> str:
    """loss=auto's choice for `task`: AUTO_LOSS, else the first loss registered for it."""
    if task in AUTO_LOSS:
        return AUTO_LOSS[task]
    fits = [e.name for e in LOSSES if task in e.meta["tasks"]]
    if not fits:
        raise ConfigError("loss", "auto", f"no loss is registered for task {task}")
    return fits[0]


def _check_compatible(parts, reg, trainer, task, task_cls, data_entry, kind, data_tasks, MODELS, LOSSES, OPTIMIZERS, REGULARIZERS, DATASETS) -> None:
    """Cross-section rules that no single section can check on its own (`kind` and `data_tasks`:
    the data's kind of input and the task its targets call for)."""
    model = MODELS.get(parts["model"]["name"])
    if parts["model"].get("conditional") and data_tasks != "classification":
        raise ConfigError("model.conditional", True, f"data={data_entry.name} has no class labels to condition on; allowed: false")
    if kind not in model.meta["inputs"]:
        fits = [e.name for e in MODELS if kind in e.meta["inputs"]]
        raise UserError(
            f"model={model.name} needs {' or '.join(model.meta['inputs'])} input, but data={data_entry.name} is {kind} data; "
            f"models for it: {', '.join(fits)}"
        )
    if model.meta.get("task") == "classification" and data_tasks != "classification":
        fits = [e.name for e in DATASETS if e.meta["task"] == "classification" and e.meta["kind"] in model.meta["inputs"]]
        raise ConfigError("data", data_entry.name, f"model={model.name} classifies, and data={data_entry.name} has real-valued targets; allowed: {', '.join(fits)}")
    if task == "classification" and data_tasks != "classification":
        raise UserError(f"task=classification needs labelled data, but data={data_entry.name} has real-valued targets; use task=regression")

    loss = LOSSES.get(parts["loss"]["name"])
    if task not in loss.meta["tasks"]:
        fits = [e.name for e in LOSSES if task in e.meta["tasks"]]
        raise UserError(f"loss={loss.name} does not apply to task {task}; choose from: {', '.join(fits)}")
    for name, params in reg.items():
        built = REGULARIZERS.build({"name": name, **params}, key=f"reg.{name}")
        for section, entry, overrides in (("model", model, built.model), ("loss", loss, built.loss)):
            missing = [k for k in overrides if k not in entry.params()]
            if missing:
                raise UserError(f"reg={name} sets {section}.{missing[0]}, which {section}={entry.name} does not have")
    if task in ("vae", "autoencoder") and parts["loss"].get("label_smoothing"):
        raise ConfigError("loss.label_smoothing", parts["loss"]["label_smoothing"], f"task {task} reconstructs pixels; allowed: 0")
    optim = OPTIMIZERS.get(parts["optim"]["name"])
    if optim.meta.get("closure") and len(task_cls.phases) > 1:
        raise ConfigError("optim", optim.name, f"task {task} alternates {len(task_cls.phases)} optimizers; choose one without a closure: " + ", ".join(e.name for e in OPTIMIZERS if not e.meta.get("closure")))
    if optim.meta.get("closure"):
        if trainer.devices > 1:
            raise ConfigError("trainer.devices", trainer.devices, f"optim={optim.name} runs a line search that would differ per rank; allowed: 1, or an optimizer without a closure")
        if trainer.accumulate > 1:
            raise ConfigError("trainer.accumulate", trainer.accumulate, f"optim={optim.name} re-evaluates the loss itself; allowed: 1")
        if trainer.precision == "16":
            raise ConfigError("trainer.precision", trainer.precision, f"optim={optim.name} cannot use a gradient scaler; allowed: 32, bf16")
    if optim.meta.get("hessian"):
        if trainer.compile:
            raise ConfigError("trainer.compile", trainer.compile, f"optim={optim.name} differentiates the gradient again, which compiled graphs do not support; allowed: false")
        if trainer.precision != "32":
            raise ConfigError("trainer.precision", trainer.precision, f"optim={optim.name} solves with the Hessian, which needs full precision; allowed: 32")
    _check_rule(parts, reg, trainer, model, optim, OPTIMIZERS, MODELS)
    _check_averaging(trainer, task, task_cls, optim)
    allowed = [f"val_{m}" for m in task_cls.metrics]
    for key, value in (("trainer.early_stop.monitor", trainer.early_stop.monitor), ("trainer.checkpoint.monitor", trainer.checkpoint.monitor)):
        if value not in allowed:
            raise unknown_choice(key, value, allowed)


def learns_by_rule(model_entry, model_cfg: Mapping[str, Any]) -> bool:
    """Does this model learn by its own rule (optim=rule) rather than by gradients? (model=perceptron;
    model=rbf with solver=lstsq)"""
    rule = model_entry.meta.get("rule", False)
    return bool(rule(model_cfg) if callable(rule) else rule)


def _check_rule(parts, reg, trainer, model, optim, OPTIMIZERS, MODELS) -> None:
    """optim=rule and the models that learn by a rule of their own go together, one batch per step."""
    by_rule, how = learns_by_rule(model, parts["model"]), f"model={model.name}" + (f" with model.solver={parts['model']['solver']}" if "solver" in parts["model"] else "")
    gradient = ", ".join(e.name for e in OPTIMIZERS if not e.meta.get("rule"))
    if by_rule and not optim.meta.get("rule"):
        raise ConfigError("optim", optim.name, f"{how} learns by its own rule, not by gradients; allowed: rule" + (", or model.solver=gd with a gradient optimizer" if "solver" in parts["model"] else ""))
    if "optim_d" in parts and OPTIMIZERS.get(parts["optim_d"]["name"]).meta.get("rule"):
        raise ConfigError("optim_d", parts["optim_d"]["name"], f"model={model.name}'s discriminator learns by gradients; allowed: {gradient}")
    if not optim.meta.get("rule"):
        return
    if not by_rule:
        rules = [e.name for e in MODELS if e.meta.get("rule")]
        raise ConfigError("optim", optim.name, f"{how} learns by gradients; allowed: {gradient} (optim=rule is for {', '.join(rules)})")
    if reg:
        raise ConfigError("reg", "[" + ",".join(reg) + "]", f"{how} learns by its own rule, which no regularizer changes; allowed: [none]")
    for key, value, fine in (("trainer.devices", trainer.devices, 1), ("trainer.accumulate", trainer.accumulate, 1)):
        if value != fine:
            raise ConfigError(key, value, f"{how} applies its rule to one batch at a time in one process; allowed: {fine}")
    if trainer.precision == "16":
        raise ConfigError("trainer.precision", trainer.precision, f"{how} learns without gradients, which a gradient scaler is for; allowed: 32, bf16")


def _check_ensemble(ensemble, task, trainer, optim, distill) -> None:
    """ensemble.size=K: predictions that can be averaged, one optimizer step per batch, one process."""
    if ensemble.bagging and ensemble.size == 1:
        raise ConfigError("ensemble.bagging", True, "bootstrap samples are for an ensemble's members; allowed: false, or ensemble.size=K (2 or more)")
    if ensemble.size == 1:
        return
    key, value = "ensemble.size", ensemble.size
    if task not in ("classification", "regression", "forecasting"):
        raise ConfigError(key, value, f"an ensemble averages predictions (probabilities, or means), which task {task} does not make; allowed: 1")
    if optim.meta.get("closure"):
        raise ConfigError(key, value, f"optim={optim.name}'s line search would couple the members; allowed: 1, or an optimizer without a closure")
    if trainer.devices > 1:
        raise ConfigError(key, value, f"the members train side by side in one process, not on trainer.devices={trainer.devices} ranks; allowed: 1, or trainer.devices=1")
    if optim.meta.get("rule"):
        raise ConfigError(key, value, f"optim={optim.name}'s learning rule trains one model, not members side by side; allowed: 1")
    if distill.teacher is not None:
        raise ConfigError(key, value, "distilling into an ensemble is not supported; allowed: 1, or distill.teacher=null")


def _check_averaging(trainer, task, task_cls, optim) -> None:
    """trainer.ema and trainer.swa: one at a time, on one optimizer and one process."""
    ema, swa = trainer.ema.decay, trainer.swa.start
    if not (ema or swa):
        return
    key, value = ("trainer.ema.decay", ema) if ema else ("trainer.swa.start", swa)
    if ema and swa:
        raise ConfigError("trainer.swa.start", swa, f"trainer.ema.decay={ema} already averages the weights; allowed: one of them (0 here, or trainer.ema.decay=0)")
    if len(task_cls.phases) > 1:
        raise ConfigError(key, value, f"task {task} alternates {len(task_cls.phases)} optimizers, whose weights are not averaged; allowed: 0")
    if trainer.devices > 1:
        raise ConfigError(key, value, f"weight averaging runs in one process, not on trainer.devices={trainer.devices} ranks; allowed: 0, or trainer.devices=1")
    if swa > trainer.max_epochs:
        raise ConfigError("trainer.swa.start", swa, f"comes after the last epoch (trainer.max_epochs={trainer.max_epochs}); allowed: 1 to {trainer.max_epochs}, or 0 (off)")
    if trainer.swa.lr is not None and swa and optim.meta.get("closure"):
        raise ConfigError("trainer.swa.lr", trainer.swa.lr, f"optim={optim.name} sets its own step lengths by line search; allowed: null")
