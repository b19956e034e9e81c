"""Timing helpers shared by the benchmarks/bench_*.py scripts (importable because a script's folder is on sys.path)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np
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


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and spread of a metric over seeds: half the range for two values, the sample standard deviation for
    more, 0 for one (the README's "mean +- spread")."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float((v.max() - v.min()) / 2 if len(v) == 2 else v.std(ddof=1))


@functools.cache
def fid_net_fingerprint() -> str:
    """Fingerprint of the shipped `cifar10-net` weights (hashed once per process), recorded with every FID an
    ablation writes so that scores from an older network are recognised and re-scored."""
    from vistok.metrics import fid

    return fid.extractor_fingerprint("cifar10-net", None)
