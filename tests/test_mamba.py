"""vistok.modules.mamba: mamba_ssm-compatible parameters, the chunked scan against the sequential recurrence, and the
bidirectional / tri-directional variants against their definitions."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from vistok.errors import VistokError
from vistok.modules import mamba as M
from vistok.modules.mamba import Mamba, linear_scan, selective_scan_ref, selective_scan_torch, slice_order

pytestmark = pytest.mark.filterwarnings("ignore:vistok Mamba")  # the expected one-time "which scan path" note

# mamba_ssm.modules.mamba_simple.Mamba(d_model=16) state dict, written out from the spec (d_inner 32, dt_rank 1, N 16)
MAMBA_SSM_D16 = {
    "A_log": (32, 16), "D": (32,), "in_proj.weight": (64, 16), "conv1d.weight": (32, 1, 4), "conv1d.bias": (32,),
    "x_proj.weight": (33, 32), "dt_proj.weight": (32, 1), "dt_proj.bias": (32,), "out_proj.weight": (16, 32),
}


def spec_shapes(m: int, n: int, d_conv: int, expand: float, bimamba: str, bias: bool = False) -> dict[str, tuple]:
    """The spec's table: di = expand m, r = ceil(m / 16); per direction conv1d/x_proj/dt_proj/A_log/D (+ _b, _s)."""
    di, r = int(expand * m), math.ceil(m / 16)
    shapes = {"in_proj.weight": (2 * di, m), "out_proj.weight": (m, di)}
    if bias:
        shapes |= {"in_proj.bias": (2 * di,), "out_proj.bias": (m,)}
    for sfx in {"none": [""], "v2": ["", "_b"], "v3": ["", "_b", "_s"]}[bimamba]:
        shapes |= {f"conv1d{sfx}.weight": (di, 1, d_conv), f"conv1d{sfx}.bias": (di,),
                   f"x_proj{sfx}.weight": (r + 2 * n, di), f"dt_proj{sfx}.weight": (di, r), f"dt_proj{sfx}.bias": (di,),
                   f"A{sfx}_log": (di, n), f"D{sfx}": (di,)}
    return shapes




def shapes_of(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_state_dict_equals_mamba_ssm_default() -> None:
    assert shapes_of(Mamba(16)) == MAMBA_SSM_D16


@pytest.mark.parametrize("bimamba", ["none", "v2", "v3"])
@pytest.mark.parametrize("m,n,d_conv,expand,bias", [(40, 8, 3, 1.5, False), (64, 16, 4, 2, True), (8, 4, 2, 1, False)])
def test_state_dict_keys_and_shapes(bimamba: str, m: int, n: int, d_conv: int, expand: float, bias: bool) -> None:
    mod = Mamba(m, d_state=n, d_conv=d_conv, expand=expand, bias=bias, bimamba_type=bimamba)
    assert shapes_of(mod) == spec_shapes(m, n, d_conv, expand, bimamba, bias)


def test_init_follows_mamba_ssm() -> None:
    torch.manual_seed(0)
    mod = Mamba(32, d_state=8, dt_min=1e-3, dt_max=1e-1)
    assert torch.equal(mod.A_log, torch.log(torch.arange(1, 9.0)).expand(64, 8))
    assert torch.equal(mod.D, torch.ones(64))
    dt = torch.nn.functional.softplus(mod.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    assert mod.dt_proj.weight.abs().max() <= mod.dt_rank**-0.5


@pytest.mark.parametrize("length,chunk", [(1, 4), (7, 4), (64, 8), (301, 8), (1000, 16)])
@pytest.mark.parametrize("reverse", [False, True])
def test_linear_scan_matches_loop(length: int, chunk: int, reverse: bool) -> None:
    g = torch.Generator().manual_seed(length)
    a = torch.rand(2, 3, length, 4, generator=g, dtype=torch.float64) * 1.2
    x = torch.randn(2, 3, length, 4, generator=g, dtype=torch.float64)
    h, expected = torch.zeros(2, 3, 4, dtype=torch.float64), torch.empty_like(x)
    for t in (reversed(range(length)) if reverse else range(length)):
        h = a[..., t, :] * h + x[..., t, :]
        expected[..., t, :] = h
    torch.testing.assert_close(linear_scan(a, x, reverse, chunk), expected, rtol=1e-12, atol=1e-12)


def _scan_inputs(length: int, d: int = 3, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": g}
    u, delta = torch.randn(2, length, d, **f64), torch.randn(2, length, d, **f64)
    A = -torch.rand(d, n, **f64) - 0.1
    B, C = torch.randn(2, length, n, **f64), torch.randn(2, length, n, **f64)
    D, bias = torch.randn(d, **f64), torch.randn(d, **f64)
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]


@pytest.mark.parametrize("block_elems", [1, 1 << 19])  # many blocks (states carried between them) or one
@pytest.mark.parametrize("variant", ["softplus+D+bias", "plain"])
def test_selective_scan_matches_sequential_recurrence(monkeypatch, block_elems: int, variant: str) -> None:
    monkeypatch.setattr(M, "SCAN_BLOCK_ELEMS", block_elems)
    u, delta, A, B, C, D, bias = _scan_inputs(203)
    if variant == "plain":  # no softplus: keep delta > 0 so the recurrence stays bounded
        args = (u, delta.detach().abs().requires_grad_(), A, B, C, None, None, False)
    else:
        args = (u, delta, A, B, C, D, bias, True)
    inputs = [t for t in args[:7] if t is not None]
    y, y_ref = selective_scan_torch(*args), selective_scan_ref(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-8)
    w = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((y * w).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), inputs)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert ((g - g_ref).norm() / g_ref.norm()).item() < 1e-5


def test_selective_scan_float32_close_to_float64() -> None:
    args = _scan_inputs(500, seed=3)
    y32 = selective_scan_torch(*(t.detach().float() for t in args), delta_softplus=True)
    y64 = selective_scan_ref(*(t.detach() for t in args), delta_softplus=True)
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)


