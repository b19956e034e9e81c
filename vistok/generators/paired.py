"""Generators on FlexTok tokens: the export that carries its tokenizer, loading, and batched generation at any k.

FlexTok (Bachmann et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length", arXiv 2502.13967)
turns an image into K ordered register tokens, any prefix of which decodes. Two generators sit on them:
- the GPT (`ar.py`, FlexTok §4) over the integer ids, vocabulary prod(FSQ levels);
- xAR (`xar.py`, Ren et al., arXiv 2502.20388) over the continuous FSQ codes (dimension len(levels)), held as a
  (B, C, 1, K) grid and predicted in prefix groups 1, 1, 2, 4, ..., K/2 (`entities.py`), times `code_scale` so they
  have about unit variance like the flow's noise (FSQ codes lie in [-1, 1]). Its output is divided by the scale and
  snapped to the nearest FSQ grid point per channel (`FSQ.snap`), which gives the ids.
Both stop after any k they allow (GPT: 1..K; xAR: a group end 1, 2, 4, ..., K), and FlexTok decodes the k ids.

Export layout (`export_paired`): the generator's `config.json` + `model.safetensors`, and the FlexTok export copied
into `tokenizer/` (its own config.json + model.safetensors, with FlexTok's image tokenizer and decoding settings).
config.json records {"tokenizer": {"family": "flextok", "path": "tokenizer", "code_scale": s}}, the class names and
the sampling settings, so `load_paired(folder)` needs nothing else.

Reproducibility: image i samples its tokens from generators seeded by (seed, i) and draws its decoding noise from a
second stream seeded by (seed, i, 1), so the same seed gives the same images at any batch size, and image i decodes
with the same noise at every k.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from vistok import registry
from vistok.config import from_dict
from vistok.data.images import to_uint8
from vistok.engine import checkpoint
from vistok.errors import VistokError, require
from vistok.generators.ar import AR, ARConfig
from vistok.generators.generate import MIN_ROWS, SampleConfig, grid, image_generators
from vistok.generators.sampling import sample_ar, sample_entities
from vistok.generators.xar import XAR, XARConfig
from vistok.tokenizers import flextok_eval as fe
from vistok.tokenizers import flextok_sampling
from vistok.modules.fsq import FSQ
from vistok.tokenizers.flextok import FlexTok, FlexTokConfig

TOKENIZER_DIR = "tokenizer"
Generator = AR | XAR


@dataclass(frozen=True)
class ARSampleConfig:
    """GPT sampling settings; a training run stores its choice in the export and `vistok sample` flags override them."""

    cfg: float = 1.0  # guidance scale on the logits (1: no guidance)
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __post_init__(self) -> None:
        require(self.cfg > 0, f"the guidance scale must be positive, got {self.cfg}")
        require(self.temperature >= 0, f"the temperature must be >= 0, got {self.temperature}")
        require(self.top_k >= 0, f"top-k must be >= 0 (0: off), got {self.top_k}")
        require(0.0 < self.top_p <= 1.0, f"top-p must lie in (0, 1] (1: off), got {self.top_p}")


def check_pairing(config: ARConfig | XARConfig, flextok: FlexTokConfig) -> None:
    """The generator must take this FlexTok's tokens: the GPT its vocabulary and K, xAR its code width and K."""
    levels, K = tuple(flextok.levels), flextok.registers
    vocab = int(np.prod(levels))
    if isinstance(config, ARConfig):
        require(config.vocab_size == vocab and config.tokens == K,
                f"the FlexTok tokenizer gives {K} tokens from a vocabulary of {vocab} (FSQ {list(levels)}), but the GPT "
                f"expects {config.tokens} from {config.vocab_size}; set model.vocab_size={vocab} model.tokens={K}")
        require(config.embedding == "table" or tuple(config.levels) == levels,
                f"the GPT computes its embeddings from FSQ codes of levels {list(config.levels)}, but the FlexTok "
                f"tokenizer quantizes with {list(levels)}; set model.levels={list(levels)}")
    else:
        require(config.entity == "prefix" and config.in_channels == len(levels) and tuple(config.grid) == (1, K),
                f"the FlexTok tokenizer gives {K} codes of {len(levels)} channels; xAR on them needs model.entity=prefix "
                f"model.in_channels={len(levels)} model.grid=[1,{K}], got entity={config.entity} "
                f"in_channels={config.in_channels} grid={list(config.grid)}")


