"""Prediction entities: partitions of a token grid into the sequence an autoregressive generator walks through.

Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation", arXiv 2502.20388, §3.2.1
and Algorithm 1. A (B, C, h, w) grid of continuous tokens becomes a (B, L, C) sequence cut into entities, predicted one
entity per autoregressive step:

    token        b c h w -> b (h w) c                              h*w entities of 1 token (raster order)
    cell k       b c (h k1) (w k2) -> b (h w k1 k2) c              (h/k)(w/k) entities of k*k tokens: cells in raster
                                                                   order, raster inside each cell
    subsample d  b c (h d1) (w d2) -> b (d1 d2 h w) c              d*d entities of (h/d)(w/d) tokens, each one strided
                                                                   (non-local) sub-grid; the spec's einops wording puts
                                                                   d outermost in the grid axes, which would not give
                                                                   strided groups, so the paper's description wins
    scale N      area-downsampled copies at sizes ceil(h/2^(N-1-i))  N entities, coarse to fine, each in raster order;
                 for i = 0..N-1, concatenated                      the last one is the grid itself
    image        b c h w -> b (h w) c                              1 entity (plain flow matching)
    prefix       b c 1 k -> b k c                                  a 1D sequence of K tokens (FlexTok registers, held
                                                                   as a (B, C, 1, K) grid) in groups ending at
                                                                   k = 1, 2, 4, ..., K: sizes 1, 1, 2, 4, ..., K/2, so
                                                                   generation can stop at every prefix FlexTok decodes

Bachmann et al., "FlexTok", arXiv 2502.13967, §3: FlexTok's registers are ordered coarse to fine and any prefix
decodes; `prefix` groups them on the powers-of-two ladder its nested dropout trains.

Every partition but `scale` is a permutation, so `merge(split(x)) == x` exactly and `split(merge(s)) == s`. `scale`
holds the grid plus coarser copies of it; `merge` inverts it by taking the finest scale, which is the grid unchanged.
The attention mask of an entity sequence is block-causal: full attention inside an entity, causal across entities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

from vistok.errors import VistokError, require

EntityKind = Literal["token", "cell", "subsample", "scale", "image", "prefix"]
KINDS: tuple[str, ...] = ("token", "cell", "subsample", "scale", "image")  # partitions of a 2D token grid
SEQUENCE_KINDS: tuple[str, ...] = ("prefix",)  # partitions of a 1D token sequence, held as a (B, C, 1, K) grid
ALL_KINDS: tuple[str, ...] = KINDS + SEQUENCE_KINDS


def prefix_ends(length: int) -> tuple[int, ...]:
    """1, 2, 4, ..., K: the prefix lengths where a `prefix` partition's groups end (K last even if not a power of 2)."""
    return tuple(sorted({min(2**i, length) for i in range(length.bit_length() + 1)}))


def block_causal_mask(lengths: tuple[int, ...] | list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) boolean mask, True where query i may attend to key j: j's entity is i's entity or an earlier one."""
    ids = entity_ids(lengths, device)  # (L,)
    return ids[:, None] >= ids[None, :]


def clean_context_mask(lengths: tuple[int, ...] | list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(2L, 2L) mask for teacher forcing on [clean copy (L), noisy copy (L)] of one entity sequence.

    Clean tokens attend block-causally among clean tokens (as the clean context at sampling time, whose keys and values
    are cached); noisy entity n attends to clean entities < n and to itself only, never to other noisy entities.
    """
    ids = entity_ids(lengths, device)
    causal = ids[:, None] >= ids[None, :]  # (L, L)
    earlier = ids[:, None] > ids[None, :]
    same = ids[:, None] == ids[None, :]
    top = torch.cat([causal, torch.zeros_like(causal)], dim=1)  # clean rows never see noisy tokens
    bottom = torch.cat([earlier, same], dim=1)
    return torch.cat([top, bottom], dim=0)


def entity_ids(lengths: tuple[int, ...] | list[int], device: torch.device | str | None = None) -> torch.Tensor:
    """(L,) long: the entity index of every token of a sequence cut into entities of the given lengths."""
    counts = torch.tensor(list(lengths), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), counts, output_size=sum(lengths))


