"""Deterministic kill points for the kill -9 tests: `VISTOK_KILL_AT` names where a training process SIGKILLs itself.

A test that sleeps and then kills hits a different moment on every machine; a named point is hit at the same place
every time, so the tests that prove exact resume are deterministic and fast. Points (comma-separated; `@R` after one
limits it to rank R):

    step:N       after step N is taken (and checkpointed, when due)
    ckpt:N:K     inside the write of step N's checkpoint, after its first K bytes reached the file
    export       inside the final export: its files written to the temporary folder, not yet in place

Unset, which is always the case outside tests, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from typing import BinaryIO

ENV = "VISTOK_KILL_AT"


def _points() -> list[list[str]]:
    """This rank's points, each split at ':' (e.g. ['ckpt', '4', '4096'])."""
    rank = os.environ.get("RANK", "0")
    points = []
    for item in filter(None, (p.strip() for p in os.environ.get(ENV, "").split(","))):
        point, _, only = item.partition("@")
        if not only or only == rank:
            points.append(point.split(":"))
    return points


def die() -> None:
    """SIGKILL this process: no handler, no `finally`, no flush runs (as an OOM killer or a lost node)."""
    os.kill(os.getpid(), signal.SIGKILL)


def kill_point(name: str, *args: int) -> None:
    """Die here when `VISTOK_KILL_AT` names this point with these arguments (e.g. kill_point("step", 4))."""
    if ENV in os.environ and [name, *map(str, args)] in _points():
        die()


class _KillAfter:
    """A write-only file wrapper that dies once `limit` bytes have reached the file (flushed, so they are there)."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f, self.limit, self.written = f, limit, 0

    def write(self, data: bytes) -> int:
        n = len(data)
        if self.written + n >= self.limit:
            self.f.write(memoryview(data)[: self.limit - self.written])
            self.f.flush()
            os.fsync(self.f.fileno())
            die()
        self.written += n
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def kill_in_write(f: BinaryIO, step: int) -> BinaryIO:
    """`f`, or a wrapper of it that dies inside step `step`'s checkpoint write where a `ckpt:STEP:BYTES` point says."""
    if ENV not in os.environ:
        return f
    for point in _points():
        if len(point) == 3 and point[0] == "ckpt" and point[1] == str(step):
            return _KillAfter(f, int(point[2]))  # type: ignore[return-value]
    return f


__all__ = ["ENV", "die", "kill_in_write", "kill_point"]
