""".npz files that users point at (images, token ids, FID statistics, ADM reference batches), read with one-line errors.

NumPy's `np.load` raises many types for a damaged file: `zipfile.BadZipFile` for a zip header with a broken body or a
bad CRC, `ValueError` for random bytes (it takes them for a pickle and refuses it), `EOFError`, `zlib.error`, `OSError`.
`read_npz` turns each into one `VistokError` naming the file and the fix; pickled (object) arrays are never loaded.
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vistok.errors import VistokError

NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


def npz_keys(path: str | Path, what: str = "file", hint: str = "") -> list[str]:
    """The array names in an .npz, without reading the arrays."""
    with _open(Path(path), what, hint) as z:
        return list(z.files)


def read_npz(path: str | Path, keys: Iterable[str] | None = None, what: str = "file", hint: str = "") -> dict[str, np.ndarray]:
    """The arrays `keys` (all when None; names the file lacks are left out) of an .npz, fully read and checked."""
    path = Path(path)
    with _open(path, what, hint) as z:
        names = list(z.files) if keys is None else [k for k in keys if k in z.files]
        try:
            return {k: z[k] for k in names}
        except NPZ_ERRORS as err:
            raise VistokError(_damaged(path, what, err, hint)) from None


def _open(path: Path, what: str, hint: str):
    if not path.is_file():
        raise VistokError(f"{what} {path} does not exist{hint}")
    try:
        z = np.load(path, allow_pickle=False)
    except NPZ_ERRORS as err:
        raise VistokError(_damaged(path, what, err, hint)) from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise VistokError(f"{what} {path} is a single .npy array, not an .npz archive of named arrays{hint}")
    return z


def _damaged(path: Path, what: str, err: BaseException, hint: str) -> str:
    if isinstance(err, ValueError) and "pickle" in str(err).lower():
        why = "not an .npz archive (or it holds pickled objects, which vistok does not load)"
    else:
        why = f"damaged or not an .npz archive ({type(err).__name__})"
    return f"cannot read {what} {path}: {why}{hint}"


__all__ = ["npz_keys", "read_npz"]
