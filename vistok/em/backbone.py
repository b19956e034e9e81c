"""SegMamba: a 3D U-Net whose encoder stages are tri-directional Mamba layers; the backbone of TokenUnify.

Xing et al., "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical Image Segmentation", MICCAI 2024;
Chen et al., "TokenUnify: Scalable Autoregressive Visual Pre-training with Mixture Token Prediction", arXiv 2405.16847
(its EM backbone, with anisotropic in-plane kernels); Gu & Dao, "Mamba", arXiv 2312.00752.

    input (B, 1, D, H, W)
      encoder: stem conv (1,7,7)/2 [(7,7,7)/2 with encoder_z="isotropic"]
               -> [GSC -> depth x (LayerNorm -> tri-Mamba)] per stage, downsampling /2 in z, y, x between stages;
               each stage's output, instance-normed and through a 1^3-conv MLP, is a skip (D/2 .. D/16)
      decoder: UNETR residual blocks on the input and the four skips, transposed-conv upsampling, concatenation
    output (B, out_chans, D, H, W) logits (the losses apply the sigmoid)

Every spatial size must divide by 16 and each stage's voxel count by `nslices` (the slice direction of the scan).
Instance norms have no affine parameters and decoder convolutions no bias, as in MONAI's UNETR blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok.errors import VistokError, require
from vistok.modules.mamba import Mamba


@dataclass(frozen=True)
class SegMambaConfig:
    in_chans: int = 1
    out_chans: int = 1
    feat_size: tuple[int, int, int, int] = (32, 64, 128, 256)
    hidden_size: int = 512
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    kernel_size: tuple[int, int, int] = (1, 5, 5)  # decoder (UNETR) blocks; anisotropic for EM's thick z sections
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    bimamba_type: Literal["none", "v2", "v3"] = "v3"
    nslices: int = 5
    mamba_residual: bool = False  # the official MambaLayer has none; a residual helps deep stacks train
    # encoder stem and downsamplers along z: "anisotropic" = the official (1,7,7) stem and (1,2,2) downsamplers, which
    # stride 2 in z with kernel 1, so every other section never reaches the encoder (fine for 30-40 nm sections);
    # "isotropic" = (7,7,7) stem and (2,2,2) downsamplers that see every section (FIB-SEM). Same parameter names.
    encoder_z: Literal["anisotropic", "isotropic"] = "anisotropic"

    def __post_init__(self) -> None:
        require(len(self.feat_size) == 4 and len(self.depths) == 4,
                "feat_size and depths need 4 entries (one per stage)")
        require(all(k % 2 == 1 for k in self.kernel_size), f"kernel_size {self.kernel_size} must be odd in every axis")
        require(min(self.feat_size) > 0 and self.hidden_size > 0, "feat_size and hidden_size must be positive")
        require(min(self.depths) >= 0 and self.nslices >= 1, "depths must be >= 0 and nslices >= 1")
        require(self.in_chans > 0 and self.out_chans > 0, "in_chans and out_chans must be positive")
        require(self.encoder_z in ("anisotropic", "isotropic"),
                f"encoder_z must be 'anisotropic' or 'isotropic', got {self.encoder_z!r}")

    @property
    def stem_kernel(self) -> tuple[int, int, int]:
        return (1, 7, 7) if self.encoder_z == "anisotropic" else (7, 7, 7)

    @property
    def down_kernel(self) -> tuple[int, int, int]:
        return (1, 2, 2) if self.encoder_z == "anisotropic" else (2, 2, 2)

    def stage_shapes(self, size: tuple[int, ...]) -> list[tuple[int, int, int]]:
        """Feature-map sizes of the four encoder stages for an input of spatial `size` (D, H, W)."""
        return [tuple(s // 2**i for s in size) for i in range(1, 5)]

    def check_input(self, size: tuple[int, ...]) -> None:
        """Raise a VistokError unless (D, H, W) `size` fits the network (divisible by 16, stage lengths by nslices)."""
        if len(size) != 3 or any(s % 16 for s in size):
            raise VistokError(f"SegMamba needs a (D, H, W) input divisible by 16 in every axis, got {tuple(size)}")
        if self.bimamba_type == "v3":
            for i, shape in enumerate(self.stage_shapes(size)):
                if self.depths[i] and math.prod(shape) % self.nslices:
                    raise VistokError(f"stage {i + 1} of an input {tuple(size)} has {math.prod(shape)} voxels, not "
                                      f"divisible by nslices={self.nslices}; change the crop or model.nslices")


# ---------------------------------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------------------------------


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__(nn.Conv3d(c_in, c_out, kernel, padding=kernel // 2), nn.InstanceNorm3d(c_out), nn.ReLU())


class GSC(nn.Module):
    """Gated spatial convolution: two 3^3 conv layers plus a 1^3 conv branch, a 1^3 conv, and a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = nn.Sequential(ConvNormAct(channels, channels, 3), ConvNormAct(channels, channels, 3))
        self.conv1 = ConvNormAct(channels, channels, 1)
        self.mix = ConvNormAct(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.conv3(x) + self.conv1(x)) + x


