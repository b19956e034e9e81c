"""The official TokenUnify post-processing on the field's own libraries: mahotas watershed fragments, waterz merging.

Chen et al., "TokenUnify", arXiv 2405.16847 (`utils/fragment.py::watershed(affs, 'maxima_distance')` and
`src/inference.py` of ydchen0806/TokenUnify); Funke et al., "Large Scale Image Segmentation with Structured Loss based
Deep Learning for Connectome Reconstruction", TPAMI 2018 (waterz). vistok calls the same libraries with the same
arguments, so its VOI numbers measure what the paper's do:

    affinities (3, z, y, x) in [0, 1]
    -> per z slice: boundary = 1 - (aff_y + aff_x) / 2; seeds = regional maxima (4-connected plateaus) of the squared
       distance transform of (boundary < 0.5), labelled 4-connected; mahotas.cwatershed(boundary, seeds)
    -> waterz.agglomerate(affs, [0.5], fragments, 'OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue,
       256>>', discretize_queue=256): merge adjacent regions, lowest score first, while 1 - median < 0.5
    -> ids relabelled 1..n

What waterz's scoring really computes (its `HistogramQuantileProvider` with the default InitWithMax): each initial
fragment pair enters its 256-bin histogram once, at the bin of its *largest* voxel affinity; merging regions adds
their histograms, and the score is 1 - the centre of the bin holding the (50 * count // 100 + 1)-th entry. So the
"median affinity" is the median over fragment contacts of their maximum affinity, not over voxel pairs.

waterz and mahotas come with `pip install "vistok[em]"`; vistok imports without them and says so in one line when a
segmentation needs them.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

import numpy as np

from vistok.errors import VistokError

SCORING_FUNCTION = "OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>"  # src/inference.py
QUEUE_BINS = 256  # discretize_queue of src/inference.py
SEED_THRESHOLD = 0.5  # seeds: distance transform of (boundary < 0.5), utils/fragment.py


def optional_import(name: str) -> ModuleType:
    """Import an optional EM dependency or fail in one line that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise VistokError(f"the official EM post-processing needs {name!r}, which is not installed ({err}); "
                          f"install it with: pip install \"vistok[em]\" (or pip install waterz mahotas)") from None


def check_affinities(affs: np.ndarray) -> np.ndarray:
    """-> C-contiguous float32 (3, z, y, x); a wrong shape is the caller's mistake, named in one line."""
    affs = np.asarray(affs)
    if affs.ndim != 4 or affs.shape[0] != 3:
        raise VistokError(f"affinities must have shape (3, z, y, x), got {affs.shape}")
    return np.ascontiguousarray(affs, dtype=np.float32)


def watershed_slice(boundary: np.ndarray, seed_threshold: float = SEED_THRESHOLD) -> tuple[np.ndarray, int]:
    """One 2D (or 3D) boundary map -> (fragments int32 from 1, their number): mahotas watershed seeded at the regional
    maxima of the distance to the boundary, as `get_seeds(..., method='maxima_distance')` does."""
    mahotas = optional_import("mahotas")
    distance = mahotas.distance(boundary < seed_threshold)  # squared distance: same maxima as the distance
    seeds, n = mahotas.label(mahotas.regmax(distance))  # default structuring element: the cross (4/6-connected)
    return mahotas.cwatershed(boundary, seeds), int(n)


def fragments(affs: np.ndarray, seed_threshold: float = SEED_THRESHOLD, per_slice: bool = True) -> np.ndarray:
    """Affinities (3, z, y, x) -> fragments (z, y, x) uint64, ids from 1 and unique across slices, no background.

    per_slice (the official, for anisotropic serial sections): one 2D watershed per z slice of 1 - (aff_y + aff_x) / 2.
    Otherwise one 3D watershed of 1 - the mean of the three affinities, with the same seeds rule in 3D."""
    affs = check_affinities(affs)
    if not per_slice:
        return watershed_slice(1.0 - affs.mean(0), seed_threshold)[0].astype(np.uint64)
    boundary = 1.0 - 0.5 * (affs[1] + affs[2])  # (z, y, x) in-plane boundary map
    out = np.zeros(boundary.shape, np.uint64)
    offset = 0
    for z in range(boundary.shape[0]):
        ws, n = watershed_slice(boundary[z], seed_threshold)
        out[z] = ws.astype(np.uint64) + np.uint64(offset)  # every pixel is flooded from a seed: no zeros
        offset += n
    return out


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """waterz's C++ core prints progress to file descriptor 1; keep it off the user's stdout (CLI output, JSON)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a stdout without a descriptor: nothing to redirect
        fd = 1
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            try:
                yield
            finally:
                os.dup2(saved, fd)
    finally:
        os.close(saved)


def agglomerate(affs: np.ndarray, frags: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """waterz agglomeration of `frags` (z, y, x) over `affs` (3, z, y, x) with the official scoring function and queue,
    merging while the score 1 - median affinity stays below `threshold` -> ids (z, y, x) uint64 relabelled 1..n
    (0 stays 0). `frags` is left as it was (waterz works in place on a copy)."""
    waterz = optional_import("waterz")
    if not 0.0 <= threshold <= 1.0:
        raise VistokError(f"agglomeration threshold {threshold} must be in [0, 1]")
    affs = check_affinities(affs)
    frags = np.array(frags, dtype=np.uint64, order="C", copy=True)
    if frags.shape != affs.shape[1:]:
        raise VistokError(f"fragments {frags.shape} and affinities {affs.shape} differ in their (z, y, x) shape")
    with quiet_stdout():
        seg = next(iter(waterz.agglomerate(affs, [float(threshold)], fragments=frags,
                                           scoring_function=SCORING_FUNCTION, discretize_queue=QUEUE_BINS)))
    return relabel(seg)


def relabel(seg: np.ndarray) -> np.ndarray:
    """Ids -> 1..n in the order of the old ids, 0 kept (the official `relabel`) -> uint64 (z, y, x)."""
    ids, inverse = np.unique(seg, return_inverse=True)
    new = np.arange(len(ids), dtype=np.uint64) + (0 if ids[0] == 0 else 1)
    return new[inverse.reshape(seg.shape)]


def segment(affs: np.ndarray, threshold: float = 0.5, seed_threshold: float = SEED_THRESHOLD,
            per_slice: bool = True) -> np.ndarray:
    """Affinities (3, z, y, x) -> neuron ids (z, y, x) uint64 from 1: the official fragments, then waterz."""
    affs = check_affinities(affs)
    return agglomerate(affs, fragments(affs, seed_threshold, per_slice), threshold)
