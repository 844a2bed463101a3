"""Datasets. Each registered builder returns a `DataBundle` of normalised in-memory splits.

Keys of the ``data`` config node: ``name`` (the dataset), the loader's ``batch_size``, and the
builder's own parameters (``val_fraction``, ``split_seed``, ``root`` for file-backed sets, …).
"""

from dltrain.data.base import DataBundle, Split
from dltrain.registry import Registry

DATASETS = Registry("data")

# Keys of the data node used by the loader rather than the dataset builder: the batch size and,
# for images, a random shift of up to `shift` pixels applied to training batches on the device.
LOADER_KEYS = ("batch_size", "shift")

from dltrain.data import mnist, sequence, tabular  # noqa: E402,F401  (registration)

__all__ = ["DATASETS", "LOADER_KEYS", "DataBundle", "Split"]
