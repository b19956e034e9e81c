"""A class-conditional GPT over FlexTok token ids: FlexTok's stage-2 autoregressive generator.

Bachmann, Allardice, Mizrahi et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length",
arXiv 2502.13967, §4: "a simple GPT-style Transformer" predicts the K register ids of an image one after another;
since every prefix of FlexTok's registers decodes to an image, generation may stop at any k <= K. GPT: Radford et
al., "Language Models are Unsupervised Multitask Learners" (GPT-2, 2019): a decoder-only transformer with causal
attention and next-token cross-entropy. (The authors did not release their AR code; sizes follow the public
reproduction the spec cites: width = 64 x depth, head dim 64.)

Sequence: position 0 holds the class embedding (a table with a null class, trained with label dropout for
classifier-free guidance), position p >= 1 the embedding of token p - 1, plus learned absolute positions; the output at
position p is the logit vector of token p. Blocks are FlexTok's own (`modules/blocks.py`): pre-norm, no-affine fp32
LayerNorm, bias-free attention with QK-norm, SwiGLU; a final norm and a zero-initialised Linear give the logits, so
the initial loss is log(vocabulary). Sampling (KV cache, temperature, top-k, top-p, CFG) lives in `sampling.py`.

Token embeddings: `embedding="table"` is the usual pair of V x D tables (input embedding, logit head). For small
models the two tables dwarf the network (2 x 64,000 x 128 = 16.4M parameters beside 0.4M of blocks), so
`embedding="code"` computes both from the FSQ code vector of each id instead (FlexTok's ids are a bijection onto the
6-d grid of `levels`): input = MLP_in(code(id)), logits = norm(h) @ MLP_out(codes of all V ids)^T. The output is
still a full categorical over the V ids; only its parameterisation is smaller (the tiny preset uses it).

Parameter counts as built here (vocabulary 64,000; blocks alone are 12 D^2 per block, matching the reproduction's
49M / 85M / 201M / 393M / 679M / 1.33B; the embedding and logit tables add 2 x 64,000 x D):
  gpt-d10   (640, 10 blocks)    131,863,680    blocks   49.1M
  gpt-d12   (768, 12 blocks)    184,204,032    blocks   84.9M
  gpt-d16  (1024, 16 blocks)    333,652,992    blocks  201.3M
  gpt-d20  (1280, 20 blocks)    558,639,360    blocks  393.2M
  gpt-d24  (1536, 24 blocks)    878,016,000    blocks  679.5M
  gpt-d30  (1920, 30 blocks)  1,575,277,440    blocks 1327.1M
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vistok.errors import VistokError, require
from vistok.graph_ops import einops_as_graph_ops
from vistok.modules.attention import KVCache
from vistok.modules.blocks import Block, layer_norm
from vistok.modules.embeddings import LabelEmbedding
from vistok.modules.fsq import FSQ


@dataclass(frozen=True)
class ARConfig:
    vocab_size: int = 64_000  # FlexTok's FSQ codebook: prod([8, 8, 8, 5, 5, 5])
    tokens: int = 256  # K, the longest sequence (FlexTok's registers)
    num_classes: int = 1000  # label num_classes is the null class
    width: int = 768
    depth: int = 12
    heads: int = 12
    label_drop: float = 0.1  # probability of training a sample with the null class (CFG)
    embedding: Literal["table", "code"] = "table"  # code: embeddings and logit rows from the FSQ code of each id
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)  # the FSQ levels behind the ids (used by embedding="code")

    def __post_init__(self) -> None:
        require(self.embedding in ("table", "code"), f"model.embedding={self.embedding!r} must be table or code")
        if self.embedding == "code":
            levels = 1
            for level in self.levels:
                levels *= level
            require(levels == self.vocab_size, f"model.embedding=code needs model.levels whose product is "
                    f"model.vocab_size={self.vocab_size}; {list(self.levels)} give {levels}")
        require(self.vocab_size >= 2 and self.tokens >= 1, "model.vocab_size must be >= 2 and model.tokens >= 1")
        require(self.depth >= 1 and self.num_classes >= 1, "model.depth and model.num_classes must be positive")
        require(self.width >= 1 and self.heads >= 1,
                f"model.width={self.width} and model.heads={self.heads} must be >= 1")
        require(self.width % self.heads == 0, f"model.width={self.width} must divide by model.heads={self.heads}")
        require(0.0 <= self.label_drop < 1.0, f"model.label_drop={self.label_drop} must be in [0, 1)")


class AR(nn.Module):
    """Class-conditional GPT over ids in [0, vocab_size); `forward` is the next-token loss, `logits` the network."""

    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.config, c = config, config
        self.label_emb = LabelEmbedding(c.num_classes, c.width)
        if c.embedding == "table":
            self.tok_emb = nn.Embedding(c.vocab_size, c.width)
            self.head = nn.Linear(c.width, c.vocab_size, bias=False)
        else:
            d = len(c.levels)
            self.tok_emb = nn.Sequential(nn.Linear(d, c.width), nn.GELU(), nn.Linear(c.width, c.width))
            self.head = nn.Sequential(nn.Linear(d, c.width), nn.GELU(), nn.Linear(c.width, c.width))
        self.pos = nn.Parameter(torch.zeros(c.tokens, c.width))  # position 0: the class token
        self.blocks = nn.ModuleList(Block(c.width, c.heads) for _ in range(c.depth))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """xavier-uniform Linears with zero biases, N(0, 0.02) embeddings and positions, a zero logit head (uniform
        first guess). Also the derived (V, d) table of FSQ codes for embedding="code"."""
        c = self.config
        if c.embedding == "code":
            ids = torch.arange(c.vocab_size, device=self.pos.device)
            self.register_buffer("codes", FSQ(c.levels).to(self.pos.device).indices_to_codes(ids), persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.label_emb.table.weight, self.pos, *([self.tok_emb.weight] if c.embedding == "table" else [])):
            nn.init.normal_(p, std=0.02)
        last = self.head if c.embedding == "table" else self.head[-1]
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, n) -> (B, n, D)."""
        if self.config.embedding == "table":
            return self.tok_emb(ids)
        return self.tok_emb(self.codes[ids])

    def logit_weights(self) -> torch.Tensor:
        """(V, D): one row per id, the logit of id v being <norm(h), row v>."""
        return self.head.weight if self.config.embedding == "table" else self.head(self.codes)

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    @property
    def null_class(self) -> int:
        return self.label_emb.null_class

    def new_cache(self) -> KVCache:
        """An empty KV cache with one slot per block."""
        return KVCache(self.config.depth, self.config.tokens)

    def embed(self, labels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """labels (B,), ids (B, n) -> (B, n + 1, D) inputs [class, tokens] for positions 0..n (no positions added)."""
        return torch.cat([self.label_emb(labels)[:, None], self.token_embedding(ids)], dim=1)

    def logits(
        self, h: torch.Tensor, start: int = 0, cache: KVCache | None = None, store: bool = False,
    ) -> torch.Tensor:
        """Inputs h (B, L, D) at positions start..start+L-1 -> logits (B, L, V) in float32; causal among themselves
        (SDPA's `is_causal` kernel) and, with a cache of `start` tokens, attending to all of them. After
        `compile_stack` the blocks and the head run compiled."""
        length, cached = h.shape[1], 0 if cache is None else cache.length
        if cache is not None:
            require(cached == start, f"a cache of {cached} tokens cannot continue at position {start}")
        require(start + length <= self.config.tokens,
                f"positions {start}..{start + length - 1} exceed the model's {self.config.tokens} tokens")
        positions = torch.arange(start, start + length, device=h.device)  # (L,): a tensor, so graphs are position-free
        compiled = self.__dict__.get("_compiled_stack")
        if compiled is None or torch.compiler.is_compiling():
            return self._stack(h, positions, cache, store)
        if cache is not None:  # compiled: static-shape cache writes at `positions`, allocated outside the graph
            cache.reserve(h, self.config.heads, self.config.width // self.config.heads)
        out = compiled(h, positions, cache, store, static=cache is not None)
        if cache is not None and store:
            cache.advance(start + length)
        return out

    def compile_stack(self, backend: str = "inductor", **options) -> None:
        """Run the blocks and the logit head through `torch.compile` from now on; once per model."""
        if self.__dict__.get("_compiled_stack") is None:
            einops_as_graph_ops()
            self.__dict__["_compiled_stack"] = torch.compile(self._stack, backend=backend, **options)

    def _stack(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache | None, store: bool,
               static: bool = False) -> torch.Tensor:
        h = h + self.pos[positions].to(h.dtype)  # (B, L, D)
        slots = positions if static else None
        for i, blk in enumerate(self.blocks):
            h = blk(h, "causal", cache, i, store, slots)  # causal over the new tokens, every cached one visible
        return F.linear(layer_norm(h), self.logit_weights().to(h.dtype)).float()  # (B, L, V)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy (mean over the B x K ids) of ids (B, K) given labels (B,)."""
        c = self.config
        if ids.ndim != 2 or ids.shape[1] != c.tokens or ids.is_floating_point():
            raise VistokError(f"the GPT expects (B, {c.tokens}) integer token ids, got {ids.dtype} {tuple(ids.shape)}")
        if self.training:
            labels = self.label_emb.drop(labels, c.label_drop)
        logits = self.logits(self.embed(labels, ids[:, :-1]))  # (B, K, V): position p predicts token p
        return F.cross_entropy(logits.flatten(0, 1), ids.flatten().long())


TINY = dict(vocab_size=64_000, tokens=16, num_classes=10)  # CIFAR-10 through cifar10-flextok-tiny (16 registers)
PAPER = dict(vocab_size=64_000, tokens=256, num_classes=1000)  # ImageNet through FlexTok d18-d18 (256 registers)

PRESETS = {
    "gpt-d10": ARConfig(**PAPER, width=640, depth=10, heads=10),  # 131,863,680
    "gpt-d12": ARConfig(**PAPER, width=768, depth=12, heads=12),  # 184,204,032
    "gpt-d16": ARConfig(**PAPER, width=1024, depth=16, heads=16),  # 333,652,992
    "gpt-d20": ARConfig(**PAPER, width=1280, depth=20, heads=20),  # 558,639,360
    "gpt-d24": ARConfig(**PAPER, width=1536, depth=24, heads=24),  # 878,016,000
    "gpt-d30": ARConfig(**PAPER, width=1920, depth=30, heads=30),  # 1,575,277,440 (1.33B in blocks, the paper's AR)
    "gpt-tiny": ARConfig(**TINY, width=128, depth=2, heads=2, embedding="code"),  # 431,232 (with tables: 16,780,416)
    "gpt-test": ARConfig(**{**TINY, "tokens": 8}, width=32, depth=1, heads=1),  # 4,108,864; on flextok-test's 8 tokens
}

FAMILY = ("ar", ARConfig, AR)
