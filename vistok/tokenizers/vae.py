"""Frozen KL autoencoders (diffusers `AutoencoderKL`) as tokenizers.

Architectures (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752):
- `flextok-c16`: the FlexTok VAE-GAN (Bachmann et al., arXiv 2502.13967; released as EPFL-VILAB/flextok_vae_c16):
  f8, 16 channels, block widths [128, 256, 512, 512], 2 layers per block, GroupNorm 32, SiLU; 83.8M parameters.
  256 px images become 16 x 32 x 32 latents. Its scaling factor ships in the weights folder's config.json.
- `kl16`: MAR's released KL-16 VAE, xAR's tokenizer (Li et al., arXiv 2406.11838; Ren et al., arXiv 2502.20388): f16,
  16 channels, widths ch x (1, 1, 2, 2, 4) with ch 128, encoder attention at 16x16; 256 px -> 16 x 16 x 16; latents
  scaled by 0.2325. Not a diffusers layout: built by `kl_vae.KLVAE` (official parameter names), `vae.ch` picks a
  narrower width (e.g. 32) for CPU runs. Weights: a vistok export (`vistok convert --from mar-vae`), MAR's
  `kl16.ckpt` or a .safetensors of its state dict.
- `tiny-f4`: a 1M-parameter f4 / 16-channel network for CPU integration tests (random weights allowed).

Weights are local only (never downloaded): a diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`)
or one checkpoint file in diffusers or original LDM key names (converted by diffusers); pickles are read with
`weights_only=True` (`io.safeload`). Latents are `scaling_factor * (posterior sample or mode)`; FlexTok samples
the posterior. The pixel tokenizer (`pixel.py`) stands in for a VAE on CPU presets.

Latent caches for training (posterior moments of a whole dataset, sharded over ranks) live in
`tokenizers/latent_cache.py` and `data/latents.py` (`vistok cache-latents`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistok.config import from_dict
from vistok.errors import VistokError, require
from vistok.io.exports import load_state_strict, read_export
from vistok.io.safeload import load_pickle
from vistok.tokenizers.kl_vae import KLVAE, KLVAEConfig, config_from_state, official_state, posterior_sample

_ENC, _DEC = "DownEncoderBlock2D", "UpDecoderBlock2D"
ARCHS: dict[str, dict[str, Any]] = {
    "flextok-c16": dict(block_out_channels=(128, 256, 512, 512), latent_channels=16, layers_per_block=2,
                        norm_num_groups=32),
    "tiny-f4": dict(block_out_channels=(32, 64, 64), latent_channels=16, layers_per_block=1, norm_num_groups=32),
}
KL_ARCHS = ("kl16",)  # LDM-layout autoencoders built by kl_vae.KLVAE (MAR's KL-16)
SCALING = {"kl16": 0.2325}  # known factors; FlexTok's comes with its weights (config.json)


@dataclass(frozen=True)
class VAEConfig:
    arch: str = "flextok-c16"
    weights: str = ""  # a diffusers folder or a .safetensors/.ckpt/.pt/.bin file
    scaling_factor: float = 0.0  # 0: from the weights folder's config.json, else the arch's known value
    sample: bool = True  # encode to a posterior sample (FlexTok) or to its mode
    random_init: bool = False  # allow running without weights (tests, CPU integration only)
    ch: int = 0  # kl16 only: base width (0: 128, the released size; from the weights when they are an export)

    def __post_init__(self) -> None:
        require(self.arch in (*ARCHS, *KL_ARCHS),
                f"vae.arch={self.arch!r} is not one of {', '.join((*ARCHS, *KL_ARCHS))}")
        require(self.ch == 0 or (self.arch in KL_ARCHS and self.ch % 32 == 0 and self.ch > 0),
                f"vae.ch={self.ch} applies to kl16 only and must be a positive multiple of 32")
        require(self.scaling_factor >= 0,
                f"vae.scaling_factor must be positive (or 0 for the default), got {self.scaling_factor}")


def _diffusers_config(arch: str) -> dict[str, Any]:
    cfg = dict(ARCHS[arch])
    n = len(cfg["block_out_channels"])
    return dict(cfg, in_channels=3, out_channels=3, down_block_types=(_ENC,) * n,
                up_block_types=(_DEC,) * n, act_fn="silu")


def _diffusers_folder(path: Path | None) -> bool:
    """A diffusers AutoencoderKL folder (config.json with block_out_channels, no vistok family): built by diffusers from
    its own config, whatever the arch name (e.g. an LDM KL-f16 VAE saved with `save_pretrained`)."""
    if path is None or not (path / "config.json").is_file() or (path / "model.safetensors").is_file():
        return False
    try:
        spec = json.loads((path / "config.json").read_text())
    except ValueError:
        return False
    return isinstance(spec, dict) and "block_out_channels" in spec and "family" not in spec


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:
            raise VistokError(f"cannot read VAE weights from {path} ({err.__class__.__name__}); "
                              "re-download the file") from None
    else:
        state = load_pickle(path, what="VAE weights")  # weights_only: a pickle naming code is refused, not run
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


class VAE(nn.Module):
    """Frozen AutoencoderKL: (B, 3, H, W) images in [-1, 1] <-> (B, C, H/f, W/f) scaled latents. Always eval."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        path = Path(config.weights).expanduser() if config.weights else None
        if config.arch in KL_ARCHS and not _diffusers_folder(path):
            self._init_kl(path)
            return
        from diffusers import AutoencoderKL

        arch = _diffusers_config(config.arch) if config.arch in ARCHS else {}  # kl16 here: a diffusers folder
        # explicit value, then the arch's published one (a converted folder may carry diffusers' 0.18215 default),
        # then the folder's config.json; random test networks use 1
        self.scaling_factor = config.scaling_factor or SCALING.get(config.arch, 0.0)
        if path is None:
            if not config.random_init:
                raise VistokError(f"the {config.arch} VAE needs local weights: set vae.weights to a diffusers folder "
                                  "or a checkpoint file (downloaded on a machine with internet), or use a "
                                  "pixel-tokenizer preset")
            self.vae, self.scaling_factor = AutoencoderKL(**arch), self.scaling_factor or 1.0
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise VistokError(f"{path} has no config.json; point vae.weights at a diffusers AutoencoderKL folder")
            self.vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
            stored = json.loads((path / "config.json").read_text()).get("scaling_factor")
            self.scaling_factor = self.scaling_factor or float(stored or 0)
        elif path.is_file():
            if not self.scaling_factor:
                raise VistokError(f"no scaling factor for the {config.arch} VAE file {path}: set vae.scaling_factor "
                                  "(the scaling_factor of its config.json) or use the diffusers folder that ships it")
            self.vae = AutoencoderKL(**arch)
            self._load_file(path)
        else:
            raise VistokError(f"VAE weights not found at {str(path)!r}; copy the {config.arch} weights there "
                              "or fix vae.weights")
        require(self.scaling_factor > 0, f"{path}/config.json has no scaling_factor; set vae.scaling_factor")
        self.vae.requires_grad_(False)
        self.vae.eval()

    def _init_kl(self, path: Path | None) -> None:
        """MAR's KL-16 layout (kl_vae.KLVAE): random, a vistok export folder, kl16.ckpt or a .safetensors file."""
        config, state = self.config, None
        kl_config = KLVAEConfig(ch=config.ch or 128)
        if path is None:
            if not config.random_init:
                raise VistokError("the kl16 VAE needs local weights: set vae.weights to an export of `vistok convert "
                                  "--from mar-vae` or to MAR's kl16.ckpt, or use a pixel-tokenizer preset")
        elif path.is_dir():
            meta, state = read_export(path)
            if meta.get("family") != "kl-vae":
                raise VistokError(f"{path} holds a {meta.get('family')!r} model, not a KL VAE; convert MAR's kl16.ckpt "
                                  "with `vistok convert --from mar-vae`")
            kl_config = from_dict(KLVAEConfig, meta["config"])
        elif path.is_file():
            state = official_state(_read_checkpoint(path), str(path))
            kl_config = config_from_state(state, kl_config)
        else:
            raise VistokError(f"VAE weights not found at {str(path)!r}; copy the kl16 weights there or fix vae.weights")
        if config.ch and kl_config.ch != config.ch:
            raise VistokError(f"{path} is a ch={kl_config.ch} VAE but vae.ch={config.ch}; "
                              "set vae.ch=0 to follow the weights")
        self.vae = KLVAE(kl_config)
        if state is not None:
            load_state_strict(self.vae, state, str(path))
        self.scaling_factor = config.scaling_factor or kl_config.scale_factor
        self.vae.requires_grad_(False)
        self.vae.eval()

    def _load_file(self, path: Path) -> None:
        state = _read_checkpoint(path)
        if any(k.startswith(("encoder.down.", "first_stage_model.", "vae.encoder.down.")) for k in state):
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, dict(self.vae.config))  # original LDM key names -> diffusers
        state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # LDM training-only discriminator / LPIPS
        try:
            missing, unexpected = self.vae.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise VistokError(f"{path} does not match the {self.config.arch} VAE ({str(err).splitlines()[1].strip()}); "
                              "check vae.arch") from err
        if missing or unexpected:
            raise VistokError(f"{path} does not match the {self.config.arch} VAE (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}); check vae.arch")

    def train(self, mode: bool = True) -> VAE:
        return super().train(False)  # frozen

    @property
    def factor(self) -> int:
        """Spatial downsampling factor f."""
        if isinstance(self.vae, KLVAE):
            return self.vae.factor
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels if isinstance(self.vae, KLVAE) else self.vae.config.latent_channels

    token_channels = latent_channels

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Latent grid (h, w) of an H x W image."""
        if height % self.factor or width % self.factor:
            raise VistokError(f"image size {height}x{width} must divide by the VAE's factor {self.factor}; "
                              "resize or crop")
        return height // self.factor, width // self.factor

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> scaled posterior (mean, std), each (B, C, H/f, W/f)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % self.factor or images.shape[-2] % self.factor:
            raise VistokError(f"the VAE expects (B, 3, H, W) images with H, W divisible by {self.factor}, got "
                              f"{tuple(images.shape)}")
        # MAR's KL-16 (official names) or a diffusers AutoencoderKL: both give a diagonal Gaussian posterior
        post = self.vae.posterior(images) if isinstance(self.vae, KLVAE) else \
            self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return post.mean * self.scaling_factor, post.std * self.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) scaled latents (a posterior sample if config.sample)."""
        mean, std = self.moments(images)
        return posterior_sample(mean, std, generator) if self.config.sample else mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, h f, w f) images (not clamped)."""
        if isinstance(self.vae, KLVAE):
            return self.vae.decode_raw(latents / self.scaling_factor)
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample


PRESETS = {
    "vae-flextok-c16": VAEConfig(arch="flextok-c16"),
    "vae-kl16": VAEConfig(arch="kl16"),
    "vae-tiny-f4": VAEConfig(arch="tiny-f4", random_init=True),
}
