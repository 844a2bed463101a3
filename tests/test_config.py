"""configs/ mirrors the registries; every choice composes and validates; bad input is one clear UserError."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import own_data
import pytest
from omegaconf import OmegaConf

from dltrain.composition import config_dir, groups
from dltrain.config import TrainerConfig, validate
from dltrain.data import DATASETS, LOADER_KEYS
from dltrain.data.base import data_kind, data_task
from dltrain.engine.loggers import LOGGERS
from dltrain.errors import UserError
from dltrain.losses import LOSSES
from dltrain.models import MODELS
from dltrain.models.layers import INITS
from dltrain.optim import OPTIMIZERS, SCHEDULES
from dltrain.preflight import check_command_line
from dltrain.registry import Registry
from dltrain.regularization import REGULARIZERS
from dltrain.schema import check_value, parse_dataclass

REGISTRIES: dict[str, Registry] = {
    "model": MODELS,
    "data": DATASETS,
    "loss": LOSSES,
    "optim": OPTIMIZERS,
    "sched": SCHEDULES,
    "init": INITS,
    "logger": LOGGERS,
    "reg": REGULARIZERS,
    "optim_d": OPTIMIZERS,  # a GAN's discriminator: the optim choices again
    "sched_d": SCHEDULES,
}
# Groups that set several sections at once (tested further in test_sweep.py and test_recipes.py).
EXPERIMENT_GROUPS = ("hparams_search", "launcher", "recipe")
DATA_FOR_TASK = {"classification": "digits", "regression": "diabetes", "forecasting": "sine"}
TRAINER_HINTS = typing.get_type_hints(TrainerConfig, include_extras=True)
CHOICES = [(g, c) for g, cs in groups().items() for c in cs]
# choices that are not registry entries: reg=none (no regularizer), loss=auto (the task's usual loss)
NOT_ENTRIES = {("reg", "none"): {}, ("loss", "auto"): {"name": "auto"}}
MULTI = ("reg", "logger")  # groups of which several choices are taken at once: {name: {keys}}


def read_choice(group: str, choice: str) -> dict[str, Any]:
    """The raw node a config file defines for its group (unwrapping `@package _global_` files)."""
    path = config_dir() / group / f"{choice}.yaml"
    raw = OmegaConf.to_container(OmegaConf.load(path)) or {}
    if path.read_text().startswith("# @package _global_"):
        raw = raw[group]
    return {k: v for k, v in raw.items() if k != "defaults"}


def first_data_for(kind: str) -> str:
    return next(e.name for e in DATASETS if e.meta["kind"] == kind and "root" not in e.params())


def data_overrides(choice: str) -> list[str]:
    """A user's own data needs its file: the sample one of tests/own_data.py."""
    return own_data.overrides(choice) if choice in own_data.SOURCES else []


def kind_of(choice: str) -> str:
    return data_kind(DATASETS.get(choice), own_data.params(choice) if choice in own_data.SOURCES else {})


def is_preset(group: str, choice: str) -> bool:
    """A file that presets a registered entry under another name (e.g. optim=dcgan is adam)."""
    return group in REGISTRIES and group not in MULTI and choice not in REGISTRIES[group]


def companions(group: str, choice: str) -> list[str]:
    """Overrides that make `choice` meaningful: a dataset the model reads, a model the data fits, ..."""
    if group == "model":
        data = first_data_for(MODELS.get(choice).meta["inputs"][0])
        return [f"data={data}", *data_overrides(data)]
    if group in ("optim_d", "sched_d"):
        return ["model=gan"]
    if group == "optim" and choice in OPTIMIZERS and OPTIMIZERS.get(choice).meta.get("rule"):
        return [f"model={next(e.name for e in MODELS if e.meta.get('rule'))}"]
    if group == "loss" and choice == "auto":
        return []
    if group == "loss":
        task = LOSSES.get(choice).meta["tasks"][0]
        model = next((e.name for e in MODELS if e.meta.get("task") == task), None)
        return [f"model={model}"] if model else [f"data={DATA_FOR_TASK[task]}"]
    if group == "data":
        kind = kind_of(choice)
        return [f"model={next(e.name for e in MODELS if kind in e.meta['inputs'])}", *data_overrides(choice)]
    if group == "reg" and choice in REGULARIZERS:
        built = REGULARIZERS.build({"name": choice})
        out = []
        if built.model:
            out.append(f"model={next(e.name for e in MODELS if set(built.model) <= set(e.params()))}")
        if built.loss:
            out.append(f"loss={next(e.name for e in LOSSES if set(built.loss) <= set(e.params()))}")
        return out
    return []


# --- configs/ mirrors the registries --------------------------------------------------------


def test_every_group_is_a_registry_or_the_trainer() -> None:
    assert set(groups()) == {*REGISTRIES, "trainer", *EXPERIMENT_GROUPS}


