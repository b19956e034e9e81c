"""Fixed sin-cos position embeddings on an N-D grid (2D images, 3D volumes) and N-D (un)patchify.

Sin-cos embeddings as in MAE (He et al., arXiv 2111.06377) and DiT (Peebles & Xie, arXiv 2212.09748), generalised to
N axes: the width is split into N equal parts, part a holds [sin(p_a w_j), cos(p_a w_j)] of the position p_a on axis a
with w_j = base^(-j / (part / 2)). FlexTok (Bachmann et al., arXiv 2502.13967) adds them to the patches of its encoder
and decoder.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange

from vistok.errors import require


def sincos_posemb(grid: tuple[int, ...], width: int, base: float = 10000.0,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(prod(grid), width) float32 embeddings of the grid positions in row-major order (the order of `patchify`)."""
    axes = len(grid)
    require(axes >= 1 and width % (2 * axes) == 0,
            f"sin-cos embedding on {axes} axes needs width divisible by {2 * axes}, got {width}")
    half = width // axes // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=device) / half)  # (half,)
    coords = torch.meshgrid(*(torch.arange(n, dtype=torch.float64, device=device) for n in grid), indexing="ij")
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * freqs  # (L, half)
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()  # (L, width)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, *grid) with every side divisible by `patch` -> (B, L, C patch^N) patches in row-major order."""
    spatial = x.ndim - 2
    require(spatial in (2, 3), f"patchify expects (B, C, H, W) or (B, C, D, H, W), got {tuple(x.shape)}")
    require(all(n % patch == 0 for n in x.shape[2:]),
            f"sizes {tuple(x.shape[2:])} must divide by the patch size {patch}")
    if spatial == 2:
        return rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=patch, p2=patch)
    return rearrange(x, "b c (d p0) (h p1) (w p2) -> b (d h w) (c p0 p1 p2)", p0=patch, p1=patch, p2=patch)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, ...], patch: int) -> torch.Tensor:
    """(B, L, C patch^N) -> (B, C, *(grid * patch)): the inverse of `patchify`, with `grid` the patch grid."""
    require(tokens.shape[1] == math.prod(grid), f"{tokens.shape[1]} patches do not fill a {grid} grid")
    if len(grid) == 2:
        return rearrange(tokens, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=grid[0], w=grid[1], p1=patch, p2=patch)
    d, h, w = grid
    return rearrange(tokens, "b (d h w) (c p0 p1 p2) -> b c (d p0) (h p1) (w p2)", d=d, h=h, w=w, p0=patch,
                     p1=patch, p2=patch)
