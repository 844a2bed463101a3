"""The RBM's task: contrastive divergence does the learning (optim=rule); this measures it.

Metrics: `loss`, the reconstruction error (the mean squared difference between the visible
units and their mean-field reconstruction E[v | p(h | v)]), and `pseudo_log_likelihood`,
scikit-learn's stochastic estimate (one random unit flipped per example, from a fixed seed so
that epochs compare; Bernoulli visible units only). Pictures at the end: the learned filters (each hidden unit's weights as an
image) and samples from a Gibbs chain.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dltrain.images import preview, save_grid
from dltrain.tasks.base import TASKS, Task

PLL_SEED = 0
GIBBS_STEPS = 1000  # steps of the chain whose end is shown in plots/samples.png


@TASKS.register("rbm", help="an energy model learned by contrastive divergence; metrics: loss (reconstruction error), pseudo_log_likelihood")
class RBMTask(Task):
    name = "rbm"
    metrics = ("loss", "pseudo_log_likelihood")
    higher_is_better = frozenset({"pseudo_log_likelihood"})

    @staticmethod
    def out_features(data) -> int:
        return 0

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        v = model.unit(x)
        return self.loss_fn(model.visible_mean(model.hidden_probs(v)).float(), v.float())

    bernoulli = True  # the pseudo-likelihood's one-unit flips are defined for Bernoulli visible units only

    def new_state(self, device: torch.device) -> torch.Tensor:
        self._generator = torch.Generator(device=device).manual_seed(PLL_SEED)
        return torch.zeros(3, dtype=torch.float64, device=device)  # reconstruction error sum, pseudo-log-likelihood sum, count

    def update(self, state: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        v = model.unit(x)
        n = len(v)
        state[0] += self.loss_fn(model.visible_mean(model.hidden_probs(v)).float(), v.float()).double() * n
        self.bernoulli = model.visible == "bernoulli"
        if self.bernoulli:
            state[1] += model.pseudo_log_likelihood(v, self._generator).double().sum()
        state[2] += n

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        recon, pll, n = state.tolist()
        n = max(n, 1)
        return {"loss": recon / n, "pseudo_log_likelihood": pll / n} if self.bernoulli else {"loss": recon / n}

    @torch.inference_mode()
    def end_fit(self, model: nn.Module, plots: Path) -> dict:
        if self.data.kind != "image":
            return {}
        shape = self.data.in_shape
        w = model.weight.detach().float().cpu()
        lo, hi = w.min(1, keepdim=True).values, w.max(1, keepdim=True).values
        filters = ((w - lo) / (hi - lo).clamp_min(1e-12))[:64].reshape(-1, *shape)
        save_grid(filters[:, :1] if shape[0] > 3 else filters, plots / "filters.png")
        samples = self.gibbs_samples(model, 64)
        save_grid(samples, plots / "samples.png")
        return {"preview": f"Gibbs samples ({plots / 'samples.png'}):\n" + preview(samples)}

    def gibbs_samples(self, model: nn.Module, n: int) -> torch.Tensor:
        """The visible means after GIBBS_STEPS steps of a chain started at validation images (a fixed seed)."""
        device = model.weight.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(PLL_SEED)
            v = model.unit(self.data.val.x[:n].to(device))
            for _ in range(GIBBS_STEPS):
                v = model.sample_visible(torch.bernoulli(model.hidden_probs(v)))
            mean = model.visible_mean(torch.bernoulli(model.hidden_probs(v)))
        return mean.reshape(-1, *self.data.in_shape).clamp(0, 1)