def test_slice_order_interleaves_contiguous_slices() -> None:
    assert slice_order(10, 5) == [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    assert slice_order(6, 2) == [0, 3, 1, 4, 2, 5]
    x = torch.randn(2, 12, 3)
    assert torch.equal(M.from_order(M.to_order(x, "_s", 4), "_s", 4), x)


def _branch(full: Mamba, sfx: str) -> Mamba:
    """A plain forward-only Mamba holding `full`'s shared projections and its `sfx` direction's parameters."""
    one = Mamba(full.d_model, full.d_state, full.d_conv, full.expand).double()
    state = {k: v for k, v in full.state_dict().items() if k.startswith(("in_proj", "out_proj"))}
    for name in ("conv1d", "x_proj", "dt_proj"):
        state |= {f"{name}.{p}": v for p, v in getattr(full, f"{name}{sfx}").state_dict().items()}
    state |= {"A_log": getattr(full, f"A{sfx}_log"), "D": getattr(full, f"D{sfx}")}
    one.load_state_dict(state)
    return one


@pytest.mark.parametrize("bimamba", ["v2", "v3"])
def test_multi_directional_is_sum_of_reordered_scans(monkeypatch, bimamba: str) -> None:
    """v3(u) = M_f(u) + flip(M_b(flip(u))) + deinterleave(M_s(interleave(u))), each M a plain Mamba with that
    direction's parameters (out_proj is linear without bias, so summing before or after it is the same)."""
    monkeypatch.setattr(M, "selective_scan", lambda *a, use_fast_path=True, **k: selective_scan_ref(*a, **k))
    torch.manual_seed(0)
    full = Mamba(8, d_state=4, bimamba_type=bimamba, nslices=3).double()
    u = torch.randn(2, 12, 8, dtype=torch.float64)
    perm = torch.tensor(slice_order(12, 3))
    expected = _branch(full, "")(u) + _branch(full, "_b")(u.flip(1)).flip(1)
    if bimamba == "v3":
        scanned = _branch(full, "_s")(u[:, perm])
        expected = expected + torch.empty_like(scanned).index_copy_(1, perm, scanned)
    torch.testing.assert_close(full(u), expected, rtol=1e-10, atol=1e-12)


def test_forward_direction_is_causal_and_pure_path_matches_reference(monkeypatch) -> None:
    torch.manual_seed(0)
    mod = Mamba(8, d_state=4).double()
    u = torch.randn(1, 40, 8, dtype=torch.float64)
    v = u.clone()
    v[:, 25:] += 1.0
    out_u, out_v = mod(u), mod(v)
    torch.testing.assert_close(out_u[:, :25], out_v[:, :25])
    assert not torch.allclose(out_u[:, 25:], out_v[:, 25:])
    monkeypatch.setattr(M, "selective_scan", lambda *a, use_fast_path=True, **k: selective_scan_ref(*a, **k))
    torch.testing.assert_close(mod(u), out_u, rtol=1e-10, atol=1e-12)


def test_tri_directional_needs_divisible_length() -> None:
    mod = Mamba(8, d_state=4, bimamba_type="v3", nslices=5)
    with pytest.raises(VistokError, match="divisible by nslices=5"):
        mod(torch.randn(1, 12, 8))
    with pytest.raises(VistokError, match="bimamba_type"):
        Mamba(8, bimamba_type="v4")


def test_warns_once_which_path_runs(monkeypatch) -> None:
    monkeypatch.setattr(M, "_warned", set())
    mod = Mamba(8, d_state=4, bimamba_type="v2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mod(torch.randn(1, 6, 8))
        mod(torch.randn(1, 6, 8))
    messages = [str(w.message) for w in caught if "vistok Mamba" in str(w.message)]
    assert len(messages) == 1 and "pure-PyTorch" in messages[0]


def test_backward_reaches_every_parameter_and_builds_on_meta() -> None:
    mod = Mamba(8, d_state=4, bimamba_type="v3", nslices=2)
    mod(torch.randn(2, 10, 8)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in mod.parameters())
    with torch.device("meta"):
        meta = Mamba(256, bimamba_type="v3")
    assert (sum(p.numel() for p in meta.parameters())
            == sum(math.prod(s) for s in spec_shapes(256, 16, 4, 2, "v3").values()))
