"""The perceptron and RBF networks: their rules against written-out definitions, and side by side
with scikit-learn on the same splits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dltrain.config import validate
from dltrain.models import MODELS
from dltrain.training import build
from tests.conftest import assert_one_line_exit_2
from tests.test_sweep import in_process


def split(compose, *overrides: str):
    """The data bundle dltrain trains on (standardised, seeded split) for these overrides."""
    return build(validate(compose(*overrides)), torch.device("cpu")).data


def numpy_perceptron(x: np.ndarray, y: np.ndarray, k: int, epochs_orders: list[np.ndarray], online: bool) -> tuple[np.ndarray, np.ndarray]:
    """The multiclass perceptron rule written out (Duda, Hart & Stork 5.12), in float64."""
    w, b = np.zeros((k, x.shape[1])), np.zeros(k)
    for order in epochs_orders:
        if online:
            for i in order:
                pred = int(np.argmax(w @ x[i] + b))
                if pred != y[i]:
                    w[y[i]] += x[i]
                    w[pred] -= x[i]
                    b[y[i]] += 1
                    b[pred] -= 1
        else:
            xs, ys = x[order], y[order]
            pred = np.argmax(xs @ w.T + b, 1)
            for xi, yi, pi in zip(xs, ys, pred, strict=True):
                if pi != yi:
                    w[yi] += xi
                    w[pi] -= xi
                    b[yi] += 1
                    b[pi] -= 1
    return w, b


@pytest.mark.parametrize("online", [True, False])
def test_the_perceptron_rule_is_the_textbook_one(online: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, 3, 60)
    orders = [rng.permutation(60) for _ in range(4)]
    net = MODELS.build({"name": "perceptron", "online": online}, in_shape=(5,), out_features=3).double()
    with torch.no_grad():
        for order in orders:
            net.learn(torch.as_tensor(x[order]), torch.as_tensor(y[order]), 1.0)
    w, b = numpy_perceptron(x, y, 3, orders, online)
    np.testing.assert_allclose(net.linear.weight.detach().numpy(), w, atol=1e-9)
    np.testing.assert_allclose(net.linear.bias.detach().numpy(), b, atol=1e-9)


@pytest.mark.parametrize("data", ["breast_cancer", "digits"])
def test_the_perceptron_is_as_accurate_as_scikit_learns(train_run, compose, data: str, one_torch_thread) -> None:
    """Side by side on the same split and epochs: sklearn's Perceptron (one-vs-rest, eta0=1, no
    penalty) over three seeds' shuffles, and dltrain's multiclass rule with its pocket (best val)
    weights; test accuracy within 2 points of sklearn's mean."""
    from sklearn.linear_model import Perceptron

    summary, _ = train_run("model=perceptron", f"data={data}", "trainer.max_epochs=30", "trainer.device=cpu")
    d = split(compose, "model=perceptron", f"data={data}")
    xtr, ytr, xte, yte = d.train.x.flatten(1).numpy(), d.train.y.numpy(), d.test.x.flatten(1).numpy(), d.test.y.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no convergence within max_iter: as many epochs as dltrain's
        reference = np.mean([Perceptron(max_iter=30, tol=None, random_state=s).fit(xtr, ytr).score(xte, yte) for s in range(3)])
    assert summary["model"] == "perceptron" and summary["task"] == "classification"
    assert abs(summary["test"]["accuracy"] - reference) <= 0.02, (summary["test"]["accuracy"], reference)
    assert summary["test"]["accuracy"] > 0.9


