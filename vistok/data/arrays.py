""".npz files that users point at (images, token ids, FID statistics, ADM reference batches), read with one-line errors.

NumPy's `np.load` raises many types for a damaged file: `zipfile.BadZipFile` for a zip header with a broken body or a
bad CRC, `ValueError` for random bytes (it takes them for a pickle and refuses it), `EOFError`, `zlib.error`, `OSError`.
`read_npz` turns each into one `VistokError` naming the file and the fix. Pickled (object) arrays are never loaded:
`stored_dtypes` reads each array's header (a literal, parsed without running code) and `check_plain` refuses a dtype
that holds Python objects before any array data is read, with a line that says so rather than "damaged file".
"""

from __future__ import annotations

import pickle
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vistok.errors import VistokError

NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


def npz_keys(path: str | Path, what: str = "file", hint: str = "") -> list[str]:
    """The array names in an .npz, without reading the arrays."""
    with _open(Path(path), what, hint) as z:
        return list(z.files)


def read_npz(path: str | Path, keys: Iterable[str] | None = None,
             what: str = "file", hint: str = "") -> dict[str, np.ndarray]:
    """The arrays `keys` (all when None; names the file lacks are left out) of an .npz, fully read and checked."""
    path = Path(path)
    with _open(path, what, hint) as z:
        names = list(z.files) if keys is None else [k for k in keys if k in z.files]
        check_file_dtypes(path, what, names)  # before any array is read
        try:
            return {k: z[k] for k in names}
        except NPZ_ERRORS as err:
            raise VistokError(_damaged(path, what, err, hint)) from None


def _header_dtype(f: BinaryIO) -> np.dtype:
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise ValueError(f"unsupported .npy version {version}")
    return read(f)[2]


def stored_dtypes(path: str | Path) -> dict[str, np.dtype]:
    """The dtype of every array in an .npy ({"": dtype}) or .npz ({name: dtype}) from the headers alone."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            f.seek(0)
            return {"": _header_dtype(f)}
    with zipfile.ZipFile(path) as zf:
        out = {}
        for name in zf.namelist():
            if name.endswith(".npy"):
                with zf.open(name) as member:
                    out[name[:-4]] = _header_dtype(member)
        return out


def check_plain(dtype: np.dtype, where: str) -> None:
    """Refuse a dtype holding Python objects: reading it would unpickle the file's bytes, which can run code."""
    if np.dtype(dtype).hasobject:
        raise VistokError(f"cannot read {where}: it holds Python objects (dtype {dtype}), which vistok never loads "
                          "(reading them would unpickle, i.e. run, code from the file); store plain numeric arrays")


def check_file_dtypes(path: str | Path, what: str = "file", keys: Iterable[str] | None = None) -> None:
    """`check_plain` on the array headers (`keys` of an .npz; all when None) of an .npy or .npz; a damaged file is
    left to the reader's own one-line error."""
    try:
        dtypes = stored_dtypes(path)
    except NPZ_ERRORS:
        return
    wanted = None if keys is None else set(keys)
    for name, dtype in dtypes.items():
        if wanted is not None and name not in wanted:
            continue
        check_plain(dtype, f"{what} {path}" + (f" (array {name!r})" if name else ""))


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


__all__ = ["check_file_dtypes", "check_plain", "npz_keys", "read_npz", "stored_dtypes"]
