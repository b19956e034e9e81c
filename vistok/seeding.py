"""Per-image random streams, and the one place samplers turn a seed or generators into noise.

Image i of a run draws all its noise from generators seeded by (seed, i) (`image_generators`), so the same seed gives
the same images whatever the batch size or the number of processes (a rank that generates images 500..999 seeds them
exactly as one process would), and the first n images of a run of N > n are the images of a run of n. Every sampler
(xAR, the GPT, FlexTok decoding) draws through `randn` / `rand` below, which take one generator for the batch or a list
of generators, one per image (the leading axis): with a list, image i's draws come from its own generator only, so they
do not depend on the rest of its batch. Draws are made on each generator's device (the CPU for `image_generators`) and
then moved, so the same seed gives the same noise on any device. Training draws are keyed the same way: the data order
by (seed, epoch), an item's augmentation by (seed, epoch, index), a step's draws by (seed, step, rank), so a resumed run
draws what an uninterrupted one would. This module sits low so that data, tokenizers and generators share it without
importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vistok.errors import require

# the source of a sampler's draws: one generator for the whole batch, one per image, or None (torch's global RNG)
Generators = torch.Generator | Sequence[torch.Generator] | None


def image_generators(seed: int, start: int, count: int, stream: int = 0) -> list[torch.Generator]:
    """CPU generators for images start..start+count-1, each seeded from (seed, index) through NumPy's SeedSequence.
    stream > 0 gives other, independent generators for the same images (seeded from (seed, index, stream)), e.g. for
    a second stage whose draws must not depend on how many the first one took."""
    require(seed >= 0, f"the seed must be non-negative, got {seed}")
    extra = [stream] if stream else []
    states = (np.random.SeedSequence([seed, i, *extra]).generate_state(2, np.uint32)
              for i in range(start, start + count))
    return [torch.Generator().manual_seed(int(s[0]) << 31 | int(s[1]) >> 1) for s in states]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of a run's `epoch`-th data order: a function of (seed, epoch) alone."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of item `index`'s random augmentation on its `epoch`-th visit: a function of (seed, epoch, index)
    alone, so whichever worker, rank or resumed run loads the item draws the same crop, flip or posterior sample."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63)


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator keyed by (seed, step, rank), on `device`: what one rank draws at one training step (or a loader
    started at that step), so a resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def resolve(generator: Generators, seed: int | None, batch: int) -> Generators:
    """A sampler's source of draws for `batch` images: `generator` if given (a list must hold one per image), else one
    CPU generator seeded with `seed`, else None (torch's global RNG)."""
    if isinstance(generator, Sequence):
        require(len(generator) == batch, f"got {len(generator)} generators for {batch} images; pass one per image")
        return generator
    if generator is None and seed is not None:
        return torch.Generator().manual_seed(seed)
    return generator


def randn(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal (B, ...) float32 noise on `device`, drawn on the generators' device; a list of generators draws
    row i from generator i alone."""
    if isinstance(generator, Sequence):
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in generator])
    src = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=src).to(device)


def rand(batch: int, generator: Generators) -> torch.Tensor:
    """(B,) float64 uniforms in [0, 1) on the CPU: one per image from its own generator, or B from one."""
    if isinstance(generator, Sequence):
        return torch.stack([torch.rand((), generator=g, dtype=torch.float64, device=g.device).cpu() for g in generator])
    src = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(batch, generator=generator, dtype=torch.float64, device=src).cpu()


__all__ = ["Generators", "epoch_generator", "image_generators", "item_generator", "rand", "randn", "resolve",
           "step_generator"]
