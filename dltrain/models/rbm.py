"""Energy-based models: the restricted Boltzmann machine and the deep belief network.

The RBM learns by contrastive divergence (Hinton 2002), not back-propagation: `learn` applies
one CD-k (or persistent CD, Tieleman 2008) update per batch under ``optim=rule``, as
scikit-learn's ``BernoulliRBM`` does (the mean update over the batch times the learning rate).
The DBN (Hinton, Osindero & Teh 2006) is a stack of sigmoid layers whose weights come from
RBMs trained greedily one layer at a time (`fit_data`, before the first step), then fine-tuned
as a classifier by back-propagation like any other net.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dltrain.errors import ConfigError
from dltrain.models.base import MODELS
from dltrain.schema import NonNegativeInt, Positive, PositiveInt, Probability, Range

Visible = Literal["auto", "bernoulli", "gaussian"]


def resolve_visible(visible: str, in_shape: tuple[int, ...]) -> str:
    """auto: Bernoulli units for images (pixel intensities), Gaussian ones for other inputs."""
    return ("bernoulli" if len(in_shape) == 3 else "gaussian") if visible == "auto" else visible


class RBM(nn.Module):
    """v (visible) <-> h (hidden, Bernoulli): energy E(v, h) = -b.v - c.h - h.W.v for Bernoulli
    visible units in [0, 1]; Gaussian ones (unit variance, standardised inputs) add |v - b|^2 / 2
    in place of -b.v. `forward` maps an input to its hidden units' probabilities p(h=1 | v).

    Inputs arrive standardised, as the data gives them; `unit` (x * scale + shift, set from the
    data's pixel range by `fit_data`) turns them into Bernoulli visible intensities.
    """

    def __init__(self, visible_features: int, hidden: int, visible: str = "bernoulli", cd_k: int = 1, persistent: bool = False, chains: int = 64) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(visible_features, hidden)  # W and the hidden biases c: p(h=1 | v) = sigmoid(W v + c)
        nn.init.normal_(self.linear.weight, 0.0, 0.01)  # scikit-learn's start: N(0, 0.01^2), zero biases
        nn.init.zeros_(self.linear.bias)
        self.v_bias = nn.Parameter(torch.zeros(visible_features))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("chain", torch.zeros(chains, hidden))  # persistent CD: the fantasy particles' hidden states
        self.visible, self.cd_k, self.persistent = visible, cd_k, persistent

    # --- the model's conditionals ----------------------------------------------------------

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        v = self.flatten(x) * self.scale + self.shift
        return v.clamp(0, 1) if self.visible == "bernoulli" else v

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def h_bias(self) -> torch.Tensor:
        return self.linear.bias

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(v))

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        act = h @ self.weight + self.v_bias
        return torch.sigmoid(act) if self.visible == "bernoulli" else act

    def sample_visible(self, h: torch.Tensor) -> torch.Tensor:
        mean = self.visible_mean(h)
        return torch.bernoulli(mean) if self.visible == "bernoulli" else mean + torch.randn_like(mean)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) = -log sum_h exp(-E(v, h)), per example."""
        hidden_term = F.softplus(self.linear(v)).sum(-1)
        visible_term = v @ self.v_bias if self.visible == "bernoulli" else -0.5 * (v - self.v_bias).pow(2).sum(-1)
        return -visible_term - hidden_term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_probs(self.unit(x))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """One mean-field pass down and up: E[v | p(h | v)], in visible units."""
        return self.visible_mean(self(x))

    # --- learning ----------------------------------------------------------------------------

    def learn(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """One contrastive-divergence update from this batch (lr times the batch's mean statistics)."""
        self.cd_update(self.unit(x), lr)

    def cd_update(self, v_pos: torch.Tensor, lr: float) -> None:
        h_pos = self.hidden_probs(v_pos)
        if self.persistent:  # the chains go on from where the last update left them
            h = self.chain
        else:  # CD-k: the chains start at the data
            h = torch.bernoulli(h_pos)
        for step in range(self.cd_k):
            v_neg = self.sample_visible(h)
            h_neg = self.hidden_probs(v_neg)
            if step < self.cd_k - 1 or self.persistent:
                h = torch.bernoulli(h_neg)
        if self.persistent:
            self.chain.copy_(h)
        n_pos, n_neg = len(v_pos), len(v_neg)
        self.weight.add_(lr * (h_pos.T @ v_pos / n_pos - h_neg.T @ v_neg / n_neg))
        self.h_bias.add_(lr * (h_pos.mean(0) - h_neg.mean(0)))
        self.v_bias.add_(lr * (v_pos.mean(0) - v_neg.mean(0)))

    def fit_data(self, data, seed: int) -> None:
        """Bernoulli visible units read the data's pixel intensities: the unit transform from its range."""
        self.scale.fill_(1.0), self.shift.fill_(0.0)
        if self.visible == "bernoulli":
            scale, shift = unit_transform(data)
            self.scale.fill_(scale), self.shift.fill_(shift)

    # --- what it is measured by ----------------------------------------------------------------

    def pseudo_log_likelihood(self, v: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per example: D * log sigmoid(F(v~) - F(v)), v~ = v with one random unit flipped (1 - v_i);
        scikit-learn's `BernoulliRBM.score_samples`, the stochastic estimate of Besag's pseudo-likelihood."""
        i = torch.randint(0, v.shape[1], (len(v),), generator=generator, device=v.device)
        flipped = v.clone()
        rows = torch.arange(len(v), device=v.device)
        flipped[rows, i] = 1 - flipped[rows, i]
        return -v.shape[1] * F.softplus(-(self.free_energy(flipped) - self.free_energy(v)))


def unit_transform(data) -> tuple[float, float]:
    """(scale, shift) with x * scale + shift = the pixel intensity in [0, 1] of a standardised input."""
    if data.pixel_range is None:
        raise ConfigError("model.visible", "bernoulli", f"Bernoulli visible units need pixel intensities, and data={data.name} is not images; allowed: gaussian (standardised inputs)")
    lo, hi = data.pixel_range
    return data.x_std[0] / (hi - lo), (data.x_mean[0] - lo) / (hi - lo)


@MODELS.register("rbm", family="energy", inputs=("image", "table"), rule=True, task="rbm")
def rbm(
    in_shape: tuple[int, ...],
    out_features: int,
    hidden: PositiveInt = 256,
    visible: Visible = "auto",
    cd_k: PositiveInt = 1,
    persistent: bool = False,
    chains: PositiveInt = 64,
) -> RBM:
    """Restricted Boltzmann machine trained by contrastive divergence (CD-k) or persistent CD, not back-propagation."""
    return RBM(math.prod(in_shape), hidden, resolve_visible(visible, in_shape), cd_k, persistent, chains)


class DBN(nn.Module):
    """A deep belief net as a classifier: sigmoid layers (each an RBM's weights and hidden biases
    after greedy pretraining), then a linear output layer trained from the start by back-propagation."""

    def __init__(self, in_features: int, out_features: int, hidden: list[int], visible: str, cd_k: int, pretrain_epochs: int, pretrain_lr: float, pretrain_batch_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # fine-tuning only (Hinton et al. 2012)
        self.flatten = nn.Flatten()
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.head = nn.Linear(widths[-1], out_features)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))
        self.visible, self.cd_k = visible, cd_k
        self.pretrain_epochs, self.pretrain_lr, self.pretrain_batch_size = pretrain_epochs, pretrain_lr, pretrain_batch_size
        self.pretraining: list[dict] = []  # per layer, after fit_data: its RBM's metrics on the training split

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(x) * self.scale + self.shift
        if self.visible == "bernoulli":
            h = h.clamp(0, 1)
        for layer in self.layers:
            h = self.dropout(torch.sigmoid(layer(h)))
        return self.head(h)

    @torch.no_grad()
    def fit_data(self, data, seed: int) -> None:
        """Greedy layer-wise pretraining: layer i's RBM learns the training inputs as layer i-1
        represents them (its hidden probabilities), for `pretrain_epochs` epochs of CD-k each."""
        if self.visible == "bernoulli":
            scale, shift = unit_transform(data)
            self.scale.fill_(scale), self.shift.fill_(shift)
        if not self.pretrain_epochs:
            return
        generator = torch.Generator().manual_seed(seed)
        v = self.flatten(data.train.x).double() * self.scale.double() + self.shift.double()
        v = v.clamp(0, 1).float() if self.visible == "bernoulli" else v.float()
        self.pretraining = []
        for i, layer in enumerate(self.layers):
            rbm = RBM(layer.in_features, layer.out_features, self.visible if i == 0 else "bernoulli", self.cd_k)
            rbm.linear.weight.copy_(torch.randn(rbm.weight.shape, generator=generator) * 0.01)
            for _ in range(self.pretrain_epochs):
                order = torch.randperm(len(v), generator=generator)
                for batch in order.split(self.pretrain_batch_size):
                    rbm.cd_update(v[batch], self.pretrain_lr)
            metrics = {"layer": i + 1, "units": [layer.in_features, layer.out_features], "visible": rbm.visible, "reconstruction_error": float((rbm.visible_mean(rbm.hidden_probs(v)) - v).pow(2).mean())}
            if rbm.visible == "bernoulli":  # the one-unit-flip estimate needs binary units
                metrics["pseudo_log_likelihood"] = float(rbm.pseudo_log_likelihood(v, torch.Generator().manual_seed(0)).mean())
            self.pretraining.append(metrics)
            layer.weight.copy_(rbm.weight)
            layer.bias.copy_(rbm.h_bias)
            v = rbm.hidden_probs(v)  # the next layer learns this layer's representation


@MODELS.register("dbn", family="energy", inputs=("image", "table"))
def dbn(
    in_shape: tuple[int, ...],
    out_features: int,
    hidden: list[Annotated[int, Range(1)]] = [256, 256],  # noqa: B006  (a default, never mutated)
    visible: Visible = "auto",
    cd_k: PositiveInt = 1,
    pretrain_epochs: NonNegativeInt = 10,
    pretrain_lr: Positive = 0.05,
    pretrain_batch_size: PositiveInt = 32,
    dropout: Probability = 0.0,
) -> DBN:
    """Deep belief network: greedy layer-wise RBM pretraining (CD-k), then fine-tuned by back-propagation as a classifier."""
    if not hidden:
        raise ConfigError("model.hidden", hidden, "allowed: a list of one or more layer widths, e.g. [256,256]")
    return DBN(math.prod(in_shape), out_features, list(hidden), resolve_visible(visible, in_shape), cd_k, pretrain_epochs, pretrain_lr, pretrain_batch_size, dropout)
