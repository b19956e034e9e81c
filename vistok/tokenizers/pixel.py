"""Pixel patchify tokenizer: an exact, parameter-free stand-in for a VAE, for tests and CPU presets.

A (B, 3, H, W) image in [-1, 1] becomes a (B, 3 p^2, H/p, W/p) grid of continuous tokens (each token one p x p patch,
channel-major inside the token) times `scale`; `decode` inverts it exactly when `scale` is a power of two (the default
is 1). It plays the role of xAR's KL-16 latent space (Ren et al., arXiv 2502.20388, §4: 16x16x16 latents at 256 px)
at CPU sizes: 32x32 images with p = 4 give an 8x8 grid of 48-channel tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from vistok.errors import VistokError, require


@dataclass(frozen=True)
class PixelConfig:
    patch: int = 4
    channels: int = 3
    scale: float = 1.0  # tokens = patches * scale (a power of two keeps decode exact)

    def __post_init__(self) -> None:
        require(self.patch >= 1, f"patch must be at least 1, got {self.patch}")
        require(self.channels >= 1, f"channels must be at least 1, got {self.channels}")
        require(self.scale > 0, f"scale must be positive, got {self.scale}")


class PixelTokenizer(nn.Module):
    """Images <-> token grids by (un)patchifying; no parameters."""

    def __init__(self, config: PixelConfig) -> None:
        super().__init__()
        self.config = config

    @property
    def token_channels(self) -> int:
        return self.config.channels * self.config.patch**2

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) of an H x W image."""
        p = self.config.patch
        if height % p or width % p:
            raise VistokError(f"image size {height}x{width} must divide by the patch size {p}; "
                              "resize or pick another patch")
        return height // p, width // p

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W) -> (B, channels p^2, H/p, W/p) tokens."""
        if images.ndim != 4 or images.shape[1] != self.config.channels:
            raise VistokError(f"expected (B, {self.config.channels}, H, W) images, got {tuple(images.shape)}")
        self.grid(*images.shape[-2:])
        p = self.config.patch
        return rearrange(images, "b c (h p1) (w p2) -> b (c p1 p2) h w", p1=p, p2=p) * self.config.scale

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, channels p^2, h, w) tokens -> (B, channels, h p, w p) images."""
        if tokens.ndim != 4 or tokens.shape[1] != self.token_channels:
            raise VistokError(f"expected (B, {self.token_channels}, h, w) tokens, got {tuple(tokens.shape)}")
        p = self.config.patch
        return rearrange(tokens / self.config.scale, "b (c p1 p2) h w -> b c (h p1) (w p2)", p1=p, p2=p)


PRESETS = {
    "pixel-p4": PixelConfig(patch=4),
    "pixel-p8": PixelConfig(patch=8),
}

FAMILY = ("pixel", PixelConfig, PixelTokenizer)