@pytest.mark.parametrize("group", sorted(REGISTRIES))
def test_every_entry_has_a_file_and_every_file_an_entry(group: str) -> None:
    files = set(groups()[group])
    entries = set(REGISTRIES[group].names())
    for (g, choice), node in NOT_ENTRIES.items():
        if g == group:
            assert read_choice(group, choice) == node
            files.discard(choice)
    presets = {f for f in files if is_preset(group, f)}
    assert all(read_choice(group, p)["name"] in entries for p in presets)
    assert files - presets == entries


@pytest.mark.parametrize(("group", "choice"), [(g, c) for g, c in CHOICES if g in REGISTRIES and (g, c) not in NOT_ENTRIES])
def test_config_file_equals_registry_defaults(group: str, choice: str) -> None:
    node = read_choice(group, choice)
    if is_preset(group, choice):  # every key a valid parameter, and at least one differing from the entry's default
        entry = REGISTRIES[group].get(node.pop("name"))
        assert REGISTRIES[group].check(entry.name, node, group) != entry.defaults()
        return
    if group in MULTI:  # {name: {params}}
        assert list(node) == [choice]
        params = node[choice] or {}
    else:
        assert node.pop("name") == choice
        params = node
    if group == "data":
        assert set(LOADER_KEYS) == {"batch_size", "shift", "augment"}
        assert params.pop("augment", []) == []  # data=image_folder lists data.augment, off by default
        assert check_value("data.batch_size", params.pop("batch_size"), int) >= 1
        shift = params.pop("shift", None)  # image data offers data.shift (augmentation), off by default
        assert (shift == 0) if REGISTRIES[group].get(choice).meta["kind"] == "image" else shift is None  # data=arrays' kind is its file's
    assert params == REGISTRIES[group].get(choice).defaults()


def test_trainer_default_file_lists_every_key_with_its_default() -> None:
    node = read_choice("trainer", "default")
    assert set(node) == {f.name for f in dataclasses.fields(TrainerConfig)}
    assert parse_dataclass(TrainerConfig, node, "trainer") == TrainerConfig()


@pytest.mark.parametrize(("group", "choice"), CHOICES)
def test_every_choice_composes_and_validates(compose, group: str, choice: str) -> None:
    cfg = compose(*companions(group, choice), f"{group}={choice}")
    if group == "optim_d" and choice in OPTIMIZERS and OPTIMIZERS.get(choice).meta.get("rule"):  # a discriminator learns by gradients
        with pytest.raises(UserError, match="optim_d='rule' is not allowed; model=gan's discriminator learns by gradients"):
            validate(cfg)
        return
    spec = validate(cfg)
    if group == "reg":
        assert set(spec.reg) == (set() if choice == "none" else {choice})
    elif group == "logger":
        assert spec.logger == {choice: REGISTRIES[group].get(choice).defaults()}
    elif group == "trainer":
        for key, value in read_choice("trainer", choice).items():
            if not isinstance(value, dict):
                assert getattr(spec.trainer, key) == check_value(key, value, TRAINER_HINTS[key])
    elif group == "loss" and choice == "auto":
        assert spec.loss == {"name": "cross_entropy", "label_smoothing": 0.0}  # the default data, digits, is classified
    elif group not in EXPERIMENT_GROUPS and not is_preset(group, choice):
        section = getattr(spec, group)
        assert section["name"] == choice
        own = own_data.params(choice) if group == "data" and choice in own_data.SOURCES else {}
        assert {k: v for k, v in section.items() if k != "name"} == {**REGISTRIES[group].get(choice).defaults(), **own}
    data = {k: v for k, v in spec.data.items() if k != "name"}
    assert spec.task == MODELS.get(spec.model["name"]).meta.get("task", data_task(DATASETS.get(spec.data["name"]), data))
    assert spec.task in LOSSES.get(spec.loss["name"]).meta["tasks"]


def test_regression_data_switches_the_default_loss_but_not_an_explicit_one(compose) -> None:
    assert validate(compose("data=diabetes")).loss["name"] == "mse"
    assert validate(compose("data=diabetes", "loss=huber")).loss == {"name": "huber", "delta": 1.0}


def test_reg_list_composes_each_regularizer(compose) -> None:
    spec = validate(compose("model=mlp", "reg=[l2,dropout]", "reg.l2.weight=0.5"))
    assert spec.reg == {"l2": {"weight": 0.5}, "dropout": {"p": 0.3}}


# --- errors ---------------------------------------------------------------------------------


