"""The image <-> grid tokenizer named in an export: {"family": "pixel" | "vae", "config": {...}} -> a frozen module.

Every export that works on a tokenizer's grid (xAR on pixels or latents, FlexTok on pixels or VAE latents) records its
tokenizer this way, so the export alone rebuilds it (the weights of a VAE come with its config's source).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.io.checks import inside_export
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer
from vistok.tokenizers.vae import VAE, VAEConfig


@dataclass(frozen=True)
class LatentsConfig:
    channels: int = 16
    grid: tuple[int, int] = (32, 32)


class LatentsOnly(nn.Module):
    """The tokenizer of an export without a VAE (a converted FlexTok checkpoint whose file held no `vae.*` keys): the
    model works on latents only, so images are refused with the way out."""

    def __init__(self, config: LatentsConfig) -> None:
        super().__init__()
        self.config = config

    def _refuse(self, *_: Any) -> torch.Tensor:
        raise VistokError("this export has no VAE, so it cannot turn images into latents or back; use "
                          "Tokenizer.encode_latents / decode_latents, "
                          "or convert a checkpoint that holds its vae.* weights")

    encode = decode = _refuse


TOKENIZERS: dict[str, tuple[type, type]] = {"pixel": (PixelConfig, PixelTokenizer), "vae": (VAEConfig, VAE),
                                            "latents": (LatentsConfig, LatentsOnly)}


def build_tokenizer(spec: dict[str, Any], root: str | Path | None = None) -> nn.Module:
    """The frozen image <-> grid tokenizer of an export's {"family": ..., "config": {...}}, in eval mode.

    A spec with a "path" keeps its weights inside the export (a converted xAR's KL-16 VAE in `tokenizer/`): the
    tokenizer's weights are then that sub-folder of `root`, the export's folder."""
    family = spec.get("family")
    if family not in TOKENIZERS:
        raise VistokError(f"unknown tokenizer family {family!r} in the export; known: {', '.join(TOKENIZERS)}")
    config_cls, tokenizer_cls = TOKENIZERS[family]
    config = dict(spec.get("config", {}))
    if "path" in spec:
        if root is None or not inside_export(root, spec["path"], "tokenizer.path").exists():  # a folder or one file
            raise VistokError(f"the export's tokenizer folder {spec['path']}/ is "
                              f"missing{f' from {root}' if root else ''}; re-export it (`vistok convert --from xar ... "
                              "--vae VAE`, `--from flextok`)")
        config["weights"] = str(Path(root) / spec["path"])
    return tokenizer_cls(from_dict(config_cls, config)).eval()


__all__ = ["TOKENIZERS", "LatentsOnly", "build_tokenizer"]
