"""Every registered component, parametrized over its registry (timm style): a new entry is tested
the day it is registered. Runs are tiny (a few dozen steps) and go through `train` in-process.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import own_data
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from sklearn.metrics import accuracy_score, mean_absolute_error, mean_squared_error, r2_score
from torch import nn

from dltrain.config import learns_by_rule, validate
from dltrain.data import DATASETS, DataBundle, Split
from dltrain.data.base import data_kind, data_task
from dltrain.engine.rundir import load_weights, weights_sha256
from dltrain.errors import UserError
from dltrain.losses import LOSSES
from dltrain.models import MODELS
from dltrain.models.layers import ACTIVATIONS, INITS
from dltrain.optim import OPTIMIZERS, SCHEDULES
from dltrain.regularization import REGULARIZERS, WeightPenalty
from dltrain.tasks import TASKS
from dltrain.tasks.supervised import SupervisedTask
from tests.conftest import MNIST_TEST  # noqa: E402

LOCAL_FILES = {"mnist": MNIST_TEST}  # file-backed datasets with a local copy for tests

DATA_FOR_KIND = {"image": "digits", "sequence": "sine", "table": "iris", "tokens": "reverse", "text": "text"}
DATA_FOR_TASK = {"classification": "digits", "regression": "diabetes", "forecasting": "sine"}
SHAPE_FOR_KIND = {"image": (1, 8, 8), "sequence": (12, 2), "table": (6,), "tokens": (6,), "text": (6,)}
DATA_ARGS = {"sine": ("data.length=600", "data.batch_size=32"), "iris": ("data.batch_size=16",), "reverse": ("data.size=2000", "data.length=5"), "text": (*own_data.overrides("text"), "data.batch_size=16")}
# Pin everything a test does not vary, so changed defaults in configs/ do not change the tests.
BASE = ("trainer=default", "trainer.device=cpu", "sched=none", "reg=[none]", "init=default", "logger=csv", "seed=0")
SMALL = {"hidden": 16, "channels": 4, "batchnorm": False, "dropout": 0.0}


def small(model: str, **overrides: Any) -> dict[str, Any]:
    """Tiny values for whichever size/regularization keys `model` has."""
    params = MODELS.get(model).params()
    listed = {k for k, p in params.items() if getattr(p.annotation, "__origin__", None) is list}  # a DBN's hidden: [16]
    return {**{k: [v] if k in listed else v for k, v in SMALL.items() if k in params}, **overrides}


def setup(model: str = "mlp", data: str = "digits", *extra: str, epochs: int | None = 2) -> list[str]:
    """Overrides for a tiny, fully pinned run (later overrides win; epochs=None keeps the trainer preset's)."""
    model_args = [f"model.{k}={str(v).lower()}" for k, v in small(model).items()]
    pinned = [*BASE, *([f"trainer.max_epochs={epochs}"] if epochs else [])]
    optim = "optim=rule" if learns_by_rule(MODELS.get(model), {"name": model}) else "optim=adam"  # the perceptron's rule, an RBF's solve
    return [*pinned, f"model={model}", *model_args, f"data={data}", *DATA_ARGS.get(data, ()), optim, *extra]


def metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def assert_learns(run_dir: Path, factor: float = 0.95) -> None:
    rows = metrics(run_dir)
    first, last = rows[0]["train_loss"], rows[-1]["train_loss"]
    assert math.isfinite(last) and last < factor * first, f"train_loss {first:.4g} -> {last:.4g}"


def weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_weights(run_dir / "checkpoints" / f"{which}.safetensors")


def matrix_norm2(state: dict[str, torch.Tensor]) -> float:
    return sum(v.pow(2).sum().item() for v in state.values() if v.dim() > 1)


@pytest.fixture
def built(monkeypatch) -> dict[str, list[tuple[dict, Any]]]:
    """Records (config, object) for every model and loss that `train` builds."""
    seen: dict[str, list[tuple[dict, Any]]] = {"model": [], "loss": []}
    for kind, registry in (("model", MODELS), ("loss", LOSSES)):

        def spy(cfg, key=None, _original=registry.build, _kind=kind, **context):
            obj = _original(cfg, key, **context)
            seen[_kind].append((dict(cfg), obj))
            return obj

        monkeypatch.setattr(registry, "build", spy)
    return seen


# --- models ---------------------------------------------------------------------------------

MODEL_DATA = [(m, DATA_FOR_KIND[k]) for m in MODELS.names() for k in MODELS.get(m).meta["inputs"]]


def adversarial(model: str) -> bool:
    """Models trained in several phases (a GAN): no single training loss has to fall."""
    task = MODELS.get(model).meta.get("task")
    return bool(task) and len(TASKS.get(task).fn.phases) > 1


@pytest.mark.parametrize(("model", "data"), MODEL_DATA)
def test_model_learns_on_compatible_data(train_run, model: str, data: str) -> None:
    summary, run = train_run(*setup(model, data, "optim.lr=0.01", epochs=3))
    assert (summary["model"], summary["data"], summary["epochs"]) == (model, data, 3)
    # a closed-form solve (an RBF network's lstsq) takes the whole training split in one step per epoch
    net = MODELS.build({"name": model, **small(model)}, in_shape=SHAPE_FOR_KIND[DATASETS.get(data).meta["kind"]], out_features=2, num_words=50)
    assert summary["steps"] == 3 if getattr(net, "full_batch", False) else summary["steps"] >= 20
    if adversarial(model) or (MODELS.get(model).meta.get("task") == "rbm" and data != "digits"):
        # tests/test_generative.py measures GANs by their samples; a Gaussian RBM on 4 iris features
        # barely lowers its reconstruction error (tests/test_energy_models.py trains one on 30 features)
        assert all(math.isfinite(v) for row in metrics(run) for k, v in row.items() if k.endswith("_loss"))
    else:
        assert_learns(run, 0.9)


def models_for(kind: str) -> list[str]:
    return [m for m in MODELS.names() if kind in MODELS.get(m).meta["inputs"]]


@pytest.mark.parametrize("model", models_for("image"))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 28, 28), (5, 8, 8), (2, 9, 13)])
def test_image_models_take_any_size_and_channels(model: str, shape: tuple[int, ...]) -> None:
    net = MODELS.build({"name": model, **small(model)}, in_shape=shape, out_features=5)
    if MODELS.get(model).meta.get("task") == "rbm":  # an RBM maps inputs to its hidden units' probabilities
        assert net(torch.randn(3, *shape)).shape == (3, SMALL["hidden"])
    elif MODELS.get(model).meta.get("family") != "generative":
        assert net(torch.randn(3, *shape)).shape == (3, 5)
    elif adversarial(model):  # generator: codes -> images; discriminator: images -> one logit each
        images = net.generate(torch.randn(3, net.latent_dim))
        assert images.shape == (3, *shape) and net.discriminate(images).shape == (3,)
    else:  # autoencoders: images -> reconstructions of the same shape
        assert net(torch.randn(3, *shape)).shape == (3, *shape)


