"""FlexTok: resampling images into 1D token sequences of flexible length, with a rectified-flow decoder.

Bachmann, Allardice, Mizrahi et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length",
arXiv 2502.13967 (ICML 2025).

The tokenizer works on a (B, C, H, W) latent grid: FlexTok VAE latents (16 x 32 x 32 at 256 px), or pixels for the
CPU presets (`vae.py` / `pixel.py` turn images into that grid and back).

- Encoder: 2D sin-cos-positioned patch embeddings, then K learnable registers; patches attend to patches only, and
  register i attends to every patch and to registers 0..i (causal), so a prefix of registers never depends on later
  ones. Bias-free pre-norm blocks with QK-norm and SwiGLU; a head (norm, zero-init Linear) maps registers to FSQ.
- FSQ (`modules/fsq.py`): levels [8, 8, 8, 5, 5, 5], 64,000 codes per token.
- Decoder: codes -> Linear -> + register positions; nested dropout replaces registers k..K-1 by one learned mask
  token (k per sample: uniform over {1, 2, 4, ..., K} by default, 1..K as an option, explicit at inference); CFG
  null-conditioning replaces all registers by a learned null token. The noised latent's patches (2D sin-cos) and the
  registers attend jointly and bidirectionally; adaLN-zero modulates patches and registers separately from a
  sinusoidal time MLP; a head on the patches predicts the velocity.
- Loss: t ~ logit-normal, x_t = t noise + (1 - t) x0, MSE of v to noise - x0 (`flow.py`: t = 1 is noise), plus REPA
  (`modules/repa.py`) on decoder block `repa_layer` against a frozen teacher's features, computed by the caller.
Sampling (Euler, CFG/APG, mixed prefix lengths per batch) lives in `flextok_sampling.py`. The released checkpoints of
apple/ml-flextok load through `flextok_official.py` (`vistok convert --from flextok`, or `vistok.load` of a hub folder
or hf:// repo); they run with `official_numerics` and reproduce the official code's ids, velocities and decodings.

Paper sizes (width = 64 x depth, head dim 64): d12-d12, d18-d18, d18-d28. Parameter counts as built here, with the
REPA projector to DINOv2-L features (1024-d; 7.87M / 8.66M / 9.97M of the totals, used in training only):
  flextok-d12-d12    265,306,950   transformer blocks without adaLN 169.9M (paper 170M), adaLN x2 85.0M
  flextok-d18-d18    873,979,590   blocks without adaLN 573.3M (paper 573M), adaLN x2 286.9M
  flextok-d18-d28  2,466,274,758   blocks without adaLN 1365.5M (paper "1.4B"), adaLN x2 1079.6M
The rest is embeddings, registers, time MLP and heads (about 2M). The FlexTok VAE (83.8M, `vae.py`) is a separate
module and not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vistok import flow
from vistok.errors import VistokError, require
from vistok.graph_ops import einops_as_graph_ops
from vistok.modules.attention import BlockMask, flex_block_mask
from vistok.modules.blocks import AdaLNHead, AdaLNZeroBlock, Block, layer_norm
from vistok.modules.embeddings import TimestepEmbedding
from vistok.modules.fsq import FSQ, QuantOut
from vistok.modules.posemb import patchify, sincos_posemb, unpatchify
from vistok.modules.repa import projector, repa_loss

NestedDropout = Literal["pow2", "uniform", "off"]


@dataclass(frozen=True)
class FlexTokConfig:
    in_channels: int = 16  # latent channels (FlexTok VAE: 16; pixels: 3)
    grid: tuple[int, int] = (32, 32)  # latent size (H, W)
    patch: int = 2
    registers: int = 256  # K, the longest token sequence
    levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5)  # FSQ levels, 64,000 codes
    enc_width: int = 1152
    enc_depth: int = 18
    dec_width: int = 1152
    dec_depth: int = 18
    head_dim: int = 64
    nested_dropout: NestedDropout = "pow2"  # U{1, 2, 4, ..., K} | U{1..K} | always K (README: pow2 best at k <= 4)
    null_cond_p: float = 0.1  # probability of a null-conditioned (all registers nulled) training sample, for CFG
    t_mean: float = 0.0  # logit-normal t = sigmoid(N(t_mean, t_std^2))
    t_std: float = 1.0
    repa_dim: int = 0  # teacher feature width; 0 disables REPA (no projector)
    repa_hidden: int = 2048
    repa_layer: int = 1  # decoder block whose output (patch part) is aligned
    repa_weight: float = 0.5
    max_timestep: float = 1.0  # the time MLP sees sinusoidal features of t * 1000 / max_timestep (an official option)
    # apple/ml-flextok's numerics, set by `vistok convert --from flextok` so released weights reproduce official
    # outputs: LayerNorm eps 1e-5 (vistok: 1e-6), attention logits times 8 / head_dim (muP; vistok: 1 / sqrt(head_dim),
    # the same at head dim 64), time frequencies scaled before multiplying t (1e-7 instead of 1e-6 of velocity error)
    official_numerics: bool = False

    def __post_init__(self) -> None:
        require(self.patch >= 1 and self.head_dim >= 1,
                f"model.patch={self.patch} and model.head_dim={self.head_dim} must be >= 1")
        require(len(self.grid) == 2 and all(n % self.patch == 0 for n in self.grid),
                f"model.grid={self.grid} must be two sizes divisible by model.patch={self.patch}")
        for name in ("enc_width", "dec_width"):
            width = getattr(self, name)
            require(width % self.head_dim == 0, f"model.{name}={width} must divide by model.head_dim={self.head_dim}")
            require(width % 4 == 0, f"model.{name}={width} must divide by 4 for 2D sin-cos positions")
        require(min(self.in_channels, self.registers, self.enc_depth, self.dec_depth,
                    self.enc_width, self.dec_width) >= 1,
                "model.in_channels, registers, enc_depth, dec_depth, enc_width and dec_width must be positive")
        require(self.nested_dropout in ("pow2", "uniform", "off"),
                f"model.nested_dropout={self.nested_dropout!r} must be pow2, uniform or off")
        require(0.0 <= self.null_cond_p < 1.0 and self.t_std > 0,
                "model.null_cond_p must be in [0, 1) and model.t_std > 0")
        require(self.max_timestep > 0, f"model.max_timestep must be positive, got {self.max_timestep}")
        require(self.repa_dim == 0 or 0 <= self.repa_layer < self.dec_depth,
                f"model.repa_layer={self.repa_layer} must name a decoder block (0..{self.dec_depth - 1})")
        FSQ(self.levels)  # validates the levels

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.grid[0] // self.patch, self.grid[1] // self.patch

    @property
    def num_patches(self) -> int:
        return self.patch_grid[0] * self.patch_grid[1]

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch**2

    @property
    def attn_scale(self) -> float | None:
        return 8.0 / self.head_dim if self.official_numerics else None

    @property
    def norm_eps(self) -> float:
        return 1e-5 if self.official_numerics else 1e-6


def register_mask(num_patches: int, num_registers: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(N + K, N + K) bool, True = may attend: patches see patches; register i sees every patch and registers <= i."""
    n, length = num_patches, num_patches + num_registers
    mask = torch.zeros(length, length, dtype=torch.bool, device=device)
    mask[:, :n] = True
    mask[n:, n:] = torch.ones(num_registers, num_registers, dtype=torch.bool, device=device).tril()
    return mask


