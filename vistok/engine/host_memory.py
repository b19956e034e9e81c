"""Keep freed host memory in the process instead of handing it back to the OS after every tensor.

PyTorch's CPU allocator does not cache: every CPU tensor is a `malloc` and every release a `free`. glibc serves a
block above its mmap threshold (128 KiB at first, rising to at most 32 MiB as larger blocks are freed) with a fresh
`mmap` and unmaps it on `free`, and it returns the top of the heap to the OS beyond its trim threshold. Either way
the next tensor of that size takes a page fault on every 4 KiB page it touches. A training step or a sampler forward
allocates the same activations again and again, so those faults are pure overhead: on the xAR benchmark rows (width 64,
batch 32, fp32) a compiled training step takes tens of thousands of them (`python benchmarks/bench_xar.py --rows t32
--compile --malloc-default` prints the count; the README has the measured times).

`keep_freed_memory()` raises both thresholds with glibc's `mallopt`, so freed blocks stay in the heap and the next
allocation of that size reuses pages that are already mapped. The process then keeps its peak host memory, as CUDA's
caching allocator keeps device memory. vistok's training loop and CLI call it for their process; set
`VISTOK_KEEP_FREED_MEMORY=0` to leave the C library's defaults alone. On a C library other than glibc (macOS, musl)
it does nothing; there, preloading jemalloc or tcmalloc has the same effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30  # blocks up to 1 GiB come from the heap; larger ones are still mapped and unmapped
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks (up to 1 GiB each) for reuse; once per process. Returns whether the
    setting is in force: False when `VISTOK_KEEP_FREED_MEMORY=0` or when the C library is not glibc."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("VISTOK_KEEP_FREED_MEMORY", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc: nothing to tune this way
                return False
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            # the trim threshold first: setting either fixes both (glibc stops adapting them)
            _applied = bool(mallopt(_M_TRIM_THRESHOLD, 2 * _LIMIT - 1)) and bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT))
    return _applied
