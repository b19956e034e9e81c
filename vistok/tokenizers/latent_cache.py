"""`vistok cache-latents`: encode an ImageNet-style class folder with a frozen KL VAE into a sharded latent cache.

MAR's `main_cache.py` (Li et al., arXiv 2406.11838), the data path of xAR (Ren et al., arXiv 2502.20388): ADM center
crop, posterior moments of each image and of its horizontal flip, one process per GPU under `torchrun`, each writing
its own shards (`vistok.data.latents` holds the format, the writer and the training-time reader).

`VAE` names the tokenizer: MAR's KL-16 as a `vistok convert --from mar-vae` export folder or its `kl16.ckpt`, a
diffusers `AutoencoderKL` folder (`config.json` + `diffusion_pytorch_model.safetensors`: FlexTok's f8 VAE), or a VAE
preset that names weights. The cache records the tokenizer spec (the weights' absolute path), so a generator trained
on it exports the VAE that decodes its latents.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vistok.config import to_dict
from vistok.data.latents import CacheImages, CacheReport, plan, write_cache
from vistok.errors import VistokError, require
from vistok.tokenizers.vae import ARCHS, PRESETS, VAE, VAEConfig


def vae_config(source: str) -> VAEConfig:
    """The VAE a cache is made with, as a VAEConfig whose weights path is absolute (the cache and the exports trained
    on it name it): a `vistok convert --from mar-vae` export folder (MAR's KL-16), MAR's `kl16.ckpt` itself, a
    diffusers AutoencoderKL folder (FlexTok's f8 VAE), or a preset with weights."""
    if source in PRESETS:
        config = PRESETS[source]
        if config.random_init:  # a cache must name a VAE that decodes its latents later, not a fresh random one
            raise VistokError(f"--vae {source} has random weights that a later run cannot rebuild; save a VAE folder "
                              "and pass that")
        if not config.weights:
            raise VistokError(f"--vae {source} names an architecture, not weights; pass the VAE's folder (for MAR's "
                              "KL-16: `vistok convert --from mar-vae --input kl16.ckpt --out DIR`)")
        return config
    path = Path(source).expanduser()
    if path.is_file():  # MAR's kl16.ckpt or a .safetensors of its state dict (read weights_only by the VAE)
        return VAEConfig(arch="kl16", weights=str(path.resolve()))
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            spec = json.loads(config.read_text())
        except ValueError:
            raise VistokError(f"{config} is not valid JSON; re-export the VAE") from None
        if spec.get("family") == "kl-vae":  # a `vistok convert --from mar-vae` export
            return VAEConfig(arch="kl16", weights=str(path.resolve()))
        arch = diffusers_arch(len(spec.get("block_out_channels", ())))
        if arch and "family" not in spec:
            return VAEConfig(arch=arch, weights=str(path.resolve()))
        raise VistokError(f"{path} is neither a KL VAE export (`vistok convert --from mar-vae`) nor a diffusers "
                          "AutoencoderKL folder; pass the VAE's folder")
    raise VistokError(f"--vae {source!r} is neither a VAE preset ({', '.join(PRESETS)}), a VAE folder nor a "
                      "checkpoint file; pass the KL-16 VAE's export folder")


def diffusers_arch(levels: int) -> str | None:
    """The vistok arch that loads a diffusers AutoencoderKL folder of `levels` resolution levels (None: none does)."""
    return next((name for name, spec in ARCHS.items() if len(spec["block_out_channels"]) == levels), None)


def tokenizer_spec(config: VAEConfig) -> dict[str, Any]:
    """How an export or a cache names its tokenizer (read back by `vistok.tokenizers.build.build_tokenizer`)."""
    return {"family": "vae", "config": to_dict(config)}


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; no process group: caching needs no collective."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def cache_latents(
    vae: str, input: str | Path, out: str | Path, resolution: int = 256, flip: bool = False, shard_size: int = 1024,
    batch_size: int = 32, num_workers: int = 4, dtype: str = "float16", device: str = "auto", progress: bool = True,
) -> CacheReport:
    """Cache this process's shards of `input` (all of them in one plain process; rank r's under torchrun)."""
    require(resolution >= 8, f"--resolution must be at least 8, got {resolution}")
    require(num_workers >= 0, f"--workers must be 0 (decode in the main process) or more, got {num_workers}")
    rank, world_size, local_rank = world()
    require(device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise VistokError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    config = vae_config(vae)
    images = CacheImages(input, resolution)  # lists the folder; errors on an empty or missing one
    model = VAE(config).to(dev).eval()
    require(resolution % model.factor == 0, f"--resolution {resolution} must divide by the VAE's factor {model.factor}")
    scale = float(model.scaling_factor)
    latent_shape = (model.latent_channels, resolution // model.factor, resolution // model.factor)

    def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = model.moments(x)  # scaled by the VAE; the cache keeps MAR's unscaled moments + the factor
        return mean / scale, std / scale

    manifest = plan(images, shard_size=shard_size, flip=flip, latent_shape=latent_shape, dtype=dtype,
                    scaling_factor=scale, tokenizer=tokenizer_spec(config))
    return write_cache(out, images, moments, manifest, rank=rank, world_size=world_size, batch_size=batch_size,
                       num_workers=num_workers, device=dev, progress=progress)
