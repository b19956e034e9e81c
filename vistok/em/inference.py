"""Whole-volume neuron segmentation with a fine-tuned SegMamba: load an export, predict affinities window by window,
cut them into neuron ids. Shared by `train/finetune_em_seg.py` (its final test score) and `vistok em-segment`.

Chen et al., "TokenUnify", arXiv 2405.16847 (inference: MONAI sliding windows, overlap 0.25, Gaussian blending, then
watershed + agglomeration "Waterz"); the pieces live in `vistok.em.segmentation`.

    raw (z, y, x) -> min-max to [0, 1] -> sigmoid(SegMamba) over overlapping roi windows -> affinities (3, z, y, x)
                  -> per-slice mahotas watershed fragments -> waterz agglomeration -> neuron ids (z, y, x)

The post-processing is the official one by default (`vistok.em.postprocess`, mahotas + waterz). `postprocess="greedy"`
is vistok's earlier hand-written merge (smoothed-distance seeds, voxel-median histograms), kept because it streams:
its memory follows the region graph, not the volume (`vistok.em.streaming`). On the gala FIB test volume it scores
worse (3D VOI 2.43 against 1.72 for em-segmamba-tiny-scratch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from vistok.em.backbone import FAMILY, SegMamba, SegMambaConfig
from vistok.em.postprocess import optional_import, segment as official_segment
from vistok.em.segmentation import segment, sliding_window_inference
from vistok.em.volumes import Volume, VolumeRef, normalize_minmax
from vistok.errors import VistokError, require

if TYPE_CHECKING:
    from vistok.io.exports import Export


@dataclass(frozen=True)
class InferenceConfig:
    """How a volume is segmented; stored in a fine-tuning export so `em-segment --ckpt` needs nothing else.

    An empty `roi` means the training crop (the fine-tuning script fills it in before exporting)."""

    roi: tuple[int, ...] = ()
    overlap: float = 0.25
    batch_size: int = 4  # windows per forward pass
    # agglomeration. waterz (as the official scripts pass it): merge while 1 - median affinity < threshold, so a
    # larger threshold merges more; greedy: merge while the affinity > threshold. Both are the same rule at 0.5.
    threshold: float = 0.5
    fragment_threshold: float = 0.5  # watershed seeds: distance transform of (boundary < this)
    per_slice: bool = True  # 2D watershed per z slice (anisotropic EM), else one 3D watershed
    score: Literal["median", "mean"] = "median"  # greedy post-processing only
    postprocess: Literal["waterz", "greedy"] = "waterz"  # official mahotas + waterz, or the streamed greedy merge

    def __post_init__(self) -> None:
        require(len(self.roi) in (0, 3) and all(r > 0 for r in self.roi),
                f"inference roi {tuple(self.roi)} must be 3 positive sizes (z, y, x), or empty for the training crop")
        require(0.0 <= self.overlap < 1.0, f"inference overlap {self.overlap} must be in [0, 1)")
        require(self.batch_size >= 1, f"inference batch_size {self.batch_size} must be positive")
        require(0.0 <= self.threshold <= 1.0 and 0.0 <= self.fragment_threshold <= 1.0,
                "inference threshold and fragment_threshold must be in [0, 1]")
        require(self.score in ("median", "mean"), f"inference score must be 'median' or 'mean', got {self.score!r}")
        require(self.postprocess in ("waterz", "greedy"),
                f"inference postprocess must be 'waterz' or 'greedy', got {self.postprocess!r}")


def load_segmenter(ckpt: str | Path | Export, device: str | torch.device = "cpu") -> tuple[SegMamba, dict[str, Any]]:
    """(SegMamba in eval mode with the exported EMA weights, the export's config.json) of a fine-tuning export."""
    from vistok.config import from_dict
    from vistok.io.exports import load_model, open_export

    export = open_export(ckpt)  # resolved once, config.json read once
    family, folder = export.meta["family"], export.source
    if family == "tokenunify":
        raise VistokError(f"{folder} is a TokenUnify pretraining export, not a segmentation model; fine-tune it first: "
                          f"python train/finetune_em_seg.py --config train/configs/em_seg_tiny.yaml init_from={folder}")
    if family != FAMILY[0]:
        raise VistokError(f"{folder} holds a {family!r} model; em-segment needs a '{FAMILY[0]}' export "
                          "written by train/finetune_em_seg.py")
    config = from_dict(SegMambaConfig, export.meta["config"])
    if config.out_chans != 3:
        raise VistokError(f"{folder} predicts {config.out_chans} channel(s); a segmentation model predicts 3 "
                          "affinities")
    model, meta = load_model(export, device)  # sizes, keys and shapes checked on the meta device first
    return model, meta


@torch.no_grad()
def predict_affinities(model: SegMamba, raw: np.ndarray, roi: tuple[int, int, int], overlap: float = 0.25,
                       batch_size: int = 4) -> np.ndarray:
    """Raw volume (z, y, x), any dtype -> affinities (3, z, y, x) float32 in [0, 1] (whole-volume min-max first)."""
    model.config.check_input(tuple(roi))  # a bad window fails here, before any work
    device = next(model.parameters()).device
    volume = torch.from_numpy(normalize_minmax(raw))[None, None].to(device)  # (1, 1, z, y, x)
    affs = sliding_window_inference(lambda x: torch.sigmoid(model(x)), volume, tuple(roi), overlap, batch_size)
    return affs[0].cpu().numpy()  # (3, z, y, x)


def require_postprocess() -> None:
    """Fail in one line, before any work, when the official post-processing's libraries are missing."""
    optional_import("waterz")
    optional_import("mahotas")


def segment_affinities(affs: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Affinities (3, z, y, x) -> neuron ids (z, y, x) int64 from 1, by the post-processing `cfg` names."""
    if cfg.postprocess == "greedy":
        return segment(affs, cfg.threshold, cfg.fragment_threshold, cfg.per_slice, cfg.score)
    return official_segment(affs, cfg.threshold, cfg.fragment_threshold, cfg.per_slice).astype(np.int64)


def segment_volume(model: SegMamba, raw: np.ndarray, cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Raw volume (z, y, x) -> (affinities (3, z, y, x) float32, neuron ids (z, y, x) int64 from 1)."""
    if not cfg.roi:
        raise VistokError("no inference window: set inference.roi (or pass --roi D,H,W)")
    if cfg.postprocess == "waterz":
        require_postprocess()  # a missing library fails before the network runs
    affs = predict_affinities(model, raw, cfg.roi, cfg.overlap, cfg.batch_size)
    return affs, segment_affinities(affs, cfg)


@torch.no_grad()
def segment_to_file(model: SegMamba, src: Volume, dst: VolumeRef, cfg: InferenceConfig,
                    progress: bool | None = None) -> tuple[int, str]:
    """Segment a lazy volume into `dst` -> (number of segments, "streamed" or "in memory").

    A volume at least one window large is read window by window (a bar of windows on stderr: `progress` None shows
    it when stderr is a terminal, False never). The official post-processing (waterz) then holds the affinities of
    the whole volume; the greedy one with per-slice fragments streams them through scratch files and writes
    chunk-wise (`vistok.em.streaming`, same result as in memory). A smaller volume is segmented in memory."""
    from vistok.em.segmentation import _starts
    from vistok.em.streaming import segment_streaming, stream_affinities
    from vistok.em.volumes import intensity_range, write_volume
    from vistok.progress import progress as progress_bar

    if not cfg.roi:
        raise VistokError("no inference window: set inference.roi (or pass --roi D,H,W)")
    model.config.check_input(tuple(cfg.roi))
    if cfg.postprocess == "waterz":
        require_postprocess()  # a missing library fails before the network runs
    device = next(model.parameters()).device
    if all(s >= r for s, r in zip(src.shape, cfg.roi, strict=True)):
        total = math.prod(len(_starts(n, r, cfg.overlap)) for n, r in zip(src.shape, cfg.roi, strict=True))
        with progress_bar(total=total, desc="em-segment", enabled=progress, unit="window") as bar:
            def predict(x: torch.Tensor) -> torch.Tensor:  # (N, 1, *roi) -> (N, 3, *roi) affinities
                y = torch.sigmoid(model(x.to(device)))
                bar.update(len(x))
                return y

            if cfg.postprocess == "greedy" and cfg.per_slice:
                n = segment_streaming(predict, src, dst, tuple(cfg.roi), cfg.overlap, cfg.batch_size, cfg.threshold,
                                      cfg.fragment_threshold, cfg.score)
                return n, "streamed"
            affs = np.zeros((3, *src.shape), np.float32)  # (3, z, y, x)

            def sink(z0: int, block: np.ndarray) -> None:
                affs[:, z0: z0 + block.shape[1]] = block

            stream_affinities(predict, src, intensity_range(src), tuple(cfg.roi), cfg.overlap, cfg.batch_size, sink)
        seg = segment_affinities(affs, cfg)
    else:
        _, seg = segment_volume(model, src.read(), cfg)
    write_volume(dst, seg.astype(np.uint32 if seg.max(initial=0) < 2**32 else np.uint64))
    return int(len(np.unique(seg))), "in memory"