class FlexTokLoss(NamedTuple):
    loss: torch.Tensor  # flow + repa_weight * repa, the one to backpropagate
    flow: torch.Tensor  # MSE of the velocity
    repa: torch.Tensor  # negative cosine (0 without REPA)


class Encoder(nn.Module):
    """(B, C, H, W) latents -> (B, K, d) pre-quantization register vectors."""

    def __init__(self, c: FlexTokConfig) -> None:
        super().__init__()
        self.config = c
        self.patch_emb = nn.Linear(c.patch_dim, c.enc_width)
        self.registers = nn.Parameter(torch.zeros(c.registers, c.enc_width))
        self.blocks = nn.ModuleList(Block(c.enc_width, c.enc_width // c.head_dim, norm_eps=c.norm_eps,
                                          attn_scale=c.attn_scale)
                                    for _ in range(c.enc_depth))
        self.head = nn.Linear(c.enc_width, len(c.levels))  # zero-initialised: every token starts at code 0

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.patch_emb(patchify(x, self.config.patch)) + pos  # (B, N, D)
        h = torch.cat([h, self.registers.expand(h.shape[0], -1, -1).to(h.dtype)], dim=1)  # (B, N + K, D)
        for blk in self.blocks:
            h = blk(h, mask)
        return self.head(layer_norm(h[:, self.config.num_patches:], self.config.norm_eps))  # (B, K, d): registers only


