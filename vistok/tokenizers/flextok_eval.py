"""FlexTok evaluation: load an export, turn image sets into token ids and back in batches, score reconstructions per
prefix length k (MSE, PSNR, SSIM, FID), and draw the reconstruction grid (rows: images, columns: k).

Bachmann et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length", arXiv 2502.13967, §4.2:
reconstruction quality is reported against the number of tokens k = 1, 2, 4, ..., K kept from the start of the
sequence. Metrics, on the uint8 images that are written to disk, scaled to [0, 1]:
- MSE: mean over images of the per-image mean squared error; PSNR: mean over images of 10 log10(1 / MSE_i);
- SSIM: Wang et al. (IEEE TIP 2004) with its 11x11 Gaussian window (sigma 1.5, population covariances), through
  scikit-image, averaged over images;
- FID: the reconstructions against reference statistics (default: `cifar10-train` with the `cifar10-net` extractor,
  `vistok.metrics.fid`); a generative decoder's small-k reconstructions are sharp but unfaithful, so FID and MSE tell
  different stories.
Every image's decoding noise comes from its own generator seeded by (seed, index) (`generate.image_generators`), so
image i gets the same noise at every k and in any batch.

An export (`train/train_flextok.py`) holds the FlexTok config and EMA weights, its tokenizer ({"family": "pixel" or
"vae", "config": ...}), the image resolution and default decoding settings, so `load_flextok(folder)` needs nothing else.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vistok import registry
from vistok.config import from_dict
from vistok.data.images import NAMED, ImageFolderDataset, build_image_dataset, subset, to_float, to_uint8
from vistok.errors import VistokError, require
from vistok.generators.generate import image_generators
from vistok.tokenizers import flextok_sampling as sampling
from vistok.tokenizers.flextok import FlexTok
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer
from vistok.tokenizers.vae import VAE, VAEConfig

TOKENIZERS: dict[str, tuple[type, type]] = {"pixel": (PixelConfig, PixelTokenizer), "vae": (VAEConfig, VAE)}


@dataclass(frozen=True)
class DecodeConfig:
    """Decoding settings; a training run stores its choice in the export and command-line flags override them."""

    steps: int = 25  # Euler steps T
    cfg: float = 1.0  # guidance scale; 1 runs the conditional branch alone (no null pass)
    guidance: Literal["cfg", "apg"] = "cfg"  # plain CFG or adaptive projected guidance (FlexTok's README default)

    def __post_init__(self) -> None:
        require(self.steps >= 1, f"decoding steps must be at least 1, got {self.steps}")
        require(self.cfg > 0, f"the guidance scale must be positive, got {self.cfg}")
        require(self.guidance in ("cfg", "apg"), f"guidance must be cfg or apg, got {self.guidance!r}")


def build_tokenizer(spec: dict[str, Any]) -> nn.Module:
    """The frozen image <-> grid tokenizer of an export's {"family": ..., "config": {...}}, in eval mode."""
    family = spec.get("family")
    if family not in TOKENIZERS:
        raise VistokError(f"unknown tokenizer family {family!r} in the export; known: {', '.join(TOKENIZERS)}")
    config_cls, tokenizer_cls = TOKENIZERS[family]
    return tokenizer_cls(from_dict(config_cls, spec.get("config", {}))).eval()


