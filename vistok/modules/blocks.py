"""Pre-norm transformer blocks: plain, adaLN-zero with per-segment modulation, and an adaLN output head.

- Norms are LayerNorms without weight or bias, computed in float32 (FlexTok, Bachmann et al., arXiv 2502.13967):
  with adaLN the modulation supplies scale and shift, and without it an affine norm adds nothing a following
  bias-free linear cannot absorb. Their eps is 1e-6 unless given (official FlexTok weights: torch's 1e-5).
- Attention (`attention.py`) with QK-norm and no biases; SwiGLU MLP with hidden int(8 D / 3) and no biases. The plain
  block takes a KV cache too: FlexTok's AR stage (`generators/ar.py`) is a GPT of these blocks.
- adaLN-zero (DiT, Peebles & Xie, arXiv 2212.09748): a zero-initialised Linear(SiLU(c)) gives gate, shift and scale
  for the attention and MLP branches, so every block starts as the identity. `segments` splits the sequence into
  contiguous runs that each get their own modulation from the same condition: FlexTok's decoder modulates its noised
  patches and its registers separately ("adaLN expansion" 2), for the cost of one wider Linear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok.errors import require
from vistok.modules.attention import Attention, KVCache, Mask
from vistok.modules.mlp import SwiGLU, glu_hidden


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last axis without affine parameters, in float32, returned in x's dtype."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, segments: Sequence[int]) -> torch.Tensor:
    """x (B, L, D) with segment g of `segments` (lengths summing to L) scaled by 1 + scale[:, g] and shifted by
    shift[:, g] (each (B, G, D)); no per-token modulation tensor is materialised."""
    parts = x.split(list(segments), dim=1)
    return torch.cat([p * (1 + scale[:, g, None]) + shift[:, g, None] for g, p in enumerate(parts)], dim=1)


def gate(x: torch.Tensor, g: torch.Tensor, segments: Sequence[int]) -> torch.Tensor:
    """x (B, L, D) with segment i multiplied by g[:, i] ((B, G, D))."""
    return torch.cat([p * g[:, i, None] for i, p in enumerate(x.split(list(segments), dim=1))], dim=1)


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); bias-free, QK-norm, SwiGLU. (B, L, D) -> (B, L, D)."""

    def __init__(self, width: int, heads: int, hidden: int | None = None, norm_eps: float = 1e-6,
                 attn_scale: float | None = None) -> None:
        super().__init__()
        self.norm_eps = norm_eps
        self.attn = Attention(width, heads, qkv_bias=False, qk_norm=True, proj_bias=False, scale=attn_scale)
        self.mlp = SwiGLU(width, hidden or glu_hidden(width), bias=False)

    def forward(
        self, x: torch.Tensor, mask: Mask = None, cache: KVCache | None = None, layer: int = 0,
        store: bool = False, slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`cache`, `layer`, `store`, `slots`: as in `Attention` (a decoder-only model's KV cache; slot `layer` is this
        block's)."""
        x = x + self.attn(layer_norm(x, self.norm_eps), mask=mask, cache=cache, layer=layer, store=store, slots=slots)
        return x + self.mlp(layer_norm(x, self.norm_eps))


class AdaLNZeroBlock(nn.Module):
    """`Block` with adaLN-zero modulation from a condition (B, D), one set per segment of the sequence."""

    def __init__(self, width: int, heads: int, num_segments: int = 1, hidden: int | None = None, norm_eps: float = 1e-6,
                 attn_scale: float | None = None) -> None:
        super().__init__()
        self.num_segments, self.norm_eps = num_segments, norm_eps
        self.attn = Attention(width, heads, qkv_bias=False, qk_norm=True, proj_bias=False, scale=attn_scale)
        self.mlp = SwiGLU(width, hidden or glu_hidden(width), bias=False)
        self.ada = nn.Linear(width, num_segments * 6 * width)  # zero-initialised by the owning model

    def forward(self, x: torch.Tensor, cond: torch.Tensor, segments: Sequence[int], mask: Mask = None) -> torch.Tensor:
        """x (B, L, D), cond (B, D), segments: lengths of the contiguous runs (sum L) -> (B, L, D)."""
        require(len(segments) == self.num_segments,
                f"block has {self.num_segments} modulation sets, got segments {tuple(segments)}")
        mod = rearrange(self.ada(F.silu(cond)), "b (g six d) -> six b g d", g=self.num_segments, six=6)  # 6 x (B, G, D)
        gate_attn, gate_mlp, shift_attn, scale_attn, shift_mlp, scale_mlp = mod
        x = x + gate(self.attn(modulate(layer_norm(x, self.norm_eps), shift_attn, scale_attn, segments), mask=mask),
                     gate_attn, segments)
        return x + gate(self.mlp(modulate(layer_norm(x, self.norm_eps), shift_mlp, scale_mlp, segments)),
                        gate_mlp, segments)


class AdaLNHead(nn.Module):
    """Output head: norm, adaLN shift/scale from the condition, Linear. (B, L, D), (B, D) -> (B, L, out)."""

    def __init__(self, width: int, out: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_eps = norm_eps
        self.ada = nn.Linear(width, 2 * width)  # zero-initialised by the owning model
        self.linear = nn.Linear(width, out)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = rearrange(self.ada(F.silu(cond)), "b (two g d) -> two b g d", two=2, g=1)  # (B, 1, D) each
        return self.linear(modulate(layer_norm(x, self.norm_eps), shift, scale, [x.shape[1]]))
