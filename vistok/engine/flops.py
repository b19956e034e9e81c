"""Model FLOPs and peak FLOP/s, for throughput and MFU (model FLOPs utilisation, Chowdhery et al., "PaLM: Scaling
Language Modeling with Pathways", arXiv 2204.02311, appendix B).

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` records the matrix multiplications,
convolutions and attention kernels that actually run (forward and, when the counted function calls it, backward), so
the same count serves every model family. MFU = model FLOPs per second / the device's peak; the peak is the user's
`train.peak_tflops`, else a dense bf16 / TF32 / fp32 figure from the vendor's data sheet for a few known GPUs, else
unknown (MFU is then reported as n/a, e.g. on CPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

# dense (no sparsity) peak TFLOP/s per GPU from NVIDIA's data sheets: (name fragment, bf16, tf32, fp32);
# the first fragment that occurs in torch.cuda.get_device_name() wins, so specific names come first
KNOWN_GPUS: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 989.4, 494.7, 66.9),
    ("H100 PCIe", 756.0, 378.0, 51.2),
    ("H100", 989.4, 494.7, 66.9),  # SXM
    ("A100", 312.0, 156.0, 19.5),
)


class FlopCount:
    """Filled in when its `count_flops()` block exits: `total` FLOPs of everything that ran inside."""

    total: int | None = None


@contextlib.contextmanager
def count_flops() -> Iterator[FlopCount]:
    """Count the FLOPs of everything run inside the block (forward, backward, several micro-batches)."""
    result = FlopCount()
    mode = FlopCounterMode(display=False)
    with mode:
        yield result
    result.total = int(mode.get_total_flops())


def model_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` (e.g. `lambda: model(x).loss.backward()` for a training step's forward + backward)."""
    with count_flops() as result:
        fn()
    return result.total


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
               override: float | None = None) -> float | None:
    """Peak FLOP/s of one `device` for matmuls in `dtype`: `override` (in TFLOP/s) when set, the data-sheet figure
    for a known GPU, else None (unknown, e.g. a CPU: report MFU as n/a)."""
    if override:
        return float(override) * 1e12
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, bf16, tf32, fp32 in KNOWN_GPUS:
        if fragment in name:
            if dtype in (torch.bfloat16, torch.float16):
                return bf16 * 1e12
            return (tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32) * 1e12
    return None


def mfu(flops_per_step: int | None, seconds_per_step: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation of one device: achieved FLOP/s over the peak (None when either is unknown)."""
    if not flops_per_step or not peak or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


__all__ = ["KNOWN_GPUS", "FlopCount", "count_flops", "mfu", "model_flops", "peak_flops"]
