"""Model families and named presets: build by name, count parameters on the meta device, load exported models.

A family is a (config dataclass, module class) pair; a preset is a named config of a family. Exported models
(`config.json` + `model.safetensors`) name their family, so a folder alone rebuilds its model. Models shipped in
`assets/` (or on the Hugging Face hub, hf://org/repo) can be named instead of a path (`vistok.io.sources`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistok.io.sources import assets_dir, resolve_ckpt, shipped_models  # re-exported: older callers import them here
from vistok.config import from_dict
from vistok.engine.checkpoint import load_state_strict, read_export
from vistok.io.checks import check_export
from vistok.errors import VistokError

# modules that define families and presets; each has a `FAMILY = (name, ConfigClass, ModelClass)` and `PRESETS`
FAMILY_MODULES = (
    "vistok.metrics.fid_net",
    "vistok.tokenizers.flextok",
    "vistok.generators.xar",
    "vistok.generators.ar",
    "vistok.em.backbone",
    "vistok.em.objectives",
    "vistok.tokenizers.kl_vae",
    "vistok.modules.mamba_config",
)


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    model_cls: type


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    config: Any


def _load() -> tuple[dict[str, Family], dict[str, Preset]]:
    families, presets = {}, {}
    for mod_name in FAMILY_MODULES:
        mod = importlib.import_module(mod_name)
        name, config_cls, model_cls = mod.FAMILY
        families[name] = Family(name, config_cls, model_cls)
        for preset, cfg in mod.PRESETS.items():
            presets[preset] = Preset(preset, name, cfg)
    return families, presets


def families() -> dict[str, Family]:
    return _load()[0]


def presets() -> dict[str, Preset]:
    return _load()[1]


def get_preset(name: str) -> Preset:
    table = presets()
    if name not in table:
        raise VistokError(f"unknown preset {name!r}; `vistok models` lists them: {', '.join(table)}")
    return table[name]


def build(family: str, config: Any) -> nn.Module:
    fams = families()
    if family not in fams:
        raise VistokError(f"unknown model family {family!r}; known: {', '.join(fams)}")
    fam = fams[family]
    if isinstance(config, dict):
        config = from_dict(fam.config_cls, config)
    return fam.model_cls(config)


def param_count(preset: str | Preset) -> int:
    """Parameters of a preset, counted on the meta device (no memory is allocated)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta"):
        model = build(p.family, p.config)
    return sum(t.numel() for t in model.parameters())


def load_model(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the exported EMA weights, the export's config.json) from a folder or shipped name."""
    folder = resolve_ckpt(ckpt)
    check_export(folder, lambda meta: build(meta.get("family"), meta.get("config", {})))  # before any allocation
    meta, state = read_export(folder)
    model = build(meta["family"], meta["config"])
    load_state_strict(model, state, str(folder))
    return model.to(device).eval(), meta


__all__ = ["Family", "Preset", "assets_dir", "build", "families", "get_preset", "load_model", "param_count", "presets",
           "resolve_ckpt", "shipped_models"]
