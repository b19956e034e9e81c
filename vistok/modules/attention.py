"""Multi-head self-attention on `F.scaled_dot_product_attention` or FlexAttention, with masks, N-D rotary embeddings
and a static KV cache.

- Masks: None (attend to everything), a boolean (True = may attend) or additive float tensor broadcastable to
  (B, heads, L_query, L_key), `causal` (each new token sees every cached token and the new tokens up to itself;
  SDPA's `is_causal` path when nothing is cached), a `BlockCausal` run of entities (xAR), or a FlexAttention
  `BlockMask` (Dong et al., "Flex Attention", arXiv 2412.05496), the fast path for structured masks on CUDA (compiled
  on its own when the model is not, so eager models get the fused kernels too). With a KV cache the key axis is
  [cached keys, new keys].
- `BlockCausal` (xAR's entity mask: full attention inside an entity, causal across entities) runs one mask-free SDPA
  call per entity against the keys of that entity and all earlier ones, so the masked-out blocks are never computed
  (10 of 16 blocks for 4 cells) and SDPA keeps its fused kernels; with attention dropout (SDPA's math path) the
  probability matrices it materialises shrink in the same proportion.
- RoPE (Su et al., "RoFormer", arXiv 2104.09864) generalised to N axes as in EVA-02 (Fang et al., arXiv 2303.11331):
  the head dimension is split into N equal parts, part i rotates by position i (row, column, depth...), with
  interleaved pairs (x0, x1) -> (-x1, x0). Positions are floats, so tokens need not sit on an integer grid (xAR's
  coarse scales sit between grid points). Used by xAR (Ren et al., arXiv 2502.20388) in every attention layer. Queries
  and keys rotate together, as one complex product in eager mode (one kernel) and in real arithmetic under
  `torch.compile` (which fuses it).
- QK-norm (Dehghani et al., "Scaling Vision Transformers to 22 Billion Parameters", arXiv 2302.05442), optional:
  queries and keys pass a per-head LayerNorm without affine parameters, in float32, before RoPE. FlexTok (Bachmann et
  al., arXiv 2502.13967) uses it with bias-free projections (`qkv_bias=False, proj_bias=False`).
- `KVCache` keeps the rotated keys and the values of every layer for tokens that will not change any more (in xAR, the
  finished entities, fed clean; in the GPT, every earlier token), so later forwards run on the new tokens only. It is
  static: one (B, heads, capacity, head_dim) buffer per layer and kind, allocated at the first write and written in
  place (no concatenation, fixed storage: what `torch.compile` and CUDA graphs need).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok.errors import require

try:  # FlexAttention (torch >= 2.5); the SDPA paths below never need it
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - old torch
    BlockMask, create_block_mask, flex_attention = None, None, None

Backend = Literal["auto", "sdpa", "flex"]


@dataclass(frozen=True)
class BlockCausal:
    """A block-causal mask over the new tokens as consecutive entities ending at `ends` (cumulative, the last one is
    the number of new tokens): a token sees its own entity, every earlier one and every cached token."""

    ends: tuple[int, ...]


Causal = Literal["causal"]
Mask = Union[torch.Tensor, BlockCausal, Causal, "BlockMask", None]


def flex_block_mask(mask_mod, q_len: int, kv_len: int, device: torch.device | str) -> BlockMask:
    """A FlexAttention `BlockMask` from `mask_mod(b, h, q, kv) -> bool` (True = may attend), shared by every batch
    row and head."""
    require(create_block_mask is not None,
            f"FlexAttention needs torch >= 2.5 (this is {torch.__version__}); use attention backend sdpa")
    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=str(device))


def set_attention_backend(model: nn.Module, backend: Backend) -> nn.Module:
    """Choose how `model` (and every submodule that builds structured masks: xAR, FlexTok) attends: `sdpa` (the
    mask as SDPA calls / a dense tensor), `flex` (FlexAttention block masks; fused kernels on CUDA and under
    `torch.compile`, the unfused reference in an eager model on the CPU),
    or `auto` (flex on CUDA, sdpa elsewhere and with attention dropout in training). Returns the model."""
    require(backend in ("auto", "sdpa", "flex"), f"unknown attention backend {backend!r}; use auto, sdpa or flex")
    if backend == "flex":
        require(flex_attention is not None, f"FlexAttention needs torch >= 2.5 (this is {torch.__version__}); use sdpa")
    for m in model.modules():
        if hasattr(m, "attention_backend"):
            m.attention_backend = backend
            m.__dict__.pop("_flex_masks", None)
    return model


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, A) float positions on A axes -> (cos, sin), each (L, head_dim), float32.

    Axis a uses channels [a*head_dim/A, (a+1)*head_dim/A) with frequencies theta^(-2j / (head_dim/A)).
    """
    num_axes = positions.shape[-1]
    require(head_dim % (2 * num_axes) == 0,
            f"RoPE on {num_axes} axes needs head_dim divisible by {2 * num_axes}, got {head_dim}")
    part = head_dim // num_axes
    freqs = theta ** (-torch.arange(0, part, 2, dtype=torch.float64, device=positions.device) / part)  # (part/2,)
    angles = positions.double()[..., None] * freqs  # (L, A, part/2)
    angles = rearrange(torch.stack([angles, angles], dim=-1), "l a f two -> l (a f two)")  # pairs share an angle
    return angles.cos().float(), angles.sin().float()


