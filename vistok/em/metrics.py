"""Segmentation scores of neuron reconstructions: variation of information (split, merge) and adapted Rand error.

Meila, "Comparing clusterings - an information based distance", J. Multivariate Analysis 2007 (VOI);
Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for connectomics", Front.
Neuroanat. 2015 (adapted Rand error). Conventions of scikit-image's `variation_of_information(gt, seg,
ignore_labels=(0,))` and `adapted_rand_error(gt, seg)`, as TokenUnify (Chen et al., arXiv 2405.16847) reports them:

- voxels whose ground-truth label is in `ignore_labels` (0: boundary / unlabelled) are left out;
- label 0 in the segmentation is an ordinary segment (not ignored, not split into singletons);
- split = H(seg | gt) (over-segmentation), merge = H(gt | seg) (under-segmentation), in bits; VOI = split + merge;
- per slice (`evaluate_per_slice`): the same scores per z section, averaged over sections with labelled voxels;
- ARAND = 1 - sum_ij n_ij(n_ij - 1) / (1/2 sum_i a_i(a_i - 1) + 1/2 sum_j b_j(b_j - 1)) over voxel pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from vistok.errors import VistokError


class SegScores(NamedTuple):
    voi_split: float
    voi_merge: float
    voi: float
    arand: float


def contingency(seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)) -> tuple[np.ndarray, ...]:
    """Overlap counts of (seg, gt) label pairs over non-ignored voxels -> (n_ij, seg index, gt index) per pair."""
    seg, gt = np.asarray(seg), np.asarray(gt)
    if seg.shape != gt.shape:
        raise VistokError(f"segmentation {seg.shape} and ground truth {gt.shape} differ in shape")
    keep = ~np.isin(gt, list(ignore_labels)) if len(ignore_labels) else np.ones(gt.shape, bool)
    if not keep.any():
        raise VistokError("the ground truth has no voxels outside the ignored labels; nothing to score")
    seg_ids, seg_idx = np.unique(seg[keep], return_inverse=True)
    gt_ids, gt_idx = np.unique(gt[keep], return_inverse=True)
    pair, counts = np.unique(seg_idx.ravel().astype(np.int64) * len(gt_ids) + gt_idx.ravel(), return_counts=True)
    return counts.astype(np.float64), pair // len(gt_ids), pair % len(gt_ids)


def voi(seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)) -> tuple[float, float]:
    """(split, merge) = (H(seg | gt), H(gt | seg)) in bits."""
    n_ij, i, j = contingency(seg, gt, ignore_labels)
    p_ij = n_ij / n_ij.sum()
    p_seg = np.bincount(i, p_ij)[i]  # marginal of each pair's segment
    p_gt = np.bincount(j, p_ij)[j]
    split = -np.sum(p_ij * np.log2(p_ij / p_gt))
    merge = -np.sum(p_ij * np.log2(p_ij / p_seg))
    return float(max(0.0, split)), float(max(0.0, merge))  # clamp rounding below 0 (and -0.0)


def arand(seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)) -> float:
    """Adapted Rand error (0 = perfect), equal precision and recall weights."""
    n_ij, i, j = contingency(seg, gt, ignore_labels)
    a, b = np.bincount(j, n_ij), np.bincount(i, n_ij)  # ground-truth and segment sizes
    pairs_ij = np.sum(n_ij * (n_ij - 1))
    denom = 0.5 * np.sum(a * (a - 1)) + 0.5 * np.sum(b * (b - 1))
    return float(1.0 - pairs_ij / denom) if denom > 0 else 0.0


def evaluate(seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)) -> SegScores:
    """VOI split, VOI merge, VOI and ARAND of a segmentation against ground truth."""
    split, merge = voi(seg, gt, ignore_labels)
    return SegScores(split, merge, split + merge, arand(seg, gt, ignore_labels))


def evaluate_per_slice(seg: np.ndarray, gt: np.ndarray, ignore_labels: Sequence[int] = (0,)) -> SegScores:
    """2D scores averaged over the z sections (axis 0) that hold a non-ignored ground-truth voxel, each section scored
    alone: for serial-section EM whose labels are 2D (ids not linked across sections), where 3D scores would count
    every section change as a split. Sections with no labelled voxel are skipped, not scored as perfect."""
    seg, gt = np.asarray(seg), np.asarray(gt)
    if seg.shape != gt.shape:
        raise VistokError(f"segmentation {seg.shape} and ground truth {gt.shape} differ in shape")
    if gt.ndim < 3:
        raise VistokError(f"per-slice scores need (z, y, x) volumes, got shape {gt.shape}")
    ignored = np.isin(gt, list(ignore_labels)) if len(ignore_labels) else np.zeros(gt.shape, bool)
    scores = [evaluate(s, g, ignore_labels) for s, g, i in zip(seg, gt, ignored, strict=True) if not i.all()]
    if not scores:
        raise VistokError("the ground truth has no voxels outside the ignored labels; nothing to score")
    return SegScores(*(float(v) for v in np.mean(np.array(scores, np.float64), axis=0)))
