"""Named presets: build a model by preset name, count its parameters on the meta device.

A preset is a named config of a model family; each family module defines `PRESETS` and `FAMILY = (name, ConfigClass,
ModelClass)`. Building from a family name and loading an export (folder, shipped name or hf://org/repo) are
`vistok.io.exports` (`build`, `load_model`), re-exported here for callers that think in presets.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from vistok.errors import VistokError
from vistok.io.exports import FAMILIES, build, load_model
from vistok.io.sources import assets_dir, resolve_ckpt, shipped_models


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
    for mod_name in dict.fromkeys(module for module, _, _ in FAMILIES.values()):
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


def param_count(preset: str | Preset) -> int:
    """Parameters of a preset, counted on the meta device (no memory is allocated)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device("meta"):
        model = build(p.family, p.config)
    return sum(t.numel() for t in model.parameters())


__all__ = ["Family", "Preset", "assets_dir", "build", "families", "get_preset", "load_model", "param_count", "presets",
           "resolve_ckpt", "shipped_models"]
