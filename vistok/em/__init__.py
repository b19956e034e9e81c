"""Electron-microscopy volumes: TokenUnify pretraining (Chen et al., arXiv 2405.16847) on a SegMamba backbone
(Xing et al., MICCAI 2024), affinity-based neuron segmentation and its VOI / ARAND evaluation.

Submodules: backbone (SegMamba, presets), tokens (patches and masks), objectives (TokenUnify, MixSchedule), volumes
(IO, lazy volumes, crops, datasets), synthetic (a test volume), segmentation (affinities, loss, sliding window,
vistok's greedy watershed + sparse agglomeration), postprocess (the official mahotas watershed + waterz; optional
libraries, imported when used), baseline (no-network distance watershed), blockwise (the official pipeline blockwise
and resumable on daisy), streaming (the greedy path for volumes larger than memory), metrics (VOI, ARAND, per slice).
"""

from vistok.em.backbone import SegMamba, SegMambaConfig
from vistok.em.metrics import SegScores, arand, evaluate, evaluate_per_slice, voi
from vistok.em.objectives import MixSchedule, PretrainLoss, TaskWeights, TokenUnify, TokenUnifyConfig, load_pretrained_backbone
from vistok.em.segmentation import affinities, agglomerate, fragments, segment, sliding_window_inference, weighted_mse
from vistok.em.synthetic import synthetic_em_volume
from vistok.em.volumes import EMCrops, Volume, open_volumes, parse_volume_arg, read_volume, write_volume

__all__ = [
    "EMCrops", "MixSchedule", "PretrainLoss", "SegMamba", "SegMambaConfig", "SegScores", "TaskWeights", "TokenUnify",
    "TokenUnifyConfig", "Volume", "affinities", "agglomerate", "arand", "evaluate", "evaluate_per_slice", "fragments",
    "load_pretrained_backbone", "open_volumes", "parse_volume_arg", "read_volume", "segment",
    "sliding_window_inference", "synthetic_em_volume", "voi", "weighted_mse", "write_volume",
]
