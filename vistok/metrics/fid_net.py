"""`cifar10-net`: a small CIFAR-10 classifier used as an FID feature extractor where Inception weights cannot be had.

The architecture is a ResNet-9-style network (a conv stem, three stages with max-pool downsampling, two residual
blocks) in the spirit of the DAWNBench CIFAR-10 entries, with GroupNorm instead of BatchNorm: an image's features then
never depend on the rest of its batch, and data-parallel training is exactly equivalent to one process with the same
global batch. FID uses the pooled penultimate features (like Inception's 2048-d pool3), scaled to unit-ish range.

Inputs are float images in [-1, 1], (B, 3, H, W); any other resolution is resized to 32x32 first.
Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium" (FID), NeurIPS 2017.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import require

if TYPE_CHECKING:
    from vistok.io.exports import Export


@dataclass(frozen=True)
class FidNetConfig:
    widths: tuple[int, int, int, int] = (32, 64, 128, 256)
    num_classes: int = 10
    groups: int = 8
    resolution: int = 32
    logit_scale: float = 0.125

    def __post_init__(self) -> None:
        require(all(w % self.groups == 0 for w in self.widths),
                f"every width in {self.widths} must divide by groups={self.groups}")
        require(self.num_classes >= 2, "num_classes must be at least 2")


def conv_block(c_in: int, c_out: int, groups: int, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(groups, c_out), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_block(width, width, groups), conv_block(width, width, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FidNet(nn.Module):
    """ResNet-9-style CIFAR-10 classifier; `features` gives the FID embedding, `forward` the class logits."""

    def __init__(self, config: FidNetConfig) -> None:
        super().__init__()
        self.config = config
        w0, w1, w2, w3, g = *config.widths, config.groups
        self.stem = conv_block(3, w0, g)
        self.stage1 = nn.Sequential(conv_block(w0, w1, g, pool=True), Residual(w1, g))
        self.stage2 = conv_block(w1, w2, g, pool=True)
        self.stage3 = nn.Sequential(conv_block(w2, w3, g, pool=True), Residual(w3, g))
        self.head = nn.Linear(w3, config.num_classes, bias=False)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C) pooled penultimate features."""
        require(images.ndim == 4 and images.shape[1] == 3,
                f"FidNet expects (B, 3, H, W) images, got {tuple(images.shape)}")
        r = self.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        x = self.stage3(self.stage2(self.stage1(self.stem(images))))  # (B, C, r/8, r/8)
        return F.adaptive_max_pool2d(x, 1).flatten(1)  # (B, C)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, num_classes) logits."""
        return self.head(self.features(images)) * self.config.logit_scale


PRESETS = {
    "cifar10-net": FidNetConfig(),
    "cifar10-net-wide": FidNetConfig(widths=(64, 128, 256, 512), groups=16),
    "cifar10-net-test": FidNetConfig(widths=(8, 16, 16, 32), groups=4),
}

FAMILY = ("fid_net", FidNetConfig, FidNet)


def load_fid_net(ckpt: str | Path | Export, device: str | torch.device = "cpu") -> FidNet:
    """A cifar10-net export (folder, shipped name or hf://) in eval mode with its EMA weights."""
    from vistok.io.exports import load_model

    model, _ = load_model(ckpt, device, family=FAMILY[0],
                          fix="pass a cifar10-net feature network (an export of train/train_fid_net.py)")
    return model