"""The official TokenUnify post-processing (mahotas watershed + waterz) against an independent implementation of its
steps, the Segmenter's affinity API, per-slice scores and the no-network baseline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information
from skimage.morphology import local_maxima
from skimage.segmentation import watershed

from vistok.em import postprocess
from vistok.em.metrics import evaluate, evaluate_per_slice
from vistok.em.segmentation import affinities
from vistok.em.synthetic import synthetic_em_volume
from vistok.em.volumes import read_volume, write_volume
from vistok.errors import VistokError

pytest.importorskip("waterz")
pytest.importorskip("mahotas")


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as partitions of the voxels (ids may differ): every id of one meets exactly one id of the other."""
    pairs = np.unique(np.stack([np.asarray(a).ravel(), np.asarray(b).ravel()], 1), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def ref_fragments(affs: np.ndarray) -> np.ndarray:
    """utils/fragment.py's watershed(affs, 'maxima_distance') with scipy + scikit-image: per slice, boundary =
    1 - (aff_y + aff_x) / 2, seeds = 4-connected regional maxima of the distance to (boundary >= 0.5), watershed
    (4-connected) of the boundary from them."""
    boundary = 1.0 - 0.5 * (affs[1] + affs[2])
    out, offset = np.zeros(boundary.shape, np.int64), 0
    for z in range(boundary.shape[0]):
        distance = ndimage.distance_transform_edt(boundary[z] < 0.5)
        seeds, n = ndimage.label(local_maxima(distance, connectivity=1, allow_borders=True))
        out[z] = watershed(boundary[z], seeds, connectivity=1) + offset
        offset += n
    return out


def ref_agglomerate(affs: np.ndarray, frags: np.ndarray, threshold: float = 0.5, bins: int = 256) -> np.ndarray:
    """waterz with OneMinus<HistogramQuantileAffinity<RegionGraphType, 50, ScoreValue, 256>>, written out in plain
    Python: every pair of touching fragments enters its edge's multiset once, at the bin of its largest affinity
    (waterz's InitWithMax); parallel edges of merged regions join their multisets; the score is 1 - the centre of the
    bin at 1-based rank 50 * count // 100 + 1; the lowest-scoring edge is merged while its score is below threshold."""
    largest: dict[tuple[int, int], float] = {}
    for axis in range(3):
        hi, lo = [slice(None)] * 3, [slice(None)] * 3
        hi[axis], lo[axis] = slice(1, None), slice(None, -1)
        for a, b, w in zip(frags[tuple(lo)].ravel().tolist(), frags[tuple(hi)].ravel().tolist(),
                           affs[axis][tuple(hi)].ravel().tolist(), strict=True):
            if a != b and a > 0 and b > 0:
                key = (min(a, b), max(a, b))
                largest[key] = max(largest.get(key, -1.0), w)
    edges = {key: [min(max(int(w * bins), 0), bins - 1)] for key, w in largest.items()}

    def score(multiset: list[int]) -> float:
        return 1.0 - (sorted(multiset)[50 * len(multiset) // 100] + 0.5) / bins

    parent: dict[int, int] = {}
    while edges:
        (u, v), best = min(edges.items(), key=lambda item: (score(item[1]), item[0]))
        if score(best) >= threshold:
            break
        parent[v] = u
        del edges[(u, v)]
        for key in [k for k in edges if v in k]:
            other = key[0] if key[1] == v else key[1]
            joined = (min(u, other), max(u, other))
            edges[joined] = edges.get(joined, []) + edges.pop(key)

    def root(x: int) -> int:
        while x in parent:
            x = parent[x]
        return x

    return np.vectorize(root)(frags)


def noisy_affinities(seed: int, shape=(6, 40, 40)) -> np.ndarray:
    """Affinities of synthetic neurons with smooth and voxel noise: many fragments per cell and many boundaries whose
    decision depends on the statistic (voxel median, mean and max-then-median disagree on them)."""
    rng = np.random.default_rng(seed)
    _, labels = synthetic_em_volume(shape, num_cells=10, seed=seed)
    clean = affinities(torch.from_numpy(labels)).numpy()
    smooth = ndimage.gaussian_filter(rng.random(clean.shape), (0, 0, 1, 1)) - 0.5
    return np.clip(0.75 * clean + smooth + 0.12 + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_postprocessing_equals_an_independent_implementation_of_the_official_steps(seed: int) -> None:
    from vistok.em.inference import InferenceConfig, segment_affinities
    from vistok.em.segmentation import segment as greedy_segment

    affs = noisy_affinities(seed)
    frags, want_frags = postprocess.fragments(affs), ref_fragments(affs)
    assert frags.dtype == np.uint64 and frags.min() >= 1 and same_partition(frags, want_frags)
    assert len(np.unique(frags)) > 80  # an over-segmentation, so the merge below has work to do
    want = ref_agglomerate(affs, want_frags)
    got = segment_affinities(affs, InferenceConfig())  # what em-segment, Segmenter.segment and validation run
    assert same_partition(got, want) and 5 <= len(np.unique(got)) < len(np.unique(frags)) // 5
    assert np.array_equal(np.unique(got), np.arange(1, len(np.unique(got)) + 1))  # relabelled 1..n
    assert not same_partition(greedy_segment(affs), want)  # the statistic matters on these affinities
    assert not same_partition(postprocess.fragments(affs, per_slice=False), want_frags)


def test_agglomeration_leaves_the_fragments_alone_and_checks_its_inputs() -> None:
    affs = noisy_affinities(3, (3, 24, 24))
    frags = postprocess.fragments(affs)
    before = frags.copy()
    postprocess.agglomerate(affs, frags)  # waterz writes into the array it is given: a copy must be passed
    assert np.array_equal(frags, before)
    with pytest.raises(VistokError, match=r"shape \(3, z, y, x\)"):
        postprocess.segment(affs[:2])
    with pytest.raises(VistokError, match="differ in their"):
        postprocess.agglomerate(affs, frags[:, 1:])
    with pytest.raises(VistokError, match="threshold"):
        postprocess.agglomerate(affs, frags, 1.5)


def test_a_missing_library_is_one_line_with_the_install_command(monkeypatch) -> None:
    from vistok.em.inference import InferenceConfig, segment_affinities

    monkeypatch.setitem(sys.modules, "waterz", None)  # import waterz now raises ImportError
    with pytest.raises(VistokError, match=r"pip install \"vistok\[em\]\"") as err:
        segment_affinities(noisy_affinities(0, (2, 16, 16)), InferenceConfig())
    assert "\n" not in str(err.value)


def test_segmenter_affinities_and_segment_affinities_are_the_segment_pipeline(tmp_path: Path) -> None:
    from vistok.api import load
    from vistok.em.inference import InferenceConfig, load_segmenter, segment_to_file
    from vistok.em.volumes import Volume, parse_volume_arg

    raw, _ = synthetic_em_volume((16, 40, 40), num_cells=6, seed=1)
    seg_api = load("em-segmamba-tiny-scratch")
    affs = seg_api.affinities(raw)
    assert affs.shape == (3, 16, 40, 40) and affs.dtype == np.float32 and 0 <= affs.min() and affs.max() <= 1
    ids = seg_api.segment_affinities(affs)
    assert ids.dtype == np.uint32 and same_partition(ids, postprocess.segment(affs))
    assert np.array_equal(seg_api.segment(raw), ids)
    assert not same_partition(seg_api.segment_affinities(affs, threshold=0.2), ids)  # a threshold is passed on
    with pytest.raises(VistokError, match=r"\(3, Z, Y, X\)"):
        seg_api.segment_affinities(affs[0])
    # em-segment's path over a lazy file: affinities read window by window, then the same post-processing
    write_volume(f"{tmp_path}/raw.h5:raw", raw)
    model, meta = load_segmenter("em-segmamba-tiny-scratch")
    n, how = segment_to_file(model, Volume(f"{tmp_path}/raw.h5:raw"), parse_volume_arg(f"{tmp_path}/seg.h5"),
                             InferenceConfig(**meta["inference"]), progress=False)
    assert how == "in memory" and np.array_equal(read_volume(f"{tmp_path}/seg.h5"), ids) and n == ids.max()


@pytest.mark.parametrize("seed", [0, 1])
def test_per_slice_scores_are_the_mean_of_2d_scikit_image_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 5, (5, 16, 16))
    gt[2] = 0  # a section without labels is skipped, not scored as perfect
    seg = np.where(rng.random(gt.shape) < 0.7, gt + 3, rng.integers(0, 4, gt.shape))
    seg[1] = 1  # a section merged into one segment
    rows = [(*variation_of_information(g, s, ignore_labels=(0,)), adapted_rand_error(g, s)[0])
            for s, g in zip(seg, gt, strict=True) if g.any()]
    split, merge, are = np.mean(rows, axis=0)
    got = evaluate_per_slice(seg, gt)
    np.testing.assert_allclose(got, (split, merge, split + merge, are), atol=1e-12)
    # 2D labels that change id from section to section: perfect per slice, a split in 3D
    labels2d = np.stack([np.where(g > 0, g + 10 * z, 0) for z, g in enumerate(gt)])
    assert evaluate_per_slice(labels2d, gt) == (0.0, 0.0, 0.0, 0.0) and evaluate(labels2d, gt).voi_split > 0.5
    with pytest.raises(VistokError, match="nothing to score"):
        evaluate_per_slice(seg, np.zeros_like(gt))


def test_baseline_cuts_cells_apart_at_dark_membranes() -> None:
    from vistok.em.baseline import distance_watershed

    raw = np.full((3, 30, 60), 200, np.uint8)
    raw[:, :, 29:31] = 20  # one dark membrane: two cells side by side in every section
    seg = distance_watershed(raw, sigma=0.5)
    gt = np.where(np.arange(60) < 29, 1, np.where(np.arange(60) > 30, 2, 0))[None, None].repeat(3, 0).repeat(30, 1)
    assert evaluate(seg, gt) == (0.0, 0.0, 0.0, 0.0) and len(np.unique(seg)) == 2
    per_slice = distance_watershed(raw, sigma=0.5, per_slice=True)
    assert len(np.unique(per_slice)) == 6 and evaluate_per_slice(per_slice, gt) == (0.0, 0.0, 0.0, 0.0)
    real, labels = synthetic_em_volume((8, 64, 64), num_cells=8, seed=0)
    one = evaluate(np.ones_like(labels), labels).voi  # everything merged
    assert evaluate(distance_watershed(real), labels).voi < 0.6 * one
    with pytest.raises(VistokError, match="threshold"):
        distance_watershed(raw, threshold=2.0)


def test_cli_baseline_segment_and_per_slice_eval(tmp_path: Path, capsys) -> None:
    from vistok.em.baseline import distance_watershed
    from vistok.em.cli import main

    raw, labels = synthetic_em_volume((6, 48, 48), num_cells=6, seed=2)
    write_volume(f"{tmp_path}/v.h5:raw", raw)
    write_volume(f"{tmp_path}/v.h5:gt", labels)
    assert main(["em-segment", "--baseline", "--per-slice", "--input", f"{tmp_path}/v.h5:raw",
                 "--out", f"{tmp_path}/s.h5:ids"]) == 0
    seg = read_volume(f"{tmp_path}/s.h5:ids")
    assert np.array_equal(seg, distance_watershed(raw, per_slice=True)) and "baseline" in capsys.readouterr().out
    assert main(["em-eval", "--seg", f"{tmp_path}/s.h5:ids", "--gt", f"{tmp_path}/v.h5:gt", "--per-slice",
                 "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["per_slice"] is True
    assert np.allclose([shown[k] for k in ("voi_split", "voi_merge", "voi", "arand")], evaluate_per_slice(seg, labels))
    assert main(["em-segment", "--input", f"{tmp_path}/v.h5:raw", "--out", f"{tmp_path}/t.h5"]) == 1
    err = capsys.readouterr().err
    assert "--ckpt" in err and "--baseline" in err and len(err.strip().splitlines()) == 1
