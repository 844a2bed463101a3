"""Shared fixtures: compose configs like the CLI does, train in-process into a temp run dir."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# The real MNIST test set (the two t10k IDX files): $DLTRAIN_MNIST_TEST, else ../shared/data/mnist-test
# beside the clone. Tests that need it skip where it is absent.
MNIST_TEST = Path(os.environ.get("DLTRAIN_MNIST_TEST") or REPO.parent / "shared" / "data" / "mnist-test")
NO_MNIST = f"the MNIST test files are absent ({MNIST_TEST}; set DLTRAIN_MNIST_TEST to their folder)"

# Keep unit tests light on the 2-core CI machine.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True, scope="session")
def dltrain_cache(tmp_path_factory):
    """Datasets and reference nets cached by the tests go to a temporary folder, not ~/.cache
    (a test that needs a cold or a particular cache sets DLTRAIN_CACHE itself)."""
    old = os.environ.get("DLTRAIN_CACHE")
    os.environ["DLTRAIN_CACHE"] = str(tmp_path_factory.mktemp("dltrain-cache"))
    yield
    if old is None:
        os.environ.pop("DLTRAIN_CACHE", None)
    else:
        os.environ["DLTRAIN_CACHE"] = old


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def compose():
    """compose(*overrides) -> the composed DictConfig, as `dltrain` would build it."""
    from dltrain.composition import compose_checked

    return lambda *overrides: compose_checked(list(overrides))


@pytest.fixture
def train_run(tmp_path, compose):
    """train_run(*overrides) -> (summary dict, run dir Path); quiet, in-process."""
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain.training import train

    def run(*overrides: str, run_dir: Path | None = None):
        cfg = compose("trainer.progress=none", *overrides)
        out = run_dir or tmp_path / "run"
        summary = train(cfg, out, Console(quiet=True), config_yaml=OmegaConf.to_yaml(cfg, resolve=True))
        assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
        return summary, out

    return run


@pytest.fixture
def run_train(compose):
    """run_train(run_dir, *overrides) -> summary; quiet, in-process."""
    from omegaconf import OmegaConf
    from rich.console import Console

    from dltrain.training import train

    def go(run_dir: Path, *overrides: str) -> dict:
        cfg = compose("trainer.progress=none", *overrides)
        return train(cfg, run_dir, Console(quiet=True), config_yaml=OmegaConf.to_yaml(cfg, resolve=True))

    return go


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """Train with one torch thread: on a busy 2-core machine two threads can be 100x slower."""
    with torch_threads(1):
        yield


def assert_one_line_exit_2(result: tuple[int, str, str], *fragments: str) -> None:
    """(exit code, stdout, stderr) of a command that must fail with one line naming `fragments`."""
    code, _, err = result
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
