"""What the training scripts of generators on FlexTok token ids share (`train/train_flextok_gpt.py`: a GPT, GPT-2
style, Radford et al. 2019; `train/train_flextok_xar.py`: xAR, Ren et al., arXiv 2502.20388), both on the 1D
register tokens of FlexTok (Bachmann et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length",
arXiv 2502.13967, §4): the token file checked against its tokenizer and the model, and the export with the tokenizer
copied in and a preview grid beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vistok.api import load
from vistok.api.exports import export_paired, read_flextok_config
from vistok.data.tokens import TokenDataConfig, TokenDataset, load_tokens
from vistok.errors import require
from vistok.generators.ar import ARConfig
from vistok.generators.flextok_codes import check_pairing
from vistok.generators.xar import XARConfig
from vistok.io.atomic import atomic_write
from vistok.tokenizers.flextok import FlexTokConfig


def token_dataset(tokenizer_ckpt: str, data: TokenDataConfig,
                  model: ARConfig | XARConfig) -> tuple[FlexTokConfig, TokenDataset]:
    """(the FlexTok's config, the token file's dataset), after checking that the model takes this FlexTok's tokens,
    the file holds them (K ids below the FlexTok vocabulary per image) and the model has a label for every class."""
    flextok = read_flextok_config(tokenizer_ckpt)
    check_pairing(model, flextok)
    vocab = int(np.prod(flextok.levels))
    dataset = load_tokens(data, flextok.registers, vocab,
                          f"vistok encode --ckpt {tokenizer_ckpt} --input cifar10-train --out {data.tokens}")
    require(len(dataset.classes) <= model.num_classes, f"the data has {len(dataset.classes)} classes but "
            f"model.num_classes={model.num_classes}; set model.num_classes={len(dataset.classes)}")
    return flextok, dataset


def export_with_preview(
    out_dir: str | Path, family: str, config: dict[str, Any], weights: dict[str, torch.Tensor], tokenizer_ckpt: str,
    classes: list[str], preview_per_class: int, seed: int, device: torch.device, **meta: Any,
) -> Path:
    """The generator export (`export_paired`: FlexTok copied into `tokenizer/`) and, when `preview_per_class` > 0, its
    `preview.png`: one row per k on FlexTok's ladder, `preview_per_class` columns per class, sampled from the export
    itself (so the preview shows what `vistok sample --ckpt` gives)."""
    out = export_paired(out_dir, family, config, weights, tokenizer_ckpt, classes=classes, **meta)
    if preview_per_class:
        labels = torch.arange(preview_per_class * len(classes)) % len(classes)
        preview = load(out, device).ladder(labels, seed)
        atomic_write(out / "preview.png", lambda f: Image.fromarray(preview).save(f, format="PNG"))
    return out


__all__ = ["export_with_preview", "token_dataset"]
