"""Electron-microscopy volumes: TokenUnify pretraining (Chen et al., arXiv 2405.16847) on a SegMamba backbone
(Xing et al., MICCAI 2024), affinity-based neuron segmentation and its VOI / ARAND evaluation.

Submodules: backbone (SegMamba, presets), tokens (patches and masks), objectives (TokenUnify, MixSchedule), volumes
(IO, lazy volumes, crops, datasets), synthetic (a test volume), segmentation (affinities, loss, sliding window,
vistok's greedy watershed + sparse agglomeration), postprocess (the official mahotas watershed + waterz; optional
libraries, imported when used), baseline (no-network distance watershed), blockwise (the official pipeline blockwise
and resumable on daisy), streaming (the greedy path for volumes larger than memory), metrics (VOI, ARAND, per slice).
"""

from __future__ import annotations

from vistok.lazy import lazy_exports

# resolved on first use: importing a light submodule (vistok.em.cli, for `vistok --help`) does not import torch
__getattr__ = lazy_exports(__name__, globals(), {
    "backbone": ("SegMamba", "SegMambaConfig"),
    "metrics": ("SegScores", "arand", "evaluate", "evaluate_per_slice", "voi"),
    "objectives": ("MixSchedule", "PretrainLoss", "TaskWeights", "TokenUnify", "TokenUnifyConfig",
                   "load_pretrained_backbone"),
    "segmentation": ("affinities", "agglomerate", "fragments", "segment", "sliding_window_inference", "weighted_mse"),
    "synthetic": ("synthetic_em_volume",),
    "volumes": ("EMCrops", "Volume", "open_volumes", "parse_volume_arg", "read_volume", "write_volume"),
})

__all__ = [
    "EMCrops", "MixSchedule", "PretrainLoss", "SegMamba", "SegMambaConfig", "SegScores", "TaskWeights", "TokenUnify",
    "TokenUnifyConfig", "Volume", "affinities", "agglomerate", "arand", "evaluate", "evaluate_per_slice", "fragments",
    "load_pretrained_backbone", "open_volumes", "parse_volume_arg", "read_volume", "segment",
    "sliding_window_inference", "synthetic_em_volume", "voi", "weighted_mse", "write_volume",
]
