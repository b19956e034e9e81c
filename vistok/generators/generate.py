"""Class-conditional generation from an exported model: load, sample in batches, decode, write PNGs / a grid / an npz.

Drives the xAR sampler (Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation",
arXiv 2502.20388, §3.2.3) for `vistok sample`, the FID tests and the benchmarks. An exported folder holds the generator
and its tokenizer: `config.json` names the model family and config, the tokenizer family and config, the class names
and default sampling settings; `model.safetensors` holds the EMA weights. So `load_generator(folder)` needs nothing else.

Reproducibility: image i draws all its noise from its own generator, seeded by (seed, i), so the same seed gives the
same images whatever the batch size, and the first n images of a run of N > n are the images of a run of n. (Batches
smaller than MIN_ROWS are padded, see there; bitwise equality across batch sizes holds on the CPU in fp32, while GPU
libraries may pick other kernels per batch size, so there expect equal images up to rare off-by-one pixels.)
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from vistok import registry
from vistok.config import from_dict
from vistok.data.images import to_uint8
from vistok.errors import VistokError, require
from vistok.generators.sampling import sample_xar
from vistok.generators.xar import XAR

# tokenizer family -> module defining FAMILY = (name, ConfigClass, TokenizerClass); the VAE adapter joins here
TOKENIZER_MODULES = {"pixel": "vistok.tokenizers.pixel"}
GRID_MAX = 100  # images shown in a grid (all of them are written as PNGs and into the npz)
# BLAS switches kernels for very few rows (e.g. gemv for one), which rounds differently; batches are padded to at least
# this many images so that an image's arithmetic, hence its pixels, do not depend on the batch size
MIN_ROWS = 8


@dataclass(frozen=True)
class SampleConfig:
    """Sampling settings; a training run stores its choice in the export and `vistok sample` flags override them."""

    steps: int = 50  # network evaluations per entity
    cfg: float = 1.0  # guidance scale (1: no guidance)
    cfg_schedule: Literal["linear", "constant"] = "linear"
    method: Literal["sde", "ode"] = "sde"

    def __post_init__(self) -> None:
        require(self.steps >= 1, f"sampling steps must be at least 1, got {self.steps}")
        require(self.cfg > 0, f"the guidance scale must be positive, got {self.cfg}")


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu" or "cuda"."""
    require(name in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise VistokError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def build_tokenizer(spec: dict[str, Any]) -> nn.Module:
    """A tokenizer from an export's {"family": ..., "config": {...}}."""
    family = spec.get("family")
    if family not in TOKENIZER_MODULES:
        raise VistokError(f"unknown tokenizer family {family!r} in the export; known: {', '.join(TOKENIZER_MODULES)}")
    _, config_cls, tokenizer_cls = importlib.import_module(TOKENIZER_MODULES[family]).FAMILY
    return tokenizer_cls(from_dict(config_cls, spec.get("config", {})))


def load_generator(ckpt: str | Path, device: str | torch.device = "cpu") -> tuple[XAR, nn.Module, dict[str, Any]]:
    """(generator with EMA weights in eval mode, its tokenizer, the export's config.json) from a folder or shipped name."""
    model, meta = registry.load_model(ckpt, device)
    if meta.get("tokenizer", {}).get("family") == "flextok":
        raise VistokError(f"{ckpt} generates FlexTok tokens; load it with vistok.generators.paired.load_paired")
    if not isinstance(model, XAR):
        raise VistokError(f"{ckpt} holds a {meta['family']!r} model, not a generator; pass an exported xAR folder")
    if "tokenizer" not in meta:
        raise VistokError(f"{ckpt} was exported without its tokenizer; re-export it with train/train_xar.py")
    tokenizer = build_tokenizer(meta["tokenizer"]).to(device).eval()
    meta.setdefault("classes", [str(i) for i in range(model.config.num_classes)])
    return model, tokenizer, meta


def sample_config(meta: dict[str, Any], **overrides: Any) -> SampleConfig:
    """The export's sampling settings with the non-None overrides applied."""
    values = {**meta.get("sample", {}), **{k: v for k, v in overrides.items() if v is not None}}
    return from_dict(SampleConfig, values)


def parse_labels(text: str | None, num: int, classes: list[str]) -> torch.Tensor:
    """(num,) labels: round-robin over all classes, or over a comma list of class indices or names ("0,3" / "cat,dog")."""
    if not text:
        return torch.arange(num) % len(classes)
    chosen = []
    for item in (s.strip() for s in text.split(",")):
        if item in classes:
            chosen.append(classes.index(item))
        elif item.lstrip("-").isdigit() and 0 <= int(item) < len(classes):
            chosen.append(int(item))
        else:
            raise VistokError(f"label {item!r} is not a class index 0..{len(classes) - 1} nor a class name ({', '.join(classes)})")
    return torch.tensor(chosen)[torch.arange(num) % len(chosen)]


def image_generators(seed: int, start: int, count: int, stream: int = 0) -> list[torch.Generator]:
    """CPU generators for images start..start+count-1, each seeded from (seed, index) through NumPy's SeedSequence.
    stream > 0 gives other, independent generators for the same images (seeded from (seed, index, stream)), e.g. for
    a second stage whose draws must not depend on how many the first one took."""
    require(seed >= 0, f"the seed must be non-negative, got {seed}")
    extra = [stream] if stream else []
    states = (np.random.SeedSequence([seed, i, *extra]).generate_state(2, np.uint32) for i in range(start, start + count))
    return [torch.Generator().manual_seed(int(s[0]) << 31 | int(s[1]) >> 1) for s in states]


@torch.no_grad()
def generate(
    model: XAR, tokenizer: nn.Module, labels: torch.Tensor, sampling: SampleConfig = SampleConfig(), seed: int = 0,
    batch_size: int = 64, precision: str = "fp32", log_every: float = 0.0,
) -> np.ndarray:
    """Images for `labels` (N,) as uint8 (N, H, W, 3), sampled in batches of `batch_size` with per-image seeds.

    precision "bf16" runs the network under bf16 autocast (the sampler's state stays in float). log_every > 0 prints
    progress every that many seconds."""
    require(batch_size >= 1, f"the batch size must be at least 1, got {batch_size}")
    require(precision in ("fp32", "bf16"), f"precision must be fp32 or bf16, got {precision!r}")
    num_classes = model.config.num_classes
    require(labels.ndim == 1 and (len(labels) == 0 or 0 <= labels.min() and labels.max() < num_classes),
            f"labels must be class indices 0..{num_classes - 1}")
    device = next(model.parameters()).device
    cfg = None if sampling.cfg == 1.0 else sampling.cfg  # scale 1 is the conditional model: skip the null branch
    out, last = [], time.perf_counter()
    for start in range(0, len(labels), batch_size):
        batch = labels[start:start + batch_size]
        rows = max(len(batch), MIN_ROWS)  # padded with throw-away images
        padded = torch.cat([batch, batch[-1:].expand(rows - len(batch))])
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            tokens = sample_xar(model, padded, sampling.steps, cfg, sampling.cfg_schedule, sampling.method,
                                generator=image_generators(seed, start, rows))[:len(batch)]  # (B, C, h, w)
        images = to_uint8(tokenizer.decode(tokens.float()))  # (B, 3, H, W)
        out.append(images.permute(0, 2, 3, 1).cpu().numpy())
        if log_every and time.perf_counter() - last > log_every:
            print(f"  {start + len(batch)}/{len(labels)} images", flush=True)
            last = time.perf_counter()
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 3), np.uint8)


