"""Precision choices that are legal but a trap: bf16 (or fp16) autocast on a CPU.

On a CPU, bf16 autocast is many times slower than fp32 wherever its kernels are emulated or it adds a cast around
every op (one report: 4 tiny 256-px images took 821 s in bf16), and a CPU gains no memory bandwidth worth that. It stays
allowed (some CPUs with AVX512-BF16/AMX run it well: measure), but says so once per process, in training and sampling.
"""

from __future__ import annotations

import warnings

import torch

_warned: set[str] = set()


def warn_slow_precision(precision: str, device: torch.device | str) -> bool:
    """Warn (once per process and precision) when `precision` is bf16 or fp16 on a CPU device; returns whether this
    call warned."""
    if precision not in ("bf16", "fp16") or torch.device(device).type != "cpu" or precision in _warned:
        return False
    _warned.add(precision)
    warnings.warn(f"precision {precision} on a CPU is often many times slower than fp32 (4 tiny 256-px images took "
                  f"821 s in bf16); use fp32 on a CPU (train.precision=fp32, --precision fp32) unless you have "
                  f"measured {precision} faster", stacklevel=3)
    return True
