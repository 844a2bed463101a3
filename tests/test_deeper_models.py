"""Residual and attention nets: residual MLPs and recurrent stacks, attention pooling, ResNet, and
the adding problem they are tested on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dltrain.data import DATASETS
from dltrain.models import MODELS
from dltrain.models.layers import count_parameters
from tests.conftest import MNIST_TEST
from tests.test_components import metrics


def test_a_residual_mlp_adds_each_later_hidden_layer_to_its_input() -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": "mlp", "hidden": 8, "layers": 3, "batchnorm": False, "residual": True}, in_shape=(5,), out_features=2)
    flatten, linear, act, second, third, head = net
    x = torch.randn(4, 5)
    h = act(linear(flatten(x)))  # the first layer changes the width: no shortcut
    h = h + second[1](second[0](h))
    h = h + third[1](third[0](h))
    torch.testing.assert_close(net(x), head(h))
    plain = MODELS.build({"name": "mlp", "hidden": 8, "layers": 3, "batchnorm": False}, in_shape=(5,), out_features=2)
    assert list(plain.state_dict()) == ["1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias", "7.weight", "7.bias"]  # unchanged without it


def test_deep_sigmoid_mlps_train_with_shortcuts_and_stall_without(train_run, tmp_path, one_torch_thread) -> None:
    """The vanishing gradient, side by side: 12 sigmoid layers without batch norm stay near
    chance, the same net with identity shortcuts learns."""
    common = ("model=mlp", "model.layers=12", "model.hidden=64", "model.activation=sigmoid", "model.batchnorm=false", "trainer.max_epochs=4", "trainer.device=cpu", "sched=none")
    plain, _ = train_run(*common, run_dir=tmp_path / "plain")
    residual, _ = train_run(*common, "model.residual=true", run_dir=tmp_path / "residual")
    assert plain["test"]["accuracy"] < 0.3 < 0.6 < residual["test"]["accuracy"], (plain["test"], residual["test"])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_residual_recurrent_layers_are_single_layers_with_shortcuts(cell: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": cell, "hidden": 6, "layers": 3, "residual": True, "bidirectional": bidirectional}, in_shape=(9, 4), out_features=2)
    assert len(net.rnn) == 3 and all(layer.num_layers == 1 for layer in net.rnn)
    x = torch.randn(5, 9, 4)
    out = net.rnn[0](x)[0]
    for layer in net.rnn[1:]:
        out = out + layer(out)[0]
    width = 6
    last = torch.cat([out[:, -1, :width], out[:, 0, width:]], 1) if bidirectional else out[:, -1]
    torch.testing.assert_close(net(x), net.head(last))


def test_attention_pools_every_step_by_softmax_weights() -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": "lstm", "hidden": 6, "attention": True}, in_shape=(9, 4), out_features=3)
    x = torch.randn(5, 9, 4)
    states = net.rnn(x)[0].detach().numpy()
    w, b, v = (t.detach().numpy() for t in (net.attention.proj.weight, net.attention.proj.bias, net.attention.score.weight))
    scores = np.tanh(states @ w.T + b) @ v.T  # (B, T, 1): Bahdanau's additive score
    alpha = np.exp(scores - scores.max(1, keepdims=True))
    alpha /= alpha.sum(1, keepdims=True)
    pooled = (alpha * states).sum(1)
    head = net.head.weight.detach().numpy(), net.head.bias.detach().numpy()
    np.testing.assert_allclose(net(x).detach().numpy(), pooled @ head[0].T + head[1], rtol=1e-5, atol=1e-6)
    weights = net.attention.weights(net.rnn(x)[0])
    torch.testing.assert_close(weights.sum(1), torch.ones(5))


def test_resnet20_has_the_papers_size() -> None:
    """He et al. 2016 (CIFAR-10, table 6): ResNet-20 (3 stages of 3 basic blocks, 16-32-64 filters)
    has 0.27M parameters with identity shortcuts; our projection shortcuts (their option B) add
    two 1x1 convolutions with batch norm."""
    net = MODELS.build({"name": "resnet", "blocks": [3, 3, 3], "channels": 16}, in_shape=(3, 32, 32), out_features=10)

    def conv_bn(c_in: int, c_out: int, k: int = 3) -> int:
        return c_in * c_out * k * k + 2 * c_out

    stem, head = conv_bn(3, 16), 64 * 10 + 10
    stages = sum(conv_bn(c if i else c_in, c) + conv_bn(c, c) for c_in, c in ((16, 16), (16, 32), (32, 64)) for i in range(3))
    paper = stem + stages + head
    assert round(paper / 1e6, 2) == 0.27
    assert count_parameters(net) == paper + conv_bn(16, 32, 1) + conv_bn(32, 64, 1)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_blocks_start_as_the_identity() -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": "resnet", "blocks": [1], "channels": 4}, in_shape=(4, 8, 8), out_features=2).eval()
    block = net.stages[0][0]
    x = torch.rand(3, 4, 8, 8)  # non-negative: ReLU passes it unchanged
    torch.testing.assert_close(block(x), x)


def test_the_adding_problem_is_as_defined() -> None:
    data = DATASETS.build({"name": "adding", "length": 50, "size": 4000})
    x = torch.cat([data.train.x, data.val.x, data.test.x]).double() * torch.tensor(data.x_std) + torch.tensor(data.x_mean)  # in its own units
    y = torch.cat([data.train.y, data.val.y, data.test.y]) * data.y_std[0] + data.y_mean[0]
    assert x.shape == (4000, 50, 2) and data.kind == "sequence" and data.task == "regression"
    markers = x[..., 1]
    markers = markers.round()
    assert torch.all(markers.sum(1) == 2) and torch.all(markers[:, :25].sum(1) == 1)
    torch.testing.assert_close(y[:, 0].double(), (x[..., 0] * markers).sum(1), rtol=1e-5, atol=1e-5)
    # answering the mean: MSE is the variance of a sum of two U(0,1), 1/6
    assert abs(float(y.var()) - 1 / 6) < 0.01
    assert torch.equal(DATASETS.build({"name": "adding", "length": 50, "size": 4000}).test.x, data.test.x)  # seeded


def test_an_lstm_beats_the_mean_on_a_short_adding_problem(train_run, one_torch_thread) -> None:
    summary, run = train_run("model=lstm", "model.hidden=32", "data=adding", "data.length=20", "data.size=4000", "optim.lr=3e-3", "trainer.max_epochs=8", "trainer.device=cpu")
    assert summary["data"] == "adding" and summary["task"] == "regression"
    assert summary["test"]["rmse"] ** 2 < 0.167 / 3, summary["test"]
    assert metrics(run)[-1]["val_r2"] > 0.6


@pytest.mark.slow
@pytest.mark.skipif(not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").exists(), reason="no local copy of the MNIST test files")
def test_recipe_resnet_mnist_reaches_its_accuracy_on_the_t10k_images(train_run, one_torch_thread) -> None:
    """recipe=resnet_mnist on the t10k files: the number its header states (>= 0.985; measured 0.991)."""
    summary, _ = train_run("recipe=resnet_mnist", f"data.root={MNIST_TEST}", "data.download=false", "trainer.device=cpu")
    assert summary["test"]["accuracy"] >= 0.985, summary["test"]
