"""EM training data: the `data` (and fine-tuning `eval`) sections of the TokenUnify pretraining and SegMamba
fine-tuning configs, and the datasets and loaders the two training scripts build from them.

Chen et al., "TokenUnify", arXiv 2405.16847. Crops are drawn lazily from FILE[:DATASET] volumes (HDF5 / zarr / npy /
npz / TIFF; only the chunks a crop touches are read), each min-max normalised by its whole volume's range as the
official loaders do. Every crop, augmentation and perturbation is drawn from a generator seeded by (seed, epoch,
index), so a run does not depend on workers, world size or resume point. Kept apart from the scripts so that a script
only reads its config, builds, trains and exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vistok.data.loader import StepBatchSampler
from vistok.em.perturb import PerturbConfig, perturb
from vistok.em.volumes import EMCrops, Volume, intensity_range, open_volumes, read_volume
from vistok.engine.dist import DistEnv
from vistok.errors import require


def _check_intensity(intensity: str) -> None:
    require(intensity in ("exact", "sample"), f"data.intensity must be 'exact' or 'sample', got {intensity!r}")


@dataclass(frozen=True)
class VolumeDataConfig:
    """Pretraining crops (their size is the model's `input_size`)."""

    volumes: tuple[str, ...] = ()  # FILE[:DATASET] each, e.g. ../shared/data/em/gala_fib_medulla.h5:train/raw
    samples_per_epoch: int = 1000  # crops per epoch (each (seed, epoch, index) draws its own crop and augmentation)
    augment: bool = True  # in-plane flips and 90-degree rotations (the official AR loader has them off)
    intensity: str = "exact"  # min-max range per volume unless stored as min/max attributes: exact (one streaming
    #                           pass) or sample (random blocks, for corpora too big to scan)
    shard_volumes: bool = True  # with N ranks and >= N volumes, rank r crops only volumes r, r + N, ...
    perturb: PerturbConfig = field(default_factory=PerturbConfig)  # the official input perturbations (p=0: off)

    def __post_init__(self) -> None:
        require(self.samples_per_epoch >= 1, "data.samples_per_epoch must be positive")
        _check_intensity(self.intensity)


@dataclass(frozen=True)
class SegDataConfig:
    """Fine-tuning crops with their neuron ids."""

    raw: tuple[str, ...] = ()  # FILE[:DATASET] each, e.g. ../shared/data/em/gala_fib_medulla.h5:train/raw
    labels: tuple[str, ...] = ()  # the matching neuron ids (0 = boundary / unlabelled), same shapes
    crop: tuple[int, int, int] = (16, 64, 64)
    samples_per_epoch: int = 1000
    augment: bool = True  # in-plane flips and 90-degree rotations
    widen_border: bool = True  # zero labels between two different ids in-plane (the official seg_widen_border)
    intensity: str = "exact"  # raw min-max range unless stored as attributes: exact (streaming pass) or sample
    shard_volumes: bool = True  # with N ranks and >= N volumes, rank r crops only volumes r, r + N, ...

    def __post_init__(self) -> None:
        require(len(self.raw) == len(self.labels), f"data.raw has {len(self.raw)} volume(s) but data.labels "
                f"{len(self.labels)}; give one label volume each")
        require(self.samples_per_epoch >= 1, "data.samples_per_epoch must be positive")
        _check_intensity(self.intensity)


@dataclass(frozen=True)
class EvalConfig:
    """The fine-tuning run's test volume, segmented and scored at the end."""

    raw: str = ""  # test volume FILE[:DATASET]; empty: export without a test score
    labels: str = ""  # its neuron ids

    def __post_init__(self) -> None:
        require(bool(self.raw) == bool(self.labels), "set both eval.raw and eval.labels, or neither")


class PerturbedCrops(Dataset):
    """(index, epoch) -> (input, clean): the crop as the network sees it (perturbed with probability `cfg.p`, as the
    official autoregressive loader does before hiding tokens) and the clean crop (the next-all target), both
    (1, D, H, W) float32. The perturbation's generator is seeded by (seed, epoch, index) apart from the crop's."""

    def __init__(self, crops: EMCrops, cfg: PerturbConfig, seed: int) -> None:
        self.crops, self.cfg, self.seed = crops, cfg, seed

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        clean = self.crops[(index, epoch)]  # (1, D, H, W)
        rng = np.random.default_rng([self.seed, epoch, index, 1])  # the trailing 1: a stream apart from the crop's
        seen, _ = perturb(clean[0].numpy(), self.cfg, rng)
        return torch.from_numpy(np.ascontiguousarray(seen, dtype=np.float32))[None], clean


def volume_ranges(volumes: Sequence[Volume], intensity: str) -> list[tuple[float, float]]:
    """Each volume's whole-volume min-max (stored attributes, one streaming pass, or sampled blocks)."""
    return [intensity_range(v, intensity) for v in volumes]


def pretrain_crops(data: VolumeDataConfig, volumes: Sequence[Volume], ranges: Sequence[tuple[float, float]],
                   crop: Sequence[int], seed: int, env: DistEnv) -> PerturbedCrops:
    """The pretraining dataset: (input, clean) crops of `crop` voxels, volumes sharded over ranks if set."""
    rank, world = (env.rank, env.world_size) if data.shard_volumes else (0, 1)
    crops = EMCrops(volumes, crop, data.samples_per_epoch, seed=seed, augment=data.augment, ranges=ranges, rank=rank,
                    world_size=world)
    return PerturbedCrops(crops, data.perturb, seed)


def fixed_crops(volumes: Sequence[Volume], ranges: Sequence[tuple[float, float]], crop: Sequence[int], count: int,
                seed: int) -> EMCrops:
    """`count` clean crops, the same for every run with this seed (end-of-run scores comparable across runs)."""
    return EMCrops(volumes, crop, count, seed=seed, augment=False, ranges=ranges)


def seg_crops(data: SegDataConfig, seed: int, env: DistEnv) -> EMCrops:
    """The fine-tuning dataset: (raw (1, D, H, W), ids (D, H, W)) crops, labels border-widened as the whole volume
    would be."""
    raw, labels = open_volumes(data.raw), open_volumes(data.labels)  # lazily: crops read only their chunks
    rank, world = (env.rank, env.world_size) if data.shard_volumes else (0, 1)
    return EMCrops(raw, data.crop, data.samples_per_epoch, labels=labels, seed=seed, augment=data.augment,
                   widen_border=data.widen_border, ranges=volume_ranges(raw, data.intensity), rank=rank,
                   world_size=world)


def read_eval(cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """The test volume and its ids, read whole (a bad path fails before training), or None without one."""
    return (read_volume(cfg.raw), read_volume(cfg.labels)) if cfg.raw else None


def step_loader(dataset: Dataset, batch_size: int, num_workers: int, seed: int, env: DistEnv,
                start_step: int) -> DataLoader:
    """This rank's share of each global batch of `(index, epoch)` keys from `start_step` on (resumable)."""
    sampler = StepBatchSampler(len(dataset), batch_size, env.rank, env.world_size, seed, start_step=start_step)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=env.device.type == "cuda")
