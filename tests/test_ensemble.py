"""ensemble.size=K: vectorised members against the same members run one by one, the combined
prediction against the members' mean probabilities, bagging's bootstrap samples, the issue's
digits target, the verbs on an ensemble run, exact resume and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dltrain.errors import UserError
from dltrain.models.ensemble import Ensemble
from tests.conftest import assert_one_line_exit_2
from tests.test_checkpoint import crash_after
from tests.test_sweep import in_process

MLP = ("model=mlp", "model.hidden=32", "model.batchnorm=false")
SHORT = ("trainer.max_epochs=2", "trainer.limit_train_batches=8")


def members(k: int = 3, batchnorm: bool = False) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    layers = lambda: [torch.nn.Linear(6, 8), *([torch.nn.BatchNorm1d(8)] if batchnorm else []), torch.nn.Tanh(), torch.nn.Linear(8, 4)]  # noqa: E731
    return [torch.nn.Sequential(*layers()) for _ in range(k)]


def test_vectorised_members_compute_and_differentiate_like_one_after_another():
    vec = Ensemble(members(), "probs", vectorize=True).train()
    loop = Ensemble(members(), "probs", vectorize=False).train()
    assert all(torch.equal(a, b) for a, b in zip(vec.state_dict().values(), loop.state_dict().values(), strict=True))
    x = torch.randn(5, 6)
    a, b = vec.member_outputs(x), loop.member_outputs(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    a.square().sum().backward()
    b.square().sum().backward()
    for p, q in zip(vec.parameters(), loop.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    xs = torch.randn(3, 5, 6)  # bagging: a batch per member
    torch.testing.assert_close(vec.member_outputs(xs, per_member=True), torch.stack([m(xs[k]) for k, m in enumerate(loop.members)]), rtol=1e-5, atol=1e-6)


def test_batch_norm_members_run_one_after_another():
    from dltrain.models.ensemble import use_vmap

    e = Ensemble(members(batchnorm=True), "mean")
    assert not use_vmap(e.members[0], torch.device("cuda")) and use_vmap(members()[0], torch.device("cuda"))
    assert not use_vmap(members()[0], torch.device("cpu"))  # on a CPU one after another is as fast
    x = torch.randn(5, 6)
    torch.testing.assert_close(e.train().member_outputs(x), torch.stack([m(x) for m in e.members]))
    assert e.vectorized is False


def test_the_prediction_is_the_members_mean_probability_or_mean_output():
    e = Ensemble(members(), "probs").eval()
    x = torch.randn(7, 6)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m(x), 1) for m in e.members]).mean(0)
        torch.testing.assert_close(torch.softmax(e(x), 1), probs)
        torch.testing.assert_close(e(x).exp().sum(1), torch.ones(7))  # log-probabilities: cross-entropy is the ensemble's NLL
        r = Ensemble(members(), "mean").eval()
        torch.testing.assert_close(r(x), torch.stack([m(x) for m in r.members]).mean(0))


@pytest.mark.slow
def test_on_digits_five_mlps_beat_their_best_member_and_their_mean_nll(train_run, one_torch_thread):
    """The issue's target, trained in one vectorised run: recipe=mlp_ensemble_digits."""
    summary, run = train_run("recipe=mlp_ensemble_digits")
    ens = summary["ensemble"]
    assert ens["size"] == 5 and ens["vectorized"] is False and ens["bagging"] is True  # on a CPU and len(ens["members"]) == 5
    assert len({m["loss"] for m in ens["members"]}) == 5  # different members
    assert summary["test"]["accuracy"] >= summary["test_member_best"]["accuracy"] == max(m["accuracy"] for m in ens["members"])
    assert summary["test"]["loss"] < summary["test_member_mean"]["loss"]
    assert summary["test_member_mean"]["accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in ens["members"]]))
    weights = load_file(run / "checkpoints" / "best.safetensors")
    assert {k.split(".")[1] for k in weights} == {"0", "1", "2", "3", "4"}


def test_members_train_independently(train_run, tmp_path):
    """The first two members of a 3-member ensemble are the two members of a 2-member one: each
    member's initial weights, data order and gradient are its own (the summed loss couples nothing)."""
    _, two = train_run(*MLP, *SHORT, "optim=sgd", "optim.lr=0.05", "ensemble.size=2", run_dir=tmp_path / "two")
    _, three = train_run(*MLP, *SHORT, "optim=sgd", "optim.lr=0.05", "ensemble.size=3", run_dir=tmp_path / "three")
    a, b = (load_file(r / "checkpoints" / "last.safetensors") for r in (two, three))
    assert a.keys() < b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a["members.0.1.weight"], a["members.1.1.weight"])


