"""Generative tasks: autoencoder, VAE and GAN, trained by the same engine as everything else.

Images are modelled in pixel units: the data's normalised inputs go into encoders and
discriminators as they are; reconstruction targets are intensities in [0, 1]; GANs see real
images rescaled to [-1, 1] to match the generator's tanh.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dltrain.data.base import DataBundle
from dltrain.images import preview, save_grid
from dltrain.registry import Entry
from dltrain.tasks.base import TASKS, Task
from dltrain.tasks.reference import class_histogram, features_and_probs, reference_classifier, sample_quality

log = logging.getLogger("dltrain")

QUALITY_SAMPLES = 500  # samples scored by the reference classifier each evaluation
GRID = 64  # samples in each PNG grid
NOISE_SEED = 1234  # fixed noise, so epochs' grids and scores are comparable


class GenerativeTask(Task):
    """What autoencoders, VAEs and GANs share: pixel scaling, fixed noise, grids, sample quality."""

    samples_quality = True  # does this model generate new images (not only reconstruct)?

    def __init__(self, data: DataBundle, loss_entry: Entry, loss_fn: nn.Module) -> None:
        super().__init__(data, loss_entry, loss_fn)
        self.epoch = 1
        self._reference = None
        self._real_features: dict[str, np.ndarray] = {}
        self._noise: torch.Tensor | None = None

    @staticmethod
    def out_features(data: DataBundle) -> int:
        return data.num_classes or 0  # classes for conditional models

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        return self.data.to_unit(x).clamp(0, 1)

    def labels(self, model: nn.Module, y: torch.Tensor) -> torch.Tensor | None:
        return y if model.num_classes else None

    # --- sampling and sample quality -------------------------------------------------------

    def noise(self, model: nn.Module, n: int, device: torch.device) -> torch.Tensor:
        if self._noise is None or len(self._noise) < n:
            g = torch.Generator().manual_seed(NOISE_SEED)
            self._noise = torch.randn(max(n, QUALITY_SAMPLES), model.latent_dim, generator=g)
        return self._noise[:n].to(device)

    def sample(self, model: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] for codes `z` (class labels cycle for a conditional model)."""
        raise NotImplementedError

    def _quality(self, model: nn.Module, split: str) -> dict[str, float]:
        device = next(model.parameters()).device
        if self._reference is None:
            self._reference = reference_classifier(self.data, device)
        if split not in self._real_features:
            real = getattr(self.data, split).x.to(device)
            self._real_features[split] = features_and_probs(self._reference, real)[0]
        with torch.inference_mode():
            samples = self.sample(model, self.noise(model, QUALITY_SAMPLES, device))
        return sample_quality(self._reference, self._real_features[split], self.data.from_unit(samples), self.data.num_classes)

    def finish_evaluation(self, model: nn.Module, metrics: dict[str, float], split: str) -> dict[str, float]:
        if self.samples_quality and self.data.num_classes:
            was_training = model.training
            model.eval()
            metrics.update(self._quality(model, split))
            model.train(was_training)
        return metrics

    def class_histogram(self, model: nn.Module) -> list[int]:
        device = next(model.parameters()).device
        with torch.inference_mode():
            samples = self.sample(model, self.noise(model, QUALITY_SAMPLES, device))
        return class_histogram(self._reference or reference_classifier(self.data, device), self.data.from_unit(samples), self.data.num_classes)

    # --- per-epoch pictures ---------------------------------------------------------------

    @torch.inference_mode()
    def end_epoch(self, model: nn.Module, epoch: int, plots: Path) -> list[str]:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        if self.samples_quality:
            save_grid(self.sample(model, self.noise(model, GRID, device)), plots / f"samples_e{epoch:03d}.png", label=f"samples, epoch {epoch}")
        self.extra_grids(model, epoch, plots, device)
        model.train(was_training)
        return []

    def extra_grids(self, model: nn.Module, epoch: int, plots: Path, device: torch.device) -> None:
        pass

    def end_fit(self, model: nn.Module, plots: Path) -> dict:
        """Copy the last epoch's grids to their final names; a text preview and class histogram."""
        import shutil

        model.eval()
        device = next(model.parameters()).device
        kind = "samples" if self.samples_quality else "reconstructions"
        for name in ("samples", "reconstructions", "interpolation"):  # not recon.png: the val_recon curve's name
            grids = sorted(plots.glob(f"{name}_e*.png"))
            if grids:
                shutil.copyfile(grids[-1], plots / f"{name}.png")
        with torch.inference_mode():
            if self.samples_quality:
                images = self.sample(model, self.noise(model, 8, device))
            else:
                images = torch.sigmoid(model(self.data.val.x[:8].to(device), self.labels(model, self.data.val.y[:8].to(device))))
        extras = {"preview": f"{kind} ({plots / (kind + '.png')}):\n" + preview(images)}
        if self.samples_quality and self.data.num_classes:
            extras["samples"] = {"class_histogram": self.class_histogram(model)}
        return extras


