"""Generators on FlexTok tokens: the tokenizer side (ids <-> xAR token grids, decoding), pairing checks, prefix lengths.

FlexTok (Bachmann et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length", arXiv 2502.13967)
turns an image into K ordered register tokens, any prefix of which decodes. Two generators sit on them:
- the GPT (`ar.py`, FlexTok §4) over the integer ids, vocabulary prod(FSQ levels);
- xAR (`xar.py`, Ren et al., arXiv 2502.20388) over the continuous FSQ codes (dimension len(levels)), held as a
  (B, C, 1, K) grid and predicted in prefix groups 1, 1, 2, 4, ..., K/2 (`entities.py`), times `code_scale` so they
  have about unit variance like the flow's noise (FSQ codes lie in [-1, 1]). Each group, once its flow steps end, is
  snapped to the nearest FSQ grid point per channel (`FlexTokCodes.snap`: `FSQ.snap` between dividing and multiplying
  by the scale) *before* it joins the context of the later groups and the output, so the model is conditioned on
  exactly the codes it saw in training (without it, generated codes sit a fraction of a grid step off the lattice and
  every later group sees inputs it never trained on). `sample_ids(..., snap=False)` turns this off, for comparison.
  The snapped codes give the ids. The exports' CFG schedule is "constant" (every group at the full scale; chosen by a
  sweep, see the README), not xAR's "linear", which would leave group 0, FlexTok's most semantic token, unguided.
Both stop after any k they allow (GPT: 1..K; xAR: a group end 1, 2, 4, ..., K), and FlexTok decodes the k ids.
Loading such an export (its FlexTok copy in `tokenizer/`) and the batched, per-image-seeded generation loop live in
`vistok.api`.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch import nn

from vistok.data.images import to_uint8
from vistok.errors import VistokError, require
from vistok.generators.ar import AR, ARConfig
from vistok.generators.sampling import ARSampleConfig, SampleConfig, sample_ar, sample_entities
from vistok.generators.xar import XAR, XARConfig
from vistok.modules.fsq import FSQ
from vistok.seeding import Generators
from vistok.tokenizers import flextok_sampling
from vistok.tokenizers.flextok import FlexTok, FlexTokConfig
from vistok.tokenizers.flextok_sampling import DecodeConfig

TokenGenerator = AR | XAR
# xAR's CFG schedule on FlexTok codes (`flow.cfg_scale`): every prefix group, group 0 (the most semantic token)
# included, at the full scale. Chosen over xAR's "linear" (group 0 unguided) and "linear-guided" by FID at k = 1 and 16
# (README).
CFG_SCHEDULE = "constant"
SAMPLING = SampleConfig(steps=50, cfg=2.0, cfg_schedule=CFG_SCHEDULE)  # exports store theirs; this when none is stored


def check_pairing(config: ARConfig | XARConfig, flextok: FlexTokConfig) -> None:
    """The generator must take this FlexTok's tokens: the GPT its vocabulary and K, xAR its code width and K."""
    levels, K = tuple(flextok.levels), flextok.registers
    vocab = int(np.prod(levels))
    if isinstance(config, ARConfig):
        require(config.vocab_size == vocab and config.tokens == K,
                f"the FlexTok tokenizer gives {K} tokens from a vocabulary of {vocab} (FSQ {list(levels)}), but the "
                f"GPT expects {config.tokens} from {config.vocab_size}; set model.vocab_size={vocab} model.tokens={K}")
        require(config.embedding == "table" or tuple(config.levels) == levels,
                f"the GPT computes its embeddings from FSQ codes of levels {list(config.levels)}, but the FlexTok "
                f"tokenizer quantizes with {list(levels)}; set model.levels={list(levels)}")
    else:
        require(config.entity == "prefix" and config.in_channels == len(levels) and tuple(config.grid) == (1, K),
                f"the FlexTok tokenizer gives {K} codes of {len(levels)} channels; xAR on them needs "
                f"model.entity=prefix model.in_channels={len(levels)} model.grid=[1,{K}], got entity={config.entity} "
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
                 decoding: DecodeConfig = DecodeConfig()) -> None:  # noqa: B008 (a frozen dataclass)
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

    def snap(self, seq: torch.Tensor) -> torch.Tensor:
        """(..., C) generated (scaled) codes -> the nearest FSQ lattice points, scaled (float32, on seq's device):
        bit for bit the training input `ids_to_grid(to_ids(seq))`."""
        fsq = self.flextok.fsq
        return (fsq.snap(seq.float().to(self.device) / self.code_scale) * self.code_scale).to(seq.device)

    def to_ids(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, k, C) generated (scaled) codes -> (B, k) ids of the nearest FSQ grid points."""
        fsq = self.flextok.fsq
        return fsq.codes_to_indices(fsq.snap(seq.float().to(self.device) / self.code_scale))

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, generator: Generators = None,
               decoding: DecodeConfig | None = None) -> torch.Tensor:
        """(B, k) ids, k <= K -> (B, 3, H, W) uint8 images decoded from those k tokens (`decoding`: default ours)."""
        latents = flextok_sampling.decode(self.flextok, ids, decoding or self.decoding, generator=generator)
        return to_uint8(self.image_tokenizer.decode(latents.float()))  # (B, 3, H, W)


def valid_ks(model: TokenGenerator) -> list[int]:
    """The prefix lengths a generator can stop at: GPT 1..K, xAR the ends of its groups (1, 2, 4, ..., K)."""
    if isinstance(model, AR):
        return list(range(1, model.config.tokens + 1))
    return list(model.partition.offsets[1:])


def check_k(model: TokenGenerator, k: int | None) -> int:
    """k (None: all K tokens) if the generator can stop there, else a VistokError that lists the valid ones."""
    ks = valid_ks(model)
    if k is None:
        return ks[-1]
    if k not in ks:
        allowed = (f"1..{ks[-1]}" if isinstance(model, AR)
                   else ", ".join(map(str, ks)) + " (the ends of its token groups)")
        raise VistokError(f"--tokens {k} is not a length this generator stops at; use one of {allowed}")
    return k


@torch.no_grad()
def sample_ids(
    model: TokenGenerator, codes: FlexTokCodes, labels: torch.Tensor, k: int, sampling: SampleConfig | ARSampleConfig,
    generator: Generators = None, snap: bool = True,
) -> torch.Tensor:
    """(B,) labels -> (B, k) FlexTok ids from the GPT, or from xAR's codes snapped to the FSQ grid. snap (xAR): each
    finished group is snapped before it joins the context (False: only the final codes are, to read off the ids)."""
    k = check_k(model, k)
    if isinstance(model, AR):
        return sample_ar(model, labels, sampling, tokens=k, generator=generator)
    entities = valid_ks(model).index(k) + 1
    seq = sample_entities(model, labels, sampling, entities=entities, generator=generator,
                          snap=codes.snap if snap else None)  # (B, k, C) in prefix order
    return codes.to_ids(seq)


__all__ = ["CFG_SCHEDULE", "SAMPLING", "FlexTokCodes", "TokenGenerator", "check_k", "check_pairing", "code_scale_of",
           "ids_to_grid", "sample_ids", "valid_ks"]
