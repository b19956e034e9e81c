"""REPA: representation alignment of intermediate features with a frozen visual encoder.

Yu et al., "Representation Alignment for Generation: Training Diffusion Transformers Is Easier Than You Think",
arXiv 2410.06940: an MLP projects the patch features of an early block of the denoiser, and the loss is the negative
cosine similarity to a frozen encoder's patch features of the clean image, averaged over patches. FlexTok (Bachmann
et al., arXiv 2502.13967) aligns decoder block 1 with DINOv2-L and reports that it greatly accelerates convergence.

Teachers map images (B, 3, H, W) in [-1, 1] to feature maps (B, dim, h, w) and are frozen; the loss resizes the map to
the student's patch grid, so teacher and student resolutions need not match. Three are provided:
- `ConvTeacher`: a small fixed random conv net (seeded), for tests and CPU runs without any weights;
- `FidNetTeacher`: stage-2 features of a trained `cifar10-net` (vistok's CIFAR-10 classifier, loaded by the caller),
  a real semantic teacher that runs on CPU;
- `DinoV2Teacher`: DINOv2 (Oquab et al., arXiv 2304.07193) through timm, from local weights only.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vistok.errors import VistokError, require


def projector(width: int, hidden: int, out: int) -> nn.Sequential:
    """REPA's 3-layer MLP with SiLU: (..., width) -> (..., out)."""
    return nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out))


def repa_loss(features: torch.Tensor, target: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """features (B, h*w, dim) projected student patches on a `grid` (h, w); target (B, dim, h', w') teacher map.
    Returns the mean negative cosine similarity (a scalar in [-1, 1])."""
    require(target.ndim == 4 and target.shape[1] == features.shape[-1],
            f"REPA target must be (B, {features.shape[-1]}, h, w) teacher features, got {tuple(target.shape)}")
    if tuple(target.shape[-2:]) != tuple(grid):
        target = F.interpolate(target.float(), size=grid, mode="bilinear", align_corners=False, antialias=True)
    target = rearrange(target, "b d h w -> b (h w) d")  # (B, N, dim)
    return -F.cosine_similarity(features.float(), target.float(), dim=-1).mean()


class Teacher(nn.Module):
    """A frozen image encoder: (B, 3, H, W) in [-1, 1] -> (B, dim, h, w). Always in eval mode, no gradients."""

    dim: int

    def freeze(self) -> Teacher:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: dropout and norms stay in eval mode


class ConvTeacher(Teacher):
    """Fixed random conv features at 1/4 resolution (seeded, so every process gets the same net)."""

    def __init__(self, dim: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(
            nn.Conv2d(3, dim // 2, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1),
            nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1),
        )
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel()) ** 0.5
                                                               if p.ndim > 1 else 0.0))
        self.freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, dim, H/4, W/4)


class FidNetTeacher(Teacher):
    """Stage-2 feature map of a trained cifar10-net (8x8 at 32 px, 128 channels for the default widths).

    `net`: the loaded network (`vistok.metrics.fid_net.load_fid_net`); the training script loads it, so this module
    never reaches for exports or the registry."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        require(all(hasattr(net, a) for a in ("stem", "stage1", "stage2", "config")),
                f"FidNetTeacher needs a cifar10-net (FidNet) model, got {net.__class__.__name__}")
        self.net = net
        self.dim = self.net.config.widths[2]
        self.freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r = self.net.config.resolution
        if images.shape[-2:] != (r, r):
            images = F.interpolate(images, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        return self.net.stage2(self.net.stage1(self.net.stem(images)))  # (B, dim, r/4, r/4)


DINOV2_ARCHS = ("vit_small_patch14_dinov2", "vit_base_patch14_dinov2", "vit_large_patch14_dinov2",
                "vit_giant_patch14_dinov2")


class DinoV2Teacher(Teacher):
    """DINOv2 patch features at `resolution` (224 gives a 16x16 map), from a local checkpoint; never downloads.

    `weights`: a .safetensors / .pth / .pt file with the official (facebookresearch) or timm key names."""

    def __init__(self, weights: str | Path, arch: str = "vit_large_patch14_dinov2", resolution: int = 224) -> None:
        super().__init__()
        import timm

        require(arch in DINOV2_ARCHS, f"unknown DINOv2 architecture {arch!r}; use one of {', '.join(DINOV2_ARCHS)}")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise VistokError(
                f"DINOv2 weights not found at {str(path)!r}: download {arch} weights (e.g. dinov2_vitl14_pretrain.pth) "
                "on a machine with internet, copy the file here and pass its path, or use a CPU teacher (conv, fid-net)"
            )
        require(resolution % 14 == 0, f"DINOv2 resolution must be a multiple of its patch size 14, got {resolution}")
        self.net = timm.create_model(arch, pretrained=False, img_size=resolution, num_classes=0)
        state = _read_state(path)
        from timm.models.vision_transformer import checkpoint_filter_fn

        try:
            state = checkpoint_filter_fn(state, self.net)  # official key names -> timm's, positions resized
            missing, unexpected = self.net.load_state_dict(state, strict=False)
        except (RuntimeError, KeyError, ValueError) as err:  # shape mismatches: another model size
            missing, unexpected = [str(err).splitlines()[-1].strip()], []
        if missing or unexpected:
            raise VistokError(f"{path} does not hold {arch} weights (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); pass the matching arch")
        self.dim, self.resolution = self.net.num_features, resolution
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        x = F.interpolate((images + 1) / 2, size=(r, r), mode="bicubic", align_corners=False, antialias=True)
        tokens = self.net.forward_features((x - self.mean) / self.std)  # (B, prefix + N, dim)
        side = r // 14
        return rearrange(tokens[:, self.net.num_prefix_tokens:], "b (h w) d -> b d h w", h=side, w=side)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file: say which, not a pickle traceback
        raise VistokError(f"cannot read weights from {path}: {err.__class__.__name__}; re-download the file") from err
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


TEACHERS = ("conv", "fid-net", "dinov2")


def build_teacher(kind: str, weights: str = "", dim: int = 64, net: nn.Module | None = None, **kwargs) -> Teacher:
    """A frozen teacher by kind: conv (random features of width `dim`), fid-net (the loaded cifar10-net in `net`),
    dinov2 (a local weights file; `arch` and `resolution` in kwargs)."""
    if kind == "conv":
        return ConvTeacher(dim, **kwargs)
    if kind == "fid-net":
        require(net is not None,
                "the fid-net REPA teacher needs its loaded cifar10-net: pass net=load_fid_net(weights)")
        return FidNetTeacher(net)
    if kind == "dinov2":
        return DinoV2Teacher(weights, **kwargs)
    raise VistokError(f"unknown REPA teacher {kind!r}; use one of {', '.join(TEACHERS)}")