def code_scale_of(ids: torch.Tensor, fsq: FSQ) -> float:
    """1 / std of the FSQ code values of token ids (..., K): scales xAR's targets to about unit variance."""
    std = float(fsq.indices_to_codes(torch.as_tensor(ids).long()).std())
    require(std > 0, "every token id codes the same vector; the token file cannot train a generator")
    return 1.0 / std


def ids_to_grid(ids: torch.Tensor, fsq: FSQ, code_scale: float) -> torch.Tensor:
    """(B, K) ids -> (B, C, 1, K) FSQ codes times code_scale: xAR's tokens (a 1D sequence as a 1 x K grid)."""
    codes = fsq.indices_to_codes(ids) * code_scale  # (B, K, C)
    return rearrange(codes, "b k c -> b c 1 k")


class FlexTokCodes(nn.Module):
    """The tokenizer side of a paired generator: a frozen FlexTok, its image tokenizer, the code scale and decoding
    settings. ids <-> xAR token grids, and ids -> uint8 images."""

    def __init__(self, flextok: FlexTok, image_tokenizer: nn.Module, code_scale: float = 1.0,
                 decoding: fe.DecodeConfig = fe.DecodeConfig()) -> None:
        super().__init__()
        require(code_scale > 0, f"code_scale must be positive, got {code_scale}")
        self.flextok, self.image_tokenizer = flextok.eval(), image_tokenizer.eval()
        self.code_scale, self.decoding = float(code_scale), decoding

    @property
    def registers(self) -> int:
        return self.flextok.config.registers

    @property
    def device(self) -> torch.device:
        return next(self.flextok.parameters()).device

    def ids_to_grid(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, K) ids -> (B, C, 1, K) scaled FSQ codes, xAR's training input."""
        return ids_to_grid(ids.to(self.device), self.flextok.fsq, self.code_scale)

    def to_ids(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, k, C) generated (scaled) codes -> (B, k) ids of the nearest FSQ grid points."""
        fsq = self.flextok.fsq
        return fsq.codes_to_indices(fsq.snap(seq.float().to(self.device) / self.code_scale))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, generator: flextok_sampling.Generators = None) -> torch.Tensor:
        """(B, k) ids, k <= K -> (B, 3, H, W) uint8 images decoded from those k tokens."""
        d = self.decoding
        latents = flextok_sampling.decode(self.flextok, ids, None, d.steps, None if d.cfg == 1.0 else d.cfg,
                                          d.guidance, generator=generator)  # (B, C, h, w)
        return to_uint8(self.image_tokenizer.decode(latents.float()))


# ------------------------------------------------------------------------------------------------- export, load
def export_paired(
    out_dir: str | Path, family: str, config: dict[str, Any], weights: dict[str, torch.Tensor],
    flextok_ckpt: str | Path, code_scale: float = 1.0, **meta: Any,
) -> Path:
    """Write the generator export with the FlexTok export (a folder or shipped name) copied into `tokenizer/`."""
    out, source = Path(out_dir), registry.resolve_ckpt(flextok_ckpt)
    (out / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):  # the tokenizer first: a finished config.json means a full export
        shutil.copyfile(source / name, out / TOKENIZER_DIR / name)
    spec = {"family": "flextok", "path": TOKENIZER_DIR, "code_scale": float(code_scale), "source": str(flextok_ckpt)}
    return checkpoint.export(out, family, config, weights, tokenizer=spec, **meta)


def read_flextok_config(ckpt: str | Path) -> FlexTokConfig:
    """The FlexTokConfig of a FlexTok export (folder or shipped name), without loading its weights."""
    folder = registry.resolve_ckpt(ckpt)
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise VistokError(f"cannot read {folder / 'config.json'} ({err.__class__.__name__}); pass a FlexTok export") from None
    if meta.get("family") != "flextok":
        raise VistokError(f"{ckpt} holds a {meta.get('family')!r} model, not FlexTok; pass an export of train/train_flextok.py")
    return from_dict(FlexTokConfig, meta["config"])


def is_paired(ckpt: str | Path) -> bool:
    """Whether an export (folder or shipped name) is a generator on FlexTok tokens."""
    cfg = registry.resolve_ckpt(ckpt) / "config.json"
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False  # load_model names the problem
    return isinstance(meta.get("tokenizer"), dict) and meta["tokenizer"].get("family") == "flextok"


def load_paired(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[Generator, FlexTokCodes, dict[str, Any]]:
    """(GPT or xAR with EMA weights in eval mode, its FlexTokCodes, the export's config.json) from a folder or name."""
    folder = registry.resolve_ckpt(ckpt)
    model, meta = registry.load_model(folder, device)
    spec = meta.get("tokenizer", {})
    if not isinstance(model, (AR, XAR)) or spec.get("family") != "flextok":
        raise VistokError(f"{ckpt} holds a {meta['family']!r} model on {spec.get('family')!r} tokens, not a generator on "
                          "FlexTok tokens; pass an export of train/train_flextok_gpt.py or train/train_flextok_xar.py")
    if not (folder / spec.get("path", TOKENIZER_DIR)).is_dir():
        raise VistokError(f"{folder} lacks its FlexTok tokenizer folder {spec.get('path', TOKENIZER_DIR)}/; re-export it")
    flextok, image_tokenizer, ft_meta = fe.load_flextok(folder / spec.get("path", TOKENIZER_DIR), device)
    check_pairing(model.config, flextok.config)
    decoding = fe.decode_config({"sample": {**ft_meta.get("sample", {}), **meta.get("decode", {})}})
    codes = FlexTokCodes(flextok, image_tokenizer, spec.get("code_scale", 1.0), decoding)
    meta.setdefault("classes", [str(i) for i in range(model.config.num_classes)])
    return model, codes, meta


def sample_config(model: Generator, meta: dict[str, Any], **overrides: Any) -> SampleConfig | ARSampleConfig:
    """The export's sampling settings with the non-None overrides applied (xAR: SampleConfig, GPT: ARSampleConfig)."""
    values = {**meta.get("sample", {}), **{k: v for k, v in overrides.items() if v is not None}}
    return from_dict(ARSampleConfig if isinstance(model, AR) else SampleConfig, values)


# ------------------------------------------------------------------------------------------------------- generate
def valid_ks(model: Generator) -> list[int]:
    """The prefix lengths a generator can stop at: GPT 1..K, xAR the ends of its groups (1, 2, 4, ..., K)."""
    if isinstance(model, AR):
        return list(range(1, model.config.tokens + 1))
    return list(model.partition.offsets[1:])


def check_k(model: Generator, k: int | None) -> int:
    """k (None: all K tokens) if the generator can stop there, else a VistokError that lists the valid ones."""
    ks = valid_ks(model)
    if k is None:
        return ks[-1]
    if k not in ks:
        allowed = f"1..{ks[-1]}" if isinstance(model, AR) else ", ".join(map(str, ks)) + " (the ends of its token groups)"
        raise VistokError(f"--tokens {k} is not a length this generator stops at; use one of {allowed}")
    return k


@torch.no_grad()
def sample_ids(
    model: Generator, codes: FlexTokCodes, labels: torch.Tensor, k: int, sampling: SampleConfig | ARSampleConfig,
    generator: flextok_sampling.Generators = None,
) -> torch.Tensor:
    """(B,) labels -> (B, k) FlexTok ids from the GPT, or from xAR's codes snapped to the FSQ grid."""
    k = check_k(model, k)
    cfg = None if sampling.cfg == 1.0 else sampling.cfg  # scale 1 is the conditional model: skip the null branch
    if isinstance(model, AR):
        return sample_ar(model, labels, k, cfg, sampling.temperature, sampling.top_k, sampling.top_p, generator=generator)
    entities = valid_ks(model).index(k) + 1
    seq = sample_entities(model, labels, entities, sampling.steps, cfg, sampling.cfg_schedule, sampling.method,
                          generator=generator)  # (B, k, C) in prefix order
    return codes.to_ids(seq)


@torch.no_grad()
def generate_paired(
    model: Generator, codes: FlexTokCodes, labels: torch.Tensor, k: int | None = None,
    sampling: SampleConfig | ARSampleConfig | None = None, seed: int = 0, batch_size: int = 64,
    precision: str = "fp32", log_every: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, H, W, 3), int32 ids (N, k)) for `labels` (N,), from the first k tokens (None: all K), in
    batches of `batch_size` with per-image seeds. precision "bf16" runs the networks under bf16 autocast."""
    require(batch_size >= 1, f"the batch size must be at least 1, got {batch_size}")
    require(precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {precision!r}")
    k = check_k(model, k)
    sampling = sampling or (ARSampleConfig() if isinstance(model, AR) else SampleConfig())
    num_classes = model.config.num_classes
    require(labels.ndim == 1 and (len(labels) == 0 or 0 <= labels.min() and labels.max() < num_classes),
            f"labels must be class indices 0..{num_classes - 1}")
    device = next(model.parameters()).device
    images, ids, last = [], [], time.perf_counter()
    for start in range(0, len(labels), batch_size):
        batch = labels[start:start + batch_size]
        rows = max(len(batch), MIN_ROWS)  # padded with throw-away images (see generate.MIN_ROWS)
        padded = torch.cat([batch, batch[-1:].expand(rows - len(batch))])
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            tokens = sample_ids(model, codes, padded, k, sampling, image_generators(seed, start, rows))  # (B, k)
            pixels = codes.decode(tokens, image_generators(seed, start, rows, stream=1))[:len(batch)]  # (B, 3, H, W)
        images.append(pixels.permute(0, 2, 3, 1).cpu().numpy())
        ids.append(tokens[:len(batch)].cpu().numpy().astype(np.int32))
        if log_every and time.perf_counter() - last > log_every:
            print(f"  {start + len(batch)}/{len(labels)} images", flush=True)
            last = time.perf_counter()
    if not images:
        return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, k), np.int32)
    return np.concatenate(images), np.concatenate(ids)


def ladder_grid(
    model: Generator, codes: FlexTokCodes, labels: torch.Tensor, sampling: SampleConfig | ARSampleConfig | None = None,
    seed: int = 0,
) -> np.ndarray:
    """(H', W', 3) uint8 grid: one row per k on FlexTok's ladder 1, 2, 4, ..., K that the generator stops at, one
    column per label, the same seeds in every row (so a column shows one image gaining tokens)."""
    ks = [k for k in fe.k_ladder(codes.registers) if k in valid_ks(model)]
    rows = [generate_paired(model, codes, labels, k, sampling, seed)[0] for k in ks]
    return grid(np.concatenate(rows), np.repeat(np.arange(len(ks)), len(labels)))


__all__ = [
    "ARSampleConfig", "FlexTokCodes", "check_k", "check_pairing", "code_scale_of", "export_paired", "generate_paired",
    "ids_to_grid", "is_paired", "ladder_grid", "load_paired", "read_flextok_config", "sample_config", "sample_ids", "valid_ks",
]
