"""Sequence to sequence: the reverse task, teacher forcing against greedy decoding, training to
the issue's accuracy, and greedy decoding in `predict`."""

from __future__ import annotations

import csv

import pytest
import torch

from dltrain.data import DATASETS
from dltrain.models import MODELS
from tests.conftest import assert_one_line_exit_2
from tests.test_sweep import in_process


def test_the_reverse_task_is_as_defined() -> None:
    data = DATASETS.build({"name": "reverse", "length": 7, "vocab": 5, "size": 500})
    assert (data.kind, data.task, data.num_classes, data.in_shape) == ("tokens", "seq2seq", 5, (7,))
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.int64 and torch.equal(split.y, split.x.flip(1))
        assert int(split.x.min()) >= 0 and int(split.x.max()) < 5
    assert len(data.train) + len(data.val) + len(data.test) == 500
    assert torch.equal(DATASETS.build({"name": "reverse", "length": 7, "vocab": 5, "size": 500}).test.x, data.test.x)  # seeded


def test_greedy_decoding_is_teacher_forcing_on_its_own_tokens() -> None:
    """Decoding feeds back each step's argmax; teacher forcing with exactly those tokens gives the
    same logits, and a step's logits never depend on later target tokens."""
    torch.manual_seed(0)
    net = MODELS.build({"name": "seq2seq", "hidden": 16, "embedding_dim": 8}, in_shape=(6,), out_features=4).eval()
    x = torch.randint(0, 4, (5, 6))
    with torch.no_grad():
        greedy = net(x)
        tokens = greedy.argmax(-1)
        torch.testing.assert_close(net(x, tokens), greedy)
        changed = tokens.clone()
        changed[:, 3:] = (changed[:, 3:] + 1) % 4
        torch.testing.assert_close(net(x, changed)[:, :4], net(x, tokens)[:, :4])  # steps 0-3 read tokens 0-2 only
    assert greedy.shape == (5, 6, 4) and net(x, steps=9).shape == (5, 9, 4)


def test_a_short_reversal_is_learned_and_predicted_greedily(train_run, tmp_path, capsys, one_torch_thread) -> None:
    summary, run = train_run("model=seq2seq", "model.hidden=64", "data=reverse", "data.length=5", "data.size=4000", "optim.lr=3e-3", "trainer.max_epochs=8", "trainer.device=cpu")
    assert summary["task"] == "seq2seq" and summary["test"]["token_accuracy"] > 0.9, summary["test"]
    rows = tmp_path / "tokens.csv"
    rows.write_text("1,2,3,4,5\n9,0,9,0,7\n")
    code, out, err = in_process(capsys, "predict", str(run), f"input={rows}", f"output={tmp_path / 'pred.csv'}")
    assert code == 0, err
    preds = list(csv.DictReader((tmp_path / "pred.csv").open()))
    assert [p["input_tokens"] for p in preds] == ["1 2 3 4 5", "9 0 9 0 7"]
    assert preds[0]["pred_tokens"] == "5 4 3 2 1" and preds[1]["pred_tokens"] == "7 0 9 0 9"
    assert all(0 < float(p["confidence"]) <= 1 for p in preds)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (("model=mlp", "data=reverse"), ("model=mlp needs", "tokens data", "seq2seq")),
        (("model=seq2seq", "data=digits"), ("model=seq2seq needs tokens input",)),
        (("model=seq2seq", "data=reverse", "cv.k=3"), ("cv.k=3", "allowed: 0")),
    ],
)
def test_bad_seq2seq_configs_are_one_line_exit_2(capsys, tmp_path, overrides, fragments) -> None:
    assert_one_line_exit_2(in_process(capsys, *overrides, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"), *fragments)


def test_predict_refuses_tokens_outside_the_vocabulary(train_run, tmp_path, capsys) -> None:
    _, run = train_run("model=seq2seq", "model.hidden=8", "data=reverse", "data.length=4", "data.size=200", "trainer.max_epochs=1", "trainer.device=cpu")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3,12\n")
    assert_one_line_exit_2(in_process(capsys, "predict", str(run), f"input={bad}"), "input=", "12", "0 to 9")
