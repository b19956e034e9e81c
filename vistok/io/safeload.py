"""Reading files that users point at without ever running code from them.

A PyTorch `.pt`/`.pth`/`.ckpt` file is a pickle: `torch.load(weights_only=False)` runs whatever it names. vistok only
reads such files through `load_pickle`, which uses `weights_only=True` (tensors, containers, numbers, strings) plus an
explicit allow-list of harmless classes (e.g. `argparse.Namespace` in the official xAR checkpoint container), always
with `map_location="cpu"`. Anything else is a one-line `VistokError` naming the file and what it tried to load.
`sha256_file` checks third-party files against known digests before a library that unpickles them sees them.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from vistok.errors import VistokError


def load_pickle(path: str | Path, allow: Iterable[type] = (), what: str = "file") -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` with `allow` added to the safe globals."""
    path = Path(path)
    if not path.is_file():
        raise VistokError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - garbage makes the unpickler raise almost anything (IndexError, ...)
        raise VistokError(_explain(path, what, err)) from None


def _explain(path: Path, what: str, err: BaseException) -> str:
    """One line: a refused global (code or an unknown class), or a file that is not a PyTorch weights file."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return (f"refusing to load {path}: it names {found.group(1)}, which could run code; vistok reads only plain "
                "weights files (tensors, numbers, strings, lists and dicts)")
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        return f"cannot read {what} {path}: not a PyTorch weights file (or damaged); check the path"
    first = text.strip().splitlines()[0][:200] if text.strip() else type(err).__name__
    return f"cannot read {what} {path} ({type(err).__name__}: {first})"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["load_pickle", "sha256_file"]