@pytest.mark.parametrize("model", models_for("sequence"))
def test_sequence_models_forward(model: str) -> None:
    net = MODELS.build({"name": model, **small(model)}, in_shape=(20, 3), out_features=2)
    assert net(torch.randn(4, 20, 3)).shape == (4, 2)


@pytest.mark.parametrize("model", models_for("table"))
def test_table_models_forward(model: str) -> None:
    net = MODELS.build({"name": model, **small(model)}, in_shape=(7,), out_features=3)
    assert net(torch.randn(4, 7)).shape == (4, SMALL["hidden"] if MODELS.get(model).meta.get("task") == "rbm" else 3)


@pytest.mark.parametrize("model", [m for m in MODELS.names() if "kernel_size" in MODELS.get(m).params()])
@pytest.mark.parametrize(("shape", "layers", "kernel_size"), [((1, 28, 28), 3, 4), ((1, 8, 8), 4, 2)])
def test_conv_models_take_even_kernels(model: str, shape: tuple[int, ...], layers: int, kernel_size: int) -> None:
    net = MODELS.build({"name": model, **small(model), "layers": layers, "kernel_size": kernel_size}, in_shape=shape, out_features=5)
    assert net(torch.randn(2, *shape)).shape == (2, 5)


@pytest.mark.parametrize("model", [m for m in MODELS.names() if "bidirectional" in MODELS.get(m).params()])
def test_bidirectional_head_reads_both_final_states(model: str) -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": model, **small(model), "hidden": 8, "layers": 2, "bidirectional": True}, in_shape=(7, 3), out_features=2)
    rnn = next(m for m in net.modules() if isinstance(m, nn.RNNBase))
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    assert rnn.bidirectional and head.in_features == 16
    seen: dict[str, Any] = {}
    rnn.register_forward_hook(lambda m, inp, out: seen.update(h=out[1][0] if isinstance(out[1], tuple) else out[1]))
    head.register_forward_hook(lambda m, inp, out: seen.update(head_in=inp[0]))
    net.eval()
    assert net(torch.randn(5, 7, 3)).shape == (5, 2)
    # h_n[-2] is the forward direction after the last step, h_n[-1] the backward one after the first
    assert torch.allclose(seen["head_in"], torch.cat([seen["h"][-2], seen["h"][-1]], dim=1), atol=1e-6)


