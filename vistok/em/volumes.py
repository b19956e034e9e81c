"""Electron-microscopy volumes: reading and writing (HDF5, TIFF, zarr, npz, npy), `FILE[:DATASET]` arguments,
whole-volume min-max normalisation, random 3D crops with reflect padding, in-plane flips and rotations, and the
crop datasets of TokenUnify pretraining and affinity fine-tuning.

Chen et al., "TokenUnify", arXiv 2405.16847: each whole volume is min-max normalised to [0, 1] before cropping and
volumes smaller than the crop are reflect-padded. Volumes are (z, y, x) arrays; flips and 90-degree rotations act in
the (y, x) plane only, since EM sections are usually thicker than their pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.errors import VistokError

FORMATS = {".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5", ".tif": "tiff", ".tiff": "tiff", ".zarr": "zarr",
           ".npz": "npz", ".npy": "npy"}
DEFAULT_DATASET = {"hdf5": "main", "zarr": "main", "npz": "volume"}  # names used when writing without ':DATASET'


@dataclass(frozen=True)
class VolumeRef:
    path: Path
    dataset: str | None
    format: str

    def __str__(self) -> str:
        return f"{self.path}:{self.dataset}" if self.dataset else str(self.path)


def parse_volume_arg(arg: str | Path) -> VolumeRef:
    """`FILE[:DATASET]` -> VolumeRef. DATASET is the path inside an HDF5 or zarr file, or an npz key."""
    text = str(arg).strip()
    if not text:
        raise VistokError("empty volume argument; pass FILE or FILE:DATASET (e.g. vol.h5:train/raw)")
    path, dataset = text, None
    head, sep, tail = text.rpartition(":")
    if sep and Path(head).suffix.lower() in FORMATS:
        path, dataset = head, tail
        if not dataset:
            raise VistokError(f"volume argument {text!r} ends with ':'; name the dataset after it or drop the ':'")
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise VistokError(f"unknown volume format {suffix or '(no suffix)'!r} in {text!r}; "
                          "use .h5/.hdf5, .tif/.tiff, .zarr, .npz or .npy, optionally followed by :DATASET")
    fmt = FORMATS[suffix]
    if dataset and fmt in ("tiff", "npy"):
        raise VistokError(f"a {fmt} file holds one volume; drop ':{dataset}' from {text!r}")
    return VolumeRef(Path(path).expanduser(), dataset, fmt)


def _need(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise VistokError(f"{what} needs the {module} package: pip install {module}") from None


def _pick(names: list[str], ref: VolumeRef, kind: str) -> str:
    if ref.dataset is not None:
        if ref.dataset.strip("/") not in names:
            raise VistokError(f"{ref.path} has no {kind} {ref.dataset!r}; it holds: {', '.join(names) or 'none'}")
        return ref.dataset.strip("/")
    if len(names) != 1:
        raise VistokError(f"{ref.path} holds {len(names)} {kind}s ({', '.join(names) or 'none'}); "
                          f"name one as {ref.path}:{kind.upper()}")
    return names[0]


def _read_hdf5(ref: VolumeRef) -> np.ndarray:
    import h5py

    try:
        with h5py.File(ref.path, "r") as f:
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            return np.asarray(f[_pick(names, ref, "dataset")])
    except OSError as err:
        raise VistokError(f"{ref.path} is not a readable HDF5 file ({err})") from None


def _read_zarr(ref: VolumeRef) -> np.ndarray:
    zarr = _need("zarr", "reading zarr volumes")
    store = ref.path / ref.dataset if ref.dataset else ref.path
    try:
        return np.asarray(zarr.open_array(store=str(store), mode="r")[...])
    except Exception as err:  # zarr raises several types for missing or non-array paths
        raise VistokError(f"cannot read a zarr array at {store} ({type(err).__name__}); "
                          "name the array inside the store as FILE.zarr:ARRAY") from None


def read_volume(arg: str | Path | VolumeRef) -> np.ndarray:
    """Read a (z, y, x) volume from `FILE[:DATASET]`."""
    ref = arg if isinstance(arg, VolumeRef) else parse_volume_arg(arg)
    if not ref.path.exists():
        raise VistokError(f"volume file {ref.path} does not exist")
    if ref.format == "hdf5":
        vol = _read_hdf5(ref)
    elif ref.format == "zarr":
        vol = _read_zarr(ref)
    elif ref.format == "tiff":
        tifffile = _need("tifffile", "reading TIFF volumes")
        try:
            vol = tifffile.imread(ref.path)
        except Exception as err:
            raise VistokError(f"{ref.path} is not a readable TIFF file ({err})") from None
    else:
        try:
            loaded = np.load(ref.path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise VistokError(f"{ref.path} is not a readable {ref.format} file ({err})") from None
        if ref.format == "npz":
            with loaded:
                vol = loaded[_pick(list(loaded.files), ref, "key")]
        else:
            vol = loaded
    vol = np.asarray(vol)
    while vol.ndim > 3 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise VistokError(f"{ref} has shape {vol.shape}; vistok expects a 3D (z, y, x) volume")
    return vol


def write_volume(arg: str | Path | VolumeRef, volume: np.ndarray) -> VolumeRef:
    """Write a volume to `FILE[:DATASET]` (HDF5 gzip, zarr, npz compressed, TIFF or npy); returns where it went."""
    ref = arg if isinstance(arg, VolumeRef) else parse_volume_arg(arg)
    if ref.dataset is None and ref.format in DEFAULT_DATASET:
        ref = VolumeRef(ref.path, DEFAULT_DATASET[ref.format], ref.format)
    if not ref.path.parent.is_dir():
        raise VistokError(f"folder {ref.path.parent} does not exist; create it first")
    volume = np.ascontiguousarray(volume)
    if ref.format == "hdf5":
        import h5py

        with h5py.File(ref.path, "a") as f:
            if ref.dataset in f:
                del f[ref.dataset]
            f.create_dataset(ref.dataset, data=volume, compression="gzip", chunks=True)
    elif ref.format == "zarr":
        zarr = _need("zarr", "writing zarr volumes")
        out = zarr.open_array(store=str(ref.path / ref.dataset), mode="w", shape=volume.shape, dtype=volume.dtype)
        out[...] = volume
    elif ref.format == "tiff":
        _need("tifffile", "writing TIFF volumes").imwrite(ref.path, volume)
    elif ref.format == "npz":
        np.savez_compressed(ref.path, **{ref.dataset: volume})
    else:
        np.save(ref.path, volume)
    return ref


# ---------------------------------------------------------------------------------------------------------------------
# normalisation, crops, augmentation
# ---------------------------------------------------------------------------------------------------------------------


def normalize_minmax(volume: np.ndarray) -> np.ndarray:
    """The whole volume scaled to [0, 1] (float32); a constant volume becomes zeros."""
    vol = volume.astype(np.float32)
    lo, hi = float(vol.min()), float(vol.max())
    return (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)


def pad_to(volume: np.ndarray, size: Sequence[int], mode: str = "reflect") -> np.ndarray:
    """Reflect-pad the last len(size) axes up to at least `size` (centred); larger axes are left alone."""
    lead = volume.ndim - len(size)
    deficit = [max(0, s - n) for s, n in zip(size, volume.shape[lead:])]
    if not any(deficit):
        return volume
    return np.pad(volume, [(0, 0)] * lead + [(d // 2, d - d // 2) for d in deficit], mode=mode)


def random_crop(arrays: Sequence[np.ndarray], size: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random crop of `size` from each array (same trailing shape), reflect-padding small ones first."""
    arrays = [pad_to(a, size) for a in arrays]
    shape = arrays[0].shape[-len(size):]
    if any(a.shape[-len(size):] != shape for a in arrays):
        raise VistokError(f"arrays to crop together have different shapes: {[a.shape for a in arrays]}")
    starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size)]
    window = tuple(slice(st, st + s) for st, s in zip(starts, size))
    return [a[(..., *window)] for a in arrays]


