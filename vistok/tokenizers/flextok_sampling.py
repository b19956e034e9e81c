"""FlexTok inference: images -> token ids, and token ids (any prefix length per image) -> images.

Bachmann et al., "FlexTok", arXiv 2502.13967, §3 and the official inference pipeline: decoding integrates the
rectified flow from t = 1 (noise) to t = 0 with T uniform Euler steps (x <- x + (t_next - t) v), conditioned on the
first k tokens of each image; the registers k..K-1 get the nested-dropout mask token, so padded ids are never decoded
as real tokens. Guidance: the unconditional branch nulls every register; both branches run in one batched forward
(the official pipeline runs them one after the other and deep-copies its inputs each step), combined by classifier-
free guidance, v_u + w (v_c - v_u), or by adaptive projected guidance (`flow.apg`; FlexTok's README default, with
momentum -0.5, norm threshold 2.5, eta 0). The scale w may be a function of t.

Every image may have its own prefix length k in the same batch: k only selects which registers are masked, and images
never attend to each other, so a mixed batch gives each image what it would get alone (up to float rounding).
`decode` takes its `DecodeConfig` (what an export stores and a user overrides) plus the per-call data. Its noise comes
through `vistok.seeding` from one `torch.Generator` on the CPU, or one per image (then an image does not depend on the
rest of its batch).

Memory is bounded by one step (the released d18-d28, 2.5B parameters, decodes a 256 px image on a laptop-class CPU):
decoding runs under `torch.inference_mode` (no autograd graph, so nothing of step i outlives step i), attention is
SDPA (fused kernels, no (L, L) score matrix per head), and what does not depend on t is computed once: the
conditional and null register inputs and the positions. Nothing more can be reused across steps: the registers pass
through the same t-modulated (adaLN) blocks as the noised patches, so their keys and values change every step. A
tqdm bar (`progress=`) ticks once per Euler step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from vistok import flow
from vistok.checks import MAX_STEPS, guidance_arg, int_arg
from vistok.errors import ArgumentTypeError, VistokError, require
from vistok.progress import progress as progress_bar
from vistok.seeding import Generators, randn, resolve
from vistok.tokenizers.flextok import FlexTok

Scale = float | Callable[[float], float]


def is_guided(cfg: Scale) -> bool:
    """Scale 1.0 is the conditional model: no null branch is run (a schedule, a callable, always guides)."""
    return callable(cfg) or cfg != 1.0


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings; a training run stores its choice in the export and command-line flags override them."""

    steps: int = 25  # Euler steps T
    cfg: float = 1.0  # guidance scale; 1 runs the conditional branch alone (no null pass)
    guidance: Literal["cfg", "apg"] = "cfg"  # plain CFG or adaptive projected guidance (FlexTok's README default)

    def __post_init__(self) -> None:
        int_arg(self.steps, "steps (decoder Euler steps)", 1, MAX_STEPS)
        guidance_arg(self.cfg)
        require(self.guidance in ("cfg", "apg"), f"guidance must be cfg or apg, got {self.guidance!r}")
Guidance = Literal["cfg", "apg"]


class Tokenizer(Protocol):
    """What turns images into FlexTok's input grid and back: `PixelTokenizer`, `VAE` (or nothing: pixel presets)."""

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class APGConfig:
    momentum: float = -0.5
    norm_threshold: float = 2.5  # 0 disables clipping
    eta: float = 0.0  # weight of the guidance component parallel to the conditional velocity


