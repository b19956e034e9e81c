"""Atomic writes of user-visible results: a temporary file in the same folder, flushed, renamed, folder fsynced.

Every result vistok writes (checkpoints, exports, token files, FID statistics, `samples.npz`, segmentations) goes
through `atomic_write` (one file) or `atomic_folder` (several files that must appear together), so a crash, a SIGKILL
or a full disk at any moment leaves either the old result or the new one, never a torn file. Temporary files are named
`.NAME.*.tmp`; a later write of the same target removes the ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from vistok.errors import VistokError

TMP_SUFFIX = ".tmp"


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


def clean_stale_temps(path: str | Path) -> None:
    """Remove `.NAME.*.tmp` leftovers of `path` that a killed writer could not remove itself."""
    path = Path(path)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
            with contextlib.suppress(OSError):
                if stale.is_dir():
                    shutil.rmtree(stale)
                else:
                    stale.unlink()


def _umask_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _explain(err: OSError, path: Path) -> VistokError:
    return VistokError(f"cannot write {path}: {err.strerror or err} (free space or choose another output path)")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` through `write(f)` on a temporary file that replaces `path` only once complete and on disk.

    An OSError (full disk, no permission) becomes one-line `VistokError`; the old file, if any, is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
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
        clean_stale_temps(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
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
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
            old.rmdir()
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _explain(err, path) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["atomic_folder", "atomic_write", "atomic_write_bytes", "clean_stale_temps", "fsync_dir"]
