"""Datasets and loaders: images by name or folder, deterministic resumable distributed loading."""

from __future__ import annotations

from vistok.lazy import lazy_exports

# resolved on first use: importing a light submodule (vistok.data.outputs, for `vistok --help`) does not import torch
__getattr__ = lazy_exports(__name__, globals(), {
    "images": ("ImageDataConfig", "build_image_dataset", "mixed_dataset", "resolve_data_root", "subset", "to_float",
               "to_uint8"),
    "loader": ("build_loader",),
})

__all__ = ["ImageDataConfig", "build_image_dataset", "build_loader", "mixed_dataset", "resolve_data_root", "subset",
           "to_float", "to_uint8"]
