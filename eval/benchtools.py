"""Timing helpers shared by the eval/bench_*.py scripts (importable because a script's folder is on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# --- model FLOPs and peak FLOP/s for MFU (local stand-ins until vistok.engine.flops is on main) ---
PEAK_TFLOPS = {  # dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name()
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0, "V100": 125.0,
}


def model_flops(fn: Callable[[], object], device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """FLOPs of one call of `fn` (e.g. forward + backward), counted once with torch.utils.flop_counter."""
    try:
        from vistok.engine.flops import model_flops as shared  # the engine's version once it exists
    except ImportError:
        shared = None
    if shared is not None:
        try:
            return float(shared(fn))
        except TypeError:
            pass
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    sync(device)
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Peak FLOP/s of `device`: $VISTOK_PEAK_TFLOPS if set, else a known GPU's dense bf16 peak (fp32 without tensor
    cores is not listed), else None."""
    import os

    if os.environ.get("VISTOK_PEAK_TFLOPS"):
        return float(os.environ["VISTOK_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)
