"""Datasets and loaders: images by name or folder, deterministic resumable distributed loading."""

from vistok.data.images import ImageDataConfig, build_image_dataset, mixed_dataset, resolve_data_root, subset, to_float, to_uint8
from vistok.data.loader import build_loader

__all__ = ["ImageDataConfig", "build_image_dataset", "build_loader", "mixed_dataset", "resolve_data_root", "subset", "to_float", "to_uint8"]
