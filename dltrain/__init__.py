"""dltrain: a declarative, config-driven deep-learning training CLI.

    import dltrain
    run = dltrain.train("model=cnn", "optim=adam")      # the CLI's run, from Python
    run.summary["test"], run.predict(x)
    dltrain.load_run("outputs/...")                     # any run directory
    @dltrain.MODELS.register("tinynet")                 # the registries, for your own components

Everything is imported on first use: `import dltrain` alone is instant.
"""

__version__ = "0.1.0"

# name -> (module, attribute): the public API, imported on first use
_API = {
    "MODELS": ("dltrain.models", "MODELS"),
    "DATASETS": ("dltrain.data", "DATASETS"),
    "LOSSES": ("dltrain.losses", "LOSSES"),
    "OPTIMIZERS": ("dltrain.optim", "OPTIMIZERS"),
    "SCHEDULES": ("dltrain.optim", "SCHEDULES"),
    "REGULARIZERS": ("dltrain.regularization", "REGULARIZERS"),
    "INITS": ("dltrain.models.layers", "INITS"),
    "ACTIVATIONS": ("dltrain.models.layers", "ACTIVATIONS"),
    "TASKS": ("dltrain.tasks", "TASKS"),
    "LOGGERS": ("dltrain.engine.loggers", "LOGGERS"),
    "UserError": ("dltrain.errors", "UserError"),
    "train": ("dltrain.api", "train"),
    "compose": ("dltrain.api", "compose"),
    "load_run": ("dltrain.api", "load_run"),
    "sweep": ("dltrain.api", "sweep"),
    "Run": ("dltrain.api", "Run"),
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dltrain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
