"""The on-disk cache of built datasets: the same data, bit for bit, without importing scikit-learn."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dltrain.data import DATASETS
from dltrain.data.cache import FIELDS, SPLITS, cache_dir

SKLEARN = ["digits", "iris", "wine", "breast_cancer", "diabetes"]


@pytest.fixture
def cold(tmp_path, monkeypatch):
    monkeypatch.setenv("DLTRAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "data"


def same(a, b) -> None:
    for split in SPLITS:
        for part in ("x", "y"):
            x, y = getattr(getattr(a, split), part), getattr(getattr(b, split), part)
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (split, part)
    for field in FIELDS:
        assert getattr(a, field) == getattr(b, field), field


@pytest.mark.parametrize("name", SKLEARN)
def test_a_cached_dataset_is_the_dataset_it_replaces(cold, name):
    params = {"name": name, "val_fraction": 0.15, "split_seed": 3}
    built = DATASETS.build(params)
    assert len(list(cold.iterdir())) == 1
    same(DATASETS.build(params), built)
    DATASETS.build({**params, "split_seed": 4})  # other parameters: another entry
    assert len(list(cold.iterdir())) == 2


def test_a_damaged_entry_is_rebuilt_and_an_unwritable_cache_is_skipped(cold, monkeypatch, tmp_path):
    built = DATASETS.build({"name": "iris"})
    (entry,) = cold.iterdir()
    entry.write_bytes(entry.read_bytes()[:200])  # truncated
    same(DATASETS.build({"name": "iris"}), built)
    assert entry.stat().st_size > 200  # rewritten
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DLTRAIN_CACHE", str(blocker))
    same(DATASETS.build({"name": "iris"}), built)
    assert cache_dir() == blocker / "data" and blocker.is_file()


def test_a_run_with_its_data_cached_does_not_import_scikit_learn(cold):
    DATASETS.build({"name": "digits"})
    code = "import sys; from dltrain.data import DATASETS; DATASETS.build({'name': 'digits'}); sys.exit('sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=os.environ, timeout=120).returncode == 0
    code = code.replace("digits", "wine")  # not cached yet: built with scikit-learn
    assert subprocess.run([sys.executable, "-c", code], env=os.environ, timeout=120).returncode == 1
