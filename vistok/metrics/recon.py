"""Reconstruction quality of uint8 images against their references: MSE, PSNR, SSIM, and FID of a reconstruction set.

FlexTok (Bachmann et al., arXiv 2502.13967, §4.2) reports reconstruction quality against the number of tokens k kept.
On the uint8 images that are written to disk, scaled to [0, 1]:
- MSE: mean over images of the per-image mean squared error; PSNR: mean over images of 10 log10(1 / MSE_i) (identical
  images count as 100 dB, not infinity);
- SSIM: Wang et al. (IEEE TIP 2004) with its 11x11 Gaussian window (sigma 1.5, population covariances), through
  scikit-image, averaged over images;
- FID: the reconstructions against reference statistics (default `cifar10-train` with the `cifar10-net` extractor,
  `vistok.metrics.fid`); a generative decoder's small-k reconstructions are sharp but unfaithful, so FID and MSE tell
  different stories.
Images are uint8 (N, H, W, 3) arrays (NHWC, as written to disk).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from vistok.errors import VistokError, require
from vistok.io.sources import assets_dir, shipped_models


def image_metrics(reference: np.ndarray, recon: np.ndarray) -> dict[str, float]:
    """Mean MSE, PSNR (dB) and SSIM of uint8 (N, H, W, 3) reconstructions against their references, in [0, 1]."""
    from skimage.metrics import structural_similarity

    reference, recon = np.asarray(reference), np.asarray(recon)
    require(reference.shape == recon.shape,
            f"reference {reference.shape} and reconstruction {recon.shape} shapes differ")
    a, b = reference.astype(np.float64) / 255.0, recon.astype(np.float64) / 255.0
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)  # (N,)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    ssim = [structural_similarity(x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False) for x, y in zip(a, b, strict=True)]
    return {"mse": float(mse.mean()), "psnr": float(psnr.mean()), "ssim": float(np.mean(ssim))}


def check_fid_extractor(extractor_weights: str | None = None) -> None:
    """Fail before any work when FID is asked for and the cifar10-net extractor is missing."""
    if extractor_weights is None and "cifar10-net" not in shipped_models():
        raise VistokError(f"FID needs the cifar10-net extractor, not shipped in {assets_dir()}; "
                          "pass --no-fid, or an exported cifar10-net folder as the extractor weights")


def fid_of(images: np.ndarray, real: str = "cifar10-train", extractor_weights: str | None = None,
           data_root: str | None = None, npz_path: str | Path | None = None) -> float:
    """FID (cifar10-net features) of uint8 (N, H, W, 3) images against `real` (shipped statistics for a dataset
    name, or a statistics .npz / folder / dataset); the images are read from `npz_path` if it exists, else written
    there (or to a temporary file)."""
    from vistok.metrics import fid

    check_fid_extractor(extractor_weights)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(npz_path) if npz_path is not None else Path(tmp) / "images.npz"
        if not path.is_file():
            np.savez(path, arr_0=np.asarray(images))
        result = fid.calculate(path, real, extractor="cifar10-net", weights=extractor_weights, data_root=data_root)
        return float(result["fid"])


def score(
    images: np.ndarray, recons: dict[int, np.ndarray], fid: bool = True, fid_real: str = "cifar10-train",
    extractor_weights: str | None = None, data_root: str | None = None, npz_dir: str | Path | None = None,
) -> dict[int, dict[str, float]]:
    """{k: {mse, psnr, ssim[, fid]}} of each k's reconstructions; npz_dir: where k{k:03d}.npz files are (or go)."""
    out = {}
    for k, rec in recons.items():
        out[k] = image_metrics(images, rec)
        if fid:
            npz = Path(npz_dir) / f"k{k:03d}.npz" if npz_dir is not None else None
            out[k]["fid"] = fid_of(rec, fid_real, extractor_weights, data_root, npz)
    return out


__all__ = ["check_fid_extractor", "fid_of", "image_metrics", "score"]
