"""RBMs and DBNs: the energy, the pseudo-likelihood and contrastive divergence beside
scikit-learn's BernoulliRBM on the same split; the DBN's greedy pretraining and fine-tuning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dltrain.config import validate
from dltrain.engine.rundir import load_weights
from dltrain.models import MODELS
from dltrain.training import build
from tests.conftest import MNIST_TEST, NO_MNIST, assert_one_line_exit_2
from tests.test_components import metrics
from tests.test_sweep import in_process


def digits_units(compose):
    """dltrain's digits split, as pixel intensities in [0, 1] (what Bernoulli visible units read)."""
    data = build(validate(compose("model=rbm")), torch.device("cpu"), fit_data=False).data
    return data, *(data.to_unit(s.x).flatten(1).clamp(0, 1).double().numpy() for s in (data.train, data.test))


def sklearn_rbm_with(weights: dict[str, torch.Tensor], random_state: int = 0):
    """A scikit-learn BernoulliRBM holding these weights, for its own free energy and scores."""
    from sklearn.neural_network import BernoulliRBM

    rbm = BernoulliRBM(n_components=weights["linear.weight"].shape[0], random_state=random_state)
    rbm.components_ = weights["linear.weight"].double().numpy()
    rbm.intercept_hidden_ = weights["linear.bias"].double().numpy()
    rbm.intercept_visible_ = weights["v_bias"].double().numpy()
    rbm.random_state_ = np.random.RandomState(random_state)
    return rbm


def test_the_energy_and_conditionals_are_scikit_learns() -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": "rbm", "hidden": 7}, in_shape=(1, 3, 4), out_features=0).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
    v = torch.rand(9, 12, dtype=torch.float64).round()
    sk = sklearn_rbm_with({k: v.detach() for k, v in net.state_dict().items()})
    np.testing.assert_allclose(net.free_energy(v).detach().numpy(), sk._free_energy(v.numpy()), rtol=1e-10)
    np.testing.assert_allclose(net.hidden_probs(v).detach().numpy(), sk.transform(v.numpy()), rtol=1e-10)
    # the pseudo-likelihood: the same formula as score_samples, given the same flipped units
    g = torch.Generator().manual_seed(3)
    ours = net.pseudo_log_likelihood(v, g).detach().numpy()
    i = torch.randint(0, 12, (9,), generator=torch.Generator().manual_seed(3)).numpy()
    flipped = v.numpy().copy()
    flipped[np.arange(9), i] = 1 - flipped[np.arange(9), i]
    expected = -12 * np.logaddexp(0, -(sk._free_energy(flipped) - sk._free_energy(v.numpy())))
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


@pytest.mark.parametrize("persistent", [False, True])
def test_contrastive_divergence_is_the_textbook_update(persistent: bool) -> None:
    """One CD-1 / PCD-1 step equals the update written out with the same random draws."""
    torch.manual_seed(0)
    net = MODELS.build({"name": "rbm", "hidden": 5, "visible": "bernoulli", "persistent": persistent, "chains": 4}, in_shape=(6,), out_features=0).double()
    net.chain = torch.bernoulli(torch.full((4, 5), 0.5, dtype=torch.float64))
    v = torch.rand(8, 6, dtype=torch.float64)
    before = {k: t.detach().clone() for k, t in net.state_dict().items()}
    torch.manual_seed(1)
    with torch.no_grad():
        net.cd_update(v, 0.1)
    torch.manual_seed(1)
    w, b, c = before["linear.weight"], before["v_bias"], before["linear.bias"]
    h_pos = torch.sigmoid(v @ w.T + c)
    h = before["chain"] if persistent else torch.bernoulli(h_pos)
    v_neg = torch.bernoulli(torch.sigmoid(h @ w + b))
    h_neg = torch.sigmoid(v_neg @ w.T + c)
    torch.testing.assert_close(net.weight.detach(), w + 0.1 * (h_pos.T @ v / 8 - h_neg.T @ v_neg / len(v_neg)))
    torch.testing.assert_close(net.h_bias.detach(), c + 0.1 * (h_pos.mean(0) - h_neg.mean(0)))
    torch.testing.assert_close(net.v_bias.detach(), b + 0.1 * (v.mean(0) - v_neg.mean(0)))
    if persistent:
        assert net.chain.shape == (4, 5) and not torch.equal(net.chain, before["chain"])


