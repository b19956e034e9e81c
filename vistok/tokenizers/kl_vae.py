"""The KL-regularised autoencoder of latent diffusion, in the layout of MAR's released KL-16 VAE (xAR's tokenizer).

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", arXiv 2112.10752 (the architecture);
Li et al., "Autoregressive Image Generation without Vector Quantization" (MAR), arXiv 2406.11838 (the KL-16 weights,
`kl16.ckpt`, and the latent scale 0.2325); Ren et al., "Beyond Next-Token: Next-X Prediction", arXiv 2502.20388 (xAR
generates in this latent space: 256 px -> 16 x 16 x 16).

    encoder: conv_in -> per level: num_res_blocks ResnetBlocks (+ self-attention after each block at the listed
             resolutions) -> stride-2 conv (all levels but the last) -> mid (block, attention, block) -> GroupNorm,
             SiLU, conv_out to 2 z_channels -> quant_conv (1x1) = posterior moments (mean || log-variance)
    decoder: post_quant_conv (1x1) -> conv_in -> mid -> per level, coarse to fine: num_res_blocks + 1 ResnetBlocks,
             nearest x2 upsampling + conv -> GroupNorm, SiLU, conv_out to RGB

GroupNorm has 32 groups and eps 1e-6 (so every width is a multiple of 32); the log-variance is clamped to [-30, 20].
Parameter names equal the official ones (`encoder.down.4.attn.0.q.weight`, ...), so MAR's state dict loads as is.
The released KL-16: ch 128, ch_mult (1, 1, 2, 2, 4), 2 blocks per level, encoder attention at 16x16 of a 256 px input
(placed at construction from `resolution`, whatever the input size later), no decoder attention outside the middle;
66,456,019 parameters. As a tokenizer, latents are `scale_factor * (posterior sample or mean)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok.errors import VistokError, require


@dataclass(frozen=True)
class KLVAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2  # encoder blocks per level; the decoder has one more
    embed_dim: int = 16  # latent channels
    z_channels: int = 16  # encoder output channels per moment (before quant_conv)
    in_channels: int = 3
    out_channels: int = 3
    resolution: int = 256  # input size the attention placement refers to
    attn_resolutions: tuple[int, ...] = (16,)  # encoder levels with self-attention, by feature-map size
    decoder_attn_resolutions: tuple[int, ...] = ()  # MAR's decoder: only the middle attention
    scale_factor: float = 0.2325  # latents = scale_factor * z (MAR's 1 / std of ImageNet latents)
    sample: bool = True  # `encode` draws a posterior sample (training); False gives the mean

    def __post_init__(self) -> None:
        require(self.ch > 0 and self.ch % 32 == 0, f"vae ch={self.ch} must be a positive multiple of 32 (GroupNorm 32)")
        require(len(self.ch_mult) >= 1 and min(self.ch_mult) >= 1, f"vae ch_mult={self.ch_mult} needs positive entries")
        require(self.num_res_blocks >= 1 and self.embed_dim >= 1 and self.z_channels >= 1,
                "vae num_res_blocks, embed_dim and z_channels must be positive")
        require(self.scale_factor > 0, f"vae scale_factor must be positive, got {self.scale_factor}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H x W positions, 1x1-conv projections, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = (rearrange(f(h), "b c y x -> b 1 (y x) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        return x + self.proj_out(rearrange(out, "b 1 (y x) c -> b c y x", y=x.shape[2]))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in the LDM code


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1 = ResnetBlock(channels, channels), AttnBlock(channels)
    mid.block_2 = ResnetBlock(channels, channels)
    return mid


def _level(c_in: int, c_out: int, blocks: int, attn: bool) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(blocks))
    level.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(blocks if attn else 0))
    return level


def _run_level(level: nn.Module, h: torch.Tensor) -> torch.Tensor:
    for i, block in enumerate(level.block):
        h = block(h)
        if len(level.attn):
            h = level.attn[i](h)
    return h


class Encoder(nn.Module):
    def __init__(self, c: KLVAEConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip([c.ch, *widths[:-1]], widths, strict=True)):
            level = _level(c_in, c_out, c.num_res_blocks, c.resolution // 2**i in c.attn_resolutions)
            if i < len(widths) - 1:
                level.downsample = Downsample(c_out)
            self.down.append(level)
        self.mid = _mid(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = _run_level(level, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))  # (B, ch * ch_mult[-1], H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 z_channels, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, c: KLVAEConfig) -> None:
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.z_channels, widths[-1], 3, padding=1)
        self.mid = _mid(widths[-1])
        levels = []  # built coarse to fine, stored fine to coarse (up.0 is the full resolution)
        c_in, size = widths[-1], c.resolution // c.factor
        for i in reversed(range(len(widths))):
            level = _level(c_in, widths[i], c.num_res_blocks + 1, size in c.decoder_attn_resolutions)
            if i > 0:
                level.upsample, size = Upsample(widths[i]), size * 2
            levels.insert(0, level)
            c_in = widths[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            h = _run_level(level, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels, H, W)


class Posterior(NamedTuple):
    """Diagonal Gaussian over unscaled latents, each (B, embed_dim, h, w) except moments (B, 2 embed_dim, h, w)."""

    moments: torch.Tensor  # mean || raw log-variance (quant_conv output)
    mean: torch.Tensor
    logvar: torch.Tensor  # clamped to [-30, 20]
    std: torch.Tensor


class KLVAE(nn.Module):
    """(B, 3, H, W) images in [-1, 1] <-> (B, embed_dim, H/f, W/f) latents scaled by `scale_factor`.

    `posterior` / `decode_raw` are the network on unscaled latents (differentiable); `moments`, `encode` and `decode`
    are the tokenizer interface of `vae.VAE` (scaled latents, no gradients)."""

    def __init__(self, config: KLVAEConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder, self.decoder = Encoder(c), Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)

    @property
    def factor(self) -> int:
        """Spatial downsampling factor f."""
        return self.config.factor

    @property
    def latent_channels(self) -> int:
        return self.config.embed_dim

    token_channels = latent_channels

    @property
    def scaling_factor(self) -> float:
        return self.config.scale_factor

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Latent grid (h, w) of an H x W image."""
        if height % self.factor or width % self.factor:
            raise VistokError(f"image size {height}x{width} must divide by the VAE's factor {self.factor}; "
                              "resize or crop")
        return height // self.factor, width // self.factor

    def posterior(self, images: torch.Tensor) -> Posterior:
        """(B, 3, H, W) -> the unscaled posterior."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.in_channels:
            raise VistokError(f"the VAE expects (B, {c.in_channels}, H, W) images, got {tuple(images.shape)}")
        self.grid(*images.shape[-2:])
        moments = self.quant_conv(self.encoder(images.to(self.quant_conv.weight.dtype)))  # (B, 2E, h, w)
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        return Posterior(moments, mean, logvar, torch.exp(0.5 * logvar))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) unscaled latents -> (B, 3, h f, w f) images (not clamped)."""
        return self.decoder(self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype)))

    @torch.no_grad()
    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> scaled posterior (mean, std), each (B, embed_dim, H/f, W/f)."""
        post = self.posterior(images)
        return post.mean * self.scaling_factor, post.std * self.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents: a posterior sample (config.sample) or the mean."""
        mean, std = self.moments(images)
        return posterior_sample(mean, std, generator) if self.config.sample else mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, embed_dim, h, w) scaled latents -> (B, 3, h f, w f) images (not clamped)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise VistokError(f"the VAE decodes (B, {self.latent_channels}, h, w) latents, got {tuple(latents.shape)}")
        return self.decode_raw(latents / self.scaling_factor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (unscaled path)."""
        return self.decode_raw(self.posterior(images).mean)


def posterior_sample(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """mean + std * eps of a diagonal Gaussian posterior; eps drawn on the generator's device (CPU generators give the
    same latents on any device)."""
    src = generator.device if generator is not None else mean.device
    return mean + std * torch.randn(mean.shape, generator=generator, device=src).to(mean.device)


def official_state(obj: object, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The autoencoder's state dict inside a loaded MAR / LDM checkpoint: `obj["model"]` (MAR's kl16.ckpt) or
    `obj["state_dict"]` or the dict itself, without LDM's training-only `loss.*` entries (discriminator, LPIPS) and
    without a `first_stage_model.` prefix (a whole latent-diffusion checkpoint)."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VistokError(f"{source} holds no state dict of tensors (expected MAR's kl16.ckpt: a dict with 'model')")
    if any(k.startswith("first_stage_model.") for k in obj):
        obj = {k[len("first_stage_model."):]: v for k, v in obj.items() if k.startswith("first_stage_model.")}
    return {k: v for k, v in obj.items() if not k.startswith("loss.")}


def config_from_state(state: dict[str, torch.Tensor], base: KLVAEConfig = KLVAEConfig()) -> KLVAEConfig:
    """Widths, level count, blocks per level, latent channels and attention placement read off the tensor shapes
    (resolution, scale factor and sampling from `base`)."""
    from dataclasses import replace

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise VistokError(f"the state dict has no {key}; is it a KL autoencoder (MAR kl16 / LDM first stage)?")
        return tuple(state[key].shape)

    ch = shape("encoder.conv_in.weight")[0]
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
    blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    ch_mult = tuple(shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels))
    enc_attn = tuple(base.resolution // 2**i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state)
    dec_attn = tuple(base.resolution // 2**i for i in range(levels) if f"decoder.up.{i}.attn.0.q.weight" in state)
    return replace(base, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks, embed_dim=shape("post_quant_conv.weight")[1],
                   z_channels=shape("encoder.conv_out.weight")[0] // 2, in_channels=shape("encoder.conv_in.weight")[1],
                   out_channels=shape("decoder.conv_out.weight")[0], attn_resolutions=enc_attn,
                   decoder_attn_resolutions=dec_attn)


PRESETS = {
    "vae-kl16": KLVAEConfig(),  # 66,456,019 parameters: MAR's released kl16.ckpt, xAR's tokenizer
    "vae-kl16-ch32": KLVAEConfig(ch=32),  # 4,210,291: the same layout at ch 32, for CPU tests and dry runs
}

FAMILY = ("kl-vae", KLVAEConfig, KLVAE)