def rope_turn(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(L, Dh) tables -> (L, Dh/2) complex rotations cos + i sin of each pair (the eager fast path of `apply_rope`;
    build it once per forward and pass it to every layer)."""
    return torch.complex(cos[..., 0::2], sin[..., 0::2])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, turn: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (..., L, Dh) queries or keys by (L, Dh) tables; computed in float32, returned in x's dtype. `turn`:
    `rope_turn(cos, sin)`, if the caller has it already."""
    if not torch.compiler.is_compiling() and x.stride(-1) == 1 and all(s % 2 == 0 for s in x.stride()[:-1]) \
            and x.storage_offset() % 2 == 0 and x.dtype == torch.float32:
        # one complex product: (x0 + i x1)(cos + i sin) = (x0 cos - x1 sin) + i (x1 cos + x0 sin)
        turn = rope_turn(cos, sin) if turn is None else turn  # (L, Dh/2)
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (..., L, Dh/2), a view
        return torch.view_as_real(pairs * turn).flatten(-2)
    pairs = rearrange(x.float(), "... (d two) -> ... d two", two=2)
    rotated = rearrange(torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1), "... d two -> ... (d two)")
    return (x.float() * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Static KV cache: per attention layer, (B, heads, capacity, head_dim) key and value buffers, written in place.

    Eager use: `extend` writes the new keys/values at the layer's current length and returns views of everything up
    to them; with `store` the length advances past them (they stay cached), otherwise the next call overwrites them.
    Under `torch.compile` the models call `write` instead: the new keys go to given slots (a tensor, so no Python
    int is baked into the graph) and attention runs over the whole buffers with the unwritten slots masked, so one
    graph serves every position; the model then calls `advance`. Buffers are zero-filled (masked slots must not hold
    NaN) and allocated by `reserve` or at the first write."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        require(capacity >= 1, f"a KV cache needs a capacity of at least one token, got {capacity}")
        self.capacity = capacity
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers

    @property
    def length(self) -> int:
        """Number of cached tokens S (0 when empty), as seen by the first layer."""
        return self.lengths[0]

    def reserve(self, like: torch.Tensor, heads: int, head_dim: int) -> None:
        """Allocate every layer's buffers for `like.shape[0]` rows in like's dtype and device (no-op once done)."""
        shape = (like.shape[0], heads, self.capacity, head_dim)
        for layer, keys in enumerate(self.keys):
            if keys is None:
                self.keys[layer] = like.new_zeros(shape)
                self.values[layer] = like.new_zeros(shape)

    def _buffers(self, layer: int, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is None:
            self.reserve(k, k.shape[1], k.shape[3])
        keys = self.keys[layer]
        require(keys.shape[:2] == k.shape[:2] and keys.shape[3] == k.shape[3],
                f"the KV cache was filled with (batch, heads) {tuple(keys.shape[:2])}, got keys {tuple(k.shape)}")
        return keys, self.values[layer]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor, store: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """[cached, new] keys and values (B, H, S + L, Dh) of `layer`, views of the buffers; with `store` the new ones
        stay cached for later calls."""
        start = self.lengths[layer]
        stop = start + k.shape[2]
        require(stop <= self.capacity,
                f"the KV cache holds {self.capacity} tokens; {start} cached + {k.shape[2]} new do not fit")
        keys, values = self._buffers(layer, k)
        keys[:, :, start:stop].copy_(k)
        values[:, :, start:stop].copy_(v)
        if store:
            self.lengths[layer] = stop
        return keys[:, :, :stop], values[:, :, :stop]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor,
              slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values (B, H, L, Dh) at `slots` (L,) and return the whole (B, H, capacity, Dh) buffers;
        lengths are left to `advance`."""
        keys, values = self._buffers(layer, k)
        keys.index_copy_(2, slots, k)
        values.index_copy_(2, slots, v)
        return keys, values

    def advance(self, length: int) -> None:
        """Mark the first `length` slots of every layer as cached (after `write` with store)."""
        require(length <= self.capacity, f"the KV cache holds {self.capacity} tokens, not {length}")
        self.lengths = [length] * len(self.lengths)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout: zero with probability p, scale the rest by 1 / (1 - p). On the CPU the keep-mask comes from 16
    random bits per element, four from each 64-bit draw, compared with p on a 1/65536 grid (the scale uses that same
    rounded p, so the expectation stays exact): random numbers are most of a dropout's cost on the CPU, where PyTorch
    draws them on one thread, and this takes a third of the time of `torch.rand_like` and a sixth of `F.dropout`'s
    Bernoulli sampling. Elsewhere it is `F.dropout`."""
    if p <= 0.0:
        return x
    dropped = round(p * 65536)  # of 65536 equally likely lane values
    if x.device.type != "cpu" or dropped >= 65536:
        return F.dropout(x, p, training=True)
    bits = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64, device=x.device)  # 64 bits
    lanes = bits.view(torch.int16)[: x.numel()].view(x.shape)  # 16 uniform bits per element, as -32768..32767
    keep = lanes >= dropped - 32768  # probability (65536 - dropped) / 65536
    return x * (keep * (65536 / (65536 - dropped))).to(x.dtype)


# score elements per chunk of batch rows in `_keys_major`: 2 MiB in float32, within the two cores' L2 caches of the
# machine the CPU figures come from (chunks of 4 MiB and of 1 MiB sampled a few per cent slower in an A/B, README)
SCORES_PER_CHUNK = 1 << 19


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
          scale: float | None = None) -> torch.Tensor:
    """Unmasked SDPA; on the CPU, where it is faster, the same product written out (softmax(q k^T / sqrt(d)), dropout,
    times v):
    - with attention dropout: SDPA falls back to its math path there anyway, with a slower dropout and a
      fully-masked-row check that an unmasked call never needs;
    - in a compiled training graph: inductor fuses the scaling and the softmax (forward and backward) around two
      batched GEMMs, which beats the flash kernel's backward: 7-10% off a whole compiled xAR training step at head
      dim 16 (`benchmarks/bench_xar.py`), 5-9% at head dims 32 and 64 (up to 256 keys; eager SDPA is as fast or faster).
      The probabilities are kept for the backward, (B, H, L, S) floats per call;
    - in a compiled graph without gradients, at head dims up to 32 in float32: keys-major (`_keys_major`), where
      the flash kernel spends its time in GEMMs with an inner dimension of 16 or 32 on blocks of 32 queries."""
    cpu = q.device.type == "cpu"
    compiling = torch.compiler.is_compiling()
    training = compiling and torch.is_grad_enabled() and q.requires_grad
    if cpu and compiling and not training and dropout_p == 0.0 and q.shape[-1] <= 32 and q.dtype == torch.float32 \
            and q.shape[1] * q.shape[2] * k.shape[2] <= SCORES_PER_CHUNK:
        return _keys_major(q, k, v, scale)
    if not cpu or not (dropout_p > 0.0 or training):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    probs = torch.matmul(q * scale, k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, L, S)
    return torch.matmul(dropout(probs, dropout_p), v)


