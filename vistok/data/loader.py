"""Deterministic, resumable, distributed data loading.

Each epoch is one seeded permutation of the dataset, cut to a multiple of the global batch. Rank r of W takes every
W-th index from position r, so the union of the ranks' step-s batches is exactly the step-s global batch of a single
process: training with W processes and one process at the same global batch sees the same samples at every step.
Resuming at step s slices the index list (nothing is loaded twice). Augmentations are drawn from a generator seeded by
(seed, epoch, index), so they do not depend on worker count, world size or resume point either.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from vistok.errors import VistokError
from vistok.seeding import epoch_generator, item_generator, step_generator


class StepBatchSampler:
    """Infinite batches of `(index, epoch)` pairs for one rank, starting at global step `start_step`."""

    def __init__(
        self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0,
        shuffle: bool = True, start_step: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise VistokError(f"global batch {global_batch} must divide by the number of processes {world_size}")
        if num_samples < global_batch:
            raise VistokError(f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch}; "
                              "lower the batch size")
        self.n, self.global_batch, self.rank, self.world = num_samples, global_batch, rank, world_size
        self.seed, self.shuffle, self.start_step = seed, shuffle, start_step
        self.steps_per_epoch = num_samples // global_batch

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_step, self.steps_per_epoch)
        per_rank = self.global_batch // self.world
        while True:
            order = self.epoch_order(epoch)[: self.steps_per_epoch * self.global_batch]
            mine = order[self.rank :: self.world].tolist()
            for b in range(offset, self.steps_per_epoch):
                yield [(i, epoch) for i in mine[b * per_rank : (b + 1) * per_rank]]
            epoch, offset = epoch + 1, 0


class Augmented(Dataset):
    """Wraps a dataset of (image in [-1, 1], label); indexed by (index, epoch); random crop with padding, flips and
    conversion to grayscale (the channel mean) with probability `gray_p`."""

    def __init__(self, dataset: Dataset, seed: int = 0, hflip: bool = False, crop_pad: int = 0,
                 gray_p: float = 0.0) -> None:
        self.dataset, self.seed, self.hflip, self.crop_pad, self.gray_p = dataset, seed, hflip, crop_pad, gray_p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int] | int):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, label = self.dataset[index]
        if not (self.hflip or self.crop_pad or self.gray_p):
            return image, label
        g = item_generator(self.seed, epoch, index)
        if self.crop_pad:
            p = self.crop_pad
            padded = torch.nn.functional.pad(image[None], (p, p, p, p), mode="reflect")[0]
            dy, dx = torch.randint(0, 2 * p + 1, (2,), generator=g).tolist()
            image = padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]]
        if self.hflip and torch.rand((), generator=g) < 0.5:
            image = image.flip(-1)
        if self.gray_p and torch.rand((), generator=g) < self.gray_p:
            image = image.mean(0, keepdim=True).expand_as(image).contiguous()
        return image, label


def build_loader(
    dataset: Dataset, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0, start_step: int = 0,
    num_workers: int = 0, shuffle: bool = True, hflip: bool = False, crop_pad: int = 0, gray_p: float = 0.0,
) -> DataLoader:
    """An infinite loader of per-rank batches, deterministic in (seed, step) and resumable at `start_step`.

    The loader has its own generator: iterating a DataLoader draws its workers' base seed from it, which would otherwise
    come from torch's global generator and shift every later draw of the training step (dropout, noise, timesteps)."""
    sampler = StepBatchSampler(len(dataset), global_batch, rank, world_size, seed, shuffle, start_step)
    generator = step_generator(seed, start_step, rank)
    return DataLoader(
        Augmented(dataset, seed, hflip, crop_pad, gray_p), batch_sampler=sampler, num_workers=num_workers,
        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(), generator=generator,
    )
