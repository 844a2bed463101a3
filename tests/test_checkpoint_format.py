"""The checkpoint format and its writers: JSON plus safetensors laid out by hand, the torch-free
writer process, recycled files, the non-finite guard, and format-1 checkpoints still read."""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, load_file

from dltrain.engine import atomic
from dltrain.engine import checkpoint as ck
from dltrain.engine.writer import make_writer
from tests.test_checkpoint import MODELS, TINY, crash_after


def test_state_trees_round_trip_through_json_and_named_tensors():
    tensors: dict[str, torch.Tensor] = {}
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}, 1: {"momentum_buffer": None}},
        "param_groups": [{"params": [0, 1], "lr": 1e-3, "betas": (0.9, 0.999), "foreach": None, "nesterov": False, "name": "main"}],
        "odd": {1: "int key", "1": torch.ones(1), "__tensor__": "a key that looks like a tag"},
        "floats": [math.inf, -math.inf, -0.0, 1e-310, 2.0**0.5],
        "nan": math.nan,
        "nested": ((1, (2, [3, torch.arange(4)])),),
    }
    tree = ck.to_tree(state, tensors)
    text = json.dumps(tree)
    back = ck.from_tree(json.loads(text), {k: v.clone() for k, v in tensors.items()})
    assert back["state"][0]["exp_avg"].equal(state["state"][0]["exp_avg"]) and back["state"][1] == {"momentum_buffer": None}
    assert list(back["state"]) == [0, 1] and back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["odd"][1] == "int key" and back["odd"]["1"].equal(torch.ones(1)) and back["odd"]["__tensor__"] == "a key that looks like a tag"
    assert [math.copysign(1, x) if x == 0 else x for x in back["floats"]] == [math.inf, -math.inf, -1.0, 1e-310, 2.0**0.5]
    assert math.isnan(back["nan"])
    assert back["nested"][0][0] == 1 and back["nested"][0][1][1][1].equal(torch.arange(4))
    with pytest.raises(TypeError, match=r"/bad is a object"):
        ck.to_tree({"bad": object()}, {})


DTYPE_CASES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {f"t.{dtype}".replace("torch.", ""): (torch.randn(3, 5, generator=g) * 50).to(dtype) for dtype in DTYPE_CASES}
    out |= {"scalar": torch.tensor(2.5), "empty": torch.empty(0, 4), "strided": torch.randn(4, 6, generator=g)[:, ::2], "z.last": torch.ones(7, dtype=torch.float16)}
    return out


def test_hand_laid_safetensors_files_load_with_safetensors_bit_exact(tmp_path):
    from safetensors import safe_open

    tensors = _tensors()
    f = ck.frame(tensors, {"format": "2", "step": "7"})
    files = [("model.safetensors", f), ("state.json", b'{"a": 1}\n'), ("config.yaml", b"a: 1\n")]
    staging = ck.Staging(memoryview(bytearray(ck.Staging.size(files))))
    ranges = staging.pack(files)
    data = {name: bytes(staging.view[a:b]) for name, a, b in ranges}
    back = load(data["model.safetensors"])
    assert set(back) == set(tensors) and all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in tensors.items())
    (tmp_path / "m.safetensors").write_bytes(data["model.safetensors"])
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as sf:
        assert sf.metadata() == {"format": "2", "step": "7"}
    assert load_file(tmp_path / "m.safetensors")["strided"].equal(tensors["strided"])
    assert data["state.json"] == b'{"a": 1}\n' and data["config.yaml"] == b"a: 1\n"
    assert all(a % 64 == 0 for _, a, _ in ranges)  # every file starts aligned in the buffer


def test_a_reused_staging_buffer_copies_again_unless_the_tensors_are_marked_unchanged():
    best = {"w": torch.ones(4)}
    live = {"w": torch.zeros(4)}
    staging = ck.Staging(memoryview(bytearray(1 << 16)))

    def pack(token):
        files = [("model.safetensors", ck.frame(live, {})), ("best.safetensors", ck.frame(best, {}, token))]
        return {name: load(bytes(staging.view[a:b]))["w"] for name, a, b in staging.pack(files)}

    token = object()
    assert pack(token)["best.safetensors"].equal(torch.ones(4))
    live["w"].add_(1)
    best["w"].fill_(5)  # changed in place behind the token's back: the token says "same", so not copied again
    out = pack(token)
    assert out["model.safetensors"].equal(torch.ones(4)) and out["best.safetensors"].equal(torch.ones(4))
    assert pack(object())["best.safetensors"].equal(torch.full((4,), 5.0))  # a new token: copied


