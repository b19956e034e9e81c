"""Forward + backward time of the selective scan against sequence length: vistok's chunked pure-PyTorch scan (custom
autograd backward) vs the naive sequential recurrence (a Python loop over time under autograd), as a table.

    python benchmarks/bench_mamba.py [--lengths 1024,2048,4096,8192,16384] [--batch 2] [--d-inner 16] [--d-state 16]
                               [--repeats 3] [--threads N] [--naive-max 16384]

Shapes are those of one Mamba direction: u, delta (B, L, d_inner); B, C (B, L, d_state). Time is the best of
`--repeats` runs (the first run warms up). On a CPU shared with another busy process, pass `--threads 1`: two
OpenMP threads then wait on each other at every large op and the timings mostly measure that contention.
Gu & Dao, "Mamba", arXiv 2312.00752 (2023).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from vistok.modules.mamba import selective_scan_ref, selective_scan_torch


def time_fwd_bwd(scan: Callable, length: int, batch: int, d_inner: int, d_state: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    u, delta = (torch.randn(batch, length, d_inner, generator=g, requires_grad=True) for _ in range(2))
    B, C = (torch.randn(batch, length, d_state, generator=g, requires_grad=True) for _ in range(2))
    A = -torch.rand(d_inner, d_state, generator=g).add_(0.5).requires_grad_()
    D, bias = torch.ones(d_inner, requires_grad=True), torch.zeros(d_inner, requires_grad=True)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        scan(u, delta, A, B, C, D, bias, True).square().mean().backward()
        best = min(best, time.perf_counter() - start)
        for t in (u, delta, A, B, C, D, bias):
            t.grad = None
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--d-inner", type=int, default=16)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--naive-max", type=int, default=16384, help="skip the naive recurrence above this length")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"selective scan forward+backward, batch {args.batch}, d_inner {args.d_inner}, d_state {args.d_state}, "
          f"fp32, CPU x{torch.get_num_threads()} threads, best of {args.repeats}")
    print("| length | chunked scan (s) | per 1k tokens (ms) | naive recurrence (s) | naive / chunked |")
    print("|---:|---:|---:|---:|---:|")
    for length in lengths:
        fast = time_fwd_bwd(selective_scan_torch, length, args.batch, args.d_inner, args.d_state, args.repeats)
        if length <= args.naive_max:
            naive = time_fwd_bwd(selective_scan_ref, length, args.batch, args.d_inner, args.d_state,
                                 max(1, args.repeats - 2))
            tail = f"{naive:.3f} | {naive / fast:.1f}x"
        else:
            tail = "- | -"
        print(f"| {length} | {fast:.3f} | {1000 * fast / length * 1000:.2f} | {tail} |", flush=True)


if __name__ == "__main__":
    main()
