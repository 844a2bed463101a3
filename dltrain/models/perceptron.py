"""Rosenblatt's perceptron and radial-basis-function networks: models with a learning rule of their own.

A model that learns by a rule rather than by back-propagation has a ``learn(x, y, lr)`` method
(called under ``torch.no_grad`` by ``optim=rule``, once per batch). A model whose starting point
depends on the data (an RBF network's centres, a DBN's pretrained layers) has
``fit_data(data, seed)``, called once with the run's DataBundle before the first step.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from dltrain.models.base import MODELS
from dltrain.schema import NonNegative, Positive, PositiveInt


class Perceptron(nn.Module):
    """One weight vector (and bias) per class; the prediction is the class of the largest score
    (a step output: the perceptron answers a class, not a probability).

    The learning rule (Rosenblatt 1958; multiclass as in Duda, Hart & Stork, ch. 5.12): on a
    mistake, the true class's weights move towards x and the wrongly predicted class's away from it,
    ``w_y += lr * x``, ``w_pred -= lr * x``; a correct answer changes nothing. `online`: one example
    after another in the batch's order (the classic rule); else the batch perceptron, the sum of
    the batch's mistakes' updates at once.
    """

    def __init__(self, in_features: int, classes: int, online: bool) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_features, classes)
        self.online = online
        nn.init.zeros_(self.linear.weight)  # the rule's own start; the scale of the weights never matters then
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(x))

    def learn(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        x = self.flatten(x).to(self.linear.weight.dtype)
        w, b = self.linear.weight, self.linear.bias
        if not self.online:
            pred = self.linear(x).argmax(-1)
            wrong = pred != y
            xs = x[wrong] * lr
            w.index_add_(0, y[wrong], xs).index_add_(0, pred[wrong], -xs)
            ones = torch.full((int(wrong.sum()),), lr, dtype=b.dtype, device=b.device) if xs.numel() else xs.new_zeros(0)
            b.index_add_(0, y[wrong], ones).index_add_(0, pred[wrong], -ones)
            return
        for xi, yi in zip(x, y.tolist(), strict=True):
            pred = int(torch.addmv(b, w, xi).argmax())
            if pred != yi:
                w[yi].add_(xi, alpha=lr)
                w[pred].sub_(xi, alpha=lr)
                b[yi] += lr
                b[pred] -= lr


@MODELS.register("perceptron", family="linear", inputs=("image", "table"), rule=True, task="classification")
def perceptron(in_shape: tuple[int, ...], out_features: int, online: bool = True) -> Perceptron:
    """Rosenblatt's perceptron: one linear unit per class with a step output, trained by the mistake-driven perceptron rule."""
    return Perceptron(math.prod(in_shape), out_features, online)


class RBFNetwork(nn.Module):
    """x -> Gaussian radial-basis activations exp(-|x - c_k|^2 / (2 s_k^2)) -> linear output layer.

    `fit_data` places the centres by k-means on the training inputs (scikit-learn's KMeans) and
    sets each width to the root-mean-square distance to its `neighbours` nearest other centres
    (Moody & Darken 1989), times `width_scale`. solver=lstsq: `learn` solves the output layer in
    closed form by (ridge-regularised) least squares on the batch it is given, the whole training
    split (one-hot class targets, or the standardised values); solver=gd: everything trains by
    back-propagation, the centres and widths too unless `trainable_centers` is false.
    """

    fitted = ("centers", "log_widths")  # set by fit_data from the training inputs, not by an init scheme

    def __init__(self, in_features: int, out_features: int, centers: int, solver: str, trainable_centers: bool, width_scale: float, neighbours: int, ridge: float) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.centers = nn.Parameter(torch.randn(centers, in_features), requires_grad=solver == "gd" and trainable_centers)
        self.log_widths = nn.Parameter(torch.zeros(centers), requires_grad=solver == "gd" and trainable_centers)
        self.linear = nn.Linear(centers, out_features)
        self.solver, self.width_scale, self.neighbours, self.ridge = solver, width_scale, neighbours, ridge
        self.full_batch = solver == "lstsq"  # the closed-form solve wants every training example at once

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        c = self.centers
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: matrix products (and ONNX-exportable), clamped at rounding error
        sq = (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min(0)
        return torch.exp(-0.5 * sq * torch.exp(-2 * self.log_widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.basis(x))

    @torch.no_grad()
    def fit_data(self, data, seed: int) -> None:
        from sklearn.cluster import KMeans

        flat = self.flatten(data.train.x).double().cpu().numpy()
        k = self.centers.shape[0]
        if k > len(flat):
            from dltrain.errors import ConfigError

            raise ConfigError("model.centers", k, f"k-means needs at least as many training examples ({len(flat)} here); allowed: 1 to {len(flat)}")
        kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(flat)
        centers = torch.as_tensor(kmeans.cluster_centers_)
        dist = torch.cdist(centers, centers)
        if k > 1:
            p = min(self.neighbours, k - 1)
            nearest = dist.topk(p + 1, largest=False).values[:, 1:]  # without the centre itself
            widths = nearest.pow(2).mean(1).sqrt()
            widths = torch.where(widths > 0, widths, widths[widths > 0].mean() if (widths > 0).any() else torch.ones(()))
        else:
            widths = torch.as_tensor(flat).std(0).norm().reshape(1).clamp_min(1e-3)
        self.centers.copy_(centers.to(self.centers))
        self.log_widths.copy_((widths * self.width_scale).log().to(self.log_widths))

    def learn(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        """The least-squares output layer for this batch (lr plays no part in a closed-form solve)."""
        phi = self.basis(x).double()
        design = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype, device=phi.device)], 1)
        out = self.linear.out_features
        target = torch.nn.functional.one_hot(y, out).double() if not y.is_floating_point() else y.double().reshape(len(y), out)
        gram = design.T @ design
        # ridge on the weights, not the bias: scaled by the Gram matrix's mean diagonal, so it is unit-free
        shift = self.ridge * gram.diagonal()[:-1].mean().clamp_min(1e-12)
        gram[range(len(gram) - 1), range(len(gram) - 1)] += shift
        solution = torch.linalg.solve(gram, design.T @ target)
        self.linear.weight.copy_(solution[:-1].T.to(self.linear.weight))
        self.linear.bias.copy_(solution[-1].to(self.linear.bias))


@MODELS.register("rbf", family="radial-basis", inputs=("image", "table"), rule=lambda cfg: cfg.get("solver", "lstsq") == "lstsq")
def rbf(
    in_shape: tuple[int, ...],
    out_features: int,
    centers: PositiveInt = 100,
    solver: Literal["lstsq", "gd"] = "lstsq",
    trainable_centers: bool = True,
    width_scale: Positive = 1.0,
    neighbours: PositiveInt = 2,
    ridge: NonNegative = 1e-6,
) -> RBFNetwork:
    """Radial-basis-function network: Gaussian units centred by k-means, a linear output solved by least squares (or gradient descent)."""
    return RBFNetwork(math.prod(in_shape), out_features, centers, solver, trainable_centers, width_scale, neighbours, ridge)
