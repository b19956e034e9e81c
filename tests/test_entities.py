"""Entity partitions (xAR, arXiv 2502.20388 §3.2.1): exact inverses, layouts, positions and block-causal masks."""

from __future__ import annotations

import pytest
import torch

from vistok.errors import VistokError
from vistok.generators.entities import KINDS, Partition, block_causal_mask, clean_context_mask

GRIDS = [(4, 4), (8, 8), (6, 6), (4, 6), (6, 4), (2, 8)]
CASES = [  # (kind, size, grid) for every kind on every grid where it is defined
    *[("token", 1, g) for g in GRIDS],
    *[("image", 1, g) for g in GRIDS],
    *[("cell", 2, g) for g in GRIDS],
    ("cell", 4, (8, 8)), ("cell", 3, (6, 6)), ("cell", 1, (4, 6)), ("cell", 8, (8, 8)),
    *[("subsample", 2, g) for g in GRIDS],
    ("subsample", 4, (8, 8)), ("subsample", 3, (6, 6)),
    ("scale", 1, (4, 4)), ("scale", 2, (4, 4)), ("scale", 3, (4, 4)), ("scale", 4, (8, 8)),
    ("scale", 2, (6, 6)), ("scale", 2, (4, 6)), ("scale", 3, (6, 4)), ("scale", 2, (5, 7)),
]


def grid_values(b: int, c: int, h: int, w: int) -> torch.Tensor:
    """Distinct values everywhere, so any misplaced token changes the result."""
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w) + torch.randn(b, c, h, w)


@pytest.mark.parametrize("kind,size,grid", CASES, ids=[f"{k}{s}-{g[0]}x{g[1]}" for k, s, g in CASES])
def test_split_merge_is_exact(kind: str, size: int, grid: tuple[int, int]) -> None:
    part = Partition(kind, grid, size)
    x = grid_values(2, 3, *grid)
    seq = part.split(x)
    assert seq.shape == (2, part.num_tokens, 3)
    assert sum(part.lengths) == part.num_tokens and len(part.lengths) == part.num_entities
    assert torch.equal(part.merge(seq), x)  # bit-exact inverse
    if kind == "scale":
        h, w = grid
        assert part.scales[-1] == grid and part.num_tokens == sum(a * b for a, b in part.scales)
        assert torch.equal(seq[:, -h * w:], part.split(part.merge(seq))[:, -h * w:])
        assert list(part.scales) == sorted(part.scales) and len(set(part.scales)) == len(part.scales)  # coarse to fine
    else:
        assert part.num_tokens == grid[0] * grid[1]
        assert torch.equal(part.split(part.merge(seq)), seq)  # a permutation: both ways exact
        assert torch.equal(seq.flatten().sort().values, x.permute(0, 2, 3, 1).flatten().sort().values)


def test_layouts_on_4x4() -> None:
    """Token indices (raster numbering of a 4x4 grid) in the entity order of each kind."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    order = lambda kind, size: Partition(kind, (4, 4), size).split(x)[0, :, 0].long().tolist()  # noqa: E731
    assert order("token", 1) == list(range(16))
    assert order("image", 1) == list(range(16))
    # 2x2 cells: top-left, top-right, bottom-left, bottom-right, raster inside each cell (xAR's default layout)
    assert order("cell", 2) == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    # stride-2 subsampling: each entity a non-local, strided 2x2 sub-grid
    assert order("subsample", 2) == [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]
    assert Partition("cell", (4, 4), 2).lengths == (4, 4, 4, 4)
    assert Partition("token", (4, 4)).lengths == (1,) * 16
    assert Partition("image", (4, 4)).lengths == (16,)


def test_scale_entities_are_downsampled_copies() -> None:
    part = Partition("scale", (4, 4), 3)
    assert part.scales == ((1, 1), (2, 2), (4, 4)) and part.lengths == (1, 4, 16)
    x = torch.randn(2, 3, 4, 4)
    seq = part.split(x)
    torch.testing.assert_close(seq[:, 0], x.mean(dim=(2, 3)))  # 1x1 scale: the mean
    torch.testing.assert_close(seq[:, 1:5],
                               x.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2)).flatten(2).transpose(1, 2))
    assert torch.equal(seq[:, 5:], x.flatten(2).transpose(1, 2))  # the finest scale is the grid itself
    assert Partition("scale", (6, 6), 2).scales == ((3, 3), (6, 6))


def test_positions_follow_entity_order() -> None:
    pos = Partition("cell", (4, 4), 2).positions()
    assert pos.shape == (16, 2)
    assert pos[:8].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    sub = Partition("subsample", (4, 4), 2).positions()
    assert sub[4:8].tolist() == [[0, 1], [0, 3], [2, 1], [2, 3]]
    scale = Partition("scale", (4, 4), 3).positions()
    assert scale[0].tolist() == [1.5, 1.5]  # the 1x1 scale sits at the grid centre
    assert scale[1:5].tolist() == [[0.5, 0.5], [0.5, 2.5], [2.5, 0.5], [2.5, 2.5]]
    assert scale[5:].tolist() == Partition("token", (4, 4)).positions().tolist()


def test_block_causal_mask() -> None:
    mask = block_causal_mask((2, 1, 3))
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    # 16x16 grid with 8x8 cells: rows of cell i see 64 * (i + 1) tokens (the official mask's visible counts)
    big = Partition("cell", (16, 16), 8).mask()
    assert big.sum(1).reshape(4, 64).unique(dim=1).flatten().tolist() == [64, 128, 192, 256]
    for kind, size in [("token", 1), ("cell", 2), ("subsample", 2), ("scale", 3), ("image", 1)]:
        part = Partition(kind, (4, 4), size)
        ids = part.entity_ids()
        m = part.mask()
        for i in range(part.num_tokens):
            for j in range(part.num_tokens):
                assert bool(m[i, j]) == bool(ids[j] <= ids[i])


def test_clean_context_mask() -> None:
    m = clean_context_mask((1, 2))  # [clean c0 c1 c1 | noisy n0 n1 n1]
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],  # noisy entity 0: no context, itself only
        [1, 0, 0, 0, 1, 1],  # noisy entity 1: clean entity 0 and itself
        [1, 0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(m, expected)


@pytest.mark.parametrize("kind,size,grid", [
    ("cell", 3, (4, 4)), ("cell", 2, (4, 5)), ("subsample", 3, (4, 4)), ("cell", 0, (4, 4)),
    ("scale", 4, (4, 4)), ("scale", 0, (4, 4)), ("patch", 1, (4, 4)), ("token", 1, (0, 4)),
])
def test_invalid_partitions_raise(kind: str, size: int, grid: tuple[int, int]) -> None:
    with pytest.raises(VistokError):
        Partition(kind, grid, size)


def test_wrong_shapes_raise() -> None:
    part = Partition("cell", (4, 4), 2)
    with pytest.raises(VistokError, match="token grid"):
        part.split(torch.zeros(1, 3, 4, 6))
    with pytest.raises(VistokError, match="entity sequence"):
        part.merge(torch.zeros(1, 15, 3))
    assert set(KINDS) == {"token", "cell", "subsample", "scale", "image"}
