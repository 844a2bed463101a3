"""A small residual network (He et al. 2016) for images of any size and channel count."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from dltrain.models.base import MODELS
from dltrain.models.layers import Activation, make_activation
from dltrain.schema import PositiveInt, Probability, Range


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> act -> conv3x3 -> BN, plus the shortcut (a strided 1x1 conv and BN where
    the shape changes), then act: ResNet's basic block."""

    def __init__(self, in_c: int, out_c: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_c, out_c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_c)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_c)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity (Goyal et al. 2017): deep stacks train from the first step
        self.shortcut = nn.Identity() if stride == 1 and in_c == out_c else nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride, bias=False), nn.BatchNorm2d(out_c))
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv3x3 -> stages of basic blocks (stage i: ``channels * 2**i`` filters; each stage
    after the first halves the spatial size while it is at least 2) -> global average pool ->
    (dropout) -> linear."""

    def __init__(self, in_shape: tuple[int, int, int], out_features: int, blocks: list[int], channels: int, activation: str, dropout: float) -> None:
        super().__init__()
        c, h, w = in_shape
        self.stem = nn.Sequential(nn.Conv2d(c, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), make_activation(activation))
        stages: list[nn.Module] = []
        width = channels
        for i, n in enumerate(blocks):
            out_c = channels * 2**i
            stride = 2 if i > 0 and min(h, w) >= 2 else 1
            if stride == 2:
                h, w = (h + 1) // 2, (w + 1) // 2
            stage = [BasicBlock(width, out_c, stride, activation)] + [BasicBlock(out_c, out_c, 1, activation) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            width = out_c
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pool(self.stages(self.stem(x))).flatten(1)))


@MODELS.register("resnet", family="conv", inputs=("image",))
def resnet(
    in_shape: tuple[int, ...],
    out_features: int,
    blocks: list[Annotated[int, Range(1)]] = [2, 2, 2],  # noqa: B006  (a default, never mutated)
    channels: PositiveInt = 16,
    activation: Activation = "relu",
    dropout: Probability = 0.0,
) -> ResNet:
    """Small ResNet (He et al. 2016): stages of basic residual blocks with batch norm, global average pooling."""
    if not blocks:
        from dltrain.errors import ConfigError

        raise ConfigError("model.blocks", blocks, "allowed: a list of one or more block counts per stage, e.g. [2,2,2]")
    return ResNet(tuple(in_shape), out_features, list(blocks), channels, activation, dropout)
