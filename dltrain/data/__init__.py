"""Datasets. Each registered builder returns a `DataBundle` of normalised in-memory splits.

Keys of the ``data`` config node: ``name`` (the dataset), the loader's ``batch_size``, and the
builder's own parameters (``val_fraction``, ``split_seed``, ``root`` for file-backed sets, …).
"""

from dltrain.data.base import DataBundle, Split
from dltrain.registry import Registry

DATASETS = Registry("data")

# Keys of the data node used by the loader rather than the dataset builder.
LOADER_KEYS = ("batch_size",)

from dltrain.data import mnist, sequence, tabular  # noqa: E402,F401  (registration)

__all__ = ["DATASETS", "LOADER_KEYS", "DataBundle", "Split"]
