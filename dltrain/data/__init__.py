"""Datasets. Each registered builder returns a `DataBundle` of normalised in-memory splits.

Keys of the ``data`` config node: ``name`` (the dataset), the loader's ``batch_size``, and the
builder's own parameters (``val_fraction``, ``split_seed``, ``root`` for file-backed sets, …).
"""

from dltrain.data import arrays, folder, mnist, sequence, series, table, tabular, text  # noqa: F401  (registration)
from dltrain.data.base import DATASETS, LOADER_KEYS, DataBundle, Split

__all__ = ["DATASETS", "LOADER_KEYS", "DataBundle", "Split"]
