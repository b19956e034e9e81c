"""einops inside `torch.compile`: its reshapes enter the graph as single ops instead of being traced line by line.

einops registers `rearrange`, `repeat` and `reduce` with dynamo (`allow_in_graph`) only for torch < 2.8; from 2.8 dynamo
traces einops' Python (pattern parsing, recipe caches) at every call site of every graph, which is most of the time a
vistok model takes to compile: three compiled-xAR tests took 54.2 s without the registration and 22.2 s with it, back
to back on a 2-core CPU (`python -m pytest -q tests/test_perf.py -k "several_batch_sizes or compiles_once or
compiled_cpu_attention"`). These ops only reshape, repeat or reduce tensors, so AOTAutograd traces them with fake
tensors like any other op, and the graphs (counts and results) are the same: the compiled-equals-eager tests in
tests/test_perf.py check both.
"""

from __future__ import annotations

import functools

import torch
from einops import rearrange, reduce, repeat


@functools.cache
def einops_as_graph_ops() -> None:
    """Register einops' tensor ops with torch.compile as single graph ops (once per process; every vistok compile
    entry point calls it)."""
    for op in (rearrange, repeat, reduce):
        torch.compiler.allow_in_graph(op)