@pytest.mark.parametrize("model", [m for m in MODELS.names() if {"batchnorm", "dropout"} <= set(MODELS.get(m).params())])
def test_batchnorm_and_dropout_variants(model: str) -> None:
    shape = SHAPE_FOR_KIND[MODELS.get(model).meta["inputs"][0]]
    torch.manual_seed(0)
    net = MODELS.build({"name": model, **small(model, batchnorm=True, dropout=0.5)}, in_shape=shape, out_features=3)
    plain = MODELS.build({"name": model, **small(model)}, in_shape=shape, out_features=3)
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in net.modules())
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in plain.modules())
    x = torch.randn(16, *shape)
    net.train()
    assert not torch.allclose(net(x), net(x))  # dropout is active in training
    net.eval()
    assert torch.equal(net(x), net(x))


@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_every_activation_trains_an_mlp(activation: str) -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": "mlp", **small("mlp"), "layers": 2, "activation": activation}, in_shape=(4,), out_features=3)
    assert sum(type(m) is ACTIVATIONS.get(activation).fn for m in net.modules()) == 2
    x = torch.randn(128, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


# --- optimizers and schedules ---------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_builds_with_its_defaults(name: str) -> None:
    defaults = OPTIMIZERS.get(name).defaults()
    optimizer = OPTIMIZERS.build({"name": name}, params=nn.Linear(3, 2).parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == defaults["lr"]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 8


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_optimizer_lowers_the_loss(train_run, name: str) -> None:
    model = next(e.name for e in MODELS if e.meta.get("rule")) if OPTIMIZERS.get(name).meta.get("rule") else "mlp"  # optim=rule: a model's own rule
    summary, run = train_run(*setup(model, "digits", f"optim={name}", epochs=3))
    assert_learns(run, 0.9)
    if OPTIMIZERS.get(name).defaults().get("full_batch"):
        assert summary["steps"] == 3  # one step on the whole training set per epoch


def cosine(b: float, k: float, total: float, floor: float = 0.0) -> float:
    return b * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * k / total)))


def _close(got: list[float], expected: list[float]) -> None:
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-9)


def _onecycle(lrs: list[float], b: float) -> None:
    # warms up to 10 b within the first 30% of steps, then anneals far below b
    assert lrs[0] > 5 * b and max(lrs) <= 10 * b
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.01 * b


def _plateau(lrs: list[float], b: float) -> None:
    # only ever halved, never raised
    assert all(any(math.isclose(lr, b * 0.5**k, rel_tol=1e-5) for k in range(5)) for lr in lrs)
    assert lrs == sorted(lrs, reverse=True)


