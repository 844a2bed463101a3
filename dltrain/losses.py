"""Loss functions. Each takes ``(output, target)``; the task shapes the target.

Metadata on each entry: ``tasks`` it applies to; ``target`` — "index" (class labels) or
"dense" (one-hot for classification, values for regression); ``input`` — for dense losses in
classification, whether they compare raw "logits" or softmax "probs" with the one-hot target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dltrain.registry import Registry
from dltrain.schema import Positive, Probability

LOSSES = Registry("loss")

SUPERVISED = ("classification", "regression", "forecasting")
RECONSTRUCTION = ("autoencoder", "vae")


def smooth(one_hot: torch.Tensor, eps: float) -> torch.Tensor:
    """Label smoothing of a one-hot target: (1 - eps) * y + eps / K."""
    return one_hot if eps == 0 else one_hot * (1 - eps) + eps / one_hot.shape[-1]


@LOSSES.register("cross_entropy", tasks=("classification", "seq2seq"), target="index")
def cross_entropy(label_smoothing: Probability = 0.0) -> nn.Module:
    """Softmax cross-entropy on logits (optionally label-smoothed)."""
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


class PerceptronCriterion(nn.Module):
    """The multiclass perceptron criterion: the mean of max_j s_j - s_y, zero when every example is right."""

    def forward(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (scores.max(-1).values - scores.gather(-1, target.unsqueeze(-1)).squeeze(-1)).mean()


@LOSSES.register("perceptron", tasks=("classification",), target="index")
def perceptron() -> nn.Module:
    """The perceptron criterion (Duda, Hart & Stork): the top score's excess over the true class's."""
    return PerceptronCriterion()


class NLLOfLogSoftmax(nn.Module):
    """Negative log-likelihood of the log-softmax of the logits (equals cross-entropy)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(F.log_softmax(logits, dim=-1), target)


@LOSSES.register("nll", tasks=("classification",), target="index")
def nll() -> nn.Module:
    """Negative log-likelihood of log-softmax outputs: cross-entropy written out in two steps."""
    return NLLOfLogSoftmax()


class SmoothedBCE(nn.Module):
    def __init__(self, label_smoothing: float) -> None:
        super().__init__()
        self.eps = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, smooth(target, self.eps) if self.eps else target)


@LOSSES.register("bce", tasks=("classification", *RECONSTRUCTION, "gan"), target="dense", input="logits")
def bce(label_smoothing: Probability = 0.0) -> nn.Module:
    """Binary cross-entropy of sigmoid outputs (one-hot targets; pixels; a GAN's real/fake calls)."""
    return SmoothedBCE(label_smoothing)


class KLToTarget(nn.Module):
    def __init__(self, label_smoothing: float) -> None:
        super().__init__()
        self.eps = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=-1), smooth(target, self.eps), reduction="batchmean")


@LOSSES.register("kl_div", tasks=("classification",), target="dense", input="logits")
def kl_div(label_smoothing: Probability = 0.1) -> nn.Module:
    """KL(target || softmax(logits)) with a (label-smoothed) target distribution."""
    return KLToTarget(label_smoothing)


@LOSSES.register("mse", tasks=(*SUPERVISED, *RECONSTRUCTION, "rbm"), target="dense", input="probs")
def mse() -> nn.Module:
    """Mean squared error (on softmax outputs vs one-hot for classification: the Brier score)."""
    return nn.MSELoss()


class RMSELoss(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # eps keeps the gradient of sqrt finite when the error reaches zero
        return torch.sqrt(F.mse_loss(output, target) + self.eps)


@LOSSES.register("rmse", tasks=SUPERVISED, target="dense", input="probs")
def rmse(eps: Positive = 1e-8) -> nn.Module:
    """Root mean squared error."""
    return RMSELoss(eps)


@LOSSES.register("mae", tasks=SUPERVISED, target="dense", input="probs")
def mae() -> nn.Module:
    """Mean absolute error (L1 loss)."""
    return nn.L1Loss()


@LOSSES.register("huber", tasks=SUPERVISED, target="dense", input="probs")
def huber(delta: Positive = 1.0) -> nn.Module:
    """Huber loss: quadratic near zero, linear beyond `delta` (robust to outliers)."""
    return nn.HuberLoss(delta=delta)


class GANObjective(nn.Module):
    """Marker for GAN objectives: the GAN task computes them from D's logits by name."""


@LOSSES.register("hinge", tasks=("gan",), target="dense")
def hinge() -> nn.Module:
    """GAN hinge loss (Lim & Ye 2017; SAGAN): relu(1 - D(x)) + relu(1 + D(G(z))); G maximises D(G(z))."""
    return GANObjective()


@LOSSES.register("wgan_gp", tasks=("gan",), target="dense")
def wgan_gp() -> nn.Module:
    """Wasserstein GAN with gradient penalty (Gulrajani et al. 2017); weight set by model.gp_weight."""
    return GANObjective()
