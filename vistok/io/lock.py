"""One writer per output: a lock file that names its holder (pid, host, start time, command) as JSON.

Two trainings on one run folder, or two `vistok sample` runs into one `--out`, would each report success while the
files interleave (metrics logged twice, a samples.npz mixing two seeds). `WriterLock` takes an exclusive
`fcntl.flock` on the lock file: the kernel drops it when its holder ends, however it ends (a SIGKILLed holder is
seen as gone, with no guess from a pid), and the JSON beside it names the holder in the one-line refusal a second
writer gets. A lock left by a process that is gone is taken over with a note on stderr. The ranks of one torchrun
job share the lock: a rank that finds it held by its own job (same TORCHELASTIC_RUN_ID and rendezvous address)
goes on. A process may take a lock it holds again (a training resumed in the same process).

A lock sits beside what it guards (`runs/.NAME.lock` for the run folder `runs/NAME`, `.seg.h5.lock` for `seg.h5`):
the output's own listing stays as it was, a command that fails before writing leaves no folder behind, and the
lock's place does not depend on whether the output exists yet. Only an existing folder whose parent is read-only
(`--out .` where `..` is not writable) keeps its lock inside (`.vistok-writer.lock`). Where `fcntl` is missing
(Windows) no lock is taken.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any

from vistok.errors import VistokError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here
    fcntl = None  # type: ignore[assignment]

INSIDE = ".vistok-writer.lock"
JOB_WAIT_S = 10.0  # how long a rank waits for the lock's JSON when the lock is held but its holder not yet written
_HELD: dict[Path, WriterLock] = {}  # locks this process holds, by lock path (re-entrant)


def lock_path(target: str | Path, inside: bool = False) -> Path:
    """Where the lock of `target` lives: beside it, or inside it (a run folder, or a folder with a read-only parent)."""
    target = Path(target).expanduser().resolve()
    if inside or (target.is_dir() and not os.access(target.parent, os.W_OK)):
        return target / INSIDE
    return target.parent / f".{target.name}.lock"


def _job() -> str | None:
    """The torchrun job this process belongs to (None for a plain process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return (f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}@{os.environ.get('MASTER_ADDR', '')}:"
            f"{os.environ.get('MASTER_PORT', '')}")


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "job": _job(), "command": " ".join(sys.argv)[:300]}


def _read(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, 1 << 16, 0) or b"null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (not yet named)"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


class WriterLock:
    """`with WriterLock(out, what="--out"): ...` holds the lock of `out` for the block; a second writer
    gets one VistokError naming the holder. `acquire()` / `release()` for a lock held longer (see `hold_for`)."""

    def __init__(self, target: str | Path, what: str = "--out", inside: bool = False) -> None:
        self.target, self.what = Path(target), what
        self.path = lock_path(target, inside)
        self._fd: int | None = None
        self._count = 0  # acquisitions by this process

    def acquire(self) -> WriterLock:
        if fcntl is None:
            return self
        held = _HELD.get(self.path)
        if held is not None:  # this process already writes here
            held._count += 1
            return held
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VistokError(f"{self.what} {self.target}: cannot create {self.path.parent} ({err.strerror}); choose "
                              "another path") from None
        for _ in range(3):  # the file may be unlinked by its releasing holder between our open and our flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as err:
                raise VistokError(f"{self.what} {self.target}: cannot create the lock file {self.path} "
                                  f"({err.strerror}); choose a writable path") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._refuse_or_share(fd)
                os.close(fd)
                return self  # shared with the holder, our own torchrun job
            if not self._same_file(fd):
                os.close(fd)
                continue
            self._take(fd)
            return self
        raise VistokError(f"{self.what} {self.target}: the lock {self.path} keeps changing hands; try again")

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def _refuse_or_share(self, fd: int) -> None:
        """The lock is held: go on when our own torchrun job holds it, else refuse naming the holder."""
        job, info = _job(), _read(fd)
        deadline = time.monotonic() + (JOB_WAIT_S if job else 0.0)
        while job and not info and time.monotonic() < deadline:  # a rank of our job has the lock, not yet its JSON
            time.sleep(0.05)
            info = _read(fd)
        if job is not None and info and info.get("job") == job:
            return
        os.close(fd)
        raise VistokError(f"{self.what} {self.target} is being written by {_describe(info)} (lock {self.path}); wait "
                          f"for it to finish or choose another {self.what}")

    def _take(self, fd: int) -> None:
        old = _read(fd)
        if old and (old.get("pid"), old.get("host")) != (os.getpid(), socket.gethostname()):
            print(f"vistok: note: taking over the lock {self.path} of {_describe(old)}, which is no longer running",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        os.fsync(fd)
        self._fd, self._count = fd, 1
        _HELD[self.path] = self

    def release(self) -> None:
        held = _HELD.get(self.path)
        if held is None:
            return
        held._count -= 1
        if held._count > 0:
            return
        del _HELD[self.path]
        if held._fd is not None:
            try:
                if held._same_file(held._fd):
                    self.path.unlink()  # while still locked: a newcomer then finds no file or a new one
            except OSError:
                pass
            os.close(held._fd)  # drops the flock
            held._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_for(owner: object, target: str | Path, what: str, inside: bool = False) -> WriterLock:
    """Take the lock of `target` for as long as `owner` lives (a training run's Trainer: the whole script), released
    when it is collected or the process exits (or, on a kill, by the kernel)."""
    lock = WriterLock(target, what, inside).acquire()
    weakref.finalize(owner, lock.release)
    return lock


__all__ = ["INSIDE", "WriterLock", "hold_for", "lock_path"]
