"""Neuron segmentation from affinities: targets, loss, sliding-window inference, watershed + agglomeration.

Turaga et al., "Convolutional networks can learn to generate affinity graphs for image segmentation", Neural
Computation 2010 (nearest-neighbour affinities); Funke et al., "Large Scale Image Segmentation with Structured Loss
based Deep Learning for Connectome Reconstruction", TPAMI 2018 (watershed fragments + agglomeration by quantile
affinity, "waterz"); as used by TokenUnify (Chen et al., arXiv 2405.16847) and SegMamba (Xing et al., MICCAI 2024).

- affinity channel i (axis z, y, x) at voxel v is 1 when v and its predecessor v - e_i carry the same non-zero label;
- loss: weighted MSE on sigmoid outputs, summed over channels, the minority class up-weighted by one global ratio;
- inference: overlapping windows blended with a Gaussian importance map (MONAI's sliding_window_inference);
- post-processing: per-slice (or 3D) seeded watershed of the boundary map 1 - mean in-plane affinity into fragments,
  then greedy merging of adjacent fragments while their median (or mean) boundary affinity exceeds a threshold.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.morphology import local_maxima
from skimage.segmentation import relabel_sequential, watershed

from vistok.errors import VistokError


def affinities(labels: torch.Tensor, ndim: int = 3) -> torch.Tensor:
    """Integer labels (..., *S) with len(S) = ndim -> float affinities (..., ndim, *S); 0 = background label."""
    if labels.ndim < ndim:
        raise VistokError(f"labels of shape {tuple(labels.shape)} have fewer than {ndim} axes")
    out = labels.new_zeros((*labels.shape[: labels.ndim - ndim], ndim, *labels.shape[labels.ndim - ndim:]),
                           dtype=torch.float32)
    for i in range(ndim):
        axis = labels.ndim - ndim + i
        hi, lo = labels.narrow(axis, 1, labels.shape[axis] - 1), labels.narrow(axis, 0, labels.shape[axis] - 1)
        same = ((hi == lo) & (hi != 0)).float()
        out.select(-ndim - 1, i).narrow(axis, 1, labels.shape[axis] - 1).copy_(same)
    return out


def widen_border(labels: np.ndarray, radius: int = 1) -> np.ndarray:
    """Zero every voxel whose in-plane (2r+1)^2 window holds two different *positive* ids; zeros (background) take
    no part in the comparison, so a cell touching only background keeps its voxels.

    The rule of the official fine-tuning's `seg_widen_border` (Lee et al., from K. Lee's thesis A.1.4: "any voxel
    centered on a 3x3x1 window containing more than one positive segment ID is marked as background"). Windows are
    clipped at the volume's edge (the official reflect padding adds no new ids to a window). (..., y, x) labels.
    """
    if radius < 1:
        raise VistokError(f"widen_border radius {radius} must be >= 1")
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise VistokError(f"labels of shape {labels.shape} need at least 2 axes (y, x)")
    footprint = np.ones((1,) * (labels.ndim - 2) + (2 * radius + 1,) * 2, bool)  # in-plane only
    hi = ndimage.maximum_filter(labels, footprint=footprint, mode="nearest")  # largest id (0 only if all zero)
    sentinel = labels.max(initial=0) + 1  # stands in for 0 (the official mm + 1); scipy wraps an iinfo max
    lo = ndimage.minimum_filter(np.where(labels > 0, labels, sentinel), footprint=footprint,
                                mode="nearest")  # smallest positive id (the sentinel where there is none)
    return np.where((labels > 0) & (hi != lo), 0, labels).astype(labels.dtype)


def class_balance_weights(target: torch.Tensor) -> torch.Tensor:
    """Per-voxel weights: the minority class of the whole `target` gets (majority fraction / minority fraction),
    the majority 1; the positive fraction is clipped to [0.05, 0.99]."""
    f = target.float().mean().clamp(0.05, 0.99)
    ratio = torch.maximum(f, 1 - f) / torch.minimum(f, 1 - f)
    positive = target > 0.5
    minority_is_positive = f < 0.5
    return torch.where(positive == minority_is_positive, ratio, torch.ones_like(ratio))


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum w (p - t)^2 / (B * voxels): summed over channels, averaged over batch and voxels. (B, C, *S) inputs."""
    weight = class_balance_weights(target) if weight is None else weight
    return (weight * (pred - target) ** 2).sum() / (pred.shape[0] * math.prod(pred.shape[2:]))


# ---------------------------------------------------------------------------------------------------------------------
# sliding-window inference
# ---------------------------------------------------------------------------------------------------------------------