B = 0.05  # base learning rate of the schedule runs
# sched name -> (overrides, check(lr after each of 4 epochs, optimizer steps per epoch))
SCHEDULE_CASES: dict[str, tuple[list[str], Callable[[list[float], int], None]]] = {
    "none": ([], lambda lrs, spe: _close(lrs, [B] * 4)),
    "step": (["sched.step_size=2", "sched.gamma=0.5"], lambda lrs, spe: _close(lrs, [B, B / 2, B / 2, B / 4])),
    "exponential": (["sched.gamma=0.5"], lambda lrs, spe: _close(lrs, [B / 2, B / 4, B / 8, B / 16])),
    "cosine": (["sched.min_lr_ratio=0.1"], lambda lrs, spe: _close(lrs, [cosine(B, k, 4, 0.1) for k in (1, 2, 3, 4)])),
    "warmup_cosine": (
        ["sched.warmup_epochs=2", "sched.min_lr_ratio=0"],
        lambda lrs, spe: _close(lrs, [B * (spe + 1) / (2 * spe), B, B / 2, 0.0]),
    ),
    "onecycle": (["sched.max_lr_ratio=10", "sched.pct_start=0.3"], lambda lrs, spe: _onecycle(lrs, B)),
    "plateau": (["sched.patience=0", "sched.factor=0.5"], lambda lrs, spe: _plateau(lrs, B)),
}


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_sets_the_learning_rate(train_run, name: str) -> None:
    overrides, check = SCHEDULE_CASES.get(name, ([], None))
    summary, run = train_run(*setup("mlp", "digits", "optim=sgd", f"optim.lr={B}", f"sched={name}", *overrides, epochs=4))
    lrs = [row["lr"] for row in metrics(run)]
    assert len(lrs) == 4 and all(math.isfinite(lr) and lr >= 0 for lr in lrs)
    assert check is not None, f"add an lr expectation for sched={name} to SCHEDULE_CASES"
    check(lrs, summary["steps"] // 4)
    assert_learns(run)


# --- losses ---------------------------------------------------------------------------------

LOSS_TASKS = [(name, task) for name in LOSSES.names() for task in LOSSES.get(name).meta["tasks"]]


@pytest.mark.parametrize(("loss", "task"), LOSS_TASKS)
def test_loss_trains_on_each_task_it_declares(train_run, loss: str, task: str) -> None:
    model = next((e.name for e in MODELS if e.meta.get("task") == task and task not in DATA_FOR_TASK), "mlp")  # generative tasks have their model
    data = DATA_FOR_TASK.get(task) or DATA_FOR_KIND[MODELS.get(model).meta["inputs"][0]]  # a generative or seq2seq task: its model's data
    summary, run = train_run(*setup(model, data, f"loss={loss}", "optim.lr=0.01", epochs=3))
    assert summary["task"] == task
    if adversarial(model):
        assert all(math.isfinite(v) for row in metrics(run) for k, v in row.items() if k.endswith("_loss"))
    else:
        assert_learns(run, 0.95)


def test_loss_definitions() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(20, 4), torch.randint(0, 4, (20,))
    one_hot = F.one_hot(y, 4).float()
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(LOSSES.build({"name": "nll"})(logits, y), ce)
    assert torch.allclose(LOSSES.build({"name": "cross_entropy"})(logits, y), ce)
    assert torch.allclose(LOSSES.build({"name": "kl_div", "label_smoothing": 0.0})(logits, one_hot), ce, atol=1e-6)
    assert torch.allclose(LOSSES.build({"name": "bce"})(logits, one_hot), F.binary_cross_entropy_with_logits(logits, one_hot))
    out, target = torch.randn(30, 2), torch.randn(30, 2)
    mse = F.mse_loss(out, target)
    assert torch.allclose(LOSSES.build({"name": "rmse"})(out, target), mse.sqrt(), atol=1e-6)
    assert torch.allclose(LOSSES.build({"name": "mae"})(out, target), (out - target).abs().mean())


# --- initialisation -------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS.names())
@pytest.mark.parametrize("init", INITS.names())
def test_init_sets_every_weight_and_zeroes_biases(init: str, model: str) -> None:
    shape = SHAPE_FOR_KIND[MODELS.get(model).meta["inputs"][0]]
    torch.manual_seed(0)
    net = MODELS.build({"name": model, **small(model)}, in_shape=shape, out_features=3, num_words=50)  # num_words: a text model's vocabulary
    before = {k: v.clone() for k, v in net.state_dict().items()}
    INITS.build({"name": init})(net)
    after = net.state_dict()
    embeddings = {f"{name}.weight" for name, m in net.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}  # keep torch's N(0, 1)
    weights = {k: v for k, v in net.named_parameters() if k not in embeddings}
    if init == "default":
        assert all(torch.equal(before[k], after[k]) for k in before)
        return
    for k, v in after.items():
        if v.dim() > 1 and k in weights and k not in getattr(net, "fitted", ()):  # parameters, not buffers (an RBM's chains); an RBF network's centres come from k-means
            assert not torch.equal(before[k], v), f"{k} unchanged by init={init}"
        elif k.rsplit(".", 1)[-1].startswith("bias"):
            assert torch.count_nonzero(v) == 0, f"{k} not zeroed by init={init}"


FAN_IN, FAN_OUT = 400, 300
EXPECTED_STD = {
    "normal": 0.01,
    "xavier_uniform": math.sqrt(2 / (FAN_IN + FAN_OUT)),
    "xavier_normal": math.sqrt(2 / (FAN_IN + FAN_OUT)),
    "kaiming_uniform": math.sqrt(2 / FAN_IN),
    "kaiming_normal": math.sqrt(2 / FAN_IN),
    "orthogonal": math.sqrt(1 / FAN_IN),  # orthonormal rows of length 1 over FAN_IN entries
}


@pytest.mark.parametrize("init", [n for n in INITS.names() if n != "default"])
def test_init_statistics(init: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    INITS.build({"name": init})(layer)
    w = layer.weight.detach().double()
    assert init in EXPECTED_STD, f"add the expected std of init={init}"
    assert w.std().item() == pytest.approx(EXPECTED_STD[init], rel=0.03)
    assert abs(w.mean().item()) < 0.05 * EXPECTED_STD[init]
    if init.endswith("uniform"):  # bounded at sqrt(3) std, and fills the interval
        bound = math.sqrt(3) * EXPECTED_STD[init]
        assert bound * 0.99 < w.abs().max().item() <= bound
    if init == "orthogonal":
        assert torch.allclose(w @ w.T, torch.eye(FAN_OUT, dtype=w.dtype), atol=1e-5)


def test_orthogonal_square_layer_and_gain() -> None:
    layer = nn.Linear(32, 32)
    INITS.build({"name": "orthogonal", "gain": 2.0})(layer)
    w = layer.weight.detach().double()
    assert torch.allclose(w @ w.T, 4 * torch.eye(32, dtype=w.dtype), atol=1e-5)
    assert torch.allclose(w.T @ w, 4 * torch.eye(32, dtype=w.dtype), atol=1e-5)


# --- regularizers ---------------------------------------------------------------------------

# How a model/loss key that a regularizer sets shows in the built object.
MODEL_EFFECT = {
    "dropout": lambda net, p: any(isinstance(m, nn.Dropout) and m.p == p for m in net.modules()),
    "batchnorm": lambda net, on: any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()) == on,
}
LOSS_EFFECT = {"label_smoothing": lambda fn, eps: getattr(fn, "label_smoothing", getattr(fn, "eps", None)) == eps}


@pytest.mark.parametrize("name", REGULARIZERS.names())
def test_regularizer_composes_trains_and_reaches_its_target(train_run, built, name: str) -> None:
    summary, run = train_run(*setup("mlp", "digits", "loss=cross_entropy", f"reg=[{name}]", epochs=3))
    assert_learns(run, 0.9)
    reg = REGULARIZERS.build({"name": name})
    model_cfg, net = built["model"][-1]
    loss_cfg, loss_fn = built["loss"][-1]
    for key, value in reg.model.items():
        assert model_cfg[key] == value
        assert MODEL_EFFECT[key](net, value), f"reg={name}: model.{key}={value} not in the built model"
    for key, value in reg.loss.items():
        assert loss_cfg[key] == value
        assert LOSS_EFFECT[key](loss_fn, value), f"reg={name}: loss.{key}={value} not in the built loss"


def test_regularizer_defaults_leave_the_model_alone(train_run, built) -> None:
    train_run(*setup("mlp", "digits", "loss=cross_entropy", "trainer.limit_train_batches=2", epochs=1))
    _, net = built["model"][-1]
    assert not MODEL_EFFECT["batchnorm"](net, True) and not any(isinstance(m, nn.Dropout) for m in net.modules())
    assert built["loss"][-1][1].label_smoothing == 0.0


def test_weight_penalties_equal_hand_computed_sums() -> None:
    torch.manual_seed(0)
    net = MODELS.build({"name": "mlp", "hidden": 8, "layers": 2, "batchnorm": True, "dropout": 0.0}, in_shape=(5,), out_features=3)
    mats = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]  # not biases, not batch-norm scales
    l1 = sum(w.abs().sum() for w in mats).item()
    l2 = sum(w.pow(2).sum() for w in mats).item()

    def penalty(*cfgs: dict) -> WeightPenalty:
        return WeightPenalty(net, [REGULARIZERS.build(c) for c in cfgs])

    assert penalty({"name": "l1", "weight": 0.1})().item() == pytest.approx(0.1 * l1, rel=1e-5)
    assert penalty({"name": "l2", "weight": 0.2})().item() == pytest.approx(0.2 * l2, rel=1e-5)
    elastic = penalty({"name": "elastic_net", "l1": 0.1, "l2": 0.2})
    assert elastic().item() == pytest.approx(0.1 * l1 + 0.2 * l2, rel=1e-5)
    assert penalty({"name": "l1", "weight": 0.1}, {"name": "l2", "weight": 0.2})().item() == pytest.approx(elastic().item(), rel=1e-6)
    assert not penalty({"name": "dropout"}) and not penalty()
    elastic().backward()  # the gradient of l1|w| + l2 w^2 is l1 sign(w) + 2 l2 w
    assert torch.allclose(mats[0].grad, 0.1 * mats[0].sign() + 0.4 * mats[0], atol=1e-6)


