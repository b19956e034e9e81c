"""Exports -> (model, tokenizer, settings): the one place that turns a folder, shipped name or hf:// source into loaded
networks for the Python API, the CLI, the training scripts (previews, pairing) and the evaluations.

An export is `config.json` + `model.safetensors` (EMA weights). config.json names the model family and config and, for
models that work on a tokenizer's grid, the tokenizer: {"family": "pixel" | "vae", "config": ...} built from the
config alone, or {"family": "flextok", "path": "tokenizer", "code_scale": s} for generators on FlexTok tokens, whose
FlexTok export is copied into `tokenizer/` (`export_paired`). It also holds the class names and the default sampling
or decoding settings ("sample", "decode"), which every keyword and flag overrides.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.generators.ar import AR
from vistok.generators.flextok_codes import FlexTokCodes, TokenGenerator, check_pairing
from vistok.generators.xar import XAR
from vistok.io import sources
from vistok.io.checks import inside_export
from vistok.io.exports import (
    CONFIG,
    TOKENIZER_DIR,
    WEIGHTS,
    Export,
    embed_tokenizer,
    load_model,
    open_folder,
    relative_only,
    write_export,
)
from vistok.tokenizers import flextok_official
from vistok.tokenizers.build import build_tokenizer
from vistok.tokenizers.flextok import FlexTok, FlexTokConfig
from vistok.tokenizers.flextok_sampling import DecodeConfig

C = TypeVar("C")


def settings(cls: type[C], stored: dict[str, Any], **overrides: Any) -> C:
    """A settings dataclass from an export's stored values with the non-None keyword overrides applied."""
    return from_dict(cls, {**stored, **{k: v for k, v in overrides.items() if v is not None}})


def open_source(ckpt: str | Path | Export) -> Export:
    """An export found (its source resolved once) and its config.json read and checked, without loading weights. A
    released FlexTok hub folder (hf:// or local) is converted once into vistok's cache and that export is returned
    (`flextok_official.cached`); its `source` still names the release."""
    if isinstance(ckpt, Export):
        return ckpt
    found = sources.resolve(ckpt)
    folder = flextok_official.cached(found.folder) if flextok_official.is_official(found.folder) else found.folder
    return open_folder(folder, found.pinned)  # size, nesting and entry types checked: one line, never a traceback


def read_meta(ckpt: str | Path | Export) -> tuple[Path, dict[str, Any]]:
    """(local folder, config.json) of an export (`open_source`)."""
    export = open_source(ckpt)
    return export.folder, export.meta


def is_paired(meta: dict[str, Any]) -> bool:
    """Whether an export's config.json describes a generator on FlexTok tokens."""
    return isinstance(meta.get("tokenizer"), dict) and meta["tokenizer"].get("family") == "flextok"


def load_generator(ckpt: str | Path | Export,
                   device: str | torch.device = "cpu") -> tuple[XAR, nn.Module, dict[str, Any]]:
    """(xAR with EMA weights in eval mode, its grid tokenizer, the export's config.json) of a generator export."""
    export = open_source(ckpt)
    folder, ckpt = export.folder, export.source
    model, meta = load_model(export, device)
    if is_paired(meta):
        raise VistokError(f"{ckpt} generates FlexTok tokens; load it with vistok.api.load_paired (or vistok.load)")
    if not isinstance(model, XAR):
        raise VistokError(f"{ckpt} holds a {meta['family']!r} model, not a generator; pass an exported xAR folder")
    if "tokenizer" not in meta:
        raise VistokError(f"{ckpt} was exported without its tokenizer; re-export it with train/train_xar.py (a "
                          "converted official xAR: `vistok convert --from xar ... --vae VAE`)")
    meta.setdefault("classes", [str(i) for i in range(model.config.num_classes)])
    return model, build_tokenizer(meta["tokenizer"], folder).to(device), meta