@pytest.mark.parametrize("bootstrap", [False, True])
def test_each_member_has_its_own_order_and_with_bagging_its_own_bootstrap_sample(bootstrap):
    from dltrain.engine.loader import MemberLoader

    x, y = torch.arange(1000.0)[:, None], torch.arange(1000)
    loader = MemberLoader(x, y, 100, members=4, bootstrap=bootstrap, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    seen = [[] for _ in range(4)]
    for xb, yb in loader:
        assert xb.shape == (4, 100, 1) and yb.shape == (4, 100) and torch.equal(xb[..., 0].long(), yb)
        for k in range(4):
            seen[k] += yb[k].tolist()
    for k in range(4):
        assert sorted(seen[k]) == sorted(loader.samples[k].tolist())  # an epoch is member k's sample, in its own order
        share = len(set(seen[k])) / 1000
        assert 0.58 < share < 0.68 if bootstrap else share == 1.0  # a bootstrap sample holds about 1 - 1/e of the examples
    assert len({tuple(s) for s in seen}) == 4
    fewer = MemberLoader(x, y, 100, members=2, bootstrap=bootstrap, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    assert torch.equal(next(iter(fewer))[1], next(iter(MemberLoader(x, y, 100, members=4, bootstrap=bootstrap, generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))))[1][:2])


def test_bagging_resumes_bit_exact(run_train, tmp_path):
    tiny = (*MLP, "ensemble.size=3", "ensemble.bagging=true", "trainer.max_epochs=2", "trainer.limit_train_batches=6", "trainer.checkpoint.every_n_steps=4", "trainer.checkpoint.keep_last=0", "trainer.checkpoint.every_n_epochs=1")
    full = run_train(tmp_path / "full", *tiny)
    assert full["ensemble"]["bagging"] is True
    run = crash_after(tmp_path / "full", tmp_path / "r", 4)
    resumed = run_train(run, *tiny, f"trainer.resume={run}")
    assert resumed["weights_sha256"] == full["weights_sha256"] and resumed["test"] == full["test"]


def test_eval_predict_and_export_use_the_ensemble(train_run, tmp_path, capsys):
    summary, run = train_run(*MLP, *SHORT, "ensemble.size=3")
    code, out, err = in_process(capsys, "eval", str(run))
    assert code == 0, err
    assert f"{summary['test']['accuracy']:.4f}" in out + err
    images = tmp_path / "x.npz"
    from sklearn.datasets import load_digits

    np.savez(images, x=load_digits().images[:6].astype(np.float32))
    code, out, err = in_process(capsys, "predict", str(run), f"input={images}", f"output={tmp_path / 'p.csv'}")
    assert code == 0, err
    code, out, err = in_process(capsys, "export", str(run), "format=torchscript")
    assert code == 0, err


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (("ensemble.size=0",), ("ensemble.size",)),
        (("ensemble.bagging=true",), ("ensemble.bagging=True", "ensemble.size=K")),
        (("model=gan", "ensemble.size=3"), ("ensemble.size=3", "task gan")),
        (("optim=lbfgs", "ensemble.size=3"), ("ensemble.size=3", "line search")),
        (("ensemble.size=3", "trainer.devices=2"), ("ensemble.size=3", "one process")),
    ],
)
def test_bad_ensemble_settings_are_one_line_exit_2(capsys, tmp_path, overrides, fragments):
    assert_one_line_exit_2(in_process(capsys, *overrides, f"hydra.run.dir={tmp_path / 'run'}"), *fragments)
    assert not (tmp_path / "run").exists()


def test_recipes_may_bound_the_members_metrics(compose):
    from dltrain.config import validate

    spec = validate(compose("ensemble.size=3", "+expected={test_member_best.accuracy: {max: 1.0}}"))
    assert spec.expected == {"test_member_best.accuracy": {"max": 1.0}}
    with pytest.raises(UserError, match="never produces test_member_best.accuracy"):
        validate(compose("+expected={test_member_best.accuracy: {max: 1.0}}"))
