"""xAR: next-X prediction, autoregression over entities with a flow-matching objective per entity.

Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation", arXiv 2502.20388 (ICCV 2025).

A continuous (B, C, h, w) token grid is cut into entities (`entities.py`: token, k x k cell, subsample, scale, whole
image; default 8x8 cells of a 16x16 grid = 4 entities; or prefix groups of a 1D sequence such as FlexTok's register
codes, a (B, 6, 1, K) grid, for the `xar-flextok-*` presets). One transformer is the flow network of every entity at
once: all tokens of entity n share one noise level t_n, sit at their own positions, and the output at each position is
that token's velocity (no per-token head). Attention is block-causal over entities, so entity n is predicted from
entities < n and from its own noisy tokens.

Noisy Context Learning (§3.2.2): in training every (image, entity) pair draws its own t ~ logit-normal(0, 1), so the
context of entity n is entities < n at unrelated noise levels, and all entities are trained in one parallel forward:
loss = || v_theta(x_t) - (eps - x) ||^2 over all tokens (Eq. 4). `context="clean"` is the teacher-forcing ablation
(Table 5): a clean copy of the sequence (t = 0) comes first and noisy entity n attends to clean entities < n only,
exactly what the sampler feeds. Sampling (clean context at t = 0, KV cache, CFG) lives in `sampling.py`.

Network (§3.3 / official code): tokens -> Linear -> + learned positions -> RMSNorm -> depth blocks -> RMSNorm -> Linear
-> + learned positions -> depth blocks -> RMSNorm -> Linear velocity head; 2D RoPE in every attention layer, both
position tables in entity order. Blocks are VAR-style adaLN (gamma, scale, shift for attention and MLP, not adaLN-zero)
over weightless fp32 RMSNorm, with the condition class_emb(y) + t_emb(t_n) computed per (image, entity) and broadcast
to that entity's tokens; GEGLU MLPs. t is embedded continuously as t * 1000 by default (the paper asks for no more);
`time_floor=True` embeds the integer floor(t * 1000) as the official code does (`(t * 1000).long()`), in training and
sampling alike: the official recipe (`train/configs/xar_*_in256.yaml`) and converted official checkpoints set it.

Paper sizes (width / blocks / heads / GEGLU hidden): B 768 / 8+8 / 12 / 2048, L 1024 / 16+16 / 16 / 2730,
H 1280 / 20+20 / 16 / 3413; 172.6M, 608.4M and 1.19B parameters as built here (paper: 172M, 608M, 1.1B; the
H table row gives 1.19B with these sizes, so the paper's figure is a loose rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok import flow
from vistok.errors import VistokError, require
from vistok.generators.entities import ALL_KINDS, EntityKind, Partition, clean_context_mask
from vistok.graph_ops import einops_as_graph_ops
from vistok.modules.attention import Attention, BlockCausal, KVCache, Mask, flex_block_mask, rope_tables, rope_turn
from vistok.modules.embeddings import LabelEmbedding, TimestepEmbedding
from vistok.modules.mlp import GEGLU, glu_hidden

Context = Literal["noisy", "clean"]


@dataclass(frozen=True)
class XARConfig:
    in_channels: int = 16  # token channels C (KL-16 latents)
    grid: tuple[int, int] = (16, 16)  # token grid (h, w)
    entity: EntityKind = "cell"
    entity_size: int = 8  # cell side k, subsample stride d or number of scales; unused by token and image
    width: int = 768
    depth: int = 8  # blocks per half of the stack: 2 * depth blocks in all
    heads: int = 12
    num_classes: int = 1000  # label num_classes is the null class
    dropout: float = 0.1  # after the attention projection, the GEGLU activation and its output
    attn_dropout: float = 0.1
    label_drop: float = 0.1  # probability of training a sample with the null class (CFG)
    t_mean: float = 0.0  # logit-normal noise levels: t = sigmoid(N(t_mean, t_std^2))
    t_std: float = 1.0
    rope_theta: float = 10000.0
    context: Context = "noisy"  # noisy: NCL, the paper's method; clean: the teacher-forcing ablation
    # embed floor(t * 1000) like the official code (its recipe and converted checkpoints set it)
    time_floor: bool = False

    def __post_init__(self) -> None:
        require(len(self.grid) == 2, f"model.grid must be two numbers (h, w), got {self.grid}")
        require(self.entity in ALL_KINDS, f"model.entity={self.entity!r} is not one of {', '.join(ALL_KINDS)}")
        require(self.context in ("noisy", "clean"), f"model.context={self.context!r} must be noisy or clean")
        require(self.width >= 1 and self.heads >= 1,
                f"model.width={self.width} and model.heads={self.heads} must be >= 1")
        require(self.width % self.heads == 0, f"model.width={self.width} must divide by model.heads={self.heads}")
        require((self.width // self.heads) % 4 == 0,
                f"head dim {self.width // self.heads} must divide by 4 for 2D RoPE")
        require(self.depth >= 1 and self.in_channels >= 1, "model.depth and model.in_channels must be positive")
        require(0.0 <= self.label_drop < 1.0 and self.t_std > 0,
                "model.label_drop must be in [0, 1) and model.t_std > 0")
        Partition(self.entity, tuple(self.grid), self.entity_size)  # validates the grid against the entity

    @property
    def partition(self) -> Partition:
        return Partition(self.entity, tuple(self.grid), self.entity_size)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weightless RMSNorm over the last axis, computed in float32."""
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class GroupAdaLNBlock(nn.Module):
    """Pre-norm transformer block with VAR-style adaLN: per-group (gamma, scale, shift) for attention and MLP."""

    def __init__(self, width: int, heads: int, dropout: float, attn_dropout: float) -> None:
        super().__init__()
        self.attn = Attention(width, heads, qkv_bias=True, attn_drop=attn_dropout, proj_drop=dropout)
        self.mlp = GEGLU(width, glu_hidden(width), drop=dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, groups: torch.Tensor | None, rope: tuple[torch.Tensor, ...],
        mask: Mask, cache: KVCache | None, layer: int, store: bool, slots: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """cond (B, G, D): one condition per group. x (B, G, n, D) when the groups are G runs of n tokens (groups
        None: the modulation broadcasts over each run, nothing per token is built), else x (B, L, D) with groups
        (L,) the group of each token."""
        mod = self.ada(cond)  # (B, G, 6D)
        mod = mod[:, :, None] if groups is None else mod[:, groups]  # (B, G, 1, 6D) or (B, L, 6D), against x
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod.chunk(6, dim=-1)
        h = torch.addcmul(shift1, rms_norm(x), 1 + scale1)
        x = torch.addcmul(x, self.attn(h, rope, mask, cache, layer, store, slots), gamma1)
        h = torch.addcmul(shift2, rms_norm(x), 1 + scale2)
        return torch.addcmul(x, self.mlp(h), gamma2)


class XAR(nn.Module):
    """Class-conditional xAR generator over a (B, C, h, w) grid of continuous tokens; `forward` is the training loss."""

    def __init__(self, config: XARConfig) -> None:
        super().__init__()
        self.config, c = config, config
        self.partition = c.partition
        length, width = self.partition.num_tokens, c.width
        self.label_emb = LabelEmbedding(c.num_classes, width)
        self.time_emb = TimestepEmbedding(width, floor=c.time_floor)
        self.in_proj = nn.Linear(c.in_channels, width)
        self.pos_in = nn.Parameter(torch.zeros(length, width))
        self.in_norm = nn.RMSNorm(width, eps=1e-6)
        self.blocks_in = nn.ModuleList(GroupAdaLNBlock(width, c.heads, c.dropout, c.attn_dropout)
                                       for _ in range(c.depth))
        self.mid_norm = nn.RMSNorm(width, eps=1e-6)
        self.mid_proj = nn.Linear(width, width)
        self.pos_mid = nn.Parameter(torch.zeros(length, width))
        self.blocks_out = nn.ModuleList(GroupAdaLNBlock(width, c.heads, c.dropout, c.attn_dropout)
                                        for _ in range(c.depth))
        self.out_norm = nn.RMSNorm(width, eps=1e-6)
        self.head = nn.Linear(width, c.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Derived buffers, then xavier-uniform Linear weights with zero biases and N(0, 0.02) embeddings/positions.
        (Also the call that makes a model built on the meta device usable after `to_empty()`.)"""
        # derived from the config, so not saved: entity of each position, block-causal mask, RoPE in entity order
        device, part = self.pos_in.device, self.partition
        cos, sin = rope_tables(part.positions().to(device), self.config.width // self.config.heads,
                               self.config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (L, Dh)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("groups", part.entity_ids(device), persistent=False)  # (L,)
        self.register_buffer("mask", part.mask(device), persistent=False)  # (L, L) bool
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for p in (self.label_emb.table.weight, self.pos_in, self.pos_mid):
            nn.init.normal_(p, std=0.02)

    @property
    def blocks(self) -> list[GroupAdaLNBlock]:
        return [*self.blocks_in, *self.blocks_out]

    def fsdp_units(self) -> list[nn.Module]:
        return self.blocks

    @property
    def null_class(self) -> int:
        return self.label_emb.null_class

    def new_cache(self) -> KVCache:
        """An empty KV cache with one slot per attention layer."""
        return KVCache(2 * self.config.depth, self.partition.num_tokens)

    def draw_t(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, E) noise levels, one independent logit-normal draw per (image, entity)."""
        return flow.logit_normal((batch, self.partition.num_entities), self.config.t_mean,
                                 self.config.t_std, device=device)

    def condition(self, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """labels (B,), t (B, G) -> (B, G, D): class embedding + embedding of each entity's own noise level."""
        return self.label_emb(labels)[:, None] + self.time_emb(t)

    def transformer(
        self, x: torch.Tensor, cond: torch.Tensor, groups: torch.Tensor | int, index: torch.Tensor,
        mask: Mask = None, cache: KVCache | None = None, store: bool = False,
    ) -> torch.Tensor:
        """The stack on any set of positions: x (B, L', C) tokens at sequence positions `index` (L',), each token in
        group groups[i] of cond (B, G, D) (an int n: G consecutive runs of n tokens) -> (B, L', C) velocities.
        After `compile_stack` this runs compiled."""
        compiled = self.__dict__.get("_compiled_stack")
        if compiled is None or torch.compiler.is_compiling():
            return self._stack(x, cond, groups, index, mask, cache, store)
        # after the cache, one entity: static-shape writes at `index` (one graph for every position), unless the
        # graphs are specialised per cache length (few entities: exact shapes, no attention over empty slots)
        static = cache is not None and mask is None and not self.__dict__["_exact_shapes"]
        if cache is not None:  # allocated outside the graph, so the first call does not trace an allocation
            cache.reserve(x, self.config.heads, self.config.width // self.config.heads)
        # exact shapes: 2E - 1 graphs per batch size, with room for several batch sizes (a last partial batch) and
        # models
        with torch._dynamo.config.patch(recompile_limit=max(32, 8 * self.partition.num_entities + 8)):
            out = compiled(x, cond, groups, index, mask, cache, store, static)
        if static and store:
            cache.advance(cache.length + x.shape[1])
        return out

    EXACT_SHAPES_MAX_ENTITIES = 16

    def compile_stack(self, backend: str = "inductor", exact_shapes: bool | None = None, **options) -> None:
        """Run the block stack (`transformer`, used by training and sampling alike) through `torch.compile` from now
        on; once per model (later calls do nothing). exact_shapes: one graph per cache length (2E - 1 graphs for E
        entities, each attending to exactly the cached tokens; the default up to `EXACT_SHAPES_MAX_ENTITIES`
        entities), else one static-shape graph that attends over the whole preallocated cache with the empty slots
        masked (many entities, CUDA graphs). `options` go to `torch.compile` (e.g. mode)."""
        if self.__dict__.get("_compiled_stack") is None:
            einops_as_graph_ops()
            if exact_shapes is None:
                exact_shapes = self.partition.num_entities <= self.EXACT_SHAPES_MAX_ENTITIES
            if exact_shapes:
                options.setdefault("dynamic", False)  # a new batch size recompiles rather than tracing symbolic lengths
            self.__dict__["_exact_shapes"] = exact_shapes
            self.__dict__["_compiled_stack"] = torch.compile(self._stack, backend=backend, **options)

    def _stack(
        self, x: torch.Tensor, cond: torch.Tensor, groups: torch.Tensor | int, index: torch.Tensor,
        mask: Mask = None, cache: KVCache | None = None, store: bool = False, static: bool = False,
    ) -> torch.Tensor:
        rope = (self.rope_cos[index], self.rope_sin[index])  # (L', Dh) each
        if not torch.compiler.is_compiling():
            rope = (*rope, rope_turn(*rope))  # the complex rotations once for every layer (eager fast path)
        slots = index if static else None  # cache slots are sequence positions
        # G equal runs of n tokens: the stack works on (B, G, n, D), so each block's modulation is a broadcast
        runs = isinstance(groups, int)
        split = (lambda h: rearrange(h, "... (g n) d -> ... g n d", n=groups)) if runs else (lambda h: h)  # noqa: E731
        per_token = None if runs else groups
        h = self.in_norm(split(self.in_proj(x) + self.pos_in[index]))  # (B, G, n, D) or (B, L', D)
        for i, blk in enumerate(self.blocks_in):
            h = blk(h, cond, per_token, rope, mask, cache, i, store, slots)
        h = self.mid_proj(self.mid_norm(h)) + split(self.pos_mid[index])
        for i, blk in enumerate(self.blocks_out, start=len(self.blocks_in)):
            h = blk(h, cond, per_token, rope, mask, cache, i, store, slots)
        out = self.head(self.out_norm(h))  # (B, G, n, C) or (B, L', C)
        return rearrange(out, "b g n c -> b (g n) c") if runs else out  # (B, L', C)

    attention_backend = "auto"  # see `modules.attention.set_attention_backend`

    def entity_mask(self, first: int, num: int, cached: int, device: torch.device) -> Mask:
        """The block-causal mask of entities first..first+num-1 after `cached` visible tokens: None for one entity;
        a FlexAttention block mask when `attention_backend` is flex (auto: on CUDA, unless attention dropout is on
        in training); else one SDPA call per entity (`BlockCausal`), or a dense boolean mask past 16 entities."""
        if num == 1:
            return None
        offsets = self.partition.offsets
        start, stop = offsets[first], offsets[first + num]
        backend = self.attention_backend
        dropout = self.training and self.config.attn_dropout > 0
        if backend == "flex" or (backend == "auto" and device.type == "cuda" and not dropout):
            key = (first, num, cached, str(device))
            masks = self.__dict__.setdefault("_flex_masks", {})
            if key not in masks:  # built once per layout; mask_mod reads entity ids (cached keys: -1, always visible)
                q_ids = self.groups[start:stop].to(device)
                kv_ids = torch.cat([torch.full((cached,), -1, dtype=q_ids.dtype, device=device), q_ids])
                masks[key] = flex_block_mask(lambda b, h, q, kv: kv_ids[kv] <= q_ids[q], stop - start,
                                             cached + stop - start, device)
            return masks[key]
        if num <= 16:
            return BlockCausal(tuple(offsets[first + e + 1] - start for e in range(num)))
        mask = self.mask[start:stop, start:stop]
        if cached:
            mask = torch.cat([mask.new_ones(stop - start, cached), mask], dim=1)
        return mask

    def predict(
        self, x: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, first: int = 0,
        cache: KVCache | None = None, store: bool = False,
    ) -> torch.Tensor:
        """Velocities of G consecutive entities first..first+G-1: x (B, L', C) their tokens, t (B, G) their noise
        levels, labels (B,). Without a cache they attend block-causally among themselves (first=0 and G=E is the
        training forward); with one they also see every cached token."""
        offsets, num = self.partition.offsets, t.shape[1]
        require(0 <= first and first + num <= self.partition.num_entities,
                f"entities {first}..{first + num - 1} do not exist; the model has {self.partition.num_entities}")
        start, stop = offsets[first], offsets[first + num]
        require(x.shape[1] == stop - start,
                f"entities {first}..{first + num - 1} hold {stop - start} tokens, got x {tuple(x.shape)}")
        index = torch.arange(start, stop, device=x.device)  # (L',)
        mask = self.entity_mask(first, num, 0 if cache is None else cache.length, x.device)
        lengths = self.partition.lengths[first:first + num]
        groups = lengths[0] if len(set(lengths)) == 1 else self.groups[index] - first
        return self.transformer(x, self.condition(labels, t), groups, index, mask, cache, store)

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor, t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None, context: Context | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss (paper Eq. 4) on a (B, C, h, w) token grid with labels (B,).

        t (B, E) and noise (B, L, C) are drawn unless given; context defaults to config.context."""
        c = self.config
        if tokens.ndim != 4 or tokens.shape[1] != c.in_channels or tuple(tokens.shape[-2:]) != tuple(c.grid):
            raise VistokError(f"xAR expects (B, {c.in_channels}, {c.grid[0]}, {c.grid[1]}) tokens, got "
                              f"{tuple(tokens.shape)}")
        x = self.partition.split(tokens)  # (B, L, C) in entity order
        t = self.draw_t(x.shape[0], x.device) if t is None else t  # (B, E): Noisy Context Learning
        noise = torch.randn_like(x) if noise is None else noise  # (B, L, C)
        x_t = flow.interpolate(x, noise, t[:, self.groups, None])  # every token at its entity's noise level
        target = flow.velocity_target(x, noise)  # (B, L, C)
        if self.training:
            labels = self.label_emb.drop(labels, c.label_drop)
        if (context or c.context) == "noisy":
            v = self.predict(x_t, labels, t)  # (B, L, C)
        else:
            v = self.teacher_forced(x, x_t, labels, t)
        return F.mse_loss(v.float(), target.float())

    def teacher_forced(self, x: torch.Tensor, x_t: torch.Tensor, labels: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Clean-context ablation: velocities (B, L, C) of the noisy entities, each conditioned on the clean (t = 0)
        entities before it, in one forward over [clean (L), noisy (L)]."""
        num, length = self.partition.num_entities, self.partition.num_tokens
        index = torch.arange(length, device=x.device).repeat(2)  # both copies at the same positions
        groups = torch.cat([self.groups, self.groups + num])  # clean entities are groups 0..E-1, noisy ones E..2E-1
        cond = self.condition(labels, torch.cat([torch.zeros_like(t), t], dim=1))  # (B, 2E, D)
        mask = clean_context_mask(self.partition.lengths, x.device)  # (2L, 2L)
        return self.transformer(torch.cat([x, x_t], dim=1), cond, groups, index, mask)[:, length:]


TINY = dict(in_channels=48, grid=(8, 8), entity_size=4, num_classes=10)  # 32x32 images through pixel-p4 tokens
FLEXTOK = dict(in_channels=6, entity="prefix")  # FlexTok FSQ codes as a (B, 6, 1, K) grid

PRESETS = {
    "xar-b": XARConfig(width=768, depth=8, heads=12),  # 172,638,224 parameters
    "xar-l": XARConfig(width=1024, depth=16, heads=16),  # 608,397,968
    "xar-h": XARConfig(width=1280, depth=20, heads=16),  # 1,186,024,096 (the paper rounds to 1.1B)
    "xar-tiny": XARConfig(**TINY, width=192, depth=3, heads=6),  # 4,169,520; 4 cells of 4x4 tokens
    "xar-tiny-s": XARConfig(**TINY, width=96, depth=2, heads=4),  # 736,112
    "xar-test": XARConfig(**TINY, width=64, depth=1, heads=4, dropout=0.0, attn_dropout=0.0),  # 189,400
    # on FlexTok register codes (FSQ [8,8,8,5,5,5]: 6 channels), groups 1, 1, 2, 4, ... ending at k = 1, 2, 4, ..., K
    "xar-flextok-b": XARConfig(**FLEXTOK, grid=(1, 256)),  # 172,622,854; 9 groups over 256 registers
    "xar-flextok-tiny": XARConfig(**FLEXTOK, grid=(1, 16), num_classes=10, width=96, depth=2, heads=4,
                                  dropout=0.0, attn_dropout=0.0),  # 718,790; 5 groups over 16 registers
    "xar-flextok-test": XARConfig(**FLEXTOK, grid=(1, 8), num_classes=10, width=64, depth=1, heads=4,
                                  dropout=0.0, attn_dropout=0.0),  # 176,814; 4 groups over 8 registers
}

FAMILY = ("xar", XARConfig, XAR)
