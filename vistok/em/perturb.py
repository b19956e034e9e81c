"""TokenUnify's input perturbations: with probability p, exactly one of Gaussian noise, in-plane Gaussian blur or
cutout, applied to a crop before its tokens are hidden (the network sees the perturbed crop, the next-all target stays
clean).

Chen et al., "TokenUnify", arXiv 2405.16847, official loader `dataloader/data_provider_pretraining_autoregress.py`:
a crop is perturbed when `random.random() > 0.5`, with one perturbation drawn uniformly from those its config enables.
That loader forces scale, flip, rotation, intensity and elastic off, so the pool is noise, blur and cutout; their
ranges come from the config it reads, `pretraining_all.yaml`, which lives in the sibling repository ydchen0806/dbMiM
(`config/pretraining_all.yaml`, with the perturbation classes in `utils/consistency_aug_perturbations.py`):

    noise:  std ~ U(0.01, 0.2) per crop, x + N(0, std^2) per voxel, clipped to [0, 1] (`norm_mode='trunc'`)
    blur:   kernel k = 2 U{1..4} + 1 (3, 5, 7 or 9), sigma ~ U(0, 2); OpenCV's GaussianBlur on each z section (kernel
            exp(-i^2 / 2 sigma^2) normalised, the same sigma in y and x, border reflect-101), clipped to [0, 1]
    cutout: U{60..100} boxes of U{5..10} sections by s x s pixels, s ~ U{10..20} (one size per crop), each at a
            uniform position inside the crop, set to 0

Written with numpy (no OpenCV): a crop is a (D, H, W) float array in [0, 1]. Randomness comes from a numpy Generator
the caller seeds (per crop and epoch), so a resumed run perturbs exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vistok.errors import require

KINDS = ("noise", "blur", "cutout")


@dataclass(frozen=True)
class PerturbConfig:
    """`p` = probability that a crop is perturbed (the official 0.5; 0 turns perturbation off); `kinds` = the pool one
    perturbation is drawn from, uniformly. Ranges are inclusive; defaults are the official ones (module docstring)."""

    p: float = 0.0
    kinds: tuple[str, ...] = KINDS
    noise_std: tuple[float, float] = (0.01, 0.2)
    blur_kernel: tuple[int, int] = (3, 9)  # odd sizes between these
    blur_sigma: tuple[float, float] = (0.0, 2.0)
    cutout_boxes: tuple[int, int] = (60, 100)
    cutout_depth: tuple[int, int] = (5, 10)  # sections per box
    cutout_size: tuple[int, int] = (10, 20)  # in-plane side per box

    def __post_init__(self) -> None:
        require(0.0 <= self.p <= 1.0, f"data.perturb.p={self.p} must be a probability in [0, 1]")
        require(len(self.kinds) > 0 and set(self.kinds) <= set(KINDS),
                f"data.perturb.kinds={list(self.kinds)} must be a non-empty subset of {list(KINDS)}")
        for name in ("noise_std", "blur_kernel", "blur_sigma", "cutout_boxes", "cutout_depth", "cutout_size"):
            lo, hi = getattr(self, name)
            require(0 <= lo <= hi, f"data.perturb.{name}={[lo, hi]} must satisfy 0 <= low <= high")
        require(self.blur_kernel[0] >= 1 and self.cutout_depth[0] >= 1 and self.cutout_size[0] >= 1,
                "data.perturb.blur_kernel, cutout_depth and cutout_size must be at least 1")


class Perturbation(NamedTuple):
    kind: str  # "" when the crop was left untouched
    params: dict  # noise: std; blur: kernel, sigma; cutout: boxes (list of (z, y, x) corners), depth, size


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV's 1-D Gaussian (getGaussianKernel for float images): exp(-(i - c)^2 / 2 sigma^2), normalised; sigma <= 0
    is derived from the size as OpenCV does, 0.3 ((size - 1) / 2 - 1) + 0.8."""
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def blur_inplane(volume: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of every z section of a (D, H, W) volume, border reflect-101 (OpenCV's default)."""
    w, r = gaussian_kernel(size, sigma), size // 2
    out = volume.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")  # numpy "reflect" = reflect-101: the edge voxel is not repeated
        n = out.shape[axis]
        out = sum(w[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(size))
    return out


def perturb(volume: np.ndarray, cfg: PerturbConfig, rng: np.random.Generator) -> tuple[np.ndarray, Perturbation]:
    """(D, H, W) crop in [0, 1] -> (the crop, perturbed with probability `cfg.p` by exactly one of `cfg.kinds`; what
    was applied). The input array is never modified."""
    if cfg.p <= 0 or rng.random() >= cfg.p:
        return volume, Perturbation("", {})
    kind = cfg.kinds[int(rng.integers(len(cfg.kinds)))]
    d, h, w = volume.shape
    if kind == "noise":
        std = float(rng.uniform(*cfg.noise_std))
        out = np.clip(volume + rng.normal(0.0, std, volume.shape), 0.0, 1.0)
        return out.astype(volume.dtype), Perturbation(kind, {"std": std})
    if kind == "blur":
        size = 2 * int(rng.integers(cfg.blur_kernel[0] // 2, cfg.blur_kernel[1] // 2 + 1)) + 1
        sigma = float(rng.uniform(*cfg.blur_sigma))
        out = np.clip(blur_inplane(volume, size, sigma), 0.0, 1.0)
        return out.astype(volume.dtype), Perturbation(kind, {"kernel": size, "sigma": sigma})
    # cutout: one box size per crop; a box larger than a small crop is shrunk to fit (the official sizes fit 16x160x160)
    count = int(rng.integers(cfg.cutout_boxes[0], cfg.cutout_boxes[1] + 1))
    bd = min(int(rng.integers(cfg.cutout_depth[0], cfg.cutout_depth[1] + 1)), d)
    bs = min(int(rng.integers(cfg.cutout_size[0], cfg.cutout_size[1] + 1)), h, w)
    out = volume.copy()
    corners = []
    for _ in range(count):
        z, y, x = (int(rng.integers(0, n - s + 1)) for n, s in ((d, bd), (h, bs), (w, bs)))
        out[z:z + bd, y:y + bs, x:x + bs] = 0
        corners.append((z, y, x))
    return out, Perturbation(kind, {"boxes": corners, "depth": bd, "size": bs})
