"""MNIST-family data: IDX parsing, the official and test-only splits, and checked downloads."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from dltrain.data import DATASETS
from dltrain.data import mnist as mnist_module
from dltrain.data.mnist import FASHION_CLASSES, download_file, read_idx
from dltrain.errors import UserError
from tests.conftest import MNIST_TEST as SHARED  # noqa: E402
from tests.conftest import NO_MNIST  # noqa: E402

TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
ALL_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=NO_MNIST)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write uint8 `array` (3-D images or 1-D labels) as an IDX file, gzipped if `path` ends in .gz."""
    magic = 2051 if array.ndim == 3 else 2049
    data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def fake_set(root: Path, prefix: str, n: int, seed: int) -> None:
    """`n` random 28x28 images with balanced labels under the official file names."""
    rng = np.random.default_rng(seed)
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)  # raw: both forms are found


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a local port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """Start a local HTTP server for a directory; returns its base URL. Shut down afterwards."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # talk to 127.0.0.1 directly
        monkeypatch.delenv(var, raising=False)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    servers = []

    def start(directory: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["images.gz", "images"])
def test_read_idx_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / name, images)), images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / f"labels-{name}", labels)), labels)


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(struct.pack(">II", 1234, 0))
    with pytest.raises(UserError, match=r"bad-magic is not an MNIST IDX file: magic number 1234"):
        read_idx(bad_magic)

    short = tmp_path / "short"
    short.write_bytes(write_idx(tmp_path / "full", np.zeros((2, 3, 3))).read_bytes()[:-1])
    with pytest.raises(UserError, match=r"short is truncated"):
        read_idx(short)

    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(write_idx(tmp_path / "full.gz", np.zeros((2, 3, 3))).read_bytes()[:-10])
    with pytest.raises(UserError, match=r"cut\.gz"):
        read_idx(cut_gz)


@needs_shared
def test_mnist_from_the_test_files_only(monkeypatch, closed_port_url):
    monkeypatch.setitem(mnist_module.MIRRORS, "mnist", [closed_port_url])  # would fail loudly if tried
    bundle = DATASETS.build({"name": "mnist", "root": str(SHARED)})
    assert bundle.in_shape == (1, 28, 28) and bundle.num_classes == 10
    assert (len(bundle.train) + len(bundle.val), len(bundle.test)) == (8000, 2000)
    assert bundle.train.x.dtype.is_floating_point and str(bundle.train.y.dtype) == "torch.int64"
    assert abs(bundle.train.x.mean().item()) < 1e-3 and abs(bundle.train.x.std().item() - 1) < 1e-3
    labels = np.concatenate([s.y.numpy() for s in (bundle.train, bundle.val, bundle.test)])
    assert np.bincount(labels).tolist() == TEST_CLASS_COUNTS
    assert "test set" in bundle.note and "split" in bundle.note


def test_official_split_when_train_files_present(tmp_path):
    fake_set(tmp_path, "train", 200, seed=0)
    fake_set(tmp_path, "t10k", 50, seed=1)
    bundle = DATASETS.build({"name": "fashion_mnist", "root": str(tmp_path), "download": False, "val_fraction": 0.1})
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (180, 20, 50)
    assert bundle.class_names == FASHION_CLASSES and bundle.note == ""
    assert np.bincount(bundle.val.y.numpy()).tolist() == [2] * 10  # stratified
    # The official test set is kept whole and in order.
    np.testing.assert_array_equal(bundle.test.y.numpy(), np.arange(50) % 10)


@needs_shared
def test_download_falls_through_mirrors_and_verifies(tmp_path, serve, monkeypatch, closed_port_url):
    served = tmp_path / "served"
    shutil.copytree(SHARED, served)
    monkeypatch.setitem(mnist_module.MIRRORS, "mnist", [closed_port_url, serve(served)])
    root = tmp_path / "cache" / "mnist"  # not there yet: the download creates it
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        path = download_file("mnist", name, root)
        assert hashlib.md5(path.read_bytes()).hexdigest() == mnist_module.MD5["mnist"][name]
    assert sorted(p.name for p in root.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert len(DATASETS.build({"name": "mnist", "root": str(root), "download": False}).test) == 2000


def test_download_rejects_a_tampered_file(tmp_path, serve, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the real labels")
    monkeypatch.setitem(mnist_module.MIRRORS, "mnist", [serve(served)])
    root = tmp_path / "root"
    with pytest.raises(UserError, match="checksum"):
        download_file("mnist", "t10k-labels-idx1-ubyte.gz", root)
    assert list(root.iterdir()) == []  # no temp file left behind


def test_missing_files_without_download(tmp_path):
    with pytest.raises(UserError) as err:
        DATASETS.build({"name": "mnist", "root": str(tmp_path), "download": False})
    message = str(err.value)
    assert f"data.root={str(tmp_path)!r}" in message and "\n" not in message
    assert all(name in message for name in ALL_FILES)


def test_missing_files_when_the_download_fails(tmp_path, monkeypatch, closed_port_url):
    monkeypatch.setitem(mnist_module.MIRRORS, "fashion_mnist", [closed_port_url])
    with pytest.raises(UserError, match=r"has no Fashion-MNIST files and the download failed \(could not download"):
        DATASETS.build({"name": "fashion_mnist", "root": str(tmp_path)})
    assert list(tmp_path.iterdir()) == []
