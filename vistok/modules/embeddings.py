"""Conditioning embeddings: sinusoidal timestep features with an MLP, and class labels with a null class for CFG.

Timestep embedding as in DiT (Peebles & Xie, arXiv 2212.09748) and xAR (Ren et al., arXiv 2502.20388): cos||sin
features of t * scale (t in [0, 1], scale 1000) with geometric frequencies up to max_period, then Linear-SiLU-Linear.
Label embedding: a table with one extra row, the null class used for classifier-free guidance (Ho & Salimans,
arXiv 2207.12598); `drop` replaces labels by the null class with a given probability during training.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vistok.errors import require


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0,
                      freq_scale: float = 1.0) -> torch.Tensor:
    """(...) float -> (..., dim) features [cos(t f_j), sin(t f_j)] with f_j = freq_scale max_period^(-j / (dim/2))."""
    require(dim % 2 == 0, f"timestep feature dim must be even, got {dim}")
    half = dim // 2
    # (half,)
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    if freq_scale != 1.0:
        freqs = freq_scale * freqs
    args = t.float()[..., None] * freqs  # (..., half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    """t in [0, 1] (any shape) -> (..., width): sinusoidal features of t * scale, then Linear-SiLU-Linear.

    `floor`: embed the integer floor(t * scale) instead, as the official xAR/MAR code does (`(t * 1000).long()`, in t's
    own dtype); converted official checkpoints reproduce the official outputs only with it. `scale_freqs`: multiply
    the frequencies by `scale` instead of t (the same value, rounded as the official FlexTok code rounds it)."""

    def __init__(
        self, width: int, freq_dim: int = 256, scale: float = 1000.0, max_period: float = 10000.0, floor: bool = False,
        scale_freqs: bool = False,
    ) -> None:
        super().__init__()
        require(not (floor and scale_freqs), "TimestepEmbedding: floor needs the scaled t itself; drop scale_freqs")
        self.freq_dim, self.scale, self.max_period = freq_dim, scale, max_period
        self.floor, self.scale_freqs = floor, scale_freqs
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if self.scale_freqs:
            feats = timestep_features(t, self.freq_dim, self.max_period, self.scale)  # (..., freq_dim), float32
        else:
            scaled = torch.floor(t * self.scale) if self.floor else t * self.scale
            feats = timestep_features(scaled, self.freq_dim, self.max_period)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class labels 0..num_classes-1 plus the null class `num_classes` -> (B, width)."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        require(num_classes >= 1, f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def drop(self, labels: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Labels with each one replaced by the null class with probability p (whole-sample label dropout)."""
        if p <= 0:
            return labels
        if generator is None:  # no generator=None: under torch.compile with a symbolic batch that overload fails
            u = torch.rand(labels.shape, device=labels.device)
        else:
            u = torch.rand(labels.shape, generator=generator, device=generator.device)
        return torch.where(u.to(labels.device) < p, torch.full_like(labels, self.null_class), labels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)