def sklearn_rbf(centers: np.ndarray, widths: np.ndarray, xtr, ttr, xte):
    """The same network from scikit-learn's parts: Gaussian features, least squares (LinearRegression)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics.pairwise import euclidean_distances

    def features(x):
        return np.exp(-(euclidean_distances(x, centers, squared=True)) / (2 * widths**2))

    return LinearRegression().fit(features(xtr), ttr).predict(features(xte))


@pytest.mark.parametrize(("data", "k"), [("iris", 20), ("digits", 100), ("diabetes", 20)])
def test_the_rbf_network_solves_as_scikit_learns_kmeans_and_least_squares(compose, data: str, k: int) -> None:
    """The centres are scikit-learn's KMeans (same seed: the same centres), the widths Moody and
    Darken's nearest-centre rule, and the output layer the least-squares solution: scikit-learn's
    LinearRegression on the same Gaussian features predicts what the network does."""
    from sklearn.cluster import KMeans

    d = split(compose, "model=rbf", f"data={data}")
    net = MODELS.build({"name": "rbf", "centers": k, "ridge": 0.0}, in_shape=d.in_shape, out_features=d.num_classes or d.target_dim).double()
    net.fit_data(d, seed=7)
    xtr, xte = d.train.x.flatten(1).double().numpy(), d.test.x.flatten(1).double().numpy()
    km = KMeans(n_clusters=k, n_init=3, random_state=7).fit(xtr)
    np.testing.assert_allclose(net.centers.detach().numpy(), km.cluster_centers_, atol=1e-9)
    dist = np.linalg.norm(km.cluster_centers_[:, None] - km.cluster_centers_[None], axis=-1)
    widths = np.sqrt(np.mean(np.sort(dist, 1)[:, 1:3] ** 2, 1))
    np.testing.assert_allclose(net.log_widths.exp().detach().numpy(), widths, rtol=1e-9)
    with torch.no_grad():
        net.learn(d.train.x.double(), d.train.y if d.num_classes else d.train.y.double(), 1.0)
        ours = net(d.test.x.double()).numpy()
    ttr = np.eye(d.num_classes)[d.train.y.numpy()] if d.num_classes else d.train.y.numpy().reshape(len(xtr), -1)
    theirs = sklearn_rbf(km.cluster_centers_, widths, xtr, ttr, xte)
    np.testing.assert_allclose(ours, theirs, atol=1e-5 * max(1.0, np.abs(theirs).max()))


@pytest.mark.parametrize(("data", "metric", "least"), [("iris", "accuracy", 0.93), ("digits", "accuracy", 0.95), ("diabetes", "r2", 0.4)])
def test_the_rbf_network_reaches_its_targets(train_run, data: str, metric: str, least: float, one_torch_thread) -> None:
    summary, _ = train_run("model=rbf", f"data={data}", "trainer.max_epochs=1", "trainer.device=cpu", *(("model.centers=20",) if data != "digits" else ()))
    assert summary["steps"] == 1  # the whole training split, solved once
    assert summary["test"][metric] >= least, summary["test"]


def test_an_rbf_network_trained_by_gradient_descent_moves_its_centres(train_run, one_torch_thread) -> None:
    summary, run = train_run("model=rbf", "model.solver=gd", "model.centers=30", "optim=adam", "optim.lr=0.01", "data=iris", "trainer.max_epochs=40", "trainer.device=cpu")
    from dltrain.engine.rundir import load_weights

    first = build(validate(__import__("omegaconf").OmegaConf.load(run / "config.yaml")), torch.device("cpu")).model
    trained = load_weights(run / "checkpoints" / "last.safetensors")
    assert not torch.allclose(first.centers, trained["centers"])  # k-means start, then back-propagation
    assert summary["test"]["accuracy"] >= 0.9


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (("model=perceptron", "optim=adam"), ("optim='adam'", "model=perceptron learns by its own rule", "allowed: rule")),
        (("model=mlp", "optim=rule"), ("optim='rule'", "model=mlp learns by gradients", "allowed: adagrad")),
        (("model=rbf", "model.solver=gd"), ("optim='rule'", "model.solver=gd learns by gradients")),
        (("model=rbf", "optim=adam"), ("optim='adam'", "model.solver=lstsq learns by its own rule", "model.solver=gd")),
        (("model=perceptron", "reg=[l2]"), ("reg='[l2]'", "allowed: [none]")),
        (("model=perceptron", "ensemble.size=3"), ("ensemble.size=3", "learning rule")),
        (("model=perceptron", "trainer.accumulate=2"), ("trainer.accumulate=2", "allowed: 1")),
        (("model=perceptron", "data=diabetes"), ("data='diabetes'", "model=perceptron classifies", "allowed: breast_cancer")),
        (("model=gan", "optim_d=rule"), ("optim_d='rule'", "discriminator learns by gradients")),
        (("model=rbf", "data=iris", "model.centers=5000"), ("model.centers=5000", "allowed: 1 to")),
    ],
)
def test_bad_rule_configs_are_one_line_exit_2(capsys, tmp_path, overrides, fragments) -> None:
    assert_one_line_exit_2(in_process(capsys, *overrides, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"), *fragments)
    assert not (tmp_path / "run" / "summary.json").exists()
