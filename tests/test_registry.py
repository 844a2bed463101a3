"""The registry and the schema checks every config value goes through."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import pytest

from dltrain.config import EarlyStopConfig, TrainerConfig
from dltrain.errors import ConfigError, UserError
from dltrain.models.layers import ACTIVATIONS, Activation
from dltrain.registry import Registry
from dltrain.schema import Pattern, Positive, PositiveInt, Probability, Range, check_value, parse_dataclass

WIDGETS = Registry("widget")


@WIDGETS.register("spinner", colour="red")
def spinner(in_shape: tuple[int, ...], size: PositiveInt = 3, rate: Probability = 0.5, mode: Literal["fast", "slow"] = "fast") -> dict:
    """Spins things.

    More text that is not the help line.
    """
    return {"in_shape": in_shape, "size": size, "rate": rate, "mode": mode}


@WIDGETS.register("sprocket", help="a part with teeth")
def sprocket(teeth: PositiveInt, label: str = "") -> dict:
    return {"teeth": teeth, "label": label}


@WIDGETS.register("spanner")
class Spanner:
    def __init__(self, width: Positive = 1.0) -> None:
        self.width = width


# --- Registry -------------------------------------------------------------------------------


def test_register_keeps_help_and_metadata() -> None:
    entry = WIDGETS.get("spinner")
    assert entry.help == "Spins things."
    assert entry.meta == {"colour": "red"}
    assert WIDGETS.get("sprocket").help == "a part with teeth"
    assert "spinner" in WIDGETS and "wrench" not in WIDGETS
    assert len(WIDGETS) == 3
    assert [e.name for e in WIDGETS] == ["spanner", "spinner", "sprocket"]


def test_names_sorted_and_filtered_by_pattern() -> None:
    assert WIDGETS.names() == ["spanner", "spinner", "sprocket"]
    assert WIDGETS.names("sp?nner") == ["spanner", "spinner"]
    assert WIDGETS.names("*ock*") == ["sprocket"]
    assert WIDGETS.names("nothing*") == []


def test_duplicate_registration_raises() -> None:
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(UserError, match="thing 'a' is registered already .*another name"):
        reg.register("a")(lambda: 2)
    assert reg.get("a").fn() == 1


def test_get_unknown_name_suggests_closest() -> None:
    with pytest.raises(ConfigError) as e:
        WIDGETS.get("spiner", "widget.name")
    msg = str(e.value)
    assert "widget.name='spiner'" in msg
    assert "spanner, spinner, sprocket" in msg
    assert "did you mean 'spinner'?" in msg


def test_build_passes_only_accepted_context() -> None:
    built = WIDGETS.build({"name": "spinner", "size": 5}, in_shape=(1, 2), out_features=9)
    assert built == {"in_shape": (1, 2), "size": 5, "rate": 0.5, "mode": "fast"}
    assert isinstance(WIDGETS.build({"name": "spanner"}, in_shape=(1,)), Spanner)  # classes work too
    assert WIDGETS.build({"name": "spanner", "width": 2}).width == 2.0


def test_build_without_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match=r"widget\.name=None.*spanner, spinner, sprocket"):
        WIDGETS.build({"size": 3})


def test_build_refuses_context_keys_from_config() -> None:
    # Shapes come from the data, never from a config file.
    with pytest.raises(UserError, match="has no key 'in_shape'"):
        WIDGETS.build({"name": "spinner", "in_shape": [1]}, in_shape=(1,))


def test_check_fills_defaults() -> None:
    assert WIDGETS.check("spinner", {}, "widget") == {"size": 3, "rate": 0.5, "mode": "fast"}
    assert WIDGETS.check("spinner", {"mode": "slow"}, "widget") == {"size": 3, "rate": 0.5, "mode": "slow"}
    assert WIDGETS.get("spinner").defaults() == {"size": 3, "rate": 0.5, "mode": "fast"}
    assert WIDGETS.get("sprocket").defaults() == {"teeth": None, "label": ""}


def test_check_requires_parameters_without_default() -> None:
    with pytest.raises(ConfigError, match=r"widget\.teeth=None is not allowed; it is required"):
        WIDGETS.check("sprocket", {}, "widget")


def test_check_unknown_key_names_key_component_and_suggestion() -> None:
    with pytest.raises(UserError) as e:
        WIDGETS.check("spinner", {"sise": 4}, "widget")
    msg = str(e.value)
    assert msg.startswith("widget.sise: widget 'spinner' has no key 'sise'")
    assert "its keys: mode, rate, size" in msg
    assert "did you mean 'size'?" in msg


@pytest.mark.parametrize(
    ("params", "key", "value_text"),
    [
        ({"size": "big"}, "widget.size", "'big'"),
        ({"size": 0}, "widget.size", "0"),
        ({"size": True}, "widget.size", "True"),
        ({"rate": 1.0}, "widget.rate", "1.0"),
        ({"rate": -0.1}, "widget.rate", "-0.1"),
        ({"mode": "medium"}, "widget.mode", "'medium'"),
    ],
)
def test_check_rejects_wrong_type_or_range(params: dict, key: str, value_text: str) -> None:
    with pytest.raises(ConfigError) as e:
        WIDGETS.check("spinner", params, "widget")
    assert e.value.key == key
    assert str(e.value).startswith(f"{key}={value_text} is not allowed")


# --- schema.check_value ---------------------------------------------------------------------


def test_bool() -> None:
    assert check_value("k", True, bool) is True
    for bad in (1, "true", None):
        with pytest.raises(ConfigError, match="allowed: true or false"):
            check_value("k", bad, bool)


def test_int_accepts_integral_floats_but_not_bools() -> None:
    assert check_value("k", 3, int) == 3
    value = check_value("k", 4.0, int)
    assert value == 4 and type(value) is int
    for bad in (2.5, True, False, "3", None):
        with pytest.raises(ConfigError, match="allowed: an integer"):
            check_value("k", bad, int)


def test_float_accepts_ints_and_yaml_numeric_strings() -> None:
    value = check_value("k", 2, float)
    assert value == 2.0 and type(value) is float
    assert check_value("k", "1e-3", float) == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string
    for bad in ("abc", True, None, [1.0]):
        with pytest.raises(ConfigError, match="allowed: a number"):
            check_value("k", bad, float)


def test_str() -> None:
    assert check_value("k", "x", str) == "x"
    with pytest.raises(ConfigError, match="allowed: a string"):
        check_value("k", 3, str)


def test_literal_accepts_yaml_ints_for_digit_strings() -> None:
    precision = Literal["32", "bf16", "16"]
    assert check_value("trainer.precision", 16, precision) == "16"
    assert check_value("trainer.precision", 32, precision) == "32"
    assert check_value("trainer.precision", "bf16", precision) == "bf16"
    with pytest.raises(ConfigError, match=r"trainer\.precision=8 is not allowed; choose from: 16, 32, bf16"):
        check_value("trainer.precision", 8, precision)
    with pytest.raises(ConfigError):
        check_value("k", True, Literal["True", "x"])  # a YAML bool is not the string "True"


def test_literal_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'lines'"):
        check_value("trainer.progress", "line", Literal["auto", "bar", "lines", "none"])


def test_optional() -> None:
    assert check_value("k", None, Positive | None) is None
    assert check_value("k", 2, Positive | None) == 2.0
    with pytest.raises(ConfigError, match=r"k=-1 is not allowed; allowed: a number > 0"):  # the value as given
        check_value("k", -1, Positive | None)
    with pytest.raises(ConfigError, match="allowed: a number"):
        check_value("k", None, float)


def test_list_checks_every_item_with_its_index() -> None:
    assert check_value("k", (1, 2.0), list[int]) == [1, 2]
    with pytest.raises(ConfigError, match=r"k\[1\]='a' is not allowed"):
        check_value("k", [1, "a"], list[int])
    with pytest.raises(ConfigError, match="allowed: a list of an integer"):
        check_value("k", 3, list[int])
    with pytest.raises(ConfigError, match=">= 1"):
        check_value("k", [1, 0], Annotated[list[int], Range(1)])


@pytest.mark.parametrize(
    ("rng", "inside", "outside", "words"),
    [
        (Range(0, 1), [0.0, 0.5, 1.0], [-0.01, 1.01], ">= 0 and <= 1"),
        (Range(0, 1, low_open=True, high_open=True), [1e-9, 0.999], [0.0, 1.0], "> 0 and < 1"),
        (Range(200), [200, 10**6], [199], ">= 200"),
        (Range(None, 5), [-1e9, 5], [5.5], "<= 5"),
    ],
)
def test_range_bounds(rng: Range, inside: list[float], outside: list[float], words: str) -> None:
    tp = Annotated[float, rng]
    for v in inside:
        assert check_value("k", v, tp) == v
    for v in outside:
        with pytest.raises(ConfigError) as e:
            check_value("k", v, tp)
        assert str(e.value) == f"k={v!r} is not allowed; allowed: a number {words}"


def test_range_rejects_nan() -> None:
    with pytest.raises(ConfigError):
        check_value("optim.lr", math.nan, Positive)


def test_pattern() -> None:
    device = Annotated[str, Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")]
    assert check_value("trainer.device", "cuda:1", device) == "cuda:1"
    with pytest.raises(ConfigError, match=r"trainer\.device='gpu' is not allowed; allowed: auto, cpu, cuda or cuda:N"):
        check_value("trainer.device", "gpu", device)
    with pytest.raises(ConfigError):
        check_value("trainer.device", "cuda:x", device)  # the whole string must match


def test_choice_checks_a_registry() -> None:
    assert check_value("model.activation", "gelu", Activation) == "gelu"
    with pytest.raises(ConfigError) as e:
        check_value("model.activation", "rellu", Activation)
    assert "model.activation='rellu'" in str(e.value)
    assert "did you mean 'relu'?" in str(e.value)
    assert ", ".join(ACTIVATIONS.names()) in str(e.value)


# --- schema.parse_dataclass -----------------------------------------------------------------


def test_parse_trainer_config_defaults() -> None:
    assert parse_dataclass(TrainerConfig, {}, "trainer") == TrainerConfig()
    assert parse_dataclass(TrainerConfig, None, "trainer") == TrainerConfig()


def test_parse_trainer_config_nested_and_converted() -> None:
    cfg = parse_dataclass(TrainerConfig, {"precision": 16, "clip_grad": 1, "early_stop": {"patience": 3}}, "trainer")
    assert cfg.precision == "16"
    assert cfg.clip_grad == 1.0 and type(cfg.clip_grad) is float
    assert cfg.early_stop == EarlyStopConfig(patience=3, monitor="auto", min_delta=0.0)
    assert cfg.checkpoint.monitor == "auto"  # an absent nested section keeps its defaults


def test_parse_trainer_config_unknown_nested_key() -> None:
    with pytest.raises(UserError) as e:
        parse_dataclass(TrainerConfig, {"early_stop": {"patiense": 3}}, "trainer")
    msg = str(e.value)
    assert msg.startswith("trainer.early_stop.patiense: trainer.early_stop has no key 'patiense'")
    assert "did you mean 'patience'?" in msg


def test_parse_trainer_config_bad_values() -> None:
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs=0 is not allowed; allowed: an integer >= 1"):
        parse_dataclass(TrainerConfig, {"max_epochs": 0}, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.early_stop\.min_delta=-1 is not allowed"):
        parse_dataclass(TrainerConfig, {"early_stop": {"min_delta": -1}}, "trainer")
    with pytest.raises(ConfigError, match=r"trainer\.early_stop=5 is not allowed; allowed: a mapping of EarlyStopConfig keys"):
        parse_dataclass(TrainerConfig, {"early_stop": 5}, "trainer")
    with pytest.raises(UserError, match="trainer.epochs: trainer has no key 'epochs'"):
        parse_dataclass(TrainerConfig, {"epochs": 3}, "trainer")
