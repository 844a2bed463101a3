"""Generative models: autoencoder, variational autoencoder and GAN, each as MLP or conv nets.

Decoders and generators produce images in pixel units: decoders return logits whose sigmoid is
the intensity in [0, 1]; generators return tanh outputs in [-1, 1]. Conditional variants take
a one-hot class label next to the input (encoder, discriminator) and the code (decoder,
generator).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dltrain.models.base import MODELS
from dltrain.models.layers import Activation, make_activation
from dltrain.schema import NonNegative, NonNegativeInt, PositiveInt, Probability

Arch = Literal["mlp", "conv"]


def _mlp(widths: list[int], activation: str, batchnorm: bool, last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or last_activation:
            if batchnorm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (H/4 x W/4 after them), then a linear map to `out_features`."""

    def __init__(self, in_shape: tuple[int, int, int], extra: int, out_features: int, channels: int, activation: str, batchnorm: bool) -> None:
        super().__init__()
        c, h, w = in_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, channels, 4, stride=2, padding=1),
            make_activation(activation),
            nn.Conv2d(channels, 2 * channels, 4, stride=2, padding=1),
            nn.BatchNorm2d(2 * channels) if batchnorm else nn.Identity(),
            make_activation(activation),
            nn.Flatten(),
        )
        self.linear = nn.Linear(2 * channels * (h // 4) * (w // 4) + extra, out_features)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv(x)
        return self.linear(h if extra is None else torch.cat([h, extra], 1))


class ConvDecoder(nn.Module):
    """DCGAN-style: project the code to (2C, H/4, W/4), then two stride-2 transposed convolutions."""

    def __init__(self, in_features: int, out_shape: tuple[int, int, int], channels: int, activation: str, batchnorm: bool) -> None:
        super().__init__()
        c, h, w = out_shape
        self.start = (2 * channels, h // 4, w // 4)
        self.project = nn.Sequential(nn.Linear(in_features, math.prod(self.start)), make_activation(activation))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.BatchNorm2d(channels) if batchnorm else nn.Identity(),
            make_activation(activation),
            nn.ConvTranspose2d(channels, c, 4, stride=2, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(z).view(-1, *self.start))


class GenerativeModel(nn.Module):
    """Shared shape bookkeeping: image shape, latent size, optional class conditioning."""

    def __init__(self, in_shape: tuple[int, ...], latent_dim: int, num_classes: int, conditional: bool) -> None:
        super().__init__()
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        self.num_classes = num_classes if conditional else 0
        self.pixels = math.prod(in_shape)

    def label(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
        """One-hot labels for a conditional model (None for an unconditional one)."""
        if not self.num_classes:
            return None
        if y is None:  # unconditional request of a conditional model: cycle through the classes
            y = torch.arange(n, device=device) % self.num_classes
        return F.one_hot(y, self.num_classes).float()

    @staticmethod
    def join(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return a if b is None else torch.cat([a, b], 1)


def _check_conv(in_shape: tuple[int, ...], arch: str) -> None:
    if arch == "conv" and (len(in_shape) != 3 or in_shape[1] % 4 or in_shape[2] % 4):
        from dltrain.errors import ConfigError

        raise ConfigError("model.arch", arch, f"conv needs image sides divisible by 4, the data has shape {tuple(in_shape)}; allowed: mlp")


class AutoEncoder(GenerativeModel):
    """x -> code -> reconstruction logits; with `variational`, the code is a Gaussian posterior."""

    def __init__(self, in_shape, latent_dim, num_classes, conditional, arch, hidden, channels, activation, batchnorm, variational) -> None:
        super().__init__(in_shape, latent_dim, num_classes, conditional)
        _check_conv(in_shape, arch)
        code = 2 * latent_dim if variational else latent_dim
        k = self.num_classes
        if arch == "mlp":
            self.encoder_body = _mlp([self.pixels + k, hidden, hidden], activation, batchnorm, last_activation=True)
            self.encoder_head = nn.Linear(hidden, code)
            self.decoder = nn.Sequential(_mlp([latent_dim + k, hidden, hidden, self.pixels], activation, batchnorm))
        else:
            self.encoder_body = ConvEncoder(in_shape, k, hidden, channels, activation, batchnorm)
            self.encoder_head = nn.Sequential(make_activation(activation), nn.Linear(hidden, code))
            self.decoder = ConvDecoder(latent_dim + k, in_shape, channels, activation, batchnorm)
        self.arch, self.variational = arch, variational

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The code (for a VAE: mean and log-variance, concatenated)."""
        c = self.label(y, len(x), x.device)
        if self.arch == "mlp":
            h = self.encoder_body(self.join(x.flatten(1), c))
        else:
            h = self.encoder_body(x, c)
        return self.encoder_head(h)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction logits shaped like the input (sigmoid gives intensities in [0, 1])."""
        out = self.decoder(self.join(z, self.label(y, len(z), z.device)))
        return out.view(-1, *self.in_shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        code = self.encode(x, y)
        z = code[:, : self.latent_dim]  # a VAE reconstructs from the posterior mean here
        return self.decode(z, y)


class GAN(GenerativeModel):
    """A generator G(z) -> image in [-1, 1] and a discriminator D(image) -> real/fake logit."""

    def __init__(self, in_shape, latent_dim, num_classes, conditional, arch, hidden, channels, activation, batchnorm, d_dropout) -> None:
        super().__init__(in_shape, latent_dim, num_classes, conditional)
        _check_conv(in_shape, arch)
        k = self.num_classes
        if arch == "mlp":
            self.generator = _mlp([latent_dim + k, hidden, hidden, self.pixels], activation, batchnorm)
            layers: list[nn.Module] = []
            for a, b in ((self.pixels + k, hidden), (hidden, hidden)):
                layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)] + ([nn.Dropout(d_dropout)] if d_dropout else [])
            self.discriminator = nn.Sequential(*layers, nn.Linear(hidden, 1))
        else:
            self.generator = ConvDecoder(latent_dim + k, in_shape, channels, activation, batchnorm)
            self.discriminator = ConvEncoder(in_shape, k, 1, channels, "leaky_relu", batchnorm=False)
        self.arch = arch

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.generator(self.join(z, self.label(y, len(z), z.device)))).view(-1, *self.in_shape)

    def discriminate(self, images: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.label(y, len(images), images.device)
        if self.arch == "mlp":
            return self.discriminator(self.join(images.flatten(1), c)).squeeze(1)
        return self.discriminator(images, c).squeeze(1)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.generate(z, y)


GENERATIVE_INPUTS = ("image",)


@MODELS.register("autoencoder", family="generative", task="autoencoder", inputs=GENERATIVE_INPUTS)
def autoencoder(
    in_shape: tuple[int, ...],
    out_features: int,
    arch: Arch = "mlp",
    latent_dim: PositiveInt = 16,
    hidden: PositiveInt = 256,
    channels: PositiveInt = 32,
    activation: Activation = "relu",
    batchnorm: bool = False,
    conditional: bool = False,
) -> AutoEncoder:
    """Autoencoder: compress the input to latent_dim numbers and reconstruct it."""
    return AutoEncoder(in_shape, latent_dim, out_features, conditional, arch, hidden, channels, activation, batchnorm, variational=False)


@MODELS.register("vae", family="generative", task="vae", inputs=GENERATIVE_INPUTS)
def vae(
    in_shape: tuple[int, ...],
    out_features: int,
    arch: Arch = "mlp",
    latent_dim: PositiveInt = 16,
    hidden: PositiveInt = 256,
    channels: PositiveInt = 32,
    activation: Activation = "relu",
    batchnorm: bool = False,
    conditional: bool = False,
    beta: NonNegative = 1.0,
    kl_warmup_epochs: NonNegativeInt = 5,
) -> AutoEncoder:
    """Variational autoencoder (Kingma & Welling 2014): Gaussian posterior, ELBO, beta-VAE."""
    model = AutoEncoder(in_shape, latent_dim, out_features, conditional, arch, hidden, channels, activation, batchnorm, variational=True)
    model.beta, model.kl_warmup_epochs = beta, kl_warmup_epochs  # read by the VAE task's objective
    return model


@MODELS.register("gan", family="generative", task="gan", inputs=GENERATIVE_INPUTS)
def gan(
    in_shape: tuple[int, ...],
    out_features: int,
    arch: Arch = "mlp",
    latent_dim: PositiveInt = 32,
    hidden: PositiveInt = 256,
    channels: PositiveInt = 32,
    activation: Activation = "relu",
    batchnorm: bool = True,
    conditional: bool = False,
    d_steps: PositiveInt = 1,
    d_dropout: Probability = 0.0,
    gp_weight: NonNegative = 10.0,
) -> GAN:
    """Generative adversarial network (Goodfellow et al. 2014; conv: DCGAN, Radford et al. 2016)."""
    model = GAN(in_shape, latent_dim, out_features, conditional, arch, hidden, channels, activation, batchnorm, d_dropout)
    model.d_steps, model.gp_weight = d_steps, gp_weight  # read by the GAN task's training step
    return model