def gaussian_importance(roi: tuple[int, ...], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian centred in the window, sigma = sigma_scale * size, max 1, floored at 1e-3."""
    axes = []
    for r in roi:
        x = torch.arange(r, dtype=torch.float32) - (r - 1) / 2
        axes.append(torch.exp(-0.5 * (x / max(sigma_scale * r, 1e-6)) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = w[..., None] * a
    return (w / w.max()).clamp_(min=1e-3)


def _starts(size: int, roi: int, overlap: float) -> list[int]:
    if size <= roi:
        return [0]
    stride = max(1, int(roi * (1 - overlap)))
    return sorted({min(i * stride, size - roi) for i in range(math.ceil((size - roi) / stride) + 1)})


@torch.no_grad()
def sliding_window_inference(predict: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                             roi: tuple[int, ...], overlap: float = 0.25, batch_size: int = 4,
                             sigma_scale: float = 0.125) -> torch.Tensor:
    """Apply `predict` ((N, C, *roi) -> (N, C_out, *roi)) over (B, C, *S) in overlapping windows, Gaussian-blended.

    Volumes smaller than the window are reflect-padded (replicate where reflection cannot reach) and cropped back.
    """
    size = tuple(volume.shape[2:])
    if len(roi) != len(size) or not 0 <= overlap < 1:
        raise VistokError(f"window {tuple(roi)} must have one size per axis of {size} and overlap in [0, 1)")
    deficit = [max(0, r - s) for r, s in zip(roi, size, strict=True)]
    if any(deficit):
        pads = [p for d in reversed(deficit) for p in (d // 2, d - d // 2)]
        fits = all(d // 2 < s and d - d // 2 < s for d, s in zip(deficit, size, strict=True))
        mode = "reflect" if fits else "replicate"
        volume = F.pad(volume, pads, mode=mode)
    padded = tuple(volume.shape[2:])
    weight = gaussian_importance(tuple(roi), sigma_scale).to(volume.device)  # (*roi)
    windows = [tuple(slice(s, s + r) for s, r in zip(st, roi, strict=True))
               for st in itertools.product(*(_starts(n, r, overlap) for n, r in zip(padded, roi, strict=True)))]
    out, norm = None, torch.zeros(padded, device=volume.device)
    for i in range(0, len(windows), batch_size):
        group = windows[i: i + batch_size]
        pred = predict(torch.cat([volume[(..., *w)] for w in group]))  # (len(group) * B, C_out, *roi)
        if out is None:
            out = volume.new_zeros((volume.shape[0], pred.shape[1], *padded), dtype=torch.float32)
        for w, p in zip(group, pred.float().split(volume.shape[0]), strict=True):
            out[(..., *w)] += p * weight
            norm[w] += weight
    out = out / norm
    crop = tuple(slice(d // 2, d // 2 + s) for d, s in zip(deficit, size, strict=True))
    return out[(..., *crop)]


# ---------------------------------------------------------------------------------------------------------------------
# watershed fragments and agglomeration
# ---------------------------------------------------------------------------------------------------------------------


def _watershed(boundary: np.ndarray, threshold: float) -> np.ndarray:
    """Seeded watershed of one slice or volume: seeds = regional maxima of the smoothed distance to boundaries."""
    distance = ndimage.gaussian_filter(ndimage.distance_transform_edt(boundary < threshold), 1.0)
    seeds, _ = ndimage.label(local_maxima(distance) & (boundary < threshold))
    return watershed(boundary, seeds)


def fragments(affs: np.ndarray, threshold: float = 0.5, per_slice: bool = True) -> np.ndarray:
    """Affinities (3, z, y, x) in [0, 1] -> over-segmentation (z, y, x) uint64, ids from 1, no background."""
    if affs.ndim != 4 or affs.shape[0] != 3:
        raise VistokError(f"affinities must have shape (3, z, y, x), got {affs.shape}")
    if not per_slice:
        return _watershed(1.0 - affs.mean(0), threshold).astype(np.uint64)
    boundary = 1.0 - 0.5 * (affs[1] + affs[2])  # in-plane affinities
    out = np.zeros(affs.shape[1:], np.uint64)
    offset = 0
    for z in range(out.shape[0]):
        ws = _watershed(boundary[z], threshold).astype(np.uint64)
        out[z] = np.where(ws > 0, ws + offset, 0)
        offset = int(out[z].max()) if out[z].any() else offset
    return out


def pair_bin_counts(a: np.ndarray, b: np.ndarray, aff: np.ndarray, n: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbouring voxels' fragment ids `a`, `b` and the affinity between them (flat, same length) -> the distinct
    (region pair, bin) keys ((min * n + max) * bins + bin, ascending) and their counts; pairs within one fragment or
    touching 0 are left out."""
    keep = (a != b) & (a > 0) & (b > 0)
    a, b = a[keep].astype(np.int64), b[keep].astype(np.int64)
    binned = np.clip((aff[keep] * bins).astype(np.int64), 0, bins - 1)
    return np.unique((np.minimum(a, b) * n + np.maximum(a, b)) * bins + binned, return_counts=True)


def reduce_counts(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sum the counts of equal keys over several (keys, counts) parts -> (distinct keys ascending, counts)."""
    k, inv = np.unique(np.concatenate(keys), return_inverse=True)
    return k, np.bincount(inv.ravel(), np.concatenate(counts).astype(np.float64), len(k)).astype(np.int64)


def histograms_from_counts(k: np.ndarray, c: np.ndarray, n: int,
                           bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pair, bin) keys and counts -> (pairs (E, 2) with u < v; offsets (E + 1,); (bin, count) entries (N, 2)): pair
    e's non-empty bins are entries[offsets[e]:offsets[e + 1]], ascending."""
    pair_key, bin_ids = k // bins, k % bins
    starts = np.flatnonzero(np.r_[True, pair_key[1:] != pair_key[:-1]]) if len(k) else np.zeros(0, np.int64)
    uniq = pair_key[starts]
    return np.stack([uniq // n, uniq % n], 1), np.r_[starts, len(k)].astype(np.int64), np.stack([bin_ids, c], 1)


def _edge_histograms(frags: np.ndarray, affs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse per-region-pair affinity histograms over all neighbouring voxel pairs with different fragments (see
    `histograms_from_counts`). Memory grows with the boundary voxels and the non-empty bins, never with pairs x bins;
    one axis is turned into keys at a time."""
    n = int(frags.max()) + 1
    keys, counts = [], []
    for i in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[i], lo[i] = slice(1, None), slice(None, -1)
        k, c = pair_bin_counts(frags[tuple(lo)].ravel(), frags[tuple(hi)].ravel(), affs[i][tuple(hi)].ravel(), n, bins)
        keys.append(k)
        counts.append(c)
    return histograms_from_counts(*reduce_counts(keys, counts), n, bins)


def _edge_means(frags: np.ndarray, affs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (pairs (E, 2) with u < v, sorted; (sum of affinities, voxel pairs) (E, 2)) over neighbouring voxel pairs."""
    n = int(frags.max()) + 1
    keys, values = [], []
    for i in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[i], lo[i] = slice(1, None), slice(None, -1)
        a, b = frags[tuple(lo)].ravel(), frags[tuple(hi)].ravel()
        keep = (a != b) & (a > 0) & (b > 0)
        keys.append(np.minimum(a, b)[keep] * n + np.maximum(a, b)[keep])
        values.append(affs[i][tuple(hi)].ravel()[keep].astype(np.float64))
    k, inv = np.unique(np.concatenate(keys), return_inverse=True)
    inv = inv.ravel()
    stats = np.stack([np.bincount(inv, np.concatenate(values), len(k)), np.bincount(inv, minlength=len(k))], 1)
    return np.stack([k // n, k % n], 1), stats.astype(np.float64)


def _median_bin(hist: dict[int, int], bins: int) -> float:
    """Median bin centre of a sparse histogram {bin: count}: the first bin (ascending) whose cumulative count reaches
    half the total, as `searchsorted(cumsum, total / 2)` finds it on the dense histogram (an empty bin never holds
    the first crossing)."""
    half, acc = 0.5 * sum(hist.values()), 0
    for b in sorted(hist):
        acc += hist[b]
        if acc >= half:
            return (b + 0.5) / bins
    raise VistokError("empty affinity histogram")  # unreachable: every region pair has at least one voxel pair


def agglomerate(frags: np.ndarray, affs: np.ndarray, threshold: float = 0.5,
                score: Literal["median", "mean"] = "median", bins: int = 256) -> np.ndarray:
    """Greedily merge the adjacent pair of regions with the highest boundary affinity (median over a `bins`-bin
    histogram, or mean) while it exceeds `threshold`; scores of merged regions combine exactly. -> labels (z, y, x).

    Each region pair keeps only its non-empty bins (sparse), so memory follows the boundary voxels, not pairs x bins.
    """
    if score not in ("median", "mean"):
        raise VistokError(f"agglomeration score must be 'median' or 'mean', got {score!r}")
    frags, _, _ = relabel_sequential(frags.astype(np.int64))
    parent = np.arange(int(frags.max()) + 1)
    uniq, stats, value, merge = edge_scores(frags, affs, score, bins)
    roots = merge_regions(uniq, stats, value, merge, threshold, len(parent))
    return relabel_sequential(roots[frags])[0]


def edge_scores(frags: np.ndarray, affs: np.ndarray, score: str, bins: int = 256, parts=None):
    """-> (region pairs (E, 2), per-pair statistics, value(stat) -> score, merge(stat, stat) -> stat). `parts`, from
    the streaming path instead of `frags` and `affs`: median: ((pair, bin) keys, counts, n); mean: (pair keys
    (u * n + v), affinity sums, voxel-pair counts, n)."""
    if score == "mean":
        if parts is None:
            uniq, sums = _edge_means(frags, affs)
        else:
            keys, total, count, n = parts
            uniq, sums = np.stack([keys // n, keys % n], 1), np.stack([total, count], 1)
        stats = [(float(t), float(c)) for t, c in sums]

        def value(s):
            return s[0] / s[1]

        def merge(x, y):
            return (x[0] + y[0], x[1] + y[1])
    else:
        if parts is None:
            uniq, offsets, entries = _edge_histograms(frags, affs, bins)
        else:
            uniq, offsets, entries = histograms_from_counts(*parts, bins)
        # original pairs stay in the compact CSR arrays (an int handle each; their medians computed at once); only a
        # pair created by a merge holds a {bin: count} dict, with its median cached: (median, dict)
        counts = entries[:, 1]
        cum = np.cumsum(counts)
        before = np.r_[0, cum][offsets[:-1]]
        first = np.searchsorted(cum, before + 0.5 * (np.r_[0, cum][offsets[1:]] - before))  # first bin past half
        medians = ((entries[first, 0] + 0.5) / bins).tolist() if len(first) else []
        bin_ids, bin_counts, bounds = entries[:, 0].astype(np.int32), counts.astype(np.int64), offsets.tolist()
        stats = range(len(uniq))

        def hist_of(x) -> dict[int, int]:
            if isinstance(x, int):
                part = slice(bounds[x], bounds[x + 1])
                return dict(zip(bin_ids[part].tolist(), bin_counts[part].tolist(), strict=True))
            return x[1]

        def value(x):
            return medians[x] if isinstance(x, int) else x[0]

        def merge(x, y):
            hx, hy = hist_of(x), hist_of(y)
            small, large = (hx, hy) if len(hx) < len(hy) else (hy, hx)
            hist = dict(large)
            for b, c in small.items():
                hist[b] = hist.get(b, 0) + c
            return (_median_bin(hist, bins), hist)
    return uniq, stats, value, merge


def merge_regions(uniq: np.ndarray, stats: list, value, merge, threshold: float, num_ids: int) -> np.ndarray:
    """Greedy agglomeration over a region graph: repeatedly merge the adjacent pair with the highest score while it
    exceeds `threshold` (scores of merged regions combine exactly through `merge`) -> root id of every id < num_ids."""
    parent = np.arange(num_ids)
    if len(uniq):
        adj: dict[int, dict[int, object]] = {}
        heap = []
        for (u, v), s in zip(uniq.tolist(), stats, strict=True):
            adj.setdefault(u, {})[v] = s
            adj.setdefault(v, {})[u] = s
            heapq.heappush(heap, (-value(s), u, v))
        while heap:
            neg, u, v = heapq.heappop(heap)
            if -neg <= threshold:
                break
            if parent[u] != u or parent[v] != v or v not in adj.get(u, {}) or value(adj[u][v]) != -neg:
                continue  # stale entry: a region was merged away or the edge's score changed
            if len(adj[u]) < len(adj[v]):
                u, v = v, u  # merge the smaller neighbourhood into the larger
            parent[v] = u
            del adj[u][v]
            for n, s in adj.pop(v).items():
                if n == u:
                    continue
                del adj[n][v]
                merged = merge(adj[u][n], s) if n in adj[u] else s
                adj[u][n] = adj[n][u] = merged
                heapq.heappush(heap, (-value(merged), min(u, n), max(u, n)))
    roots = parent.copy()  # path compression over the merge forest
    while True:
        nxt = roots[roots]
        if np.array_equal(nxt, roots):
            break
        roots = nxt
    return roots


def segment(affs: np.ndarray, threshold: float = 0.5, fragment_threshold: float = 0.5, per_slice: bool = True,
            score: Literal["median", "mean"] = "median") -> np.ndarray:
    """Affinities (3, z, y, x) -> neuron ids (z, y, x) int64: watershed fragments, then agglomeration."""
    affs = np.asarray(affs, dtype=np.float32)
    return agglomerate(fragments(affs, fragment_threshold, per_slice), affs, threshold, score)