class MambaLayer(nn.Module):
    """LayerNorm -> Mamba over the feature map's voxels in raster order (z slowest, x fastest)."""

    def __init__(self, dim: int, cfg: SegMambaConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                           bimamba_type=cfg.bimamba_type, nslices=cfg.nslices)
        self.residual = cfg.mamba_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[2:]
        tokens = rearrange(x, "b c d h w -> b (d h w) c")  # (B, L, C)
        out = self.mamba(self.norm(tokens))
        if self.residual:
            out = out + tokens
        return rearrange(out, "b (d h w) c -> b c d h w", d=d, h=h, w=w)


class MlpChannel(nn.Sequential):
    def __init__(self, dim: int) -> None:
        super().__init__(nn.Conv3d(dim, 2 * dim, 1), nn.GELU(), nn.Conv3d(2 * dim, dim, 1))


class MambaEncoder(nn.Module):
    """Four stages at 1/2 .. 1/16 resolution; returns their skip features."""

    def __init__(self, cfg: SegMambaConfig) -> None:
        super().__init__()
        f = cfg.feat_size
        stem = nn.Conv3d(cfg.in_chans, f[0], cfg.stem_kernel, stride=2, padding=tuple(k // 2 for k in cfg.stem_kernel))
        downs = [nn.Sequential(nn.InstanceNorm3d(f[i - 1]), nn.Conv3d(f[i - 1], f[i], cfg.down_kernel, stride=2))
                 for i in range(1, 4)]
        self.downsample = nn.ModuleList([stem, *downs])
        self.gscs = nn.ModuleList(GSC(c) for c in f)
        self.stages = nn.ModuleList(nn.Sequential(*(MambaLayer(c, cfg) for _ in range(n)))
                                    for c, n in zip(f, cfg.depths, strict=True))
        self.skip_norms = nn.ModuleList(nn.InstanceNorm3d(c) for c in f)
        self.mlps = nn.ModuleList(MlpChannel(c) for c in f)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for down, gsc, stage, norm, mlp in zip(self.downsample, self.gscs, self.stages, self.skip_norms,
                                               self.mlps, strict=True):
            x = stage(gsc(down(x)))  # (B, f_i, D/2^(i+1), H/2^(i+1), W/2^(i+1))
            skips.append(mlp(norm(x)))
        return skips


# ---------------------------------------------------------------------------------------------------------------------
# decoder (MONAI UNETR blocks: bias-free convs, instance norm without affine, LeakyReLU 0.01)
# ---------------------------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        pad = tuple(k // 2 for k in kernel)
        self.conv1 = nn.Conv3d(c_in, c_out, kernel, padding=pad, bias=False)
        self.conv2 = nn.Conv3d(c_out, c_out, kernel, padding=pad, bias=False)
        self.norm1, self.norm2 = nn.InstanceNorm3d(c_out), nn.InstanceNorm3d(c_out)
        self.proj = nn.Conv3d(c_in, c_out, 1, bias=False) if c_in != c_out else None
        self.proj_norm = nn.InstanceNorm3d(c_out) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(F.leaky_relu(self.norm1(self.conv1(x)), 0.01)))
        skip = x if self.proj is None else self.proj_norm(self.proj(x))
        return F.leaky_relu(y + skip, 0.01)


class UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(c_in, c_out, 2, stride=2, bias=False)
        self.block = ResBlock(2 * c_out, c_out, kernel)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class SegMamba(nn.Module):
    """(B, in_chans, D, H, W) -> (B, out_chans, D, H, W) logits."""

    def __init__(self, config: SegMambaConfig) -> None:
        super().__init__()
        self.config = cfg = config
        f, h, k = cfg.feat_size, cfg.hidden_size, cfg.kernel_size
        self.encoder = MambaEncoder(cfg)
        self.enc_input = ResBlock(cfg.in_chans, f[0], k)
        self.enc_skips = nn.ModuleList(ResBlock(c_in, c_out, k) for c_in, c_out in zip(f, (*f[1:], h), strict=True))
        self.decoders = nn.ModuleList(UpBlock(c_in, c_out, k)
                                      for c_in, c_out in zip((h, *f[:0:-1]), f[::-1], strict=True))
        self.dec_out = ResBlock(f[0], f[0], k)
        self.head = nn.Conv3d(f[0], cfg.out_chans, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, D, H, W) -> (B, f0, D, H, W) full-resolution decoder features."""
        self.config.check_input(tuple(x.shape[2:]))
        skips = self.encoder(x)  # 4 x (B, f_i, D/2^(i+1), ...)
        # full res .. D/16 (hidden)
        levels = [self.enc_input(x)] + [enc(s) for enc, s in zip(self.enc_skips, skips, strict=True)]
        y = levels[-1]
        for dec, skip in zip(self.decoders, levels[-2::-1], strict=True):
            y = dec(y, skip)  # upsample x2, concat the skip, residual block
        return self.dec_out(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, out_chans, D, H, W)


# TokenUnify's autoregressive-stage variant (src/segmamba_ar.py, the released pretrained weights): base widths, three
# Mamba layers per stage, (1, 3, 3) UNETR kernels, the official anisotropic encoder; 1 output channel (reconstruction)
AR_BASE = SegMambaConfig(out_chans=1, depths=(3, 3, 3, 3), kernel_size=(1, 3, 3))

PRESETS = {  # sizes of TokenUnify's models_mamba.py (base = "EMmamba", 28.3M in the paper's table), and a CPU toy
    "segmamba-base": SegMambaConfig(out_chans=3),
    "segmamba-ar-base": replace(AR_BASE, out_chans=3),  # fine-tunes from a converted TokenUnify release
    "segmamba-small": SegMambaConfig(out_chans=3, feat_size=(64, 128, 256, 512), hidden_size=1024),
    "segmamba-mid": SegMambaConfig(out_chans=3, feat_size=(96, 192, 384, 768), hidden_size=1024),
    "segmamba-large": SegMambaConfig(out_chans=3, feat_size=(144, 288, 576, 1104), hidden_size=2048),
    "segmamba-huge": SegMambaConfig(out_chans=3, feat_size=(192, 384, 768, 1536), hidden_size=3072),
    "segmamba-tiny": SegMambaConfig(out_chans=3, feat_size=(8, 16, 32, 64), hidden_size=64, depths=(1, 1, 1, 1),
                                    kernel_size=(1, 3, 3), nslices=4),
}

FAMILY = ("segmamba", SegMambaConfig, SegMamba)
