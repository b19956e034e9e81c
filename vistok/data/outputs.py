"""Output paths that users name (`--out`), checked before any work: a run that can only fail at its end, after
minutes of sampling or feature extraction, fails at its start instead, with one line."""

from __future__ import annotations

import os
from pathlib import Path

from vistok.errors import VistokError


def check_writable(path: str | Path, what: str = "--out") -> Path:
    """`path` can be created or replaced: its nearest existing ancestor is a writable folder (and `path`, if it
    exists, is writable)."""
    path = Path(path).expanduser()
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) or \
            (path.exists() and not os.access(path, os.W_OK)):
        raise VistokError(f"{what} {path} is not writable (check the folder and its permissions, "
                          "or choose another path)")
    return path


def check_output_file(path: str | Path, suffix: str, what: str = "--out") -> Path:
    """A file output with `suffix` (e.g. .npz) that is neither a folder nor unwritable."""
    path = Path(path).expanduser()
    if path.suffix.lower() != suffix:
        raise VistokError(f"{what} {path} must end in {suffix}")
    if path.is_dir():
        raise VistokError(f"{what} {path} is a folder; pass a file path ending in {suffix}")
    return check_writable(path, what)


def check_output_folder(path: str | Path, what: str = "--out", grid_suffix: str | None = ".png") -> Path:
    """A folder output (or, when `grid_suffix` is given, a path ending in it for a single image): an existing file
    that is not such an image is refused."""
    path = Path(path).expanduser()
    if grid_suffix and path.suffix.lower() == grid_suffix:
        if path.is_dir():
            raise VistokError(f"{what} {path} is a folder; pass a new file path ending in {grid_suffix}")
        return check_writable(path, what)
    if path.exists() and not path.is_dir():
        raise VistokError(f"{what} {path} is a file; pass a folder" +
                          (f", or a path ending in {grid_suffix} for a grid alone" if grid_suffix else ""))
    return check_writable(path, what)


__all__ = ["check_output_file", "check_output_folder", "check_writable"]