def load_flextok(ckpt: str | Path | Export,
                 device: str | torch.device = "cpu") -> tuple[FlexTok, nn.Module, dict[str, Any]]:
    """(FlexTok with EMA weights in eval mode, its grid tokenizer, the export's config.json) from a FlexTok export."""
    export = open_source(ckpt)
    folder, ckpt = export.folder, export.source
    model, meta = load_model(export, device)
    if not isinstance(model, FlexTok):
        raise VistokError(f"{ckpt} holds a {meta['family']!r} model, not FlexTok; pass an export of "
                          "train/train_flextok.py")
    if "tokenizer" not in meta:
        raise VistokError(f"{ckpt} was exported without its tokenizer; re-export it with train/train_flextok.py")
    meta.setdefault("resolution", model.config.grid[0])
    return model, build_tokenizer(meta["tokenizer"], folder).to(device), meta  # a converted VAE sits in tokenizer/


def load_paired(ckpt: str | Path | Export, device: str | torch.device = "cpu",
                ) -> tuple[TokenGenerator, FlexTokCodes, dict[str, Any]]:
    """(GPT or xAR with EMA weights in eval mode, its FlexTokCodes, the export's config.json) from a folder or name.
    The source is resolved once; the FlexTok export inside the folder is read from there."""
    export = open_source(ckpt)
    folder, ckpt = export.folder, export.source
    model, meta = load_model(export, device)
    spec = meta.get("tokenizer", {})
    if not isinstance(model, (AR, XAR)) or not is_paired(meta):
        raise VistokError(f"{ckpt} holds a {meta['family']!r} model on {spec.get('family')!r} tokens, not a generator "
                          "on FlexTok tokens; pass an export of train/train_flextok_gpt.py or "
                          "train/train_flextok_xar.py")
    tokenizer_dir = inside_export(folder, spec.get("path", TOKENIZER_DIR), "tokenizer.path")  # never outside the export
    if not tokenizer_dir.is_dir():
        raise VistokError(f"{folder} lacks its FlexTok tokenizer folder {spec.get('path', TOKENIZER_DIR)}/; "
                          "re-export it")
    flextok, image_tokenizer, ft_meta = load_flextok(open_folder(tokenizer_dir), device)
    check_pairing(model.config, flextok.config)
    decoding = settings(DecodeConfig, {**ft_meta.get("sample", {}), **meta.get("decode", {})})
    codes = FlexTokCodes(flextok, image_tokenizer, spec.get("code_scale", 1.0), decoding)
    meta.setdefault("classes", [str(i) for i in range(model.config.num_classes)])
    return model, codes, meta


def export_paired(
    out_dir: str | Path, family: str, config: dict[str, Any], weights: dict[str, torch.Tensor],
    flextok_ckpt: str | Path, code_scale: float = 1.0, **meta: Any,
) -> Path:
    """Write the generator export with the FlexTok export (a folder or shipped name) copied into `tokenizer/`."""
    flextok = open_source(flextok_ckpt)
    source = flextok.folder

    def copy_tokenizer(folder: Path) -> None:  # into the export's temporary folder: all files appear together
        target = folder / TOKENIZER_DIR
        target.mkdir()
        shutil.copyfile(source / WEIGHTS, target / WEIGHTS)
        inner = flextok.meta.get("tokenizer", {}).get("path")
        if inner:  # the FlexTok export's own VAE (a converted release, a latent FlexTok), so the copy stays whole
            inside_export(source, inner, "tokenizer.path")
            top = Path(inner).parts[0]
            (shutil.copytree if (source / top).is_dir() else shutil.copyfile)(source / top, target / top)
        # an older FlexTok export naming its VAE by an absolute path gets it copied in too
        (target / CONFIG).write_text(json.dumps(relative_only(embed_tokenizer(flextok.meta, target)), indent=2))

    spec = {"family": "flextok", "path": TOKENIZER_DIR, "code_scale": float(code_scale), "source": flextok.source}
    return write_export(out_dir, family, config, weights, extra=copy_tokenizer, tokenizer=spec, **meta)


def read_flextok_config(ckpt: str | Path) -> FlexTokConfig:
    """The FlexTokConfig of a FlexTok export (folder or shipped name), without loading its weights."""
    meta = open_source(ckpt).meta
    if meta.get("family") != "flextok":
        raise VistokError(f"{ckpt} holds a {meta.get('family')!r} model, not FlexTok; pass an export of "
                          "train/train_flextok.py")
    return from_dict(FlexTokConfig, meta["config"])


__all__ = ["TOKENIZER_DIR", "export_paired", "is_paired", "load_flextok", "load_generator", "load_paired",
           "open_source", "read_flextok_config", "read_meta", "settings"]
