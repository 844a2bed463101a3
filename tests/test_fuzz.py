"""Property: whatever overrides a user types, the outcome is a run or one line (UserError, exit
2), never a traceback. Overrides are generated from the config schema (the keys of the composed
config for the chosen components) and from the override grammar (+, ++, ~, sweeps, quoting,
interpolations, odd values). Everything up to the first step runs: the command-line checks,
validation, the data, the model (sized on torch's meta device), the loaders; the fast variant
stops before training (25 examples), the slow one trains the small ones for an epoch of one batch (150)."""

from __future__ import annotations

import string

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dltrain.errors import UserError  # noqa: E402

OFFLINE_DATA = ["digits", "iris", "wine", "breast_cancer", "diabetes", "sine", "mackey_glass"]  # the MNIST ones may download
GROUPS = {
    "model": ["mlp", "cnn", "rnn", "lstm", "gru", "autoencoder", "vae", "gan", "nosuch"],
    "data": [*OFFLINE_DATA, "nosuch"],
    "loss": ["cross_entropy", "nll", "bce", "kl_div", "mse", "rmse", "mae", "huber", "hinge", "wgan_gp"],
    "optim": ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lbfgs", "cg", "newton", "dcgan"],
    "sched": ["none", "step", "exponential", "cosine", "warmup_cosine", "plateau", "onecycle"],
    "init": ["default", "xavier_uniform", "kaiming_normal", "orthogonal", "normal"],
    "trainer": ["debug", "overfit"],
}
KEYS = [
    "model.hidden", "model.layers", "model.activation", "model.dropout", "model.batchnorm", "model.channels", "model.kernel_size",
    "model.bidirectional", "model.latent_dim", "model.arch", "model.conditional", "model.d_steps", "model.beta",
    "data.batch_size", "data.val_fraction", "data.test_fraction", "data.split_seed", "data.window", "data.horizon", "data.shift",
    "optim.lr", "optim.weight_decay", "optim.momentum", "optim.beta1", "optim.max_iter", "sched.gamma", "sched.step_size",
    "sched.warmup_epochs", "trainer.max_epochs", "trainer.accumulate", "trainer.clip_grad", "trainer.precision", "trainer.nan",
    "trainer.early_stop.patience", "trainer.checkpoint.monitor", "trainer.threads", "trainer.eval_batch_size", "seed", "task",
    "loss.label_smoothing", "loss.delta", "init.gain", "sweep.objective", "reg.l2.weight", "reg.dropout.p", "nosuch.key", "model.nosuch",
]
ATOMS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "1", "-1", "2", "64", "1e30", "1e-30", "inf", "-inf", "nan", "1e12", "3.5", "0.5", "0.999", "1.0"]),
    st.sampled_from(["true", "false", "null", "''", "\"\"", "relu", "tanh", "conv", "mlp", "bf16", "16", "skip", "val_loss", "[]", "{}"]),
    st.sampled_from(["[1,2]", "[64,64,64]", "[a,b]", "'a,b'", "${seed}", "${nosuch}", "${oc.env:HOME}", "a b", "[1,[2]]", "{a: 1}"]),
    st.text(alphabet=string.ascii_letters + string.digits + "_-.,[]{}()'\"=+~$:/ ", max_size=12),
)


@st.composite
def override_lines(draw) -> list[str]:
    lines = []
    for group in draw(st.lists(st.sampled_from(sorted(GROUPS)), max_size=3, unique=True)):
        lines.append(f"{group}={draw(st.sampled_from(GROUPS[group]))}")
    if draw(st.booleans()):
        lines.append(f"reg=[{','.join(draw(st.lists(st.sampled_from(['l1', 'l2', 'dropout', 'batchnorm', 'grad_clip', 'none', 'l9']), max_size=3)))}]")
    for _ in range(draw(st.integers(0, 4))):
        prefix = draw(st.sampled_from(["", "", "", "+", "++", "~"]))
        key = draw(st.sampled_from(KEYS))
        if prefix == "~":
            lines.append(f"~{key}")
            continue
        value = draw(ATOMS)
        if draw(st.integers(0, 9)) == 0:
            value = f"{value},{draw(ATOMS)}"  # a sweep without -m
        lines.append(f"{prefix}{key}={value}")
    if "data" not in {line.split("=")[0] for line in lines}:
        lines.append("data=digits")
    return lines


def attempt(lines: list[str], train: bool) -> str:
    """Everything a run does before (and, with `train`, for) its first step; 'ok' or the one-line error."""
    import torch

    from dltrain.composition import compose_checked
    from dltrain.config import validate
    from dltrain.data import DATASETS
    from dltrain.preflight import check_command_line
    from dltrain.training import check_data, check_model_size

    try:
        check_command_line(lines, multirun=False)
        cfg = compose_checked(lines)
        spec = validate(cfg)
        data = DATASETS.build(spec.data, key="data")
        check_data(data, spec)
        from dltrain.models import MODELS
        from dltrain.regularization import build_regularizers
        from dltrain.tasks import TASKS

        regs = list(build_regularizers(spec.reg).values())
        model_cfg = {**spec.model, **{k: v for r in regs for k, v in r.model.items()}}
        task_cls = TASKS.get(spec.task).fn
        shapes = dict(in_shape=data.in_shape, out_features=task_cls.out_features(data))
        check_model_size(model_cfg, shapes, torch.device("cpu"))
        with torch.device("meta"):
            size = sum(p.numel() for p in MODELS.build(model_cfg, key="model", **shapes).parameters())
        if train and size < 2_000_000:
            from omegaconf import OmegaConf
            from rich.console import Console

            from dltrain.training import train as run_training

            small = compose_checked([*lines, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "trainer.progress=none", "trainer.checkpoint.every_n_minutes=0"])
            import tempfile

            with tempfile.TemporaryDirectory() as run_dir:
                run_training(small, run_dir, Console(quiet=True), config_yaml=OmegaConf.to_yaml(small, resolve=False))
    except UserError as e:
        message = str(e)
        assert message and "\n" not in message.strip(), f"{lines}: a UserError of several lines: {message!r}"
        assert "Traceback" not in message
        return message
    return "ok"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(override_lines())
def test_generated_overrides_are_a_run_or_one_line(lines):
    attempt(lines, train=False)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], derandomize=True)
@given(override_lines())
def test_generated_overrides_train_or_are_one_line(one_torch_thread, lines):
    attempt(lines, train=True)


def test_the_generator_reaches_both_outcomes():
    """The property is not vacuous: the fixed examples below are one a run, one an error."""
    assert attempt(["data=digits", "model.hidden=8"], train=False) == "ok"
    assert "model.hiden" in attempt(["data=digits", "model.hiden=8"], train=False)
