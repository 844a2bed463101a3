"""Type and range checking for config values, shared by the structured configs and registries.

Annotations understood: bool, int, float, str, Literal[...], X | None, list[X] / tuple[X, ...],
nested dataclasses, and ``Annotated[X, Range(...)]`` or ``Annotated[str, Pattern(...)]``.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from dltrain.errors import ConfigError, unknown_choice, unknown_key


@dataclass(frozen=True)
class Range:
    """Numeric bounds for a config value."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        return " and ".join(parts) or "finite"

    def contains(self, v: float) -> bool:
        if v != v or v in (float("inf"), float("-inf")):  # NaN compares false with everything; inf is never a setting
            return False
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            return False
        return True


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


@dataclass(frozen=True)
class Pattern:
    """A regular expression a string value must match in full, with words for the error."""

    regex: str
    describe: str


@dataclass(frozen=True)
class Choice:
    """A string that must be a name registered in `registry` (checked when validated)."""

    registry: Any

    def check(self, key: str, value: Any) -> None:
        if value not in self.registry:
            raise unknown_choice(key, value, self.registry.names())


Positive = Annotated[float, Range(0, None, low_open=True)]
NonNegative = Annotated[float, Range(0)]
Probability = Annotated[float, Range(0, 1, high_open=True)]
Fraction = Annotated[float, Range(0, 1, low_open=True, high_open=True)]
PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return _type_name(get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def check_value(key: str, value: Any, tp: Any) -> Any:
    """Return `value` converted to `tp`, or raise a ConfigError naming `key`."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = get_origin(tp)
    if origin is Annotated:
        base, *marks = get_args(tp)
        given, value = value, check_value(key, value, base)
        for mark in marks:
            if isinstance(mark, Range) and value is not None:
                items = value if isinstance(value, (list, tuple)) else [value]
                if not all(mark.contains(v) for v in items):
                    raise ConfigError(key, given, f"allowed: {_type_name(base)} {mark.describe()}")
            if isinstance(mark, Choice) and value is not None:
                mark.check(key, value)
            if isinstance(mark, Pattern) and value is not None and not re.fullmatch(mark.regex, str(value)):
                raise ConfigError(key, value, f"allowed: {mark.describe}")
        return value
    if origin is Literal:
        choices = get_args(tp)
        for c in choices:  # YAML reads `precision: 16` as an int; accept it for "16"
            if value == c or (isinstance(c, str) and not isinstance(value, bool) and str(value) == c):
                return c
        raise unknown_choice(key, value, [str(c) for c in choices])
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(key, value, f"allowed: {_type_name(tp)}")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(key, value, a)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(key, value, f"allowed: {_type_name(tp)}")
    if origin in (list, tuple):
        item_tp = get_args(tp)[0] if get_args(tp) else Any
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, f"allowed: {_type_name(tp)}")
        return [check_value(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "allowed: true or false")
    if tp is int:
        given = value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:  # torch, numpy and the OS take 64-bit integers
                raise ConfigError(key, given, "allowed: an integer below 2**63")
            return value
        raise ConfigError(key, value, "allowed: an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if abs(value) == float("inf") or value != value:
                raise ConfigError(key, value, "allowed: a finite number")
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; accept numeric strings
            try:
                number = float(value)
            except ValueError:
                number = None
            if number is not None and abs(number) != float("inf") and number == number:
                return number
        raise ConfigError(key, value, "allowed: a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, value, "allowed: a string")
    return value


def parse_dataclass(cls: type, data: Any, key: str) -> Any:
    """Build dataclass `cls` from a mapping, checking every field; unknown keys are errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(key, data, f"allowed: a mapping of {cls.__name__} keys")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in fields:
            raise unknown_key(f"{key}.{k}" if key else str(k), fields, key or "the config")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in data:
            kwargs[name] = check_value(sub, data[name], hints[name])
        elif dataclasses.is_dataclass(hints[name]) and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[name] = parse_dataclass(hints[name], {}, sub)
    return cls(**kwargs)