def test_an_rbm_learns_as_well_as_scikit_learns(train_run, compose, tmp_path, one_torch_thread) -> None:
    """The same hidden units, learning rate, batch, epochs and split (PCD-1, as BernoulliRBM):
    pseudo-likelihood within 5% of scikit-learn's (both scored by its score_samples), and
    logistic regression on the hidden units at least as accurate."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import BernoulliRBM

    hidden, lr, batch, epochs = 64, 0.06, 10, 10
    summary, run = train_run(
        "model=rbm", f"model.hidden={hidden}", "model.persistent=true", f"model.chains={batch}", f"data.batch_size={batch}", f"optim.lr={lr}", f"trainer.max_epochs={epochs}", "trainer.device=cpu", "trainer.test_ckpt=last"
    )
    data, xtr, xte = digits_units(compose)
    theirs = BernoulliRBM(n_components=hidden, learning_rate=lr, batch_size=batch, n_iter=epochs, random_state=0).fit(xtr)
    ours = sklearn_rbm_with(load_weights(run / "checkpoints" / "last.safetensors"))
    pll_ours = np.mean([sklearn_rbm_with(load_weights(run / "checkpoints" / "last.safetensors"), s).score_samples(xte).mean() for s in range(5)])
    pll_theirs = np.mean([sklearn_rbm_with({"linear.weight": torch.as_tensor(theirs.components_), "linear.bias": torch.as_tensor(theirs.intercept_hidden_), "v_bias": torch.as_tensor(theirs.intercept_visible_)}, s).score_samples(xte).mean() for s in range(5)])
    print(f"pseudo-log-likelihood: dltrain {pll_ours:.2f}, scikit-learn {pll_theirs:.2f}; summary {summary['test']}")
    assert pll_ours >= pll_theirs - 0.05 * abs(pll_theirs)  # measured: -21.1 against -23.1 (ours shuffles its batches, scikit-learn does not)
    assert summary["test"]["pseudo_log_likelihood"] == pytest.approx(pll_ours, rel=0.1)  # its own estimate, another draw of flips
    ytr, yte = data.train.y.numpy(), data.test.y.numpy()
    accuracy = {
        name: LogisticRegression(max_iter=2000).fit(rbm.transform(xtr), ytr).score(rbm.transform(xte), yte) for name, rbm in (("ours", ours), ("theirs", theirs))
    }
    print("logistic regression on the hidden units:", accuracy)
    assert accuracy["ours"] >= accuracy["theirs"] - 0.01
    assert (run / "plots" / "filters.png").is_file() and (run / "plots" / "samples.png").is_file()


def test_a_dbn_is_pretrained_layer_by_layer_then_fine_tuned(train_run, tmp_path, one_torch_thread) -> None:
    common = ("model=dbn", "model.hidden=[64,64]", "model.pretrain_epochs=3", "optim.lr=3e-3", "trainer.max_epochs=10", "trainer.device=cpu")
    summary, run = train_run(*common, run_dir=tmp_path / "dbn")
    layers = summary["pretraining"]
    assert [layer["units"] for layer in layers] == [[64, 64], [64, 64]]
    assert all(np.isfinite(layer["reconstruction_error"]) and layer["pseudo_log_likelihood"] < 0 for layer in layers)
    assert json.loads((run / "pretraining.json").read_text()) == layers
    plain, _ = train_run(*common, "model.pretrain_epochs=0", run_dir=tmp_path / "plain")
    assert "pretraining" not in plain and plain["weights_sha256"] != summary["weights_sha256"]
    assert summary["test"]["accuracy"] > 0.6  # 10 short epochs; recipe=dbn_digits trains to 0.975


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (("model=rbm", "data=iris", "model.visible=bernoulli"), ("model.visible='bernoulli'", "data=iris is not images", "allowed: gaussian")),
        (("model=rbm", "optim=adam"), ("optim='adam'", "model=rbm learns by its own rule")),
        (("model=dbn", "model.hidden=[]"), ("model.hidden", "one or more layer widths")),
        (("model=rbm", "loss=cross_entropy"), ("loss=cross_entropy does not apply to task rbm", "mse")),
    ],
)
def test_bad_energy_model_configs_are_one_line_exit_2(capsys, tmp_path, overrides, fragments) -> None:
    assert_one_line_exit_2(in_process(capsys, *overrides, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"), *fragments)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_gaussian_rbm_reads_standardised_tables(train_run, one_torch_thread) -> None:
    summary, run = train_run("model=rbm", "model.hidden=64", "data=breast_cancer", "optim.lr=0.005", "trainer.max_epochs=30", "trainer.device=cpu")
    assert summary["task"] == "rbm" and "pseudo_log_likelihood" not in summary["test"]  # auto: Gaussian units, no one-flip estimate
    rows = metrics(run)
    assert rows[-1]["val_loss"] < 0.7 * rows[0]["val_loss"]  # measured: 1.00 -> 0.56


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").exists(), reason=NO_MNIST)
def test_a_dbn_reaches_its_accuracy_on_the_mnist_test_files(train_run, one_torch_thread) -> None:
    summary, _ = train_run("recipe=dbn_digits", "data=mnist", f"data.root={MNIST_TEST}", "data.download=false", "trainer.max_epochs=30", "trainer.device=cpu")
    assert summary["test"]["accuracy"] >= 0.96, summary["test"]
