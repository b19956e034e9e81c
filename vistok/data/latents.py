"""Sharded latent caches: posterior moments of an image folder, written once, sampled afresh at every training step.

MAR's `main_cache.py` (Li et al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838),
used by xAR (Ren et al., arXiv 2502.20388, §5 of its training recipe): every image of an ImageNet-style class folder is
ADM-center-cropped (`adm_center_crop`), encoded by a frozen KL VAE, and the posterior mean and standard deviation of
the image and of its horizontal flip are stored; training then draws `scale * (mean + std * eps)` from the moments
of the image or of its flip (p = 0.5) at every step, so the cache costs the model none of the VAE's augmentation.

Layout of a cache folder (`vistok cache-latents` writes it; `LatentCache` reads it):
- `manifest.json`: what the cache holds (image count, shard size, resolution, crop, flip, latent shape, dtype, the
  VAE's tokenizer spec and scale factor, class names, a hash of the file list); written first by rank 0.
- `files.txt`: the images' paths relative to the input folder, one a line, in cache order (sorted, as
  `ImageFolderDataset` lists them).
- `shard-KKKKK.safetensors`: images [K S, (K + 1) S) of that order: `mean`, `std` (N, C, h, w) and, with flips,
  `mean_flip`, `std_flip`, plus `label` (N,) int64. Unscaled moments (as MAR stores them), fp16 by default.

Shard K belongs to rank K mod W of a `torchrun` job. Each rank writes its own shards atomically and never waits on
another: no collective, no barrier. A shard file that exists is complete (atomic rename), so running the command
again skips finished shards and redoes only those a stopped job had not written; the cache is complete when every
shard named by the manifest exists, which `LatentCache` checks before training starts.

Shards are read lazily through safetensors' memory map, one sample at a time, so a 1.28M-image ImageNet cache
(~42 GB in fp16 with flips) is never loaded whole and its pages are shared between the processes of a node.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vistok.data.images import ImageFolderDataset
from vistok.data.loader import StepBatchSampler
from vistok.errors import VistokError, require
from vistok.io.atomic import atomic_write, atomic_write_bytes
from vistok.progress import progress as bar_of
from vistok.seeding import item_generator

FORMAT, VERSION = "vistok-latent-cache", 1
MANIFEST, FILES = "manifest.json", "files.txt"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# manifest keys that must agree for a re-run to continue a cache instead of mixing two different ones
PLAN_KEYS = ("format", "version", "num_images", "shard_size", "resolution", "crop", "flip", "latent_shape", "dtype",
             "scaling_factor", "tokenizer", "files_sha256")
OPEN_SHARDS = 64  # memory-mapped shard files kept open per process (each holds a file descriptor)

Moments = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (B, 3, H, W) in [-1, 1] -> unscaled mean, std


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM's `center_crop_arr` (guided-diffusion, used by MAR and xAR): halve with a box filter while the short side
    is at least 2 `size`, resize the short side to `size` (bicubic), then crop the center. (size, size, 3) uint8."""
    image = image.convert("RGB")
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.array(arr[top:top + size, left:left + size])  # a writable copy (torch warns on read-only arrays)


class CacheImages(Dataset):
    """The images of a (class) folder in cache order, ADM-center-cropped: (uint8 (3, R, R), label). An unreadable
    file comes back with label -1 (from a loader worker, an exception would arrive as a multi-line traceback), and
    `write_cache` stops the job naming it: a silent substitute would shift every later latent off its file."""

    def __init__(self, root: str | Path, resolution: int) -> None:
        listing = ImageFolderDataset(root, resolution)  # sorted recursive listing, labels from first-level folders
        self.root, self.resolution = Path(root).resolve(), resolution
        self.files, self.labels, self.classes = listing.files, listing.labels, listing.classes or ("images",)
        self._relative = [p.relative_to(listing.root).as_posix() for p in self.files]  # no per-file syscalls

    def __len__(self) -> int:
        return len(self.files)

    def relative(self) -> list[str]:
        """The images' paths relative to the folder, in cache order (what files.txt holds)."""
        return self._relative

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.files[index]) as image:
                pixels = adm_center_crop(image, self.resolution)
        except Exception:  # PIL raises many types for broken files
            return torch.zeros(3, self.resolution, self.resolution, dtype=torch.uint8), -1
        return torch.from_numpy(pixels).permute(2, 0, 1), self.labels[index]


