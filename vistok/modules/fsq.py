"""Finite scalar quantization (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", arXiv 2309.15505).

Each of the d channels of a vector is bounded to a fixed range and rounded to one of L_i levels; the codebook is the
implicit grid of prod(L_i) points (FlexTok, Bachmann et al., arXiv 2502.13967: levels [8, 8, 8, 5, 5, 5], 64,000 codes).

- Bound: tanh(z + atanh(offset / half)) * half - offset with half = (L - 1)(1 + eps) / 2 and offset 0.5 for even L
  (0 for odd L). The offset centres an even number of levels on integers, so z = 0 maps to 0 and rounding reaches
  exactly L integers: {-L/2, ..., L/2 - 1} for even L, {-(L-1)/2, ..., (L-1)/2} for odd L; eps keeps the extreme
  integers reachable despite tanh never hitting +-1.
- Round with a straight-through estimator (gradient of the bound), then divide by L // 2: codes lie in [-1, 1]
  (L = 8: -1, -0.75, ..., 0.75; L = 5: -1, -0.5, 0, 0.5, 1).
- Index: mixed-radix number with digit_i = code_i * (L_i // 2) + L_i // 2 in 0..L_i-1 and basis cumprod([1, L_0, ...]);
  `indices_to_codes` inverts it exactly.
- Everything runs in float32 with autocast off: bf16 has 8 mantissa bits, too few to round tanh outputs reliably.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from vistok.errors import require


class QuantOut(NamedTuple):
    """The shared return of quantizers: codes (..., d) with straight-through gradients, indices (...) int64, and an
    auxiliary loss (a zero scalar for FSQ, which needs no commitment or codebook loss)."""

    codes: torch.Tensor
    indices: torch.Tensor
    aux_loss: torch.Tensor


class FSQ(nn.Module):
    """(..., d) continuous vectors -> codes on a d-dimensional grid with `levels[i]` values on axis i; no parameters."""

    def __init__(self, levels: tuple[int, ...] | list[int] = (8, 8, 8, 5, 5, 5), eps: float = 1e-3) -> None:
        super().__init__()
        levels = tuple(int(level) for level in levels)
        require(len(levels) >= 1 and all(level >= 2 for level in levels),
                f"FSQ levels must be integers >= 2, got {levels}")
        require(math.prod(levels) < 2**62, f"FSQ levels {levels} give more codes than int64 indices can hold")
        self.levels, self.eps = levels, eps
        # derived from `levels`, so not saved in checkpoints
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int64), persistent=False)
        self.register_buffer("_basis", torch.tensor([math.prod(levels[:i]) for i in range(len(levels))]),
                             persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def _half_width(self) -> torch.Tensor:
        return (self._levels // 2).float()  # (d,): codes = integers / (L // 2)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """(..., d) -> (..., d) in float32, axis i inside (-L_i/2 - small, L_i/2 - 1 + small) for even L_i."""
        levels = self._levels.float()
        half = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        return torch.tanh(z.float() + torch.atanh(offset / half)) * half - offset

    def forward(self, z: torch.Tensor) -> QuantOut:
        """(..., d) -> QuantOut(codes (..., d) in z's dtype, indices (...), aux_loss 0)."""
        require(z.shape[-1] == self.dim,
                f"FSQ with levels {self.levels} expects (..., {self.dim}) inputs, got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            bounded = self.bound(z)  # (..., d) float32
            rounded = bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding
            codes = rounded / self._half_width()
            indices = self.codes_to_indices(codes.detach())
        return QuantOut(codes.to(z.dtype), indices, z.new_zeros((), dtype=torch.float32))

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) grid codes -> (...) int64 ids in [0, codebook_size)."""
        half = self._half_width()
        digits = torch.round(codes.float() * half + half).long()  # (..., d) in 0..L-1
        return (digits * self._basis).sum(dim=-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """(...) integer ids -> (..., d) float32 codes; the exact inverse of `codes_to_indices`."""
        require(not indices.is_floating_point(), f"FSQ indices must be integers, got {indices.dtype}")
        digits = (indices.long()[..., None] // self._basis) % self._levels  # (..., d)
        half = self._half_width()
        return (digits.float() - half) / half

    def snap(self, codes: torch.Tensor) -> torch.Tensor:
        """(..., d) any vectors -> the nearest grid codes (float32), e.g. to turn a continuous prediction into
        tokens."""
        half = self._half_width()
        lowest, highest = -half, (self._levels - 1).float() - half  # integer range of each axis
        return torch.maximum(torch.minimum(torch.round(codes.float() * half), highest), lowest) / half
