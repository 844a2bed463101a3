"""Errors meant for users: one line, exit code 2, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input (config, override, file). Printed as one line, exit 2."""

    exit_code = 2


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""

    def __init__(self, key: str, value: object, allowed: str, hint: str = "") -> None:
        self.key, self.value, self.allowed = key, value, allowed
        message = f"{key}={value!r} is not allowed; {allowed}"
        super().__init__(message + (f" ({hint})" if hint else ""))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'did you mean X?' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def unknown_choice(key: str, value: object, choices: Iterable[str]) -> ConfigError:
    """The error for a name that is not one of `choices`."""
    choices = sorted(choices)
    return ConfigError(key, value, "choose from: " + ", ".join(choices), did_you_mean(str(value), choices))


def unknown_key(key: str, known: Iterable[str], owner: str) -> UserError:
    """The error for a config key that `owner` does not have."""
    known = sorted(known)
    name = key.rsplit(".", 1)[-1]
    hint = did_you_mean(name, known)
    listing = ", ".join(known) if known else "none"
    return UserError(f"{key}: {owner} has no key {name!r}; its keys: {listing}" + (f" ({hint})" if hint else ""))
