"""Atomic writes of user-visible results: a temporary file in the same folder, flushed, renamed, folder fsynced.

Every result vistok writes (checkpoints, exports, token files, FID statistics, `samples.npz`, segmentations) goes
through `atomic_write` (one file) or `atomic_folder` (several files that must appear together), so a crash, a SIGKILL
or a full disk at any moment leaves either the old result or the new one, never a torn file. Temporary files are named
`.NAME.h-HOST.p-PID.*.tmp` after their writer; a later write of the same target removes the ones whose writer is gone
(a dead process on this host, or a day's silence from another host), never those of a writer still at work: two
processes that build the same cache at once must not delete each other's temporary file.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from vistok.errors import VistokError

TMP_SUFFIX = ".tmp"
FOREIGN_STALE_S = 24 * 3600  # another host's temporary file counts as abandoned after a day without a change
_RANDOM = r"[a-z0-9_]+"  # tempfile's random part: no dots, so `.out.bin.*` never reads as a temporary file of `out`


def fsync_dir(folder: str | Path) -> None:
    """Make a rename inside `folder` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64]


def _temp_prefix(path: Path) -> str:
    """`.NAME.h-HOST.p-PID.`: the writer of a temporary file can be told from its name."""
    return f".{path.name}.h-{_host()}.p-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _abandoned(tmp: Path, name: str) -> bool:
    """Whether `tmp` is a temporary file of target `name` whose writer is gone. Temporary files without an owner
    (older vistok versions) count as abandoned; files that are not temporary files of `name` never do."""
    found = re.fullmatch(rf"\.{re.escape(name)}\.(?:h-(?P<host>[A-Za-z0-9-]*)\.p-(?P<pid>[0-9]+)\.)?{_RANDOM}"
                         rf"{re.escape(TMP_SUFFIX)}", tmp.name)
    if found is None:
        return False
    if found["pid"] is None:
        return True
    if found["host"] == _host() and os.name != "nt":  # on Windows os.kill(pid, 0) would end the process: age rule
        return not _pid_alive(int(found["pid"]))
    return time.time() - tmp.stat().st_mtime > FOREIGN_STALE_S


def clean_stale_temps(path: str | Path) -> None:
    """Remove `.NAME.*.tmp` leftovers of `path` whose writer was killed; a live writer's temporary file is kept."""
    path = Path(path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if not _abandoned(stale, path.name):
                    continue
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()


def _umask_mode(folder: bool = False) -> int:
    """The mode an ordinary file (0666) or folder (0777) gets under the user's umask: mkstemp and mkdtemp make
    0600 / 0700 ones, which would hide every result from the user's group."""
    umask = os.umask(0o022)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def _explain(err: OSError, path: Path) -> VistokError:
    return VistokError(f"cannot write {path}: {err.strerror or err} (free space or choose another output path)")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through `write(f)` on a temporary file that replaces `path` only once complete and on disk.

    An OSError (full disk, no permission) becomes one-line `VistokError`; the old file, if any, is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise _explain(err, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _umask_mode())  # mkstemp makes 0600 files; give an ordinary file's permissions
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _explain(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path` as a whole (several files appear together).

    An existing `path` is moved aside first and removed only after the new folder is in place, so at any moment one
    complete version exists (a crash between the two renames leaves the old one as `.NAME.*.tmp`, which the next
    write cleans up only after its own rename succeeded)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
        os.chmod(tmp, _umask_mode(folder=True))
    except OSError as err:
        raise _explain(err, path) from None
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(tmp)
        old = None
        if path.exists():
            if not path.is_dir():
                raise VistokError(f"{path} exists and is not a folder; choose another output path")
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent))
            old.rmdir()
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        clean_stale_temps(path)  # only now: a killed writer's moved-aside folder may have been the one complete copy
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _explain(err, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["atomic_folder", "atomic_write", "atomic_write_bytes", "clean_stale_temps", "fsync_dir"]