def check(compose, *overrides: str):
    return validate(compose(*overrides))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model=cnnn"], ["model='cnnn'", "choose from: autoencoder, cnn,", "did you mean 'cnn'?"]),
        (["model=mlp", "model.hiden=3"], ["model.hiden:", "model 'mlp' has no key 'hiden'", "did you mean 'hidden'?"]),
        (["optim=adam", "optim.lr=-1"], ["optim.lr=-1", "a number > 0"]),
        (["optim=adam", "optim.lr=abc"], ["optim.lr='abc'", "a number"]),
        (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "an integer >= 1"]),
        (["trainer.precision=8"], ["trainer.precision=8", "16, 32, bf16"]),
        (["trainer.device=gpu"], ["trainer.device='gpu'", "auto, cpu, cuda"]),
        (["reg=[l3]"], ["reg='l3'", "l1, l2"]),
        (["reg=[dropot]"], ["reg='dropot'", "did you mean 'dropout'?"]),
        (["data=iris", "model=cnn"], ["model=cnn needs image input", "data=iris is table data", "models for it: dbn, mlp"]),
        (["data=sine", "model=cnn"], ["model=cnn", "data=sine is sequence data"]),
        (["data=diabetes", "loss=cross_entropy"], ["loss=cross_entropy does not apply to task regression", "mse"]),
        (["optim=lbfgs", "trainer.accumulate=2"], ["trainer.accumulate=2", "optim=lbfgs", "allowed: 1"]),
        (["optim=lbfgs", "trainer.precision=16"], ["trainer.precision='16'", "optim=lbfgs", "32, bf16"]),
        (["model=lstm", "model.activation=relu"], ["model.activation:", "model 'lstm' has no key 'activation'"]),
        (["model=mlp", "model.activation=rellu"], ["model.activation='rellu'", "did you mean 'relu'?"]),
        (["data=digits", "data.val_fraction=1.5"], ["data.val_fraction=1.5", "> 0 and < 1"]),
        (["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
        (["optim=adamm"], ["optim='adamm'", "did you mean 'adam'?"]),
        (["data=digit"], ["data='digit'", "did you mean 'digits'?"]),
        (["trainer.early_stop.patiense=2"], ["trainer.early_stop.patiense", "did you mean 'patience'?"]),
        (["trainer.early_stop.monitor=val_acc"], ["trainer.early_stop.monitor='val_acc'", "did you mean 'val_accuracy'?"]),
        (["data=diabetes", "trainer.checkpoint.monitor=val_accuracy"], ["trainer.checkpoint.monitor='val_accuracy'", "val_r2"]),
        (["data=diabetes", "task=classification"], ["task=classification", "data=diabetes"]),
        (["task=clasification"], ["task='clasification'", "did you mean 'classification'?"]),
        (["loss=mse", "reg=[label_smoothing]"], ["reg=label_smoothing sets loss.label_smoothing", "loss=mse"]),
        (["model=mlp", "model.hidden=2.5"], ["model.hidden=2.5", "an integer"]),
        (["model=mlp", "model.hidden=true"], ["model.hidden=True", "an integer"]),
        (["seed=-1"], ["seed=-1", ">= 0"]),
        (["+epochs=3"], ["epochs", "the config has no key 'epochs'"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and "=" in v[0] else None,
)
def test_bad_config_is_one_line_user_error(compose, overrides: list[str], expected: list[str]) -> None:
    with pytest.raises(UserError) as e:
        check(compose, *overrides)
    msg = str(e.value)
    assert "\n" not in msg
    for part in expected:
        assert part in msg


def test_reg_entry_must_be_a_mapping(compose) -> None:
    with pytest.raises(UserError, match=r"reg\.l2=5 is not allowed"):
        check(compose, "reg=[l2]", "reg.l2=5")


@pytest.mark.parametrize("section", ["model", "optim", "loss", "data", "sched", "init"])
def test_dotted_paths_are_never_built(compose, section: str) -> None:
    with pytest.raises(UserError, match=rf"{section}\.name='torch\.nn\.Linear' is not allowed; choose from"):
        check(compose, f"{section}.name=torch.nn.Linear")
    with pytest.raises(UserError, match="has no key '_target_'"):
        check(compose, f"+{section}._target_=torch.nn.Linear")


def test_target_keys_refused_in_plain_dicts(compose) -> None:
    cfg = OmegaConf.to_container(compose("model=mlp"))
    cfg["model"] = {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}
    with pytest.raises(UserError, match="choose one with model=NAME from: autoencoder, cnn"):
        validate(cfg)
    cfg["model"] = {"name": "mlp", "_target_": "torch.nn.Linear"}
    with pytest.raises(UserError, match="model._target_: model 'mlp' has no key '_target_'"):
        validate(cfg)


def test_sweep_checks_every_combination() -> None:
    check_command_line(["model=mlp,cnn", "data=digits"], multirun=True)
    with pytest.raises(UserError, match=r"model=cnn needs image input.*\(in sweep job: .*model=cnn.*data=iris"):
        check_command_line(["model=mlp,cnn", "data=iris"], multirun=True)
