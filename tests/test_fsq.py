"""FSQ (Mentzer et al., arXiv 2309.15505) with FlexTok's levels: grid, bijection, straight-through gradients, fp32."""

from __future__ import annotations

import itertools

import pytest
import torch

from vistok.errors import VistokError
from vistok.modules.fsq import FSQ, QuantOut


def test_all_64000_ids_round_trip() -> None:
    fsq = FSQ()
    assert fsq.levels == (8, 8, 8, 5, 5, 5) and fsq.codebook_size == 64_000 and fsq.dim == 6
    ids = torch.arange(64_000)
    codes = fsq.indices_to_codes(ids)  # (64000, 6)
    assert codes.dtype == torch.float32
    assert torch.equal(fsq.codes_to_indices(codes), ids)
    assert torch.unique(codes, dim=0).shape[0] == 64_000  # a bijection onto the grid
    assert torch.equal(fsq.snap(codes), codes)  # every code is a grid point


def test_grid_values_per_level() -> None:
    codes = FSQ().indices_to_codes(torch.arange(64_000))
    eight = torch.arange(-4, 4) / 4  # -1, -0.75, ..., 0.75
    five = torch.arange(-2, 3) / 2  # -1, -0.5, 0, 0.5, 1
    for axis in range(3):
        assert torch.equal(torch.unique(codes[:, axis]), eight)
    for axis in range(3, 6):
        assert torch.equal(torch.unique(codes[:, axis]), five)


@pytest.mark.parametrize("levels", [(8, 8, 8, 5, 5, 5), (7, 4, 2), (3,), (8, 5, 5, 5)])
def test_forward_reaches_every_level_and_matches_indices(levels: tuple[int, ...]) -> None:
    fsq = FSQ(levels)
    z = torch.linspace(-8, 8, 4001)[:, None].expand(-1, len(levels))  # a sweep through the bound on every axis
    out = fsq(z)
    assert isinstance(out, QuantOut) and out.aux_loss.item() == 0.0
    for axis, level in enumerate(levels):
        assert torch.unique(out.codes[:, axis]).numel() == level
    assert torch.equal(fsq.codes_to_indices(out.codes), out.indices)
    assert torch.equal(fsq.indices_to_codes(out.indices), out.codes)
    ids = torch.arange(fsq.codebook_size)
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(ids)), ids)


def test_zero_maps_to_code_zero_and_even_offset() -> None:
    fsq = FSQ()
    assert torch.equal(fsq(torch.zeros(6)).codes, torch.zeros(6))
    big = fsq(torch.full((6,), 50.0)).codes
    small = fsq(torch.full((6,), -50.0)).codes
    assert torch.equal(big, torch.tensor([0.75, 0.75, 0.75, 1.0, 1.0, 1.0]))  # even levels stop at (L/2 - 1) / (L/2)
    assert torch.equal(small, -torch.ones(6))


def test_straight_through_gradient_is_the_bound_derivative() -> None:
    fsq = FSQ()
    z = torch.randn(16, 6, requires_grad=True)
    fsq(z).codes.sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2) / torch.tensor([4.0, 4, 4, 2, 2, 2])).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)
    assert (z.grad > 0).all()


def test_fp32_under_bf16_autocast() -> None:
    fsq = FSQ()
    z = torch.randn(256, 6) * 2
    ref = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fsq(z)  # inputs stay fp32: autocast must not round the tanh outputs in bf16
        out_bf16 = fsq(z.bfloat16())
    assert torch.equal(out.indices, ref.indices) and out.codes.dtype == torch.float32
    assert out_bf16.codes.dtype == torch.bfloat16  # codes come back in the input dtype, exactly on the grid
    assert torch.equal(fsq.indices_to_codes(out_bf16.indices).bfloat16(), out_bf16.codes)
    assert torch.equal(out_bf16.indices, fsq(z.bfloat16().float()).indices)


def test_snap_is_the_nearest_grid_point() -> None:
    fsq = FSQ()
    grid = fsq.indices_to_codes(torch.arange(64_000))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=gen) * 0.8
    snapped = fsq.snap(x)
    nearest = grid[torch.cdist(x, grid).argmin(dim=1)]  # brute force over the whole codebook
    torch.testing.assert_close(snapped, nearest, rtol=0, atol=0)
    assert torch.equal(fsq.snap(snapped), snapped)
    assert torch.equal(fsq.snap(torch.full((6,), 9.0)), torch.tensor([0.75, 0.75, 0.75, 1, 1, 1]))


def test_bad_inputs_fail_loudly() -> None:
    with pytest.raises(VistokError):
        FSQ((8, 1))
    with pytest.raises(VistokError):
        FSQ()(torch.zeros(3, 5))
    with pytest.raises(VistokError):
        FSQ().indices_to_codes(torch.zeros(3))


def test_codes_to_indices_is_mixed_radix() -> None:
    fsq = FSQ((3, 4))
    expected = [d0 + 3 * d1 for d1, d0 in itertools.product(range(4), range(3))]
    digits = torch.tensor([[d0, d1] for d1, d0 in itertools.product(range(4), range(3))], dtype=torch.float32)
    codes = (digits - torch.tensor([1.0, 2.0])) / torch.tensor([1.0, 2.0])
    assert fsq.codes_to_indices(codes).tolist() == expected
