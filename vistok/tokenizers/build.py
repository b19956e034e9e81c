"""The image <-> grid tokenizer named in an export: {"family": "pixel" | "vae", "config": {...}} -> a frozen module.

Every export that works on a tokenizer's grid (xAR on pixels or latents, FlexTok on pixels or VAE latents) records its
tokenizer this way, so the export alone rebuilds it (the weights of a VAE come with its config's source).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer
from vistok.tokenizers.vae import VAE, VAEConfig

TOKENIZERS: dict[str, tuple[type, type]] = {"pixel": (PixelConfig, PixelTokenizer), "vae": (VAEConfig, VAE)}


def build_tokenizer(spec: dict[str, Any]) -> nn.Module:
    """The frozen image <-> grid tokenizer of an export's {"family": ..., "config": {...}}, in eval mode."""
    family = spec.get("family")
    if family not in TOKENIZERS:
        raise VistokError(f"unknown tokenizer family {family!r} in the export; known: {', '.join(TOKENIZERS)}")
    config_cls, tokenizer_cls = TOKENIZERS[family]
    return tokenizer_cls(from_dict(config_cls, spec.get("config", {}))).eval()


__all__ = ["TOKENIZERS", "build_tokenizer"]