class Decoder(nn.Module):
    """Velocity of the noised latent given registers: (B, C, H, W), t (B,), registers (B, K, D) -> (B, C, H, W)."""

    def __init__(self, c: FlexTokConfig) -> None:
        super().__init__()
        self.config, width = c, c.dec_width
        self.from_codes = nn.Linear(len(c.levels), width)
        self.register_pos = nn.Parameter(torch.zeros(c.registers, width))  # FSQ codes carry no position
        self.mask_token = nn.Parameter(torch.zeros(width))  # registers k..K-1 under nested dropout
        self.null_token = nn.Parameter(torch.zeros(width))  # every register of a null-conditioned (CFG) sample
        self.patch_emb = nn.Linear(c.patch_dim, width)
        # sinusoidal features of 1000 t / max_timestep, max period 256
        self.time_emb = TimestepEmbedding(width, scale=1000.0 / c.max_timestep, max_period=256.0,
                                          scale_freqs=c.official_numerics)
        self.blocks = nn.ModuleList(AdaLNZeroBlock(width, width // c.head_dim, num_segments=2, norm_eps=c.norm_eps,
                                                   attn_scale=c.attn_scale) for _ in range(c.dec_depth))
        self.head = AdaLNHead(width, c.patch_dim, norm_eps=c.norm_eps)

    def condition(self, codes: torch.Tensor, keep_k: torch.Tensor, null: torch.Tensor | None = None) -> torch.Tensor:
        """codes (B, K, d), keep_k (B,) tokens kept, null (B,) bool -> (B, K, D) register inputs: nested dropout
        replaces registers >= keep_k by the mask token; null samples get the null token everywhere."""
        regs = self.from_codes(codes) + self.register_pos  # (B, K, D)
        kept = torch.arange(regs.shape[1], device=regs.device) < keep_k.to(regs.device)[:, None]  # (B, K)
        regs = torch.where(kept[..., None], regs, self.mask_token.to(regs.dtype))
        if null is not None:
            regs = torch.where(null.to(regs.device)[:, None, None], self.null_token.to(regs.dtype), regs)
        return regs

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, registers: torch.Tensor, pos: torch.Tensor, repa_layer: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(velocity (B, C, H, W), patch features after block `repa_layer` (B, N, D) or None)."""
        c, feats = self.config, None
        h = self.patch_emb(patchify(x_t, c.patch)) + pos  # (B, N, D)
        h = torch.cat([h, registers.to(h.dtype)], dim=1)  # (B, N + K, D): joint, bidirectional attention
        cond, segments = self.time_emb(t), (c.num_patches, registers.shape[1])  # (B, D)
        for i, blk in enumerate(self.blocks):
            h = blk(h, cond, segments)
            if i == repa_layer:
                feats = h[:, : c.num_patches]
        v = self.head(h[:, : c.num_patches], cond)  # (B, N, C p^2): patches only
        return unpatchify(v, c.patch_grid, c.patch), feats


class FlexTok(nn.Module):
    """Encoder -> FSQ -> rectified-flow decoder; `forward` is the training loss, `flextok_sampling` decodes."""

    def __init__(self, config: FlexTokConfig) -> None:
        super().__init__()
        self.config, c = config, config
        self.encoder = Encoder(c)
        self.fsq = FSQ(c.levels)
        self.decoder = Decoder(c)
        self.repa_proj = projector(c.dec_width, c.repa_hidden, c.repa_dim) if c.repa_dim else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Derived buffers, xavier-uniform Linears with zero biases, N(0, 0.02) tokens and positions, then zero-init
        of the encoder head, every adaLN modulation and the velocity head. (Also makes a meta-device model usable
        after `to_empty()`.)"""
        c, device = self.config, self.encoder.registers.device
        self.register_buffer("enc_pos", sincos_posemb(c.patch_grid, c.enc_width, device=device), persistent=False)
        self.register_buffer("dec_pos", sincos_posemb(c.patch_grid, c.dec_width, device=device), persistent=False)
        self.register_buffer("enc_mask", register_mask(c.num_patches, c.registers, device), persistent=False)
        self.fsq = FSQ(c.levels).to(device)  # its derived buffers too (garbage after a meta model's to_empty())
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for p in (self.encoder.registers, self.decoder.register_pos, self.decoder.mask_token, self.decoder.null_token):
            nn.init.trunc_normal_(p, std=0.02)
        zero = [self.encoder.head, self.decoder.head.ada, self.decoder.head.linear,
                *(b.ada for b in self.decoder.blocks)]
        for m in zero:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def fsdp_units(self) -> list[nn.Module]:
        return [*self.encoder.blocks, *self.decoder.blocks]

    # --- the four steps of the figure ---
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, K, d) continuous register vectors."""
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or tuple(x.shape[-2:]) != tuple(c.grid):
            raise VistokError(f"FlexTok expects (B, {c.in_channels}, {c.grid[0]}, {c.grid[1]}) inputs, got "
                              f"{tuple(x.shape)}")
        return self.encoder(x, self.enc_pos, self.encoder_mask(x.device))

    attention_backend = "auto"  # see `modules.attention.set_attention_backend`

    def encoder_mask(self, device: torch.device) -> torch.Tensor | BlockMask:
        """The register mask: the dense boolean tensor for SDPA, or a FlexAttention block mask (built once per
        device) when `attention_backend` is flex, or auto on CUDA."""
        if self.attention_backend == "flex" or (self.attention_backend == "auto" and device.type == "cuda"):
            masks = self.__dict__.setdefault("_flex_masks", {})
            if str(device) not in masks:
                n, length = self.config.num_patches, self.config.num_patches + self.config.registers
                masks[str(device)] = flex_block_mask(lambda b, h, q, kv: (kv < n) | ((q >= n) & (kv <= q)),
                                                     length, length, device)
            return masks[str(device)]
        return self.enc_mask

    def compile_stack(self, backend: str = "inductor", **options) -> None:
        """Run the decoder (the network of every decoding step) through `torch.compile` from now on; once per model."""
        if not getattr(self.decoder, "_compiled_call_impl", None):
            einops_as_graph_ops()
            self.decoder.compile(backend=backend, **options)

    def quantize(self, z: torch.Tensor) -> QuantOut:
        """(B, K, d) -> QuantOut(codes (B, K, d), ids (B, K), aux_loss)."""
        return self.fsq(z)

    def decode(
        self, x_t: torch.Tensor, t: torch.Tensor, codes: torch.Tensor, keep_k: torch.Tensor,
        null: torch.Tensor | None = None, repa_layer: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Velocity (B, C, H, W) at x_t, t (B,) given the first keep_k (B,) of codes (B, K, d); null (B,) bool nulls
        a sample's registers. Also the patch features of block `repa_layer` (or None)."""
        return self.decoder(x_t, t, self.decoder.condition(codes, keep_k, null), self.dec_pos, repa_layer)

    def loss(self, v: torch.Tensor, target: torch.Tensor, feats: torch.Tensor | None,
             teacher_feats: torch.Tensor | None) -> FlexTokLoss:
        """Velocity MSE (mean over samples of the per-sample mean) plus the weighted REPA term."""
        mse = F.mse_loss(v.float(), target.float())
        if self.repa_proj is None:
            return FlexTokLoss(mse, mse, mse.new_zeros(()))
        if teacher_feats is None:
            raise VistokError("this FlexTok has REPA on (model.repa_dim > 0): pass teacher_feats, or set "
                              "model.repa_dim=0")
        repa = repa_loss(self.repa_proj(feats), teacher_feats, self.config.patch_grid)
        return FlexTokLoss(mse + self.config.repa_weight * repa, mse, repa)

    # --- training-time draws ---
    def draw_keep_k(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) int64 prefix lengths for nested dropout, on the CPU."""
        c = self.config
        if c.nested_dropout == "off":
            return torch.full((batch,), c.registers, dtype=torch.long)
        if c.nested_dropout == "uniform":
            return torch.randint(1, c.registers + 1, (batch,), generator=generator)
        choices = sorted({min(2**i, c.registers) for i in range(c.registers.bit_length() + 1)})  # 1, 2, 4, ..., K
        return torch.tensor(choices)[torch.randint(len(choices), (batch,), generator=generator)]

    def draw_null(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) bool: which samples train the unconditional (null) branch."""
        return torch.rand(batch, generator=generator) < self.config.null_cond_p

    def forward(
        self, x0: torch.Tensor, teacher_feats: torch.Tensor | None = None, keep_k: torch.Tensor | None = None,
        null: torch.Tensor | None = None, t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    ) -> FlexTokLoss:
        """Training loss on clean latents x0 (B, C, H, W). teacher_feats (B, repa_dim, h, w): the frozen teacher's
        features of the same images (REPA only). keep_k, null, t, noise are drawn unless given."""
        c, batch, device = self.config, x0.shape[0], x0.device
        z = self.encode(x0)  # (B, K, d)
        codes = self.quantize(z).codes  # (B, K, d) on the FSQ grid, straight-through gradients
        keep_k = self.draw_keep_k(batch) if keep_k is None else keep_k  # (B,)
        null = (self.draw_null(batch) if self.training
                else torch.zeros(batch, dtype=torch.bool)) if null is None else null
        t = flow.logit_normal((batch,), c.t_mean, c.t_std, device=device) if t is None else t  # (B,)
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = flow.interpolate(x0, noise, t.view(-1, 1, 1, 1))  # t noise + (1 - t) x0
        repa_layer = c.repa_layer if self.repa_proj is not None else -1
        v, feats = self.decode(x_t, t, codes, keep_k.to(device), null.to(device), repa_layer)  # (B, C, H, W)
        return self.loss(v, flow.velocity_target(x0, noise), feats, teacher_feats)