def test_l2_with_dropout_shrinks_weights_and_keeps_dropout(train_run, built, tmp_path) -> None:
    train_run(*setup("mlp", "digits", "reg=[dropout]", "reg.dropout.p=0.2"), run_dir=tmp_path / "plain")
    _, plain_net = built["model"][-1]
    train_run(*setup("mlp", "digits", "reg=[l2,dropout]", "reg.dropout.p=0.2", "reg.l2.weight=0.01"), run_dir=tmp_path / "l2")
    _, l2_net = built["model"][-1]
    for net in (plain_net, l2_net):
        assert MODEL_EFFECT["dropout"](net, 0.2)
    assert matrix_norm2(weights(tmp_path / "l2")) < 0.8 * matrix_norm2(weights(tmp_path / "plain"))


def test_l1_penalty_reaches_training(train_run, tmp_path) -> None:
    plain, _ = train_run(*setup("mlp", "digits"), run_dir=tmp_path / "plain")
    l1, _ = train_run(*setup("mlp", "digits", "reg=[l1]", "reg.l1.weight=0.001"), run_dir=tmp_path / "l1")
    abs_sum = lambda state: sum(v.abs().sum().item() for v in state.values() if v.dim() > 1)  # noqa: E731
    assert abs_sum(weights(tmp_path / "l1")) < 0.9 * abs_sum(weights(tmp_path / "plain"))
    assert plain["weights_sha256"] != l1["weights_sha256"]


