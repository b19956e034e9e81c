"""Neuron segmentation of volumes larger than memory: the sliding-window inference, per-slice watershed and
agglomeration of `vistok.em.segmentation`, streamed window by window and slice by slice, with the neuron ids written
chunk-wise. Same result as the in-memory `segment_volume` (same windows, blending order, fragments and merges).

TokenUnify (Chen et al., arXiv 2405.16847) segments EM volumes with MONAI sliding windows and waterz; FIB-SEM volumes
reach 10^10 voxels, so nothing here holds a volume-sized array:

    raw (lazy Volume) -> windows in z-major order, Gaussian-blended into a rolling z buffer -> affinities (3, z, y, x)
        flushed to a scratch HDF5 file as soon as no later window touches them
    -> per-slice watershed fragments (scratch HDF5), the region graph's sparse (pair, bin) counts slice by slice
    -> greedy agglomeration over the region graph (memory: fragments and region pairs, not voxels)
    -> neuron ids written slab by slab (HDF5 / zarr / npy; npz and TIFF can only be written whole)

Memory is about (roi_z + stride_z) x H x W x 16 bytes for the buffer, two raw slabs of roi_z x H x W, one window
batch and the region graph.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vistok.em.segmentation import (
    _starts,
    _watershed,
    edge_scores,
    gaussian_importance,
    merge_regions,
    pair_bin_counts,
    reduce_counts,
)
from vistok.em.volumes import DEFAULT_DATASET, Volume, VolumeRef, intensity_range, normalize_range
from vistok.errors import VistokError


def stream_affinities(predict: Callable[[torch.Tensor], torch.Tensor], vol: Volume, value_range: tuple[float, float],
                      roi: tuple[int, int, int], overlap: float, batch_size: int,
                      sink: Callable[[int, np.ndarray], None], sigma_scale: float = 0.125, channels: int = 3) -> None:
    """Sliding-window inference over a lazy volume at least `roi` large in every axis: windows in the order (and
    batches) of `sliding_window_inference`, blended into a rolling buffer; `sink(z0, block (C, dz, H, W))` receives
    finished slabs in z order. The raw is read one row of windows at a time (a roi_z x H x W slab, at most two held):
    overlapping windows read one by one decompressed every chunk they share again, once per window."""
    size = tuple(vol.shape)
    if any(s < r for s, r in zip(size, roi, strict=True)):
        raise VistokError(f"volume {size} is smaller than the window {tuple(roi)} in some axis; use the in-memory path")
    weight = gaussian_importance(tuple(roi), sigma_scale).numpy()  # (*roi)
    windows = list(itertools.product(*(_starts(n, r, overlap) for n, r in zip(size, roi, strict=True))))  # z-major
    h, w = size[1:]
    buf_lo, out, norm = 0, np.zeros((channels, 0, h, w), np.float32), np.zeros((0, h, w), np.float32)
    slabs: dict[int, np.ndarray] = {}  # z start -> normalised raw (roi_z, H, W) of that row of windows
    for i in range(0, len(windows), batch_size):
        group = windows[i: i + batch_size]
        z_end = max(st[0] for st in group) + roi[0]
        if z_end > buf_lo + out.shape[1]:  # grow the buffer down to the deepest window of this batch
            grow = z_end - buf_lo - out.shape[1]
            out = np.concatenate([out, np.zeros((channels, grow, h, w), np.float32)], 1)
            norm = np.concatenate([norm, np.zeros((grow, h, w), np.float32)], 0)
        for z0 in [z for z in slabs if z < group[0][0]]:
            del slabs[z0]  # windows come in z order: no later window starts above this batch's first
        for z0 in sorted({st[0] for st in group} - set(slabs)):  # one read per row of windows, not one per window
            slabs[z0] = normalize_range(vol.read((slice(z0, z0 + roi[0]), slice(None), slice(None))), *value_range)
        x = np.stack([slabs[st[0]][:, st[1]: st[1] + roi[1], st[2]: st[2] + roi[2]] for st in group])
        pred = predict(torch.from_numpy(x)[:, None]).float().cpu().numpy()  # (N, C, *roi)
        for st, p in zip(group, pred, strict=True):
            zs = slice(st[0] - buf_lo, st[0] - buf_lo + roi[0])
            ys, xs = slice(st[1], st[1] + roi[1]), slice(st[2], st[2] + roi[2])
            out[:, zs, ys, xs] += p * weight
            norm[zs, ys, xs] += weight
        done = windows[i + batch_size][0] if i + batch_size < len(windows) else size[0]  # no later window reaches above
        if done > buf_lo:
            k = done - buf_lo
            sink(buf_lo, out[:, :k] / norm[:k])
            out, norm, buf_lo = out[:, k:], norm[k:], done


def _scratch(folder: Path, name: str, shape: tuple[int, ...], dtype, chunks: tuple[int, ...]):
    import h5py

    f = h5py.File(folder / f"{name}.h5", "w")
    return f, f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)


def _open_output(ref: VolumeRef, shape: tuple[int, ...], dtype):
    """A writable array-like for `ref` (HDF5 dataset, zarr array, npy memmap), or None for whole-file formats."""
    if ref.format == "hdf5":
        import h5py

        f = h5py.File(ref.path, "a")
        name = ref.dataset or DEFAULT_DATASET["hdf5"]
        if name in f:
            del f[name]
        chunks = (1, *(min(s, 256) for s in shape[1:]))
        return f, f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, compression="gzip")
    if ref.format == "zarr":
        import zarr

        store = ref.path / (ref.dataset or DEFAULT_DATASET["zarr"])
        return None, zarr.open_array(store=str(store), mode="w", shape=shape, dtype=dtype,
                                     chunks=(min(shape[0], 16), *(min(s, 256) for s in shape[1:])))
    if ref.format == "npy":
        return None, np.lib.format.open_memmap(ref.path, mode="w+", dtype=dtype, shape=shape)
    return None, None


def segment_streaming(predict: Callable[[torch.Tensor], torch.Tensor], vol: Volume, out: VolumeRef,
                      roi: tuple[int, ...], overlap: float = 0.25, batch_size: int = 4, threshold: float = 0.5,
                      fragment_threshold: float = 0.5, score: str = "median", bins: int = 256,
                      value_range: tuple[float, float] | None = None, scratch: str | Path | None = None) -> int:
    """Affinities -> per-slice watershed -> agglomeration -> neuron ids written to `out`, streamed. Returns the
    number of segments. `value_range`: the raw (min, max) (default: stored attributes or one streaming pass)."""
    value_range = intensity_range(vol) if value_range is None else value_range
    d, h, w = vol.shape
    folder = Path(scratch) if scratch is not None else out.path.parent
    with tempfile.TemporaryDirectory(prefix=".em-segment-", dir=folder) as tmp:
        tmp = Path(tmp)
        fa, affs = _scratch(tmp, "affs", (3, d, h, w), np.float32, (3, 1, h, w))
        ff, frags = _scratch(tmp, "frags", (d, h, w), np.int64, (1, h, w))
        try:
            def sink(z0: int, block: np.ndarray) -> None:
                affs[:, z0: z0 + block.shape[1]] = block

            stream_affinities(predict, vol, value_range, tuple(roi), overlap, batch_size, sink)
            offset = 0
            for z in range(d):  # per-slice watershed, ids continue across slices (as `fragments`)
                a = affs[:, z]
                ws = _watershed(1.0 - 0.5 * (a[1] + a[2]), fragment_threshold).astype(np.int64)
                frags[z] = np.where(ws > 0, ws + offset, 0)
                offset = int(frags[z].max()) if ws.any() else offset
            n = offset + 1
            keys, counts, previous = [], [], None
            for z in range(d):  # region graph: in-plane pairs of slice z, and pairs between slices z - 1 and z
                f, a = frags[z], affs[:, z]
                parts = [(f[:-1].ravel(), f[1:].ravel(), a[1, 1:].ravel()), (f[:, :-1].ravel(), f[:, 1:].ravel(),
                                                                             a[2, :, 1:].ravel())]
                if previous is not None:
                    parts.append((previous.ravel(), f.ravel(), a[0].ravel()))
                slice_keys, slice_counts = [], []
                for lo, hi, aff in parts:
                    if score == "mean":
                        k, c, t = _pair_sums(lo, hi, aff, n)
                        slice_keys.append(k)
                        slice_counts.append(np.stack([t, c], 1))
                    else:
                        k, c = pair_bin_counts(lo, hi, aff, n, bins)
                        slice_keys.append(k)
                        slice_counts.append(c)
                previous = f
                # one part per slice: a region pair lives in one slice (in-plane) or one slice pair (across z), so
                # parts of different slices share no key and merging them early gains nothing; the old merge of
                # every pending part into the running total every 22 slices re-sorted the whole graph each time
                (k,), (c,) = _reduce(slice_keys, slice_counts, score)
                keys.append(k)
                counts.append(c)
            if keys:
                (keys,), (counts,) = _reduce(keys, counts, score)
            else:
                keys, counts = np.zeros(0, np.int64), np.zeros((0, 2) if score == "mean" else 0, np.int64)
            parts = (keys, counts[:, 0], counts[:, 1], n) if score == "mean" else (keys, counts, n)
            uniq, stats, value, merge = edge_scores(None, None, score, bins, parts=parts)
            roots = merge_regions(uniq, stats, value, merge, threshold, n)
            present = np.zeros(n, bool)
            for z in range(d):
                present[np.unique(frags[z])] = True
            lut = np.zeros(n, np.int64)  # relabel_sequential(roots[frags]): sorted roots of present ids -> 1..k
            used = np.unique(roots[present & (np.arange(n) > 0)])
            lut[used] = np.arange(1, len(used) + 1)
            lut = lut[roots]
            lut[0] = 0
            dtype = np.uint32 if len(used) < 2**32 else np.uint64
            handle, dst = _open_output(out, (d, h, w), dtype)
            if dst is None:  # npz / TIFF: whole-file formats
                from vistok.em.volumes import write_volume

                write_volume(out, lut[frags[...]].astype(dtype))
            else:
                try:
                    for z in range(0, d, 16):
                        dst[z: z + 16] = lut[frags[z: z + 16]].astype(dtype)
                finally:
                    if handle is not None:
                        handle.close()
                    elif hasattr(dst, "flush"):
                        dst.flush()
        finally:
            fa.close()
            ff.close()
    return int(len(used))


def _pair_sums(a: np.ndarray, b: np.ndarray, aff: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = (a != b) & (a > 0) & (b > 0)
    a, b = a[keep].astype(np.int64), b[keep].astype(np.int64)
    k, inv = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_inverse=True)
    inv = inv.ravel()
    counts = np.bincount(inv, minlength=len(k)).astype(np.float64)
    return k, counts, np.bincount(inv, aff[keep].astype(np.float64), len(k))


def _reduce(keys: list[np.ndarray], counts: list[np.ndarray], score: str) -> tuple[list, list]:
    if score != "mean":
        k, c = reduce_counts(keys, counts)
        return [k], [c]
    k, inv = np.unique(np.concatenate(keys), return_inverse=True)
    both = np.concatenate(counts)
    sums = np.stack([np.bincount(inv.ravel(), both[:, i], len(k)) for i in range(2)], 1)
    return [k], [sums]