PAPER = dict(repa_dim=1024)  # 16 x 32 x 32 FlexTok-VAE latents, 2x2 patches, 256 registers; REPA to DINOv2-L
TINY = dict(in_channels=3, grid=(32, 32), patch=4, head_dim=32)  # 32x32 pixels: 64 patches of 4x4

PRESETS = {
    "flextok-d12-d12": FlexTokConfig(**PAPER, enc_width=768, enc_depth=12, dec_width=768, dec_depth=12),  # 265,306,950
    # 873,979,590
    "flextok-d18-d18": FlexTokConfig(**PAPER, enc_width=1152, enc_depth=18, dec_width=1152, dec_depth=18),
    # 2,466,274,758
    "flextok-d18-d28": FlexTokConfig(**PAPER, enc_width=1152, enc_depth=18, dec_width=1792, dec_depth=28),
    # 2,475,702
    "flextok-tiny": FlexTokConfig(**TINY, registers=32, enc_width=128, enc_depth=4, dec_width=128, dec_depth=4),
    # 337,270
    "flextok-tiny-s": FlexTokConfig(**TINY, registers=16, enc_width=64, enc_depth=2, dec_width=64, dec_depth=2),
    # 54,294
    "flextok-test": FlexTokConfig(**{**TINY, "head_dim": 16}, registers=8, enc_width=32, enc_depth=1,
                                  dec_width=32, dec_depth=1),
}

FAMILY = ("flextok", FlexTokConfig, FlexTok)