def grid(images: np.ndarray, labels: np.ndarray, pad: int = 2) -> np.ndarray:
    """(H', W', 3) uint8 grid of at most GRID_MAX images: one row per class when every class shown has as many
    images as the others (round-robin labels), else a square-ish grid in order."""
    n = min(len(images), GRID_MAX)
    images, labels = images[:n], labels[:n]
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) > 1 and (counts == counts[0]).all():
        order, cols = np.argsort(labels, kind="stable"), int(counts[0])
    else:
        order, cols = np.arange(n), math.ceil(math.sqrt(n))
    rows, (h, w) = math.ceil(n / cols), images.shape[1:3]
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for slot, i in enumerate(order):
        r, c = divmod(slot, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    return canvas


def save_samples(out: str | Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """`out` ending in .png: the grid alone. Else a folder with one PNG per image, grid.png and samples.npz (uint8
    NHWC under `arr_0`, as FID tools read it, plus `labels`). Returns the files written (PNGs summarised)."""
    out = Path(out)
    if out.suffix.lower() == ".png":
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid(images, labels)).save(out)
        return [out]
    if out.exists() and not out.is_dir():
        raise VistokError(f"--out {out} is a file; pass a folder, or a path ending in .png for a grid alone")
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(out / f"{i:06d}.png")
    Image.fromarray(grid(images, labels)).save(out / "grid.png")
    np.savez(out / "samples.npz", arr_0=images, labels=labels.astype(np.int64))
    return [out / "grid.png", out / "samples.npz"]
