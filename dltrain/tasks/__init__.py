"""Tasks: what one training step means for a model family, and how it is measured.

A task turns a model output and a target into a loss, accumulates evaluation statistics on the
device (no host sync per batch) and turns them into metrics once per evaluation.
"""

from dltrain.tasks import energy, generative, seq2seq, supervised  # noqa: F401  (registration)
from dltrain.tasks.base import TASKS

__all__ = ["TASKS"]
