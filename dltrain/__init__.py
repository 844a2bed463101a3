"""dltrain: a declarative, config-driven deep-learning training CLI."""

__version__ = "0.1.0"
