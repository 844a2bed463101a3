"""Command-line overrides: Hydra's grammar parsed into one-line errors, and the filters every
caller needs (dltrain's own keys vs Hydra's, the KEY=VALUE arguments of an argv)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dltrain.errors import UserError

# Hydra flags that take a value: the value is not an override.
FLAGS_WITH_VALUE = ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun", "--cfg", "-c", "--package", "-p")
INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")  # --info [TOPIC]


def parse(lines: Iterable[str], what: str = "override") -> list:
    """Hydra's parsed `Override` objects for `lines`; a syntax error is one UserError line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    lines = list(lines)
    for line in lines:
        k = line.partition("=")[0]
        if "=" in line and not k.lstrip("+~"):
            raise UserError(f"cannot parse {what} {line!r}: it needs a KEY before '=' (KEY=VALUE, e.g. model=cnn)")
        if len(k) > 200:
            raise UserError(f"cannot parse {what}: the key {k[:40]}... is {len(k)} characters long; config keys are short dotted names (model.hidden)")
    try:
        return OverridesParser.create().parse_overrides(lines)
    except OverrideParseException as e:
        raise UserError(f"cannot parse {what}: {str(e).splitlines()[0]}") from None


def from_argv(argv: Sequence[str]) -> list[str]:
    """The KEY=VALUE arguments of a Hydra command line (skipping flags and their values)."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in FLAGS_WITH_VALUE or (a in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in INFO_TOPICS)
        else:
            out.append(a)
    return out


def config_dirs(argv: Sequence[str]) -> list[str]:
    """The folders a Hydra command line adds with --config-dir DIR / -cd DIR / --config-dir=DIR."""
    out = []
    for i, a in enumerate(argv):
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config-dir="):
            out.append(a.partition("=")[2])
    return out


def key(override: str) -> str:
    """The key (or group) an override sets, without its +/++/~ prefix."""
    return override.split("=", 1)[0].lstrip("+~")


def is_hydra(override: str) -> bool:
    """Whether an override sets Hydra's own config (hydra.run.dir=..., hydra/launcher=...)."""
    return key(override).startswith(("hydra.", "hydra/")) or key(override) == "hydra"


def without_hydra(overrides: Iterable[str]) -> list[str]:
    """dltrain's own overrides: those that do not set Hydra's config."""
    return [o for o in overrides if not is_hydra(o)]


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value (any path survives the grammar)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_options(argv: Sequence[str], cls: type, verb: str, positional: Sequence[str] = ()):
    """A verb's arguments (`dltrain eval RUN_DIR split=val`) as an instance of dataclass `cls`:
    the `positional` ones first, then KEY=VALUE pairs (values read as YAML; a dotted key such as
    prune.kind=structured fills a nested dataclass). Validation is the config's: a bad key or
    value is one UserError line naming it."""
    import yaml

    from dltrain.schema import parse_dataclass

    args, values = list(argv), {}
    for name in positional:
        if not args or "=" in args[0]:
            raise UserError(f"dltrain {verb} needs {name.upper()}: dltrain {verb} {' '.join(p.upper() for p in positional)} [KEY=VALUE ...]")
        values[name] = args.pop(0)
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep:
            raise UserError(f"dltrain {verb}: expected KEY=VALUE, got {arg!r}")
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        *parents, leaf = key.split(".")
        node = values
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"dltrain {verb}: {key} conflicts with {'.'.join(parents[: i + 1])}={node!r}")
        node[leaf] = value
    return parse_dataclass(cls, values, "")