def test_non_finite_weights_are_refused_by_every_writer_and_nothing_is_written(tmp_path):
    ck.Staging(memoryview(bytearray(1 << 16))).pack([("model.safetensors", ck.frame({"w": torch.full((8,), 3e38)}, {}))])  # huge but finite: the sum overflows, the element check passes
    for kind in ("process", "thread", "sync", "rank"):
        root = tmp_path / kind
        writer = make_writer(kind, root, "a: 1\n", 2, state_bytes=1 << 10)
        for bad in (math.nan, math.inf):
            snap = {"model": {"w": torch.tensor([1.0, bad]), "i": torch.arange(3)}, "best": None, "meta": {"epoch": 1, "step": 1, "best_epoch": 0}, "state": {}, "state_json": b"{}"}
            with pytest.raises(ck.NonFiniteWeights):
                writer.submit("step-00000001", snap)
        writer.close()
        assert not ck.checkpoints(root) and not (root / "last.safetensors").exists()


def test_the_writer_process_imports_no_torch():
    code = "import sys, dltrain.engine.writer_process; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_pruned_checkpoints_are_recycled_but_a_file_linked_elsewhere_is_never_overwritten(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 4):  # keep_last=2: step 1 becomes the spare when step 3 commits
        atomic.write_checkpoint(root, f"step-{step:08d}", {"model.safetensors": b"m%d" % step, "best.safetensors": b"b%d" % step, "state.safetensors": b"s", "state.json": b"{}"}, 2)
    spare = root / f".spare-{os.getpid()}"
    assert [p.name for p in ck.checkpoints(root)] == ["step-00000003", "step-00000002"] and spare.is_dir()
    keep = tmp_path / "kept.safetensors"
    os.link(spare / "model.safetensors", keep)  # someone keeps a hard link to a file of the spare
    ino = os.stat(spare / "state.safetensors").st_ino
    atomic.write_checkpoint(root, "step-00000004", {"model.safetensors": b"m4", "state.safetensors": b"s4", "state.json": b"{}"}, 2)
    new = root / "step-00000004"
    assert os.stat(new / "state.safetensors").st_ino == ino  # overwritten in place
    assert keep.read_bytes() == b"m1" and (new / "model.safetensors").read_bytes() == b"m4"  # the linked file was replaced, not changed
    assert not (new / "best.safetensors").exists()  # a file the new checkpoint does not have is gone
    atomic.verify(new)
    atomic.discard_spare(root)
    assert not list(root.glob(".spare-*")) and len(ck.checkpoints(root)) == 2


def test_a_run_leaves_no_spare_checkpoint_behind(run_train, tmp_path):
    run_train(tmp_path / "r", *MODELS["mlp"], *TINY, "trainer.checkpoint.keep_last=2")
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert names == ["best.safetensors", "last.safetensors", "step-00000018", "step-00000021"]


def _as_format_1(d: Path) -> None:
    """Rewrite checkpoint `d` the way dltrain wrote format 1: state.pt (torch.save) and Python's RNG
    and the running losses in state.json."""
    files = atomic.verify(d)
    loop, _, blob, state = ck.decode(d, files)
    py = blob["rng"].pop("python")
    state["python_rng"] = [py["version"], [x & 0xFFFFFFFF for x in py["internal"].tolist()], py["gauss"]]
    losses = blob.pop("losses")
    state["losses"] = [] if losses is None else losses[: loop.batch].tolist()
    del state["blob"]
    state["format"] = 1
    buf = io.BytesIO()
    torch.save(blob, buf)
    (d / "state.safetensors").unlink()
    (d / "state.pt").write_bytes(buf.getvalue())
    (d / "state.json").write_text(json.dumps(state))
    manifest = json.loads((d / atomic.MANIFEST).read_text())
    manifest["format"] = 1
    del manifest["files"]["state.safetensors"]
    for name in ("state.pt", "state.json"):
        data = (d / name).read_bytes()
        manifest["files"][name] = {"size": len(data), "sha256": __import__("hashlib").sha256(data).hexdigest()}
    (d / atomic.MANIFEST).write_text(json.dumps(manifest))


def test_format_1_checkpoints_still_resume_exactly(run_train, tmp_path):
    full = run_train(tmp_path / "full", *MODELS["cnn_dropout"], *TINY)
    run = crash_after(tmp_path / "full", tmp_path / "r", 9)  # mid-epoch: running losses and permutation
    _as_format_1(run / "checkpoints" / "step-00000009")
    random.seed(12345)  # the resume must set Python's RNG from the checkpoint, not keep this
    resumed = run_train(run, *MODELS["cnn_dropout"], *TINY, f"trainer.resume={run}")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    shutil.rmtree(tmp_path / "full")