def augment_inplane(arrays: Sequence[np.ndarray], rng: np.random.Generator, flips: bool = True,
                    rotations: bool = True) -> list[np.ndarray]:
    """One random in-plane flip (y, x) and 90-degree rotation, the same for every array; rotations by 90 or 270
    degrees only when the plane is square (so the crop's shape never changes)."""
    flip_y, flip_x = (rng.random(2) < 0.5) if flips else (False, False)
    square = arrays[0].shape[-1] == arrays[0].shape[-2]
    k = int(rng.integers(0, 4 if square else 2)) * (1 if square else 2) if rotations else 0
    out = []
    for a in arrays:
        if flip_y:
            a = a[..., ::-1, :]
        if flip_x:
            a = a[..., :, ::-1]
        out.append(np.ascontiguousarray(np.rot90(a, k, axes=(-2, -1))))
    return out


class EMCrops(Dataset):
    """Random crops from whole-volume-normalised EM volumes, `length` samples per epoch.

    Indexed by an int or by `(index, epoch)` (as vistok's StepBatchSampler yields); the crop and its augmentation are
    drawn from a generator seeded by (seed, epoch, index), so they do not depend on workers or resume point. Returns
    the raw crop (1, D, H, W) float32 in [0, 1], or `(raw, labels)` with labels (D, H, W) int64 when labels are given.
    """

    def __init__(self, volumes: Sequence[np.ndarray], crop: Sequence[int], length: int,
                 labels: Sequence[np.ndarray] | None = None, seed: int = 0, augment: bool = True) -> None:
        if not volumes:
            raise VistokError("no EM volumes given; pass at least one FILE[:DATASET]")
        if labels is not None and [v.shape for v in volumes] != [lab.shape for lab in labels]:
            raise VistokError(f"raw and label volumes differ in shape: {[v.shape for v in volumes]} vs "
                              f"{[lab.shape for lab in labels]}")
        if len(crop) != 3 or min(crop) < 1 or length < 1:
            raise VistokError(f"crop {tuple(crop)} must be 3 positive sizes and length {length} positive")
        self.volumes = [normalize_minmax(v) for v in volumes]
        self.labels = None if labels is None else [np.asarray(lab).astype(np.int64) for lab in labels]
        self.crop, self.length, self.seed, self.augment = tuple(crop), length, seed, augment

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, index])
        v = int(rng.integers(len(self.volumes)))
        arrays = [self.volumes[v]] + ([] if self.labels is None else [self.labels[v]])
        arrays = random_crop(arrays, self.crop, rng)
        if self.augment:
            arrays = augment_inplane(arrays, rng)
        raw = torch.from_numpy(arrays[0])[None]  # (1, D, H, W)
        return raw if self.labels is None else (raw, torch.from_numpy(arrays[1]))


def load_volumes(args: Sequence[str]) -> list[np.ndarray]:
    """Read several `FILE[:DATASET]` volumes."""
    return [read_volume(a) for a in args]