def load_flextok(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[FlexTok, nn.Module, dict[str, Any]]:
    """(FlexTok with EMA weights in eval mode, its tokenizer, the export's config.json) from a folder or shipped name."""
    model, meta = registry.load_model(ckpt, device)
    if not isinstance(model, FlexTok):
        raise VistokError(f"{ckpt} holds a {meta['family']!r} model, not FlexTok; pass an export of train/train_flextok.py")
    if "tokenizer" not in meta:
        raise VistokError(f"{ckpt} was exported without its tokenizer; re-export it with train/train_flextok.py")
    meta.setdefault("resolution", model.config.grid[0])
    return model, build_tokenizer(meta["tokenizer"]).to(device), meta


def decode_config(meta: dict[str, Any], **overrides: Any) -> DecodeConfig:
    """The export's decoding settings with the non-None overrides applied."""
    return from_dict(DecodeConfig, {**meta.get("sample", {}), **{k: v for k, v in overrides.items() if v is not None}})


def k_ladder(registers: int) -> list[int]:
    """1, 2, 4, ..., K (K itself last even when it is not a power of two)."""
    return sorted({min(2**i, registers) for i in range(registers.bit_length() + 1)})


def parse_ks(text: str | None, registers: int) -> list[int]:
    """Prefix lengths from "1,2,4" (None or "": the powers-of-two ladder up to K); each in 1..K."""
    if not text:
        return k_ladder(registers)
    try:
        ks = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise VistokError(f"--tokens {text!r} must be a comma list of integers, e.g. 1,2,4,{registers}") from None
    require(len(ks) > 0 and all(1 <= k <= registers for k in ks),
            f"--tokens {text!r}: every k must lie in 1..{registers} (this model's registers)")
    return ks


# ---------------------------------------------------------------------------------------------------------- inputs
def load_images(
    source: str | Path, resolution: int, num: int | None = None, data_root: str | None = None,
) -> tuple[torch.Tensor, np.ndarray | None]:
    """(N, 3, R, R) uint8 images and their labels (or None) from a dataset name, an image folder or an .npz
    (`images` or `arr_0`, NHWC or NCHW uint8, `labels` if present). Named datasets and folders keep `num` evenly
    spaced images (they are sorted by class); an .npz keeps its first `num`."""
    path = Path(str(source)).expanduser()
    if str(source) in NAMED or path.is_dir():
        ds = build_image_dataset(str(source), data_root, resolution) if str(source) in NAMED \
            else ImageFolderDataset(path, resolution)
        chosen = subset(ds, num or 0)
        indices = chosen.indices if hasattr(chosen, "indices") else range(len(ds))
        images = torch.stack([ds.uint8(i) for i in indices])
        labels = np.asarray([int(ds.labels[i]) for i in indices], np.int64)
        return images, labels if getattr(ds, "classes", ()) else None
    if path.suffix == ".npz" and path.is_file():
        from vistok.metrics.fid import load_npz_images

        try:
            images = torch.from_numpy(np.ascontiguousarray(load_npz_images(path)[:num or None]))
            with np.load(path) as z:
                labels = z["labels"][:len(images)].astype(np.int64) if "labels" in z.files else None
        except (OSError, ValueError) as err:
            raise VistokError(f"cannot read {path} ({err.__class__.__name__}); is it an .npz of uint8 images?") from None
        require(tuple(images.shape[-2:]) == (resolution, resolution),
                f"{path} holds {images.shape[-2]}x{images.shape[-1]} images but the model takes {resolution}x{resolution}; "
                "resize them or pass an image folder (resized on load)")
        return images, labels
    raise VistokError(f"--input {source} is not a dataset name ({', '.join(NAMED)}), an image folder or an .npz of images")


# ------------------------------------------------------------------------------------------------- encode, decode
def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_images(model: FlexTok, tokenizer: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 3, H, W) uint8 images -> (N, K) int64 token ids (on the CPU)."""
    require(batch_size >= 1, f"the batch size must be at least 1, got {batch_size}")
    device, out = _device(model), []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start:start + batch_size].to(device))  # (B, 3, H, W) in [-1, 1]
        out.append(sampling.encode(model, x, tokenizer).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.registers, dtype=torch.long)


@torch.no_grad()
def decode_ids(
    model: FlexTok, tokenizer: nn.Module, ids: torch.Tensor, keep_k: int | torch.Tensor | np.ndarray | None = None,
    decoding: DecodeConfig = DecodeConfig(), seed: int = 0, batch_size: int = 64, precision: str = "fp32",
) -> torch.Tensor:
    """(N, n) token ids, the first keep_k of each used (an int, one per image, or None: all n) -> (N, 3, H, W) uint8.
    Image i draws its noise from its own generator seeded by (seed, i)."""
    require(batch_size >= 1, f"the batch size must be at least 1, got {batch_size}")
    require(precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {precision!r}")
    ids = torch.as_tensor(ids)
    k = sampling.prefix_lengths(None if keep_k is None else torch.as_tensor(keep_k), len(ids), ids.shape[1])
    device, out = _device(model), []
    cfg = None if decoding.cfg == 1.0 else decoding.cfg  # scale 1 is the conditional branch: skip the null pass
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            latents = sampling.decode(model, batch, k[start:start + len(batch)], decoding.steps, cfg, decoding.guidance,
                                      generator=image_generators(seed, start, len(batch)))  # (B, C, h, w)
        out.append(to_uint8(tokenizer.decode(latents.float())).cpu())  # (B, 3, H, W)
    return torch.cat(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


@torch.no_grad()
def reconstruct_images(
    model: FlexTok, tokenizer: nn.Module, images: torch.Tensor, ks: list[int], decoding: DecodeConfig = DecodeConfig(),
    seed: int = 0, batch_size: int = 64, precision: str = "fp32",
) -> dict[int, torch.Tensor]:
    """{k: (N, 3, H, W) uint8 reconstruction from the first k tokens}; images are encoded once."""
    torch.manual_seed(seed)  # a VAE tokenizer samples its posterior from the global generator
    ids = encode_images(model, tokenizer, images, batch_size)
    return {k: decode_ids(model, tokenizer, ids, k, decoding, seed, batch_size, precision) for k in ks}


# ------------------------------------------------------------------------------------------------------- metrics
def image_metrics(reference: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    """Mean MSE, PSNR (dB) and SSIM of uint8 (N, 3, H, W) reconstructions against their references, in [0, 1]."""
    from skimage.metrics import structural_similarity

    require(reference.shape == recon.shape,
            f"reference {tuple(reference.shape)} and reconstruction {tuple(recon.shape)} shapes differ")
    a, b = reference.double() / 255.0, recon.double() / 255.0
    mse = ((a - b) ** 2).flatten(1).mean(dim=1)  # (N,)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))  # identical images: 100 dB, not infinity
    a_np, b_np = a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy()
    ssim = [structural_similarity(x, y, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False) for x, y in zip(a_np, b_np)]
    return {"mse": float(mse.mean()), "psnr": float(psnr.mean()), "ssim": float(np.mean(ssim))}


def check_fid_extractor(extractor_weights: str | None = None) -> None:
    """Fail before any work when FID is asked for and the cifar10-net extractor is missing."""
    if extractor_weights is None and "cifar10-net" not in registry.shipped_models():
        raise VistokError(f"FID needs the cifar10-net extractor, not shipped in {registry.assets_dir()}; "
                          "pass --no-fid, or an exported cifar10-net folder as the extractor weights")


def fid_of(images: torch.Tensor, real: str = "cifar10-train", extractor_weights: str | None = None,
           data_root: str | None = None, npz_path: str | Path | None = None) -> float:
    """FID (cifar10-net features) of uint8 (N, 3, H, W) images against `real` (shipped statistics for a dataset
    name, or a statistics .npz / folder / dataset); the images are written to `npz_path` (or a temporary file)."""
    from vistok.metrics import fid

    check_fid_extractor(extractor_weights)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(npz_path) if npz_path is not None else Path(tmp) / "images.npz"
        if npz_path is None or not path.is_file():
            np.savez(path, arr_0=images.permute(0, 2, 3, 1).numpy())
        result = fid.calculate(path, real, extractor="cifar10-net", weights=extractor_weights, data_root=data_root)
        return float(result["fid"])


def score(
    images: torch.Tensor, recons: dict[int, torch.Tensor], fid: bool = True, fid_real: str = "cifar10-train",
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


def reconstruct_metrics(
    model: FlexTok, tokenizer: nn.Module, images: torch.Tensor, ks: list[int], steps: int = 25, cfg: float = 1.0,
    seed: int = 0, fid: bool = True, guidance: Literal["cfg", "apg"] = "cfg", batch_size: int = 64,
    fid_real: str = "cifar10-train", extractor_weights: str | None = None, data_root: str | None = None,
) -> dict[int, dict[str, float]]:
    """Reconstruct uint8 (N, 3, H, W) `images` from their first k tokens for each k in `ks`, then score them:
    {k: {"mse", "psnr", "ssim"[, "fid"]}} (see the module docstring)."""
    recons = reconstruct_images(model, tokenizer, images, ks, DecodeConfig(steps, cfg, guidance), seed, batch_size)
    return score(images, recons, fid, fid_real, extractor_weights, data_root)


# ----------------------------------------------------------------------------------------------------------- grid
def recon_grid(images: torch.Tensor, recons: dict[int, torch.Tensor], rows: int = 8, pad: int = 2) -> np.ndarray:
    """(H', W', 3) uint8: one row per image (the first `rows`), the input in the first column, then one column per k
    in increasing order, white padding."""
    n, (h, w) = min(rows, len(images)), images.shape[-2:]
    columns = [images[:n], *(recons[k][:n] for k in sorted(recons))]
    canvas = np.full((n * (h + pad) + pad, len(columns) * (w + pad) + pad, 3), 255, np.uint8)
    for c, col in enumerate(columns):
        for r in range(n):
            canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = \
                col[r].permute(1, 2, 0).numpy()
    return canvas


__all__ = [
    "DecodeConfig", "build_tokenizer", "check_fid_extractor", "decode_config", "decode_ids", "encode_images", "fid_of",
    "image_metrics", "k_ladder", "load_flextok", "load_images", "parse_ks", "recon_grid", "reconstruct_images",
    "reconstruct_metrics", "score",
]
