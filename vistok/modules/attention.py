"""Multi-head self-attention on `F.scaled_dot_product_attention`, with masks, N-D rotary embeddings and a KV cache.

- Masks are passed straight to SDPA: boolean (True = may attend) or additive float, broadcastable to
  (B, heads, L_query, L_key). With a KV cache the key axis is [cached keys, new keys].
- RoPE (Su et al., "RoFormer", arXiv 2104.09864) generalised to N axes as in EVA-02 (Fang et al., arXiv 2303.11331):
  the head dimension is split into N equal parts, part i rotates by position i (row, column, depth...), with
  interleaved pairs (x0, x1) -> (-x1, x0). Positions are floats, so tokens need not sit on an integer grid (xAR's
  coarse scales sit between grid points). Used by xAR (Ren et al., arXiv 2502.20388) in every attention layer.
- QK-norm (Dehghani et al., "Scaling Vision Transformers to 22 Billion Parameters", arXiv 2302.05442), optional:
  queries and keys pass a per-head LayerNorm without affine parameters, in float32, before RoPE. FlexTok (Bachmann et
  al., arXiv 2502.13967) uses it with bias-free projections (`qkv_bias=False, proj_bias=False`).
- `KVCache` keeps the rotated keys and the values of every layer for tokens that will not change any more (in xAR, the
  finished entities, fed clean), so later forwards run on the new tokens only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok.errors import require


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, A) float positions on A axes -> (cos, sin), each (L, head_dim), float32.

    Axis a uses channels [a*head_dim/A, (a+1)*head_dim/A) with frequencies theta^(-2j / (head_dim/A)).
    """
    num_axes = positions.shape[-1]
    require(head_dim % (2 * num_axes) == 0, f"RoPE on {num_axes} axes needs head_dim divisible by {2 * num_axes}, got {head_dim}")
    part = head_dim // num_axes
    freqs = theta ** (-torch.arange(0, part, 2, dtype=torch.float64, device=positions.device) / part)  # (part/2,)
    angles = positions.double()[..., None] * freqs  # (L, A, part/2)
    angles = rearrange(torch.stack([angles, angles], dim=-1), "l a f two -> l (a f two)")  # pairs share an angle
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, Dh) queries or keys by (L, Dh) tables; computed in float32, returned in x's dtype."""
    pairs = rearrange(x.float(), "... (d two) -> ... d two", two=2)
    rotated = rearrange(torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1), "... d two -> ... (d two)")
    return (x.float() * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Rotated keys and values of finished tokens, one (B, heads, S, head_dim) pair per attention layer."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        """Number of cached tokens S (0 when empty)."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, store: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """[cached, new] keys and values of `layer`; with `store` the new ones stay cached for later calls."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)  # (B, H, S + L, Dh)
            v = torch.cat([self.values[layer], v], dim=2)
        if store:
            self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    """Self-attention: qkv projection, optional QK-norm, RoPE and KV cache, SDPA, output projection with dropout."""

    def __init__(
        self, width: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
        qk_norm: bool = False, proj_bias: bool = True,
    ) -> None:
        super().__init__()
        require(width % heads == 0, f"attention width {width} must divide by the number of heads {heads}")
        self.heads, self.attn_drop, self.qk_norm = heads, attn_drop, qk_norm
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None, mask: torch.Tensor | None = None,
        cache: KVCache | None = None, layer: int = 0, store: bool = False,
    ) -> torch.Tensor:
        """(B, L, D) -> (B, L, D). `rope` holds (cos, sin) for the L new positions; `mask` is (L, S + L) with a cache
        of S tokens (None: attend to everything); `store` appends these tokens' keys/values to `cache`."""
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)  # (B, H, L, Dh)
        if self.qk_norm:  # bounded logits at any width and learning rate; fp32 so bf16 runs normalise exactly
            q, k = (F.layer_norm(z.float(), z.shape[-1:]).to(z.dtype) for z in (q, k))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.extend(layer, k, v, store)  # (B, H, S + L, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h l d -> b l (h d)")))  # (B, L, D)
