"""The image <-> grid tokenizer named in an export: {"family": "pixel" | "vae", "config": {...}} -> a frozen module.

Every export that works on a tokenizer's grid (xAR on pixels or latents, FlexTok on pixels or VAE latents) records its
tokenizer this way, so the export alone rebuilds it (the weights of a VAE come with its config's source).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer
from vistok.tokenizers.vae import VAE, VAEConfig

TOKENIZERS: dict[str, tuple[type, type]] = {"pixel": (PixelConfig, PixelTokenizer), "vae": (VAEConfig, VAE)}


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
        if root is None or not (Path(root) / spec["path"]).is_dir():
            raise VistokError(f"the export's tokenizer folder {spec['path']}/ is missing{f' from {root}' if root else ''}; "
                              "re-export it (`vistok convert --from xar ... --vae VAE`)")
        config["weights"] = str(Path(root) / spec["path"])
    return tokenizer_cls(from_dict(config_cls, config)).eval()


__all__ = ["TOKENIZERS", "build_tokenizer"]
