"""Shared building blocks: activations and weight initialisation schemes."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import nn

from dltrain.registry import Registry
from dltrain.schema import Choice, NonNegative, Positive

ACTIVATIONS = Registry("activation")
INITS = Registry("init")

for _name, _cls, _help in [
    ("sigmoid", nn.Sigmoid, "logistic 1/(1+e^-x); saturates, the classic choice"),
    ("tanh", nn.Tanh, "hyperbolic tangent; zero-centred, saturates"),
    ("relu", nn.ReLU, "max(0, x); the default for deep nets"),
    ("leaky_relu", nn.LeakyReLU, "ReLU with a small slope (0.01) for x < 0"),
    ("elu", nn.ELU, "exponential linear unit; smooth for x < 0"),
    ("gelu", nn.GELU, "Gaussian error linear unit (transformers)"),
    ("silu", nn.SiLU, "x * sigmoid(x), a.k.a. swish"),
    ("softplus", nn.Softplus, "log(1 + e^x), a smooth ReLU"),
    ("selu", nn.SELU, "scaled ELU for self-normalising nets"),
]:
    ACTIVATIONS.register(_name, help=_help)(_cls)

Activation = Annotated[str, Choice(ACTIVATIONS)]


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for a registered name."""
    return ACTIVATIONS.get(name, "model.activation").fn()


def _weights(model: nn.Module):
    """The weight matrices and kernels an init scheme applies to (not biases, not norm layers)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            yield module.weight
        elif isinstance(module, nn.RNNBase):
            for name, p in module.named_parameters():
                if name.startswith("weight"):
                    yield p


def _biases(model: nn.Module):
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.RNNBase)):
            for name, p in module.named_parameters(recurse=False):
                if name.startswith("bias"):
                    yield p


def _init(fn):
    """Wrap a per-tensor init into a model-level init that also zeroes biases."""

    def apply(model: nn.Module) -> None:
        with torch.no_grad():
            for w in _weights(model):
                fn(w)
            for b in _biases(model):
                b.zero_()

    return apply


@INITS.register("default", help="PyTorch's own per-layer defaults (Kaiming-uniform with a=sqrt(5))")
def default_init():
    return lambda model: None


@INITS.register("xavier_uniform", help="Glorot & Bengio 2010, uniform; suits tanh/sigmoid")
def xavier_uniform(gain: Positive = 1.0):
    return _init(lambda w: nn.init.xavier_uniform_(w, gain=gain))


@INITS.register("xavier_normal", help="Glorot & Bengio 2010, normal; suits tanh/sigmoid")
def xavier_normal(gain: Positive = 1.0):
    return _init(lambda w: nn.init.xavier_normal_(w, gain=gain))


Nonlinearity = Literal["relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu"]
FanMode = Literal["fan_in", "fan_out"]


@INITS.register("kaiming_uniform", help="He et al. 2015, uniform; suits ReLU")
def kaiming_uniform(nonlinearity: Nonlinearity = "relu", mode: FanMode = "fan_in", a: NonNegative = 0.0):
    return _init(lambda w: nn.init.kaiming_uniform_(w, a=a, mode=mode, nonlinearity=nonlinearity))


@INITS.register("kaiming_normal", help="He et al. 2015, normal; suits ReLU")
def kaiming_normal(nonlinearity: Nonlinearity = "relu", mode: FanMode = "fan_in", a: NonNegative = 0.0):
    return _init(lambda w: nn.init.kaiming_normal_(w, a=a, mode=mode, nonlinearity=nonlinearity))


@INITS.register("orthogonal", help="Saxe et al. 2014; orthogonal matrices, good for RNNs")
def orthogonal(gain: Positive = 1.0):
    return _init(lambda w: nn.init.orthogonal_(w, gain=gain))


@INITS.register("normal", help="N(0, std^2) for every weight (the textbook small-random init)")
def normal(std: Positive = 0.01):
    return _init(lambda w: nn.init.normal_(w, 0.0, std))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