class ReconstructionTask(GenerativeTask):
    """Autoencoders: reconstruction loss ('bce' on logits or 'mse' on intensities) per example."""

    def recon_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed over pixels, averaged over the batch (nats per example for bce)."""
        n = len(target)
        if self.loss_entry.name == "bce":
            return F.binary_cross_entropy_with_logits(logits.float(), target, reduction="sum") / n
        return F.mse_loss(torch.sigmoid(logits.float()), target, reduction="sum") / n

    def extra_grids(self, model: nn.Module, epoch: int, plots: Path, device: torch.device) -> None:
        x, y = self.data.val.x[:32].to(device), self.data.val.y[:32].to(device)
        recon = torch.sigmoid(model(x, self.labels(model, y)))
        pairs = torch.stack([self.unit(x), recon], 1).flatten(0, 1)  # input, reconstruction, ...
        save_grid(pairs, plots / f"reconstructions_e{epoch:03d}.png", nrow=16, label=f"inputs and reconstructions, epoch {epoch}")
        # walk the latent line between the codes of two validation images, in 10 steps
        codes = model.encode(x[:8], self.labels(model, y[:8]))[:, : model.latent_dim]
        t = torch.linspace(0, 1, 10, device=device)[None, :, None]
        line = codes[0::2, None] * (1 - t) + codes[1::2, None] * t  # 4 pairs x 10 steps
        ys = self.labels(model, y[0::2].repeat_interleave(10))
        save_grid(torch.sigmoid(model.decode(line.flatten(0, 1), ys)), plots / f"interpolation_e{epoch:03d}.png", nrow=10, label=f"interpolations, epoch {epoch}")


@TASKS.register("autoencoder", help="reconstruct the input through a bottleneck; metrics: loss, recon_error")
class AutoencoderTask(ReconstructionTask):
    name = "autoencoder"
    metrics = ("loss", "recon_error")
    samples_quality = False

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        return self.recon_loss(model(x, self.labels(model, y)), self.unit(x))

    def new_state(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, squared error sum, count

    def update(self, state: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        logits, target = model(x, self.labels(model, y)), self.unit(x)
        state[0] += self.recon_loss(logits, target).double() * len(x)
        state[1] += (torch.sigmoid(logits.float()) - target).pow(2).sum()
        state[2] += len(x)

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        loss_sum, sq, n = state.tolist()
        n = max(n, 1)
        return {"loss": loss_sum / n, "recon_error": sq / (n * math.prod(self.data.in_shape))}


@TASKS.register("vae", help="variational autoencoder; metrics: loss (-ELBO), elbo, recon, kl, sample quality")
class VAETask(ReconstructionTask):
    name = "vae"
    metrics = ("loss", "elbo", "recon", "kl", "frechet", "confidence", "classes_covered", "max_class_fraction")
    higher_is_better = frozenset({"elbo", "confidence", "classes_covered"})

    def kl_weight(self, model: nn.Module) -> float:
        """beta, annealed linearly from 0 over the first kl_warmup_epochs epochs."""
        warmup = model.kl_warmup_epochs
        return model.beta * (min(1.0, self.epoch / warmup) if warmup else 1.0)

    def terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and KL terms per example (the reparameterisation trick when sampling)."""
        labels = self.labels(model, y)
        mu, logvar = model.encode(x, labels).float().chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = self.recon_loss(model.decode(z, labels), self.unit(x))
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        return recon, kl

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        recon, kl = self.terms(model, x, y, sample=True)
        return recon + self.kl_weight(model) * kl

    def new_state(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64, device=device)  # recon sum, kl sum, count

    def update(self, state: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        recon, kl = self.terms(model, x, y, sample=True)  # the ELBO is an expectation over q(z|x)
        state[0] += recon.double() * len(x)
        state[1] += kl.double() * len(x)
        state[2] += len(x)

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        recon, kl, n = state.tolist()
        recon, kl = recon / max(n, 1), kl / max(n, 1)
        return {"loss": recon + kl, "elbo": -(recon + kl), "recon": recon, "kl": kl}

    def sample(self, model: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sigmoid(model.decode(z, y).float())


@TASKS.register("gan", help="adversarial training of a generator and a discriminator; metrics: sample quality")
class GANTask(GenerativeTask):
    name = "gan"
    phases = ("d", "g")
    metrics = ("frechet", "confidence", "classes_covered", "max_class_fraction")
    monitor = "val_frechet"
    higher_is_better = frozenset({"confidence", "classes_covered"})
    COLLAPSE_EPOCHS = 3  # epochs of D winning outright before a warning

    def __init__(self, data: DataBundle, loss_entry: Entry, loss_fn: nn.Module) -> None:
        super().__init__(data, loss_entry, loss_fn)
        self.objective = loss_entry.name  # bce (non-saturating), hinge or wgan_gp
        self.smoothing = getattr(loss_fn, "eps", 0.0)  # one-sided label smoothing of D's real targets
        self._d_wins = torch.zeros(2)  # D's correct calls on real and fake images in this epoch
        self._d_seen = 0
        self._streak = 0

    def phase_params(self, model: nn.Module, phase: str):
        return (model.discriminator if phase == "d" else model.generator).parameters()

    def phase_repeats(self, model: nn.Module, phase: str) -> int:
        return model.d_steps if phase == "d" else 1

    def real(self, x: torch.Tensor) -> torch.Tensor:
        return self.unit(x) * 2 - 1

    def step_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, phase: str) -> torch.Tensor:
        labels = self.labels(model, y)
        z = torch.randn(len(x), model.latent_dim, device=x.device)
        if phase == "g":
            fake_logits = model.discriminate(model.generate(z, labels), labels).float()
            if self.objective == "bce":  # non-saturating: maximise log D(G(z))
                return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
            return -fake_logits.mean()  # hinge and Wasserstein generators
        real = self.real(x)
        with torch.no_grad():
            fake = model.generate(z, labels)
        real_logits, fake_logits = model.discriminate(real, labels).float(), model.discriminate(fake, labels).float()
        self._track(real_logits, fake_logits)
        if self.objective == "bce":
            target = torch.full_like(real_logits, 1.0 - self.smoothing)
            return F.binary_cross_entropy_with_logits(real_logits, target) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        if self.objective == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        return fake_logits.mean() - real_logits.mean() + model.gp_weight * self.gradient_penalty(model, real, fake, labels)

    def _track(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        """Count D's correct calls on device; read once per epoch (no per-step host sync)."""
        wins = torch.stack([(real_logits > 0).sum(), (fake_logits < 0).sum()]).float()
        self._d_wins = self._d_wins.to(wins.device) + wins
        self._d_seen += len(real_logits)

    @staticmethod
    def gradient_penalty(model: nn.Module, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """WGAN-GP (Gulrajani et al. 2017): (||grad D(x_hat)|| - 1)^2 on real/fake interpolates."""
        eps = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(model.discriminate(mixed, labels).sum(), mixed, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def start_epoch(self, epoch: int) -> None:
        super().start_epoch(epoch)
        self._d_wins, self._d_seen = torch.zeros(2), 0

    def new_state(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(1, device=device)

    def update(self, state: torch.Tensor, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        pass  # a GAN is measured by its samples, in finish_evaluation

    def compute(self, state: torch.Tensor) -> dict[str, float]:
        return {}

    def sample(self, model: nn.Module, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return (model.generate(z, y).float() + 1) / 2

    def end_epoch(self, model: nn.Module, epoch: int, plots: Path) -> list[str]:
        warnings = super().end_epoch(model, epoch, plots)
        if self._d_seen and self.objective != "wgan_gp":
            real_acc, fake_acc = (self._d_wins.cpu() / self._d_seen).tolist()
            self._streak = self._streak + 1 if min(real_acc, fake_acc) > 0.99 else 0
            if self._streak >= self.COLLAPSE_EPOCHS:
                warnings.append(
                    f"the discriminator has won outright for {self._streak} epochs (real {real_acc:.1%}, fake {fake_acc:.1%} correct): "
                    "the generator may have collapsed; try a lower optim_d.lr, loss.label_smoothing=0.1 or model.d_dropout"
                )
        return warnings
