"""Image sets for the commands that take `--input`: a dataset name, an image folder, or an .npz of uint8 images.

An .npz holds `arr_0` (as ADM's evaluator writes it) or `images`, NHWC or NCHW uint8, and optionally `labels`.
Everything comes back as uint8 (N, H, W, 3) numpy arrays, the layout written to disk and taken by `vistok.api`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vistok.data.arrays import read_npz
from vistok.data.images import NAMED, ImageFolderDataset, build_image_dataset, subset
from vistok.errors import VistokError, require


def npz_images(arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """(N, 3, H, W) uint8 from the `images` or `arr_0` array of an .npz's arrays (NHWC or NCHW)."""
    key = next((k for k in ("images", "arr_0") if k in arrays), None)
    if key is None:
        raise VistokError(f"{path} has neither 'images' nor 'arr_0' (nor 'mu'/'sigma' statistics); keys: "
                          f"{sorted(arrays)}")
    arr = arrays[key]
    if arr.dtype != np.uint8 or arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[-1]):
        raise VistokError(f"{path}:{key} must be uint8 images (N, H, W, 3) or (N, 3, H, W), got {arr.dtype} "
                          f"{arr.shape}")
    if len(arr) == 0:
        raise VistokError(f"{path}:{key} holds no images")
    return arr if arr.shape[1] == 3 else arr.transpose(0, 3, 1, 2)


def load_npz_images(path: str | Path) -> np.ndarray:
    """(N, 3, H, W) uint8 from an `.npz` holding `arr_0` or `images`, NHWC or NCHW; a damaged file is one line."""
    path = Path(path)
    return npz_images(read_npz(path, ("images", "arr_0"), what="image file"), path)


def load_images(
    source: str | Path, resolution: int, num: int | None = None, data_root: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, R, R, 3) uint8 images and their labels (or None) from a dataset name, an image folder or an .npz. Named
    datasets and folders keep `num` evenly spaced images (they are sorted by class); an .npz keeps its first `num`."""
    path = Path(str(source)).expanduser()
    if str(source) in NAMED or path.is_dir():
        ds = build_image_dataset(str(source), data_root, resolution) if str(source) in NAMED \
            else ImageFolderDataset(path, resolution, verify=True)  # unreadable files dropped, never replaced
        chosen = subset(ds, num or 0)
        indices = chosen.indices if hasattr(chosen, "indices") else range(len(ds))
        images = np.stack([ds.uint8(i).permute(1, 2, 0).numpy() for i in indices])
        labels = np.asarray([int(ds.labels[i]) for i in indices], np.int64)
        return images, labels if getattr(ds, "classes", ()) else None
    if path.suffix == ".npz" and path.is_file():
        images = np.ascontiguousarray(load_npz_images(path)[:num or None].transpose(0, 2, 3, 1))  # one-line errors
        labels = read_npz(path, ("labels",), what="image file").get("labels")
        labels = None if labels is None else labels[:len(images)].astype(np.int64)
        require(images.shape[1:3] == (resolution, resolution),
                f"{path} holds {images.shape[1]}x{images.shape[2]} images but the model takes "
                f"{resolution}x{resolution}; resize them or pass an image folder (resized on load)")
        return images, labels
    raise VistokError(f"--input {source} is not a dataset name ({', '.join(NAMED)}), "
                      "an image folder or an .npz of images")


__all__ = ["load_images", "load_npz_images", "npz_images"]