def _keys_major(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, H, L, Dh) queries and (B, H, S, Dh) keys/values, for compiled CPU inference
    at small head dims: the scores as k q^T (S, L) per head, a softmax over the key axis, then p^T v, in chunks of
    batch rows whose scores fit `SCORES_PER_CHUNK`. With the keys as the rows, both batched GEMMs have a long
    dimension of S rather than Dh, and inductor writes the scaled, rotated queries straight into the transposed
    layout the first one reads. A compiled xAR sampler (head dim 16, 64 queries, up to 256 keys, two threads) took
    0.62x the time of the flash kernel's with 32 images and 0.77x with 8 (README); with one thread, 1.02-1.03x."""
    rows = max(1, SCORES_PER_CHUNK // (q.shape[1] * q.shape[2] * k.shape[2]))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    outs = []
    for i in range(0, q.shape[0], rows):
        scores = torch.matmul(k[i:i + rows], (q[i:i + rows] * scale).transpose(-2, -1))  # (b, H, S, L)
        outs.append(torch.matmul(scores.softmax(dim=-2).transpose(-2, -1), v[i:i + rows]))  # (b, H, L, Dh)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


@functools.cache
def _fused_flex():
    """FlexAttention compiled on its own, so that an eager model still gets its fused kernels: one static graph per
    shape (a model meets few: xAR's training sequence, FlexTok's encoder per batch size; xAR's sampler attends one
    entity at a time, with no block mask)."""
    return torch.compile(flex_attention, dynamic=False)


def _flex(device: torch.device):
    """The FlexAttention callable for `device`: plain `flex_attention` inside a compiled model (dynamo fuses it there)
    and on the CPU (eager: the unfused reference, as tested in CI); the separately compiled kernel on CUDA, where the
    unfused path materialises every score and runs many times slower."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention
    return _fused_flex()


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask, dropout: float = 0.0,
           scale: float | None = None) -> torch.Tensor:
    """Attention of queries (B, H, L, Dh) over keys/values (B, H, S + L, Dh) (the last L keys are the queries' own
    tokens) under any `Mask` -> (B, H, L, Dh). `scale` multiplies the logits (None: 1 / sqrt(Dh))."""
    cached = k.shape[2] - q.shape[2]
    if isinstance(mask, BlockCausal):
        require(mask.ends[-1] == q.shape[2],
                f"block-causal entities end at {mask.ends}, but there are {q.shape[2]} new tokens")
        if len(mask.ends) == 1:
            return _sdpa(q, k, v, dropout, scale)
        outs, start = [], 0
        for end in mask.ends:  # entity e: its queries against the keys of entities <= e and the cache, nothing masked
            out = _sdpa(q[:, :, start:end], k[:, :, :cached + end], v[:, :, :cached + end], dropout, scale)
            outs.append(rearrange(out, "b h l d -> b l h d"))
            start = end
        # joined token-major, so the caller's "b h l d -> b l (h d)" is a view, not a second copy
        return rearrange(torch.cat(outs, dim=1), "b l h d -> b h l d")
    if isinstance(mask, str):
        require(mask == "causal", f"unknown attention mask {mask!r}")
        if cached == 0 or q.shape[2] == 1:  # a single new token sees every key
            return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, dropout_p=dropout, scale=scale)
        ones = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ones.tril(cached), dropout_p=dropout, scale=scale)
    if BlockMask is not None and isinstance(mask, BlockMask):
        require(dropout == 0.0,
                "FlexAttention has no attention dropout; use the SDPA path (a tensor mask) with dropout")
        require(q.device.type != "cpu" or not (torch.is_grad_enabled() and q.requires_grad),
                "FlexAttention has no backward on the CPU; train there with attention backend sdpa (or auto)")
        return _flex(q.device)(q.contiguous(), k.contiguous(), v.contiguous(), block_mask=mask, scale=scale)
    if mask is None:
        return _sdpa(q, k, v, dropout, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


class Attention(nn.Module):
    """Self-attention: qkv projection, optional QK-norm, RoPE and KV cache, SDPA, output projection with dropout."""

    def __init__(
        self, width: int, heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
        qk_norm: bool = False, proj_bias: bool = True, scale: float | None = None,
    ) -> None:
        """`scale`: the logit scale, None for 1 / sqrt(head_dim) (official FlexTok checkpoints use muP's 8 / head_dim,
        the same at head_dim 64)."""
        super().__init__()
        require(width % heads == 0, f"attention width {width} must divide by the number of heads {heads}")
        self.heads, self.attn_drop, self.qk_norm, self.scale = heads, attn_drop, qk_norm, scale
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)  # applied through `dropout` (same p, faster masks on the CPU)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, ...] | None = None, mask: Mask = None,
        cache: KVCache | None = None, layer: int = 0, store: bool = False, slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, ..., D) -> the same shape: the middle axes, flattened in order, are the L tokens (so a caller may keep
        its tokens grouped, e.g. xAR's (B, entities, tokens, D)). `rope` holds (cos, sin) for the L new positions (and
        optionally their `rope_turn`, built once for all layers);
        `mask` (see `Mask`) covers the S cached and L new keys (a tensor one is (L, S + L)); `store` keeps these
        tokens' keys/values in `cache`. `slots` (L,): the static-shape cache path (`KVCache.write`), for mask None
        (the new tokens see each other and every earlier slot) or "causal" (each sees the slots up to its own)."""
        # (3, B, H, L, Dh)
        qkv = rearrange(self.qkv(x), "b ... (three h d) -> three b h (...) d", three=3, h=self.heads)
        q, k, v = qkv.unbind(0)  # (B, H, L, Dh) each; unbind (not slicing) keeps the backward free of zero-filled grads
        if self.qk_norm:  # bounded logits at any width and learning rate; fp32 so bf16 runs normalise exactly
            q, k = (F.layer_norm(t.float(), t.shape[-1:]).to(t.dtype) for t in (q, k))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None and slots is not None:
            require(mask is None or mask == "causal", "the static-shape KV cache path takes mask None or causal")
            k, v = cache.write(layer, k, v, slots)  # (B, H, capacity, Dh)
            # (1, 1) or (L, 1): last slot each query sees
            last = slots.max().view(1, 1) if mask is None else slots[:, None]
            mask = torch.arange(cache.capacity, device=slots.device) <= last  # (1 or L, capacity)
        elif cache is not None:
            k, v = cache.extend(layer, k, v, store)  # (B, H, S + L, Dh)
        out = attend(q, k, v, mask, self.attn_drop if self.training else 0.0, self.scale)  # (B, H, L, Dh)
        out = self.proj(rearrange(out, "b h l d -> b l (h d)"))  # (B, L, D)
        out = out.view(x.shape)
        return dropout(out, self.proj_drop.p) if self.training else out
