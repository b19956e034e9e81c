"""Procedural training images: the dead-leaves model, to widen a tokenizer's training data beyond one dataset.

Dead leaves (Lee, Mumford and Huang, "Occlusion Models for Natural Images: A Statistical Study of a Scale-Invariant
Dead Leaves Model", IJCV 2001) stack opaque shapes whose sizes follow p(r) ~ r^-3, which reproduces the scale
invariance and occlusion edges of natural images; Baradad et al. ("Learning to See by Looking at Noise", NeurIPS
2021) pretrain vision models on its variants with flat and textured leaves. Here: discs, squares and thin rotated
rectangles, 15-60 per image on a random background, 40% of them filled with an oriented grating or a smooth noise
texture between two colours, and 30% of the images converted to grayscale.

`DeadLeaves(num, resolution, seed)` is a fixed set of `num` images: image i depends only on (seed, i), so it is the
same in every process, epoch and run, and nothing is stored. Labels are -1 (no class); only trainers that ignore
labels (the tokenizers) may mix these images in (`data.mix=dead-leaves`, `vistok.data.images.mixed_dataset`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

R_MIN, R_MAX = 1.5, 20.0  # leaf radius range at 32 px, scaled with the resolution
TEXTURED_P, GRAY_P = 0.4, 0.3


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 dead-leaves image from `rng`."""
    s = size / 32
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    img = np.empty((size, size, 3))
    img[:] = rng.uniform(0, 1, 3)  # background
    lo, hi = (R_MIN * s) ** -2, (R_MAX * s) ** -2  # inverse-CDF draw of p(r) ~ r^-3 on [R_MIN, R_MAX]
    for _ in range(rng.integers(15, 61)):  # later leaves fall on top
        r = (lo - rng.uniform() * (lo - hi)) ** -0.5
        cy, cx = rng.uniform(-r / 2, size + r / 2, 2)
        shape = rng.integers(3)  # disc, square, thin rectangle
        if shape == 0:
            leaf = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            a = rng.uniform(0, np.pi)
            u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
            v = (yy - cy) * np.cos(a) - (xx - cx) * np.sin(a)
            leaf = (np.abs(u) <= r) & (np.abs(v) <= r * (rng.uniform(0.15, 1) if shape == 2 else 1))
        c1 = rng.uniform(0, 1, 3)
        if rng.random() < TEXTURED_P:  # between two colours: an oriented grating or smooth blocky noise
            c2 = rng.uniform(0, 1, 3)
            if rng.random() < 0.5:
                a, f, ph = rng.uniform(0, np.pi), rng.uniform(1, 8) / size, rng.uniform(0, 2 * np.pi)
                w = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx * np.cos(a) + yy * np.sin(a)) + ph)
            else:
                cells = max(1, size // 4)
                noise = rng.standard_normal((size // cells + 1, size // cells + 1))
                w = 1 / (1 + np.exp(-2 * np.kron(noise, np.ones((cells, cells)))[:size, :size]))
            img[leaf] = (c1 * w[..., None] + c2 * (1 - w[..., None]))[leaf]
        else:
            img[leaf] = c1
    if rng.random() < GRAY_P:
        img[:] = img.mean(-1, keepdims=True)
    return (255 * img).round().clip(0, 255).astype(np.uint8)


class DeadLeaves(Dataset):
    """`num` dead-leaves images at `resolution`, image i a pure function of (seed, i); yields (image in [-1, 1]
    (3, R, R), -1)."""

    classes: tuple[str, ...] = ()

    def __init__(self, num: int, resolution: int = 32, seed: int = 0) -> None:
        self.num, self.resolution, self.seed = num, resolution, seed

    def __len__(self) -> int:
        return self.num

    def uint8(self, index: int) -> torch.Tensor:
        """(3, R, R) uint8."""
        if not 0 <= index < self.num:
            raise IndexError(f"dead-leaves index {index} outside 0..{self.num - 1}")
        rng = np.random.default_rng([self.seed, index])
        return torch.from_numpy(dead_leaves(rng, self.resolution)).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.uint8(index).float() / 127.5 - 1, -1
