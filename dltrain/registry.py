"""One small registry for every kind of component.

Components register by decorator on a plain function or class whose signature *is* the
component's config schema: every keyword parameter is a config key, its annotation the type
(``Annotated[float, Range(0, 1)]`` adds a range) and its default the default value. Only
registered names can be built: nothing is ever imported from a dotted path in a config.
"""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dltrain.errors import ConfigError, UserError, unknown_choice, unknown_key
from dltrain.schema import check_value

# Parameters the builder fills from the data and other components; never config keys.
CONTEXT_KEYS = frozenset({"in_shape", "out_features", "params", "model", "steps_per_epoch", "max_epochs", "optimizer", "task", "run_dir", "num_words"})


@dataclass(frozen=True)
class Entry:
    """One registered component with its metadata."""

    name: str
    fn: Callable[..., Any]
    help: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def params(self, context: Mapping[str, Any] = ()) -> dict[str, inspect.Parameter]:
        """The config keys this entry accepts: its keyword parameters not filled by context.

        Annotations are resolved (modules may use ``from __future__ import annotations``).
        """
        target = self.fn.__init__ if inspect.isclass(self.fn) else self.fn
        hints = typing.get_type_hints(target, include_extras=True)
        sig = inspect.signature(self.fn)
        return {
            n: p.replace(annotation=hints.get(n, p.annotation))
            for n, p in sig.parameters.items()
            if n not in context and n not in CONTEXT_KEYS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def defaults(self) -> dict[str, Any]:
        """The default value of every config key of this entry (None where it is required)."""
        return {n: (None if p.default is p.empty else p.default) for n, p in self.params().items()}


class Registry:
    """Maps names to component builders: ``@MODELS.register("mlp")``, ``MODELS.build(cfg)``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, help: str = "", **meta: Any) -> Callable:
        """Decorator registering a function or class under `name` (plus free-form metadata). A
        name that is already registered is refused (UserError): nothing is ever shadowed."""

        def decorator(fn: Callable) -> Callable:
            if name in self._entries:  # never a silent shadowing: a plugin's name must be new
                other = self._entries[name].fn
                raise UserError(f"{self.kind} {name!r} is registered already (by {other.__module__}); {fn.__module__} must register it under another name")
            doc = help or (inspect.getdoc(fn) or "").split("\n")[0]
            self._entries[name] = Entry(name, fn, doc, meta)
            return fn

        return decorator

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def get(self, name: str, key: str | None = None) -> Entry:
        """The entry for `name`; a ConfigError with a did-you-mean when there is none."""
        if name not in self._entries:
            raise unknown_choice(key or self.kind, name, self._entries)
        return self._entries[name]

    def check(self, name: str, params: Mapping[str, Any], key: str, context: Mapping[str, Any] = ()) -> dict:
        """Validate `params` against the entry's signature; return them with defaults filled in."""
        entry = self.get(name, f"{key}.name" if key else None)
        accepted = entry.params(context)
        out: dict[str, Any] = {}
        for k, v in params.items():
            if k not in accepted:
                raise unknown_key(f"{key}.{k}", accepted, f"{self.kind} {name!r}")
            out[k] = check_value(f"{key}.{k}", v, accepted[k].annotation)
        for k, p in accepted.items():
            if k not in out:
                if p.default is inspect.Parameter.empty:
                    raise ConfigError(f"{key}.{k}", None, "it is required")
                out[k] = p.default
        return out

    def build(self, cfg: Mapping[str, Any], key: str | None = None, **context: Any) -> Any:
        """Build the component named by ``cfg['name']`` from the rest of `cfg` plus `context`.

        `context` carries what the data and other components determine (shapes, parameters),
        so configs never repeat them.
        """
        key = key or self.kind
        params = dict(cfg)
        name = params.pop("name", None)
        if name is None:
            raise ConfigError(f"{key}.name", None, "choose from: " + ", ".join(self.names()))
        kwargs = self.check(str(name), params, key, context)
        entry = self.get(str(name))
        accepted = inspect.signature(entry.fn).parameters
        kwargs.update({k: v for k, v in context.items() if k in accepted})
        return entry.fn(**kwargs)