def encode(model: FlexTok, images: torch.Tensor, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """(B, 3, H, W) images (through `tokenizer`, or already the model's input grid) -> (B, K) int64 token ids."""
    with flow.eval_mode(model), torch.inference_mode():
        x = tokenizer.encode(images) if tokenizer is not None else images
        ids = model.quantize(model.encode(x)).indices
    return ids.clone()  # a normal tensor: an inference tensor cannot be saved for backward (an embedding lookup)


def k_ladder(registers: int) -> list[int]:
    """FlexTok's prefix lengths 1, 2, 4, ..., K (K itself last even when it is not a power of two)."""
    return sorted({min(2**i, registers) for i in range(registers.bit_length() + 1)})


def prefix_lengths(keep_k: int | Sequence[int] | torch.Tensor | None, batch: int, num_ids: int) -> torch.Tensor:
    """(B,) int64 prefix lengths from None (all `num_ids` given ids), one int, or one per image; each in 1..num_ids."""
    if keep_k is None:
        keep_k = num_ids
    k = torch.as_tensor(keep_k, dtype=torch.long).flatten().cpu()
    if k.numel() == 1:
        k = k.expand(batch).clone()
    require(k.numel() == batch, f"got {k.numel()} prefix lengths for {batch} images; pass one, or one per image")
    require(bool(((k >= 1) & (k <= num_ids)).all()),
            f"prefix lengths must lie in 1..{num_ids} (the ids given), got {k.tolist()}")
    return k


def ids_to_codes(model: FlexTok, ids: torch.Tensor) -> torch.Tensor:
    """(B, n) ids, n <= K -> (B, K, d) FSQ codes, padded with id 0 (masked by the prefix length, never decoded)."""
    K, size = model.config.registers, model.fsq.codebook_size
    if ids.ndim != 2 or not 1 <= ids.shape[1] <= K or ids.is_floating_point():
        raise VistokError(f"token ids must be a (B, n) integer tensor with 1 <= n <= {K}, got {ids.dtype} "
                          f"{tuple(ids.shape)}")
    require(bool(((ids >= 0) & (ids < size)).all()), f"token ids must lie in 0..{size - 1}")
    ids = torch.cat([ids.long(), ids.new_zeros(ids.shape[0], K - ids.shape[1], dtype=torch.long)], dim=1)  # (B, K)
    return model.fsq.indices_to_codes(ids)


def guided_velocity(
    model: FlexTok, x: torch.Tensor, t: float, registers: torch.Tensor, cfg: Scale, guidance: Guidance,
    apg: APGConfig, running: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One network evaluation at x (B, C, H, W), time t; registers are (B, K, D), or (2B, K, D) [cond; null] when
    guided. Returns (velocity, APG running average)."""
    guided = is_guided(cfg)
    x_in = torch.cat([x, x]) if guided else x  # (B', C, H, W): both branches in one forward
    t_in = torch.full((x_in.shape[0],), t, device=x.device)
    v, _ = model.decoder(x_in, t_in, registers, model.dec_pos)
    if not guided:
        return v, None
    v_cond, v_uncond = v.chunk(2)
    scale = float(cfg(t)) if callable(cfg) else float(cfg)
    if guidance == "apg":
        return flow.apg(v_cond, v_uncond, scale, running, apg.momentum, apg.norm_threshold, apg.eta)
    return flow.guide(v_cond, v_uncond, scale), None


def decode(
    model: FlexTok, ids: torch.Tensor, settings: DecodeConfig = DecodeConfig(), *,
    keep_k: int | Sequence[int] | torch.Tensor | None = None, seed: int | None = None, generator: Generators = None,
    noise: torch.Tensor | None = None, tokenizer: Tokenizer | None = None, apg: APGConfig = APGConfig(),
    schedule: Callable[[float], float] | None = None, progress: bool | None = False,
) -> torch.Tensor:
    """Token ids (B, n) -> (B, C, H, W) latents, or images when a `tokenizer` is given.

    settings: Euler steps T, guidance scale (1.0: no guidance, the conditional branch alone, no null pass) and
    guidance, "cfg" or "apg" (with `apg`'s settings). keep_k: tokens used per image (None: all n; an int; or one per
    image), each in 1..n. seed / generator: the source of the initial noise (`vistok.seeding.resolve`; a list of B
    generators gives each image its own); noise: the (B, C, H, W) initial noise itself. schedule: a guidance scale
    that varies with t, used instead of settings.cfg (it always runs the null branch). progress: a tqdm bar on stderr
    with one tick per Euler step (True or None: when stderr is a terminal; False: none); it never changes the result.
    """
    if not isinstance(settings, DecodeConfig):
        raise ArgumentTypeError(f"decode: the settings must be one DecodeConfig, e.g. DecodeConfig(steps=25); got "
                                f"{type(settings).__name__} {settings!r}")
    cfg: Scale = schedule if schedule is not None else settings.cfg
    c, batch = model.config, ids.shape[0]
    device = next(model.parameters()).device
    codes = ids_to_codes(model, ids.to(device))  # (B, K, d)
    k = prefix_lengths(keep_k, batch, ids.shape[1]).to(device)  # (B,)
    if noise is None:
        noise = randn((batch, c.in_channels, *c.grid), resolve(generator, seed, batch), device)
    require(tuple(noise.shape) == (batch, c.in_channels, *c.grid),
            f"noise must be (B, C, H, W) = {(batch, c.in_channels, *c.grid)}")
    with flow.eval_mode(model), torch.inference_mode(), \
            progress_bar(total=settings.steps, desc="decode", enabled=progress, unit="step") as bar:
        registers = model.decoder.condition(codes, k)  # (B, K, D): computed once, the same at every step
        if is_guided(cfg):
            null = model.decoder.condition(codes, k, torch.ones(batch, dtype=torch.bool, device=device))
            registers = torch.cat([registers, null])  # (2B, K, D)
        x, running = noise.to(device).float(), None
        grid = flow.time_grid(settings.steps, sde=False)  # 1 -> 0, uniform
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            v, running = guided_velocity(model, x, t, registers, cfg, settings.guidance, apg, running)
            x = flow.euler_step(x, v.float(), t, t_next)
            bar.update(1)
        out = tokenizer.decode(x) if tokenizer is not None else x
    return out.clone()  # a normal tensor (inference tensors refuse in-place updates and autograd later)


def reconstruct(
    model: FlexTok, images: torch.Tensor, settings: DecodeConfig = DecodeConfig(), *,
    keep_k: int | Sequence[int] | torch.Tensor | None = None, tokenizer: Tokenizer | None = None, **kwargs
) -> torch.Tensor:
    """encode, then decode the first keep_k tokens of each image; kwargs (seed, generator, ...) go to `decode`."""
    return decode(model, encode(model, images, tokenizer), settings, keep_k=keep_k, tokenizer=tokenizer, **kwargs)
