"""The pure-PyTorch selective scan runs in fp32 under autocast (its einsums are matmuls that autocast would run in
bf16)."""

from __future__ import annotations

import torch

from vistok.modules import mamba


def _inputs(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, length, d, n = 2, 40, 8, 4
    return [torch.randn(b, length, d, generator=g), torch.randn(b, length, d, generator=g) * 0.5,
            -torch.rand(d, n, generator=g) - 0.5, torch.randn(b, length, n, generator=g),
            torch.randn(b, length, n, generator=g), torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.1]


def test_scan_is_fp32_under_bf16_autocast() -> None:
    ref = [x.clone().requires_grad_() for x in _inputs()]
    y_ref = mamba.selective_scan_torch(*ref, delta_softplus=True)
    y_ref.square().sum().backward()
    args = [x.clone().requires_grad_() for x in _inputs()]
    with torch.autocast("cpu", torch.bfloat16):
        y = mamba.selective_scan_torch(*args, delta_softplus=True)
        y_naive = mamba.selective_scan_ref(*_inputs(), delta_softplus=True)
        y.square().sum().backward()  # backward inside the autocast region too
    assert y.dtype == y_naive.dtype == torch.float32
    # bf16 einsums are off by ~3e-2 here; fp32 agrees to rounding
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_naive, y_ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(args, ref, strict=True):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-5)