def test_batchnorm_survives_a_last_batch_of_one(train_run) -> None:
    # iris: 150 -> 30 test, 12 val, 108 train = 107 + 1
    summary, _ = train_run(*setup("mlp", "iris", "reg=[batchnorm]", "data.batch_size=107", epochs=1))
    assert summary["epochs"] == 1


# --- datasets -------------------------------------------------------------------------------


def build_data(name: str, **params: Any) -> DataBundle:
    if name in own_data.SOURCES:  # a user's own data: the sample file of its kind
        params = {**own_data.params(name), **params}
    elif "root" in DATASETS.get(name).params():
        params = {"root": str(LOCAL_FILES[name]), "download": False, **params}
    return DATASETS.build({"name": name, **params})


def rows(split: Split) -> set[bytes]:
    x = split.x.reshape(len(split), -1).numpy()
    y = split.y.reshape(len(split), -1).numpy().astype(np.float32)
    return {a.tobytes() + b.tobytes() for a, b in zip(x, y, strict=True)}


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_builds_disjoint_normalised_seeded_splits(name: str, tmp_path) -> None:
    entry = DATASETS.get(name)
    if "download" in entry.params():
        if name not in LOCAL_FILES:  # no local copy: without download it is a one-line UserError
            with pytest.raises(UserError, match=r"data\.root=.*has no .* files and download is off"):
                DATASETS.build({"name": name, "root": str(tmp_path), "download": False})
            return
        if not LOCAL_FILES[name].is_dir():
            pytest.skip(f"{LOCAL_FILES[name]} is absent")
    data = build_data(name)
    own = own_data.params(name) if name in own_data.SOURCES else {}
    assert (data.name, data.kind, data.task) == (name, data_kind(entry, own), data_task(entry, own))
    assert min(len(data.train), len(data.val), len(data.test)) > 0
    assert len(data.train) > len(data.val) and len(data.train) > len(data.test)
    # normalised on train (token ids are not numbers to scale)
    x = data.train.x.double()
    assert data.kind in ("tokens", "text") or (abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05)
    # disjoint: a leaked split would share most rows (a few exact duplicates exist in some sets)
    train_rows = rows(data.train)
    for other in (data.val, data.test):
        assert len(rows(other) & train_rows) <= max(1, 0.01 * len(other))
    assert len(rows(data.val) & rows(data.test)) <= max(1, 0.01 * len(data.test))
    if data.task == "classification":
        assert data.train.y.dtype == torch.int64
        assert set(data.train.y.unique().tolist()) == set(range(data.num_classes))
        assert data.in_shape == tuple(data.train.x.shape[1:])
    # seeded: the same arguments give identical tensors
    again = build_data(name)
    for a, b in ((data.train, again.train), (data.val, again.val), (data.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    if "split_seed" in entry.params():
        other = build_data(name, split_seed=1)
        assert not torch.equal(other.test.y, data.test.y) or not torch.equal(other.test.x, data.test.x)


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if "test_fraction" in DATASETS.get(n).params()])
def test_dataset_fractions(name: str) -> None:
    if "download" in DATASETS.get(name).params() and not (name in LOCAL_FILES and LOCAL_FILES[name].is_dir()):
        pytest.skip("no local copy")
    a = build_data(name, val_fraction=0.25, test_fraction=0.2)
    b = build_data(name, val_fraction=0.1, test_fraction=0.4)
    sizes = lambda d: (len(d.train), len(d.val), len(d.test))  # noqa: E731
    n = sum(sizes(a))
    if a.task == "forecasting":  # windows cut from a chronological split
        assert len(b.test) > len(a.test) and len(b.val) < len(a.val)
        return
    assert sum(sizes(b)) == n
    assert abs(len(a.test) - 0.2 * n) <= 1 and abs(len(b.test) - 0.4 * n) <= 1
    assert abs(len(a.val) - 0.25 * (n - len(a.test))) <= 1


