"""Volume tokens for TokenUnify: non-overlapping patches in raster order, and the masks of its three objectives.

Chen et al., "TokenUnify: Scalable Autoregressive Visual Pre-training with Mixture Token Prediction", arXiv
2405.16847. A (D, H, W) volume with patch (pd, ph, pw) has K = (D/pd)(H/ph)(W/pw) tokens x_1..x_K in raster order
(z slowest, x fastest). Masking happens in the input, SimMIM-style: a hidden token's voxels are replaced by zeros or
N(0, 1) noise and the network sees the whole volume.

- random-token prediction: a per-sample ratio r ~ U(lo, hi) (lo = hi gives a fixed ratio) and exactly round(r K)
  tokens hidden, chosen uniformly without replacement;
- next-token / next-all-token prediction: a prefix length k ~ U{1 .. K-1} per sample; tokens [k, K) are hidden, token
  k is the next token, tokens [k, K) (and the prefix) the next-all target.

Written once for 2D images and 3D volumes: the patch size's length sets the number of spatial axes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange, repeat

from vistok.errors import VistokError

_AXES = ("d", "h", "w")


def _axes(patch: tuple[int, ...]) -> tuple[str, ...]:
    if len(patch) not in (2, 3):
        raise VistokError(f"patch size {tuple(patch)} must have 2 (y, x) or 3 (z, y, x) entries")
    return _AXES[-len(patch):]


def _sizes(patch: tuple[int, ...]) -> dict[str, int]:
    return {f"p{a}": p for a, p in zip(_axes(patch), patch, strict=True)}


def token_grid(size: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Tokens per axis of a `size` volume cut into `patch` patches; sizes must divide."""
    if len(size) != len(patch) or any(s % p for s, p in zip(size, patch, strict=True)):
        raise VistokError(f"volume size {tuple(size)} must divide by the patch size {tuple(patch)} in every axis")
    return tuple(s // p for s, p in zip(size, patch, strict=True))


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *S) -> (B, K, C * prod(patch)), tokens in raster order."""
    token_grid(tuple(x.shape[2:]), patch)
    ax = _axes(patch)
    spatial = " ".join(f"({a} p{a})" for a in ax)
    return rearrange(x, f"b c {spatial} -> b ({' '.join(ax)}) (c {' '.join('p' + a for a in ax)})", **_sizes(patch))


def unpatchify(tokens: torch.Tensor, grid: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    """(B, K, C * prod(patch)) -> (B, C, *S); inverse of `patchify`."""
    ax = _axes(patch)
    spatial = " ".join(f"({a} p{a})" for a in ax)
    return rearrange(tokens, f"b ({' '.join(ax)}) (c {' '.join('p' + a for a in ax)}) -> b c {spatial}",
                     **dict(zip(ax, grid, strict=True)), **_sizes(patch))


def voxel_mask(mask: torch.Tensor, grid: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    """Token mask (B, K) -> voxel mask (B, 1, *S): every voxel of a token carries the token's value."""
    ax = _axes(patch)
    spatial = " ".join(f"({a} p{a})" for a in ax)
    return repeat(mask, f"b ({' '.join(ax)}) -> b 1 {spatial}", **dict(zip(ax, grid, strict=True)), **_sizes(patch))


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def random_token_mask(batch: int, num_tokens: int, ratio: tuple[float, float] = (0.4, 0.4),
                      generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, K) bool, True = hidden: exactly round(r * K) tokens per sample with r ~ U(ratio[0], ratio[1])."""
    lo, hi = ratio
    if not 0.0 <= lo <= hi <= 1.0:
        raise VistokError(f"mask ratio range {ratio} must satisfy 0 <= lo <= hi <= 1")
    device = torch.device(device)
    r = lo + (hi - lo) * _rand((batch,), generator, device)  # (B,)
    hidden = torch.round(r * num_tokens).long()  # (B,)
    ranks = _rand((batch, num_tokens), generator, device).argsort(dim=1).argsort(dim=1)  # a random permutation
    return ranks < hidden[:, None]


def prefix_lengths(batch: int, num_tokens: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,) long, k ~ U{1 .. K-1} per sample: at least one visible and one hidden token."""
    if num_tokens < 2:
        raise VistokError(f"next-token prediction needs at least 2 tokens per volume, got {num_tokens}")
    device = torch.device(device)
    return 1 + torch.floor(_rand((batch,), generator, device) * (num_tokens - 1)).long().clamp_(max=num_tokens - 2)


def prefix_mask(lengths: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B,) prefix lengths -> (B, K) bool, True = hidden (positions >= k)."""
    return torch.arange(num_tokens, device=lengths.device)[None, :] >= lengths[:, None]


def next_token_target(volume: torch.Tensor, lengths: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """The voxels of token k (the first hidden one) of each sample: (B, C, *S), (B,) -> (B, C * prod(patch))."""
    return patchify(volume, patch)[torch.arange(volume.shape[0], device=volume.device), lengths]


def hide_tokens(volume: torch.Tensor, mask: torch.Tensor, patch: tuple[int, ...],
                fill: Literal["zero", "noise"] = "noise", generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace the voxels of hidden tokens by 0 or N(0, 1) noise: (B, C, *S), (B, K) -> (B, C, *S)."""
    grid = token_grid(tuple(volume.shape[2:]), patch)
    if mask.shape != (volume.shape[0], math.prod(grid)):
        raise VistokError(f"token mask of shape {tuple(mask.shape)} does not fit {volume.shape[0]} volumes of {grid} "
                          "tokens")
    hidden = voxel_mask(mask, grid, patch)  # (B, 1, *S)
    if fill == "zero":
        return volume.masked_fill(hidden, 0.0)
    if fill == "noise":
        gen_device = generator.device if generator is not None else volume.device
        noise = torch.randn(volume.shape, generator=generator, device=gen_device, dtype=volume.dtype).to(volume.device)
        return torch.where(hidden, noise, volume)
    raise VistokError(f"fill must be 'zero' or 'noise', got {fill!r}")