@dataclass(frozen=True)
class Partition:
    """How a (B, C, h, w) token grid becomes an entity sequence. `size` is the cell side k, the subsample stride d or
    the number of scales N; token, image and prefix partitions ignore it. A prefix partition's grid is (1, K)."""

    kind: str
    grid: tuple[int, int]
    size: int = 1

    def __post_init__(self) -> None:
        h, w = self.grid
        require(self.kind in ALL_KINDS, f"unknown entity kind {self.kind!r}; use one of {', '.join(ALL_KINDS)}")
        require(h >= 1 and w >= 1, f"the token grid must be at least 1x1, got {h}x{w}")
        if self.kind == "prefix":
            require(h == 1,
                    f"a prefix partition takes a 1D sequence held as a (1, K) grid, got {h}x{w}; set grid=[1, K]")
        if self.kind in ("cell", "subsample"):
            name = "cell side k" if self.kind == "cell" else "subsample stride d"
            require(self.size >= 1 and h % self.size == 0 and w % self.size == 0,
                    f"{name}={self.size} must divide the {h}x{w} token grid; pick a divisor of both sides")
        if self.kind == "scale":
            require(self.size >= 1 and 2 ** (self.size - 1) <= min(h, w),
                    f"{self.size} scales need a grid side of at least {2 ** (self.size - 1)}, got {h}x{w}; "
                    "use fewer scales")

    @property
    def scales(self) -> tuple[tuple[int, int], ...]:
        """Grid sizes of the scale entities, coarse to fine (just the grid for other kinds)."""
        h, w = self.grid
        if self.kind != "scale":
            return ((h, w),)
        return tuple((math.ceil(h / 2 ** (self.size - 1 - i)), math.ceil(w / 2 ** (self.size - 1 - i)))
                     for i in range(self.size))

    @property
    def lengths(self) -> tuple[int, ...]:
        """Number of tokens in each entity, in sequence order."""
        h, w = self.grid
        if self.kind == "token":
            return (1,) * (h * w)
        if self.kind == "cell":
            return (self.size**2,) * ((h // self.size) * (w // self.size))
        if self.kind == "subsample":
            return ((h // self.size) * (w // self.size),) * self.size**2
        if self.kind == "scale":
            return tuple(sh * sw for sh, sw in self.scales)
        if self.kind == "prefix":
            ends = prefix_ends(w)
            return tuple(b - a for a, b in zip((0, *ends[:-1]), ends, strict=True))
        return (h * w,)

    @property
    def num_entities(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        """Sequence length L (larger than h*w for scale partitions)."""
        return sum(self.lengths)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start of each entity in the sequence, plus the total length at the end (num_entities + 1 values)."""
        out = [0]
        for n in self.lengths:
            out.append(out[-1] + n)
        return tuple(out)

    def _check_grid(self, grid: torch.Tensor) -> None:
        if grid.ndim != 4 or tuple(grid.shape[-2:]) != tuple(self.grid):
            raise VistokError(f"expected a (B, C, {self.grid[0]}, {self.grid[1]}) token grid, got {tuple(grid.shape)}")

    def split(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) grid -> (B, L, C) entity sequence."""
        self._check_grid(grid)
        k = self.size
        if self.kind in ("token", "image", "prefix"):
            return rearrange(grid, "b c h w -> b (h w) c")
        if self.kind == "cell":
            return rearrange(grid, "b c (h k1) (w k2) -> b (h w k1 k2) c", k1=k, k2=k)
        if self.kind == "subsample":
            return rearrange(grid, "b c (h d1) (w d2) -> b (d1 d2 h w) c", d1=k, d2=k)
        coarse = [F.interpolate(grid, size=s, mode="area") for s in self.scales[:-1]]  # antialiased downsampling
        return torch.cat([rearrange(g, "b c h w -> b (h w) c") for g in [*coarse, grid]], dim=1)

    def merge(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L, C) entity sequence -> (B, C, h, w) grid; for scale partitions, the finest scale."""
        if seq.ndim != 3 or seq.shape[1] != self.num_tokens:
            raise VistokError(f"expected a (B, {self.num_tokens}, C) entity sequence, got {tuple(seq.shape)}")
        (h, w), k = self.grid, self.size
        if self.kind in ("token", "image", "prefix"):
            return rearrange(seq, "b (h w) c -> b c h w", h=h, w=w)
        if self.kind == "cell":
            return rearrange(seq, "b (h w k1 k2) c -> b c (h k1) (w k2)", h=h // k, w=w // k, k1=k, k2=k)
        if self.kind == "subsample":
            return rearrange(seq, "b (d1 d2 h w) c -> b c (h d1) (w d2)", h=h // k, w=w // k, d1=k, d2=k)
        return rearrange(seq[:, -h * w:], "b (h w) c -> b c h w", h=h, w=w)

    def entity_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(L,) long: the entity of each sequence position."""
        return entity_ids(self.lengths, device)

    def positions(self) -> torch.Tensor:
        """(L, 2) float (row, col) of each sequence position in grid coordinates, for 2D RoPE in entity order.

        A coarse scale's token sits at the centre of the grid region it averages, e.g. (0.5, 0.5) for a 2x coarser
        copy's first token. A prefix partition's token i sits at (0, i).
        """
        h, w = self.grid
        if self.kind != "scale":
            rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                        torch.arange(w, dtype=torch.float64), indexing="ij")
            coords = torch.stack([rows, cols])[None]  # (1, 2, h, w)
            return self.split(coords)[0].float()  # (L, 2)
        out = []
        for sh, sw in self.scales:
            r = (torch.arange(sh, dtype=torch.float64) + 0.5) * (h / sh) - 0.5
            c = (torch.arange(sw, dtype=torch.float64) + 0.5) * (w / sw) - 0.5
            rows, cols = torch.meshgrid(r, c, indexing="ij")
            out.append(rearrange(torch.stack([rows, cols]), "two h w -> (h w) two"))
        return torch.cat(out).float()

    def mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(L, L) block-causal boolean attention mask (True = may attend)."""
        return block_causal_mask(self.lengths, device)