def plan(images: CacheImages, *, shard_size: int, flip: bool, latent_shape: tuple[int, ...], dtype: str,
         scaling_factor: float, tokenizer: dict[str, Any]) -> dict[str, Any]:
    """The manifest of caching `images`: everything a reader needs, and what a re-run must agree with."""
    require(shard_size >= 1, f"the shard size must be at least 1, got {shard_size}")
    require(dtype in DTYPES, f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    files = images.relative()
    return {
        "format": FORMAT, "version": VERSION, "num_images": len(files), "shard_size": shard_size,
        "num_shards": -(-len(files) // shard_size), "resolution": images.resolution, "crop": "adm-center",
        "flip": flip, "latent_shape": list(latent_shape), "dtype": dtype, "scaling_factor": float(scaling_factor),
        "tokenizer": tokenizer, "classes": list(images.classes), "source": str(images.root),
        "files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
    }


def _shard_done(path: Path, length: int) -> bool:
    """A shard file that exists is complete (written atomically); its length is checked against the plan anyway."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return f.get_slice("label").get_shape() == [length]
    except Exception:  # a foreign or damaged file: written again
        return False


@dataclass(frozen=True)
class CacheReport:
    written: list[int]  # shards this call encoded
    skipped: list[int]  # shards of this rank that were already finished
    images: int  # images this call encoded


def _check_existing(out: Path, manifest: dict[str, Any]) -> None:
    path = out / MANIFEST
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise VistokError(f"{path} is not readable JSON; delete {out} and cache again") from None
    changed = [k for k in PLAN_KEYS if old.get(k) != manifest.get(k)]
    if changed:
        raise VistokError(f"{out} holds another cache (different {', '.join(changed)}); pass another --out or delete "
                          "it to start over")


def write_cache(
    out: str | Path, images: CacheImages, moments: Moments, manifest: dict[str, Any], *, rank: int = 0,
    world_size: int = 1, batch_size: int = 32, num_workers: int = 4, device: torch.device | str = "cpu",
    progress: bool = True,
) -> CacheReport:
    """Encode this rank's unfinished shards (K = rank, rank + W, ...) of `manifest` and write each atomically.

    `moments(images)` maps (B, 3, R, R) images in [-1, 1] to the unscaled posterior (mean, std). No rank waits on
    another; rank 0 also writes the manifest and the file list (first, so a reader can tell what is missing)."""
    out = Path(out)
    require(0 <= rank < world_size, f"rank {rank} is outside a world of {world_size} processes")
    require(len(images) == manifest["num_images"], "the image folder changed since the manifest was planned")
    _check_existing(out, manifest)
    if rank == 0 and not (out / MANIFEST).is_file():
        atomic_write_bytes(out / FILES, ("\n".join(images.relative()) + "\n").encode())
        atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=2).encode())
    size, total, flip = manifest["shard_size"], manifest["num_images"], manifest["flip"]
    dtype = DTYPES[manifest["dtype"]]
    mine = range(rank, manifest["num_shards"], world_size)
    bounds = {k: (k * size, min((k + 1) * size, total)) for k in mine}
    pending = [k for k in mine if not _shard_done(out / shard_name(k), bounds[k][1] - bounds[k][0])]
    # one loader over all pending images, in batches that never straddle a shard, so workers stay busy across shards
    batches = [(k, list(range(i, min(i + batch_size, bounds[k][1])))) for k in pending
               for i in range(bounds[k][0], bounds[k][1], batch_size)]
    loader = DataLoader(images, batch_sampler=[b for _, b in batches], num_workers=num_workers)
    bar = bar_of(total=sum(bounds[k][1] - bounds[k][0] for k in pending), desc="cache-latents",
                 enabled=progress and rank == 0)  # rank 0's bar, on a terminal only
    parts: dict[str, list[torch.Tensor]] = {}
    done = 0
    with bar:
        for (k, index), (pixels, labels) in zip(batches, loader, strict=True):
            if (labels < 0).any():
                bad = images.files[index[int((labels < 0).nonzero()[0])]]
                raise VistokError(f"cannot read image {bad}; delete or replace it and run the same command again "
                                  "(finished shards are kept)")
            x = pixels.to(device).float() / 127.5 - 1.0  # (B, 3, R, R) in [-1, 1], as MAR's Normalize(0.5, 0.5)
            if flip:
                x = torch.cat([x, x.flip(-1)])  # one forward for the images and their mirror images
            mean, std = moments(x)  # (B or 2B, C, h, w)
            require(tuple(mean.shape[1:]) == tuple(manifest["latent_shape"]),
                    f"the VAE gives {tuple(mean.shape[1:])} latents, the manifest {manifest['latent_shape']}")
            mean, std = mean.to("cpu", dtype), std.to("cpu", dtype)
            n = len(index)
            for key, value in (("mean", mean[:n]), ("std", std[:n]), ("label", labels.long()),
                               *((("mean_flip", mean[n:]), ("std_flip", std[n:])) if flip else ())):
                parts.setdefault(key, []).append(value)
            bar.update(n)
            done += n
            if index[-1] + 1 == bounds[k][1]:  # the shard's last batch: write it, start the next
                tensors = {key: torch.cat(v).contiguous() for key, v in parts.items()}
                from safetensors.torch import save

                meta = {"first": str(bounds[k][0])}
                atomic_write(out / shard_name(k), lambda f, t=tensors, m=meta: f.write(save(t, metadata=m)))
                parts = {}
    return CacheReport(written=pending, skipped=[k for k in mine if k not in pending], images=done)


def posterior_sample(mean: torch.Tensor, std: torch.Tensor, scale: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """`scale * (mean + std * eps)`, eps ~ N(0, I): a fresh latent from a diagonal Gaussian posterior (MAR/xAR)."""
    eps = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    return scale * (mean.float() + std.float() * eps)


def read_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root).expanduser()
    path = root / MANIFEST
    if not path.is_file():
        raise VistokError(f"{root} is not a latent cache (no {MANIFEST}); write it with `vistok cache-latents --vae "
                          f"VAE --input FOLDER --out {root}`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        raise VistokError(f"{path} is not readable JSON; delete {root} and cache again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise VistokError(f"{path} is not a {FORMAT} v{VERSION} manifest; cache again with this vistok version")
    return manifest


class LatentCache(Dataset):
    """A finished cache as a training set: item (index, epoch) -> (scale * (mean + std * eps), label).

    The flip (p = 0.5, when the cache has flips) and eps come from a generator seeded by (seed, epoch, index), so
    every visit of an image draws a fresh latent, and the draws depend neither on world size, workers nor resuming
    (the same keys `StepBatchSampler` hands out as the image loader's augmentations use). `sample=False` gives the
    scaled posterior means without flips (for checks)."""

    def __init__(self, root: str | Path, seed: int = 0, sample: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.manifest = read_manifest(self.root)
        m = self.manifest
        missing = [k for k in range(m["num_shards"]) if not (self.root / shard_name(k)).is_file()]
        if missing:
            raise VistokError(f"latent cache {self.root} is incomplete: {len(missing)} of {m['num_shards']} shards "
                              f"missing ({shard_name(missing[0])}, ...); run the same `vistok cache-latents` command "
                              "again to finish it")
        self.seed, self.sample = seed, sample
        self.scale, self.flip = float(m["scaling_factor"]), bool(m["flip"])
        self._open: OrderedDict[int, Any] = OrderedDict()

    @property
    def tokenizer(self) -> dict[str, Any]:
        return self.manifest["tokenizer"]

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["latent_shape"])

    def __len__(self) -> int:
        return self.manifest["num_images"]

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own memory maps
        return {**self.__dict__, "_open": OrderedDict()}

    def _shard(self, k: int) -> Any:
        from safetensors import safe_open

        if k in self._open:
            self._open.move_to_end(k)
        else:
            self._open[k] = safe_open(str(self.root / shard_name(k)), "pt")
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        return self._open[k]

    def moments(self, index: int, flipped: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Unscaled (mean, std) of image `index` (or of its flip) as float32 (C, h, w), and its label."""
        require(0 <= index < len(self), f"index {index} is outside the cache's {len(self)} images")
        require(not flipped or self.flip, f"{self.root} was cached without --flip")
        k, j = divmod(index, self.manifest["shard_size"])
        f, tag = self._shard(k), "_flip" if flipped else ""
        mean, std = (f.get_slice(name + tag)[j:j + 1][0].float() for name in ("mean", "std"))
        return mean, std, int(f.get_slice("label")[j:j + 1][0])

    def generator(self, index: int, epoch: int) -> torch.Generator:
        return item_generator(self.seed, epoch, index)

    def draw(self, index: int, epoch: int = 0) -> tuple[torch.Tensor, int, bool]:
        """(scaled latent (C, h, w), label, whether the flip's moments were used) for one visit of image `index`."""
        if not self.sample:
            mean, _, label = self.moments(index)
            return self.scale * mean, label, False
        g = self.generator(index, epoch)
        flipped = self.flip and bool(torch.rand((), generator=g) < 0.5)
        mean, std, label = self.moments(index, flipped)
        return posterior_sample(mean, std, self.scale, g), label, flipped

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        latent, label, _ = self.draw(index, epoch)
        return latent, label


def latent_loader(dataset: Dataset, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                  start_step: int = 0, num_workers: int = 0) -> DataLoader:
    """Infinite per-rank batches of a dataset indexed by (index, epoch) keys (a `LatentCache`), deterministic in
    (seed, step) and resumable at `start_step`, with the same sample order as the image loader."""
    sampler = StepBatchSampler(len(dataset), global_batch, rank, world_size, seed, True, start_step)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=torch.cuda.is_available())
