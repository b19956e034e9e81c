"""Electron-microscopy volumes: reading and writing (HDF5, TIFF, zarr, npz, npy), `FILE[:DATASET]` arguments,
whole-volume min-max normalisation, random 3D crops with reflect padding, in-plane flips and rotations, and the
crop datasets of TokenUnify pretraining and affinity fine-tuning.

Chen et al., "TokenUnify", arXiv 2405.16847: each whole volume is min-max normalised to [0, 1] before cropping and
volumes smaller than the crop are reflect-padded. Volumes are (z, y, x) arrays; flips and 90-degree rotations act in
the (y, x) plane only, since EM sections are usually thicker than their pixels.

Volumes are data, never code: a zarr array whose dtype is `object` or whose codecs decode by unpickling (numcodecs'
Pickle, and the JSON / MsgPack / vlen object codecs) would run code from the file once numcodecs' unsafe-decode
switch is set in the environment. Its metadata (plain JSON) is checked before zarr opens the array, HDF5 and
.npy/.npz dtypes before any voxel is read, and only plain numeric volumes pass, whatever the environment says.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.data.arrays import check_file_dtypes
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
    if dataset is not None:
        parts = [p for p in dataset.split("/") if p not in ("", ".")]
        if ".." in parts or not parts:
            raise VistokError(f"dataset {dataset!r} in {text!r} must name a path inside the file, without '..'")
        dataset = "/".join(parts)  # 'vol.zarr:/raw' is the array 'raw' inside vol.zarr, never the folder /raw
    return VolumeRef(Path(path).expanduser(), dataset, fmt)


# codecs that decode bytes into Python objects (unpickling, or building object arrays): never run on a user's volume
OBJECT_CODECS = ("pickle", "json2", "msgpack2", "vlen-utf8", "vlen-bytes", "vlen-array", "json", "msgpack")
ZARR3_NUMERIC = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                 "float32", "float64"}


def check_numeric(dtype: np.dtype, ref: VolumeRef | str) -> None:
    """Refuse a volume dtype that is not plain numbers (objects, strings, records): nothing else is an EM volume,
    and object dtypes are how pickles get in."""
    if np.dtype(dtype).kind not in "biuf":
        raise VistokError(f"{ref} has dtype {dtype}; vistok reads only numeric volumes (integers, floats), never "
                          "objects: store the volume as e.g. uint8 or float32")


def _codec_names(codecs: object) -> list[str]:
    """The codec ids of zarr v2 filters / compressor ({"id": ...}) or v3 codecs ({"name": ...}), nested ones (a
    sharding codec's) included."""
    names: list[str] = []
    for codec in codecs if isinstance(codecs, list) else [codecs]:
        if not isinstance(codec, dict):
            continue
        name = codec.get("id", codec.get("name"))
        if isinstance(name, str):
            names.append(name)
        config = codec.get("configuration")
        if isinstance(config, dict):
            for key in ("codecs", "index_codecs"):
                names += _codec_names(config.get(key))
    return names


def check_zarr_array(store: Path, ref: VolumeRef) -> None:
    """Read the array's metadata as plain JSON (before zarr parses it or decodes a chunk) and refuse an object or
    otherwise non-numeric dtype and any pickle or object codec."""
    for meta_file, version in ((store / ".zarray", 2), (store / "zarr.json", 3)):
        if not meta_file.is_file():
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            raise VistokError(f"{ref}: {meta_file.name} is not readable JSON; the zarr array is damaged") from None
        if not isinstance(meta, dict) or (version == 3 and meta.get("node_type") != "array"):
            return  # a group or something else: zarr's own error names it
        if version == 2:
            dtype, codecs = meta.get("dtype"), [*(meta.get("filters") or []), meta.get("compressor")]
            try:
                parsed = np.dtype(dtype) if isinstance(dtype, str) else None
            except TypeError:
                parsed = None
            numeric = parsed is not None and parsed.kind in "biuf"
        else:
            dtype, codecs = meta.get("data_type"), meta.get("codecs") or []
            numeric = isinstance(dtype, str) and dtype in ZARR3_NUMERIC
        bad = [n for n in _codec_names(codecs) if n.lower().removeprefix("numcodecs.") in OBJECT_CODECS
               or "pickle" in n.lower()]
        bad.sort(key=lambda n: "pickle" not in n.lower())  # name the pickle first
        if bad:
            raise VistokError(f"{ref} is encoded with the {bad[0]!r} codec, which decodes by unpickling or into Python "
                              "objects (running code from the file); vistok refuses it: store the volume as a numeric "
                              "array with an ordinary compressor (blosc, zstd, gzip)")
        if not numeric:
            raise VistokError(f"{ref} has dtype {dtype!r}; vistok reads only numeric volumes (integers, floats), "
                              "never objects: store the volume as e.g. uint8 or float32")
        return


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
            ds = f[_pick(names, ref, "dataset")]
            check_numeric(ds.dtype, ref)  # before any voxel is read
            return np.asarray(ds)
    except OSError as err:
        raise VistokError(f"{ref.path} is not a readable HDF5 file ({err})") from None


def _read_zarr(ref: VolumeRef) -> np.ndarray:
    zarr = _need("zarr", "reading zarr volumes")
    store = ref.path / ref.dataset if ref.dataset else ref.path
    check_zarr_array(store, ref)  # before zarr reads the metadata or decodes a chunk
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
        check_file_dtypes(ref.path, "volume file",
                          None if ref.format == "npy" or ref.dataset is None else [ref.dataset])
        try:
            loaded = np.load(ref.path, allow_pickle=False)
            if ref.format == "npz":
                with loaded:
                    vol = loaded[_pick(list(loaded.files), ref, "key")]
            else:
                vol = loaded
        except VistokError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a torn or foreign file
            reason = " ".join(str(err).split())[:120] or type(err).__name__
            raise VistokError(f"{ref.path} is not a readable {ref.format} file ({reason}); write it again") from None
    vol = np.asarray(vol)
    check_numeric(vol.dtype, ref)
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


def check_output(ref: VolumeRef) -> None:
    """Fail now, before any work, when `ref` cannot be written: missing or unwritable folder, an existing file of
    another kind (e.g. text named out.h5), or a folder where a file belongs."""
    parent = ref.path.parent
    if not parent.is_dir():
        raise VistokError(f"folder {parent} for {ref.path} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise VistokError(f"folder {parent} is not writable; choose another output path")
    if not ref.path.exists():
        return
    if ref.format == "zarr":
        if not ref.path.is_dir():
            raise VistokError(f"{ref.path} exists and is not a zarr folder; remove it or name another output")
    elif ref.path.is_dir():
        raise VistokError(f"{ref.path} is a folder; name a {ref.format} file to write")
    elif ref.format == "hdf5":
        import h5py

        if not h5py.is_hdf5(ref.path):
            raise VistokError(f"{ref.path} exists and is not an HDF5 file; remove it or name another output")
        if not os.access(ref.path, os.W_OK):
            raise VistokError(f"{ref.path} is not writable; choose another output path")


class Volume:
    """A (z, y, x) volume read lazily, region by region: HDF5 and zarr datasets read only the chunks a window touches,
    .npy files are memory-mapped; compressed containers (.npz, TIFF) are read whole once. Opening reads metadata
    only. Picklable (DataLoader workers reopen the file in their own process). `Volume.of(array)` wraps memory."""

    def __init__(self, arg: str | Path | VolumeRef) -> None:
        self.ref = arg if isinstance(arg, VolumeRef) else parse_volume_arg(arg)
        self._array: np.ndarray | None = None
        self._handle: tuple[int, object, object] | None = None  # (pid, file, dataset)
        if not self.ref.path.exists():
            raise VistokError(f"volume file {self.ref.path} does not exist")
        ds = self._dataset()
        shape = tuple(ds.shape)
        self.lead = 0
        while len(shape) - self.lead > 3 and shape[self.lead] == 1:
            self.lead += 1  # leading singleton axes, as read_volume drops them
        self.shape, self.dtype = shape[self.lead:], np.dtype(ds.dtype)
        check_numeric(self.dtype, self.ref)
        if len(self.shape) != 3:
            raise VistokError(f"{self.ref} has shape {shape}; vistok expects a 3D (z, y, x) volume")

    @classmethod
    def of(cls, array: np.ndarray, name: str = "array") -> Volume:
        vol = cls.__new__(cls)
        vol.ref, vol._handle, vol.lead = VolumeRef(Path(name), None, "memory"), None, 0
        vol._array = np.asarray(array)
        if vol._array.ndim != 3:
            raise VistokError(f"{name} has shape {vol._array.shape}; vistok expects a 3D (z, y, x) volume")
        vol.shape, vol.dtype = vol._array.shape, vol._array.dtype
        return vol

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    def _dataset(self):
        if self._array is not None:
            return self._array
        pid = os.getpid()
        if self._handle is not None and self._handle[0] == pid:
            return self._handle[2]
        ref = self.ref
        if ref.format == "hdf5":
            import h5py

            try:
                f = h5py.File(ref.path, "r")
            except OSError as err:
                raise VistokError(f"{ref.path} is not a readable HDF5 file ({err})") from None
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            ds = f[_pick(names, ref, "dataset")]
            check_numeric(ds.dtype, ref)  # before any voxel is read
            self._handle = (pid, f, ds)
        elif ref.format == "zarr":
            zarr = _need("zarr", "reading zarr volumes")
            store = ref.path / ref.dataset if ref.dataset else ref.path
            check_zarr_array(store, ref)  # before zarr reads the metadata or decodes a chunk
            try:
                self._handle = (pid, None, zarr.open_array(store=str(store), mode="r"))
            except Exception as err:  # zarr raises several types for missing or non-array paths
                raise VistokError(f"cannot read a zarr array at {store} ({type(err).__name__}); "
                                  "name the array inside the store as FILE.zarr:ARRAY") from None
        elif ref.format == "npy":
            check_file_dtypes(ref.path, "volume file")
            try:
                self._handle = (pid, None, np.load(ref.path, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError) as err:
                raise VistokError(f"{ref.path} is not a readable npy file ({err})") from None
        else:  # npz, TIFF: compressed whole-file containers
            self._array = read_volume(ref)
            return self._array
        return self._handle[2]

    def read(self, window: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """The voxels of `window` (three slices; None = everything) as an in-memory array."""
        window = tuple(slice(None) for _ in range(3)) if window is None else tuple(window)
        return np.asarray(self._dataset()[(0,) * self.lead + window])

    @property
    def stored_range(self) -> tuple[float, float] | None:
        """(min, max) stored with the dataset (HDF5 / zarr attributes `min` and `max`), if any."""
        attrs = getattr(self._dataset(), "attrs", None)
        if attrs is None or "min" not in attrs or "max" not in attrs:
            return None
        try:
            return float(attrs["min"]), float(attrs["max"])
        except (TypeError, ValueError, KeyError):
            return None


def open_volumes(args: Sequence[str]) -> list[Volume]:
    """Open several `FILE[:DATASET]` volumes lazily (metadata only)."""
    return [Volume(a) for a in args]


def intensity_range(vol: Volume, mode: str = "exact", samples: int = 32, block: Sequence[int] = (16, 128, 128),
                    seed: int = 0) -> tuple[float, float]:
    """(min, max) for min-max normalisation: the dataset's stored `min`/`max` attributes when present; else `exact`
    streams the volume in z slabs (memory of one slab); `sample` reads `samples` random blocks (for corpora too big
    to scan; a seeded choice, so every rank gets the same range)."""
    if vol.stored_range is not None:
        return vol.stored_range
    if 0 in vol.shape:
        raise VistokError(f"the EM volume is empty (shape {vol.shape}); pass a volume with at least one "
                          "voxel in each axis")
    if mode == "sample":
        rng = np.random.default_rng(seed)
        lo, hi = np.inf, -np.inf
        for _ in range(samples):
            window = tuple(slice(st, st + b) for st, b in
                           ((int(rng.integers(0, max(1, n - b + 1))), b)
                            for n, b in zip(vol.shape, block, strict=True)))
            part = vol.read(window)
            part_lo, part_hi = finite_range(float(part.min()), float(part.max()))  # the builtin min drops a NaN
            lo, hi = min(lo, part_lo), max(hi, part_hi)
        return lo, hi
    if mode != "exact":
        raise VistokError(f"intensity range mode must be 'exact' or 'sample', got {mode!r}")
    lo, hi = np.inf, -np.inf
    step = max(1, 2**24 // max(1, vol.shape[1] * vol.shape[2]))  # about 16M voxels per slab
    for z in range(0, vol.shape[0], step):
        part = vol.read((slice(z, z + step), slice(None), slice(None)))
        part_lo, part_hi = finite_range(float(part.min()), float(part.max()))  # the builtin min drops a NaN
        lo, hi = min(lo, part_lo), max(hi, part_hi)
    return lo, hi


def finite_range(lo: float, hi: float) -> tuple[float, float]:
    """(lo, hi) if both are finite: a NaN anywhere makes min/max NaN and an infinity makes the scaled volume NaN, and
    either would be segmented into meaningless ids with exit status 0."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise VistokError(f"the EM volume holds NaN or infinite values (min {lo}, max {hi}); replace them (e.g. "
                          "np.nan_to_num) or crop them away before segmenting")
    return lo, hi


def normalize_range(part: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`part` scaled by a volume's (min, max) to [0, 1] as float32 (zeros for a constant volume)."""
    part = part.astype(np.float32)
    return (part - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(part)


# ---------------------------------------------------------------------------------------------------------------------
# normalisation, crops, augmentation
# ---------------------------------------------------------------------------------------------------------------------


def normalize_minmax(volume: np.ndarray) -> np.ndarray:
    """The whole volume scaled to [0, 1] (float32); a constant volume becomes zeros."""
    vol = volume.astype(np.float32)
    if vol.size == 0:
        raise VistokError(f"the EM volume is empty (shape {vol.shape}); pass a volume with at least one voxel")
    lo, hi = finite_range(float(vol.min()), float(vol.max()))
    return (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)


def pad_to(volume: np.ndarray, size: Sequence[int], mode: str = "reflect") -> np.ndarray:
    """Reflect-pad the last len(size) axes up to at least `size` (centred); larger axes are left alone."""
    lead = volume.ndim - len(size)
    deficit = [max(0, s - n) for s, n in zip(size, volume.shape[lead:], strict=True)]
    if not any(deficit):
        return volume
    return np.pad(volume, [(0, 0)] * lead + [(d // 2, d - d // 2) for d in deficit], mode=mode)


def random_crop(arrays: Sequence[np.ndarray], size: Sequence[int], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random crop of `size` from each array (same trailing shape), reflect-padding small ones first."""
    arrays = [pad_to(a, size) for a in arrays]
    shape = arrays[0].shape[-len(size):]
    if any(a.shape[-len(size):] != shape for a in arrays):
        raise VistokError(f"arrays to crop together have different shapes: {[a.shape for a in arrays]}")
    starts = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size, strict=True)]
    window = tuple(slice(st, st + s) for st, s in zip(starts, size, strict=True))
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
    """Random crops from EM volumes, read lazily (only each crop's region), `length` samples per epoch.

    Volumes are `Volume`s (files, read window by window) or arrays; each is min-max normalised by its whole-volume
    range (`ranges`, else `intensity_range`: stored attributes or one streaming pass). Indexed by an int or by
    `(index, epoch)` (as vistok's StepBatchSampler yields); the volume, crop and augmentation are drawn from a
    generator seeded by (seed, epoch, index), so they do not depend on workers or resume point. With
    `world_size > 1` and at least that many volumes, rank r draws only from volumes r, r + world_size, ... (each
    node touches its own files). `widen_border` applies the official border widening to each label crop (read with
    an in-plane margin, so the result equals widening the whole volume first). Returns the raw crop (1, D, H, W)
    float32 in [0, 1], or `(raw, labels)` with labels (D, H, W) int64 when labels are given.
    """

    def __init__(self, volumes: Sequence[np.ndarray | Volume], crop: Sequence[int], length: int,
                 labels: Sequence[np.ndarray | Volume] | None = None, seed: int = 0, augment: bool = True,
                 widen_border: bool = False, ranges: Sequence[tuple[float, float]] | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        if not len(volumes):
            raise VistokError("no EM volumes given; pass at least one FILE[:DATASET]")
        wrap = lambda v, i: v if isinstance(v, Volume) else Volume.of(v, f"volume {i}")  # noqa: E731
        vols = [wrap(v, i) for i, v in enumerate(volumes)]
        labs = None if labels is None else [wrap(v, i) for i, v in enumerate(labels)]
        if labs is not None and [v.shape for v in vols] != [lab.shape for lab in labs]:
            raise VistokError(f"raw and label volumes differ in shape: {[v.shape for v in vols]} vs "
                              f"{[lab.shape for lab in labs]}")
        if len(crop) != 3 or min(crop) < 1 or length < 1:
            raise VistokError(f"crop {tuple(crop)} must be 3 positive sizes and length {length} positive")
        ranges = list(ranges) if ranges is not None else [intensity_range(v) for v in vols]
        own = list(range(len(vols)))
        if world_size > 1 and len(vols) >= world_size:
            own = own[rank::world_size]
        self.volumes = [vols[i] for i in own]
        self.labels = None if labs is None else [labs[i] for i in own]
        self.ranges = [ranges[i] for i in own]
        self.crop, self.length, self.seed, self.augment, self.widen = tuple(crop), length, seed, augment, widen_border

    def __len__(self) -> int:
        return self.length

    def _window(self, shape: tuple[int, ...], starts: list[int],
                margin: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """(region to read, the crop inside it): whole axes where the volume is smaller than the crop (padded after),
        and an in-plane margin (clipped at the volume's edge) for border widening."""
        read, inner = [], []
        for axis, (n, s, st) in enumerate(zip(shape, self.crop, starts, strict=True)):
            if n <= s:
                read.append(slice(0, n))
                inner.append(slice(0, n))
            else:
                m = margin if axis > 0 else 0
                lo, hi = max(0, st - m), min(n, st + s + m)
                read.append(slice(lo, hi))
                inner.append(slice(st - lo, st - lo + s))
        return tuple(read), tuple(inner)

    def __getitem__(self, key: int | tuple[int, int]):
        from vistok.em.segmentation import widen_border

        index, epoch = key if isinstance(key, tuple) else (key, 0)
        rng = np.random.default_rng([self.seed, epoch, index])
        v = int(rng.integers(len(self.volumes)))
        vol = self.volumes[v]
        starts = [int(rng.integers(0, max(n, s) - s + 1)) for n, s in zip(vol.shape, self.crop, strict=True)]
        read, inner = self._window(vol.shape, starts, 1 if self.widen and self.labels is not None else 0)
        arrays = [normalize_range(vol.read(read)[inner], *self.ranges[v])]
        if self.labels is not None:
            lab = self.labels[v].read(read)
            arrays.append((widen_border(lab) if self.widen else lab)[inner].astype(np.int64))
        arrays = [pad_to(a, self.crop) for a in arrays]
        if self.augment:
            arrays = augment_inplane(arrays, rng)
        raw = torch.from_numpy(np.ascontiguousarray(arrays[0]))[None]  # (1, D, H, W)
        return raw if self.labels is None else (raw, torch.from_numpy(np.ascontiguousarray(arrays[1])))


def load_volumes(args: Sequence[str]) -> list[np.ndarray]:
    """Read several `FILE[:DATASET]` volumes."""
    return [read_volume(a) for a in args]