# --- tasks ----------------------------------------------------------------------------------


def bundle(task: str, y_train: torch.Tensor, **kwargs: Any) -> DataBundle:
    split = Split(torch.zeros(len(y_train), 3), y_train)
    return DataBundle(name="t", kind="table", task=task, train=split, val=split, test=split, **kwargs)


@pytest.mark.parametrize("name", [n for n in TASKS.names() if issubclass(TASKS.get(n).fn, SupervisedTask)])
def test_task_metrics_match_scikit_learn(name: str) -> None:
    cls = TASKS.get(name).fn
    g = torch.Generator().manual_seed(0)
    if "accuracy" in cls.higher_is_better:
        y = torch.randint(0, 4, (50,), generator=g)
        out = torch.randn(50, 4, generator=g)
        task = cls(bundle(name, y, num_classes=4), LOSSES.get("cross_entropy"), LOSSES.build({"name": "cross_entropy"}))
        expected = {"accuracy": accuracy_score(y, out.argmax(1)), "loss": F.cross_entropy(out, y).item()}
    else:
        mean, std = [10.0, -3.0], [2.0, 0.5]
        y = torch.randn(50, 2, generator=g)
        out = y + 0.7 * torch.randn(50, 2, generator=g)
        task = cls(bundle(name, y, y_mean=mean, y_std=std), LOSSES.get("mse"), LOSSES.build({"name": "mse"}))
        true, pred = (t.numpy() * np.array(std) + np.array(mean) for t in (y, out))
        expected = {
            "loss": F.mse_loss(out, y).item(),  # on standardised targets, as trained
            "rmse": math.sqrt(mean_squared_error(true, pred)),  # in data units
            "mae": mean_absolute_error(true, pred),
            "r2": r2_score(true, pred),
        }
    state = task.new_state(torch.device("cpu"))
    for o, t in zip(out.split(16), y.split(16), strict=True):  # uneven batches
        task.accumulate(state, o, t)
    got = task.compute(state)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key


# --- trainer features -----------------------------------------------------------------------


def test_accumulate_equals_a_larger_batch(train_run, tmp_path) -> None:
    common = setup("mlp", "digits", "optim=sgd", "optim.lr=0.1", epochs=1)
    big, _ = train_run(*common, "data.batch_size=32", "trainer.limit_train_batches=2", run_dir=tmp_path / "big")
    acc, _ = train_run(*common, "data.batch_size=16", "trainer.accumulate=2", "trainer.limit_train_batches=4", run_dir=tmp_path / "acc")
    assert big["steps"] == acc["steps"] == 2
    a, b = weights(tmp_path / "big"), weights(tmp_path / "acc")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    small_steps, _ = train_run(*common, "data.batch_size=16", "trainer.limit_train_batches=4", run_dir=tmp_path / "c")
    assert small_steps["weights_sha256"] != big["weights_sha256"]  # without accumulation the result differs


def test_accumulate_counts_optimizer_steps(train_run) -> None:
    summary, run = train_run(*setup("mlp", "digits", "data.batch_size=64", "trainer.accumulate=2", "optim.lr=0.01"))
    batches = math.ceil(summary["dataset"]["sizes"]["train"] / 64)
    assert batches % 2 == 1  # the last accumulation group is a single batch
    assert summary["steps"] == 2 * math.ceil(batches / 2)
    assert_learns(run)


def test_clip_grad_bounds_each_step(train_run, tmp_path) -> None:
    # One SGD step with the global gradient norm clipped to c moves the weights by exactly lr * c.
    common = setup("mlp", "digits", "optim=sgd", "optim.lr=0.05", "trainer.limit_train_batches=1", epochs=1)
    train_run(*common, "trainer.clip_grad=0.01", run_dir=tmp_path / "a")
    train_run(*common, "trainer.clip_grad=0.02", run_dir=tmp_path / "b")
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    # both steps point the same way, so w0 = 2 wa - wb and |wa - w0| = |wb - wa|
    step = math.sqrt(sum((wb[k].double() - wa[k].double()).pow(2).sum().item() for k in wa))
    assert step == pytest.approx(0.05 * 0.01, rel=0.01)
    via_reg, _ = train_run(*common, "reg=[grad_clip]", "reg.grad_clip.max_norm=0.01", run_dir=tmp_path / "r")
    assert via_reg["weights_sha256"] == weights_sha256(wa)


