"""Per-image random streams: image i of a run draws all its noise from generators seeded by (seed, i).

So the same seed gives the same images whatever the batch size or the number of processes (a rank that generates
images 500..999 seeds them exactly as one process would), and the first n images of a run of N > n are the images of
a run of n. Used by every generator family (`vistok.api`) and by FlexTok decoding; it sits low so that tokenizers and
generators share it without importing each other.
"""

from __future__ import annotations

import numpy as np
import torch

from vistok.errors import require


def image_generators(seed: int, start: int, count: int, stream: int = 0) -> list[torch.Generator]:
    """CPU generators for images start..start+count-1, each seeded from (seed, index) through NumPy's SeedSequence.
    stream > 0 gives other, independent generators for the same images (seeded from (seed, index, stream)), e.g. for
    a second stage whose draws must not depend on how many the first one took."""
    require(seed >= 0, f"the seed must be non-negative, got {seed}")
    extra = [stream] if stream else []
    states = (np.random.SeedSequence([seed, i, *extra]).generate_state(2, np.uint32) for i in range(start, start + count))
    return [torch.Generator().manual_seed(int(s[0]) << 31 | int(s[1]) >> 1) for s in states]


__all__ = ["image_generators"]
