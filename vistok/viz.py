"""Image grids for the CLI, the demo and training previews: one tiling function and the two layouts built on it.

- `class_grid`: samples with one row per class when every class shown has as many images (round-robin labels), else
  a square-ish grid in order (`vistok sample`'s grid.png, the xAR previews);
- `recon_grid`: one row per image, the input then its reconstruction at each k (FlexTok, arXiv 2502.13967, Fig. 1).
All take and return uint8 NHWC arrays; padding is white.
"""

from __future__ import annotations

import math

import numpy as np
from einops import rearrange

from vistok.errors import require

GRID_MAX = 100  # images shown in a class grid (callers write every image elsewhere)


def tile(images: np.ndarray, cols: int, pad: int = 2) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (H', W', 3) uint8, row-major with `cols` columns and white padding."""
    images = np.asarray(images)
    require(images.ndim == 4 and images.shape[-1] == 3 and images.dtype == np.uint8,
            f"a grid needs uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    n, h, w = images.shape[:3]
    cols = max(1, min(cols, n)) if n else 1
    rows = math.ceil(n / cols) if n else 0
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for slot, image in enumerate(images):
        r, c = divmod(slot, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = image
    return canvas


def class_grid(images: np.ndarray, labels: np.ndarray, pad: int = 2, limit: int = GRID_MAX) -> np.ndarray:
    """At most `limit` images: one row per class when every class shown has equally many, else a square-ish grid."""
    n = min(len(images), limit)
    images, labels = np.asarray(images)[:n], np.asarray(labels)[:n]
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) > 1 and (counts == counts[0]).all():
        return tile(images[np.argsort(labels, kind="stable")], int(counts[0]), pad)
    return tile(images, math.ceil(math.sqrt(max(n, 1))), pad)


def recon_grid(images: np.ndarray, recons: dict[int, np.ndarray], rows: int = 8, pad: int = 2) -> np.ndarray:
    """One row per image (the first `rows`): the input, then its reconstruction for each k in increasing order."""
    columns = [np.asarray(images)[:rows], *(np.asarray(recons[k])[:rows] for k in sorted(recons))]
    return tile(rearrange(np.stack(columns, axis=1), "n col h w c -> (n col) h w c"), len(columns), pad)


__all__ = ["GRID_MAX", "class_grid", "recon_grid", "tile"]