def test_clip_grad_one_trains(train_run) -> None:
    _, run = train_run(*setup("mlp", "digits", "trainer.clip_grad=1.0", epochs=3))
    assert_learns(run, 0.9)


def test_bf16_on_cpu(train_run, tmp_path) -> None:
    bf16, run = train_run(*setup("mlp", "digits", "trainer.precision=bf16"), run_dir=tmp_path / "bf16")
    fp32, _ = train_run(*setup("mlp", "digits"), run_dir=tmp_path / "fp32")
    assert bf16["precision"] == "bf16" and bf16["device"] == "cpu"
    assert_learns(run)
    assert bf16["weights_sha256"] != fp32["weights_sha256"]  # autocast really ran in bf16
    assert bf16["test"]["accuracy"] == pytest.approx(fp32["test"]["accuracy"], abs=0.1)


def test_overfit_preset_drives_the_loss_to_zero(train_run) -> None:
    summary, run = train_run(*setup("mlp", "digits", "trainer=overfit", "model.hidden=64", "optim.lr=0.01", epochs=None))
    rows = metrics(run)
    assert summary["epochs"] == len(rows) > 10
    assert rows[-1]["train_loss"] < 0.05
    assert rows[-1]["val_accuracy"] == 1.0  # validated on the same batches


def test_early_stopping(train_run) -> None:
    # min_delta larger than any loss: epoch 1 sets the mark, epoch 2 fails it, patience 1 stops.
    summary, run = train_run(*setup("mlp", "digits", "trainer.early_stop.patience=1", "trainer.early_stop.min_delta=100", epochs=6))
    assert summary["stopped_early"] is True
    assert summary["epochs"] == len(metrics(run)) == 2


def test_no_early_stopping_by_default(train_run) -> None:
    summary, _ = train_run(*setup("mlp", "digits", "trainer.early_stop.min_delta=100", epochs=3))
    assert summary["stopped_early"] is False and summary["epochs"] == 3


def test_limit_train_batches(train_run) -> None:
    summary, run = train_run(*setup("mlp", "digits", "trainer.limit_train_batches=5", epochs=3))
    assert summary["steps"] == 15
    assert [row["step"] for row in metrics(run)] == [5, 10, 15]


def evaluate_checkpoint(run_dir: Path, which: str) -> dict[str, float]:
    """Test loss and accuracy of a saved checkpoint, computed independently of the engine."""
    spec = validate(OmegaConf.load(run_dir / "config.yaml"))
    data = DATASETS.build(spec.data)
    net = MODELS.build(spec.model, in_shape=data.in_shape, out_features=data.num_classes)
    net.load_state_dict(weights(run_dir, which))
    net.eval()
    with torch.no_grad():
        out = net(data.test.x)
    return {"loss": F.cross_entropy(out, data.test.y).item(), "accuracy": (out.argmax(1) == data.test.y).double().mean().item()}


@pytest.mark.parametrize("which", ["best", "last"])
def test_test_ckpt_picks_the_checkpoint(train_run, which: str) -> None:
    # val = the 4 training batches: accuracy reaches 1.0 early and stays, so best (first 1.0) != last
    summary, run = train_run(
        *setup("mlp", "digits", "trainer=overfit", "model.hidden=64", "optim.lr=0.01", epochs=12),
        "trainer.checkpoint.monitor=val_accuracy", f"trainer.test_ckpt={which}",
    )
    assert summary["test_ckpt"] == which
    assert summary["best"]["epoch"] < summary["epochs"] == 12
    assert summary["best_weights_sha256"] != summary["weights_sha256"]
    assert weights_sha256(weights(run, "last")) == summary["weights_sha256"]
    assert weights_sha256(weights(run, "best")) == summary["best_weights_sha256"]
    expected, other = evaluate_checkpoint(run, which), evaluate_checkpoint(run, "last" if which == "best" else "best")
    assert summary["test"]["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert summary["test"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert summary["test"]["loss"] != pytest.approx(other["loss"], rel=1e-4)


def test_seed_decides_the_weights(train_run, tmp_path) -> None:
    common = setup("mlp", "digits", "trainer.limit_train_batches=3")
    a, _ = train_run(*common, "seed=1", run_dir=tmp_path / "a")
    b, _ = train_run(*common, "seed=1", run_dir=tmp_path / "b")
    c, _ = train_run(*common, "seed=2", run_dir=tmp_path / "c")
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["test"] == b["test"]
    assert c["weights_sha256"] != a["weights_sha256"]
    assert weights_sha256(weights(tmp_path / "a")) == a["weights_sha256"]
