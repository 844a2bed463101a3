"""dltrain: a declarative, config-driven deep-learning training CLI.

    import dltrain
    run = dltrain.train("model=cnn", "optim=adam")      # the CLI's run, from Python
    run.summary["test"], run.predict(x)
    dltrain.load_run("outputs/...")                     # any run directory
    @dltrain.MODELS.register("tinynet")                 # the registries, for your own components

Everything is imported on first use: `import dltrain` alone is instant.
"""

__version__ = "0.1.0"

# name -> (module, attribute): the public API beside the registries (dltrain.plugins.REGISTRIES),
# imported on first use
_API = {
    "UserError": ("dltrain.errors", "UserError"),
    "train": ("dltrain.api", "train"),
    "compose": ("dltrain.api", "compose"),
    "load_run": ("dltrain.api", "load_run"),
    "sweep": ("dltrain.api", "sweep"),
    "Run": ("dltrain.api", "Run"),
}
_REGISTRIES = ("MODELS", "DATASETS", "LOSSES", "OPTIMIZERS", "SCHEDULES", "REGULARIZERS", "INITS", "ACTIVATIONS", "TASKS", "LOGGERS")


__all__ = sorted([*_API, *_REGISTRIES])


def __getattr__(name: str):
    if name in _API or name in _REGISTRIES:
        import importlib

        from dltrain.plugins import REGISTRIES

        module, attr = _API.get(name) or next(where for where in REGISTRIES.values() if where[1] == name)
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dltrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
