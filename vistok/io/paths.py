"""Outputs never destroy what a user points at: checks made before any work.

- `check_apart`: an output (`--out`, `--json`) that equals, contains or sits inside an input (`--input`, `--real`,
  `--fake`, `--tokens`, `--ckpt`, ...) is refused; `vistok encode --input x.npz --out x.npz` used to replace the
  images with token ids. Paths are compared with symlinks resolved. `check_cli_paths(args)` applies it to every
  subcommand's flags, so a new subcommand is covered by naming its flags the usual way.
- `check_replaceable`: a folder is replaced only when it is empty, missing or an output of the same kind (a vistok
  export, a demo folder); any other folder is refused with one line naming `--overwrite`, since `vistok convert
  --out DIR` used to delete whatever DIR held. `allow_replace(path)` is that flag's scope.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vistok.errors import VistokError

# argparse destinations that name paths a command reads, and those it writes (a bool `--json` is a print flag)
INPUT_FLAGS = ("input", "real", "fake", "tokens", "ckpt", "vae", "seg", "gt", "fid_real", "extractor_weights",
               "inception_weights")
OUTPUT_FLAGS = ("out", "json")
VOLUME_SUFFIXES = (".h5", ".hdf5", ".hdf", ".zarr", ".npz", ".npy", ".tif", ".tiff")  # FILE:DATASET arguments
_ALLOWED: contextvars.ContextVar[frozenset[Path]] = contextvars.ContextVar("vistok_allow_replace", default=frozenset())


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _existing(value: Any) -> Path | None:
    """The resolved path an input flag names, or None (a dataset or model name, hf://..., a list of k, a number)."""
    if not isinstance(value, (str, Path)) or "://" in str(value) or not str(value).strip():
        return None
    path = Path(value).expanduser()
    if not path.exists():
        head, sep, _ = str(value).rpartition(":")  # FILE:DATASET of an EM volume
        if not (sep and Path(head).suffix.lower() in VOLUME_SUFFIXES and Path(head).expanduser().exists()):
            return None
        path = Path(head).expanduser()
    return path.resolve()


def _target(value: Any) -> Path | None:
    """The resolved path an output flag names (it need not exist), without an EM volume's :DATASET."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        return None
    head, sep, _ = str(value).rpartition(":")
    text = head if sep and Path(head).suffix.lower() in VOLUME_SUFFIXES else str(value)
    return Path(text).expanduser().resolve()


def check_apart(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse an output path that equals, contains or sits inside an existing input path (flag -> value maps)."""
    for oflag, ovalue in outputs.items():
        out = _target(ovalue)
        if out is None:
            continue
        for iflag, ivalue in inputs.items():
            src = _existing(ivalue)
            if src is None:
                continue
            if out == src:
                how = f"is the input {iflag} {ivalue}: writing it would overwrite the input"
            elif src in out.parents:
                how = f"sits inside the input {iflag} {ivalue}: writing there would change the input"
            elif out in src.parents:
                how = f"contains the input {iflag} {ivalue}: writing there could replace the input"
            else:
                continue
            raise VistokError(f"{oflag} {ovalue} {how}; choose another {oflag} outside it")


def check_cli_paths(args: Any) -> None:
    """`check_apart` on a parsed command line: every output flag against every input flag it has."""
    def found(names: tuple[str, ...]) -> dict[str, Any]:
        return {_flag(n): getattr(args, n) for n in names if isinstance(getattr(args, n, None), (str, Path))}

    check_apart(found(OUTPUT_FLAGS), found(INPUT_FLAGS))


# ----------------------------------------------------------------------------------------- replacing a folder
def export_family(path: str | Path) -> str | None:
    """The family a vistok export folder names (config.json with a `family` + model.safetensors), else None."""
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    family = meta.get("family") if isinstance(meta, dict) else None
    return family if isinstance(family, str) and (path / "model.safetensors").is_file() else None


@contextlib.contextmanager
def allow_replace(path: str | Path) -> Iterator[None]:
    """Within the block, `check_replaceable` lets `path` be replaced whatever it holds (the user's `--overwrite`)."""
    token = _ALLOWED.set(_ALLOWED.get() | {Path(path).expanduser().resolve()})
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def check_replaceable(path: str | Path, same_kind: Callable[[Path], bool], kind: str, overwrite: bool = False,
                      what: str = "--out") -> Path:
    """`path` may be written as a whole folder: missing, empty, already a `kind` (`same_kind(path)`), or allowed
    (`overwrite` or `allow_replace`). A file, or a folder of other files, is refused before any work."""
    path = Path(path).expanduser()
    if not path.exists() and not path.is_symlink():
        return path
    if not path.is_dir():
        raise VistokError(f"{what} {path} is a file; pass a folder for the {kind}")
    if overwrite or path.resolve() in _ALLOWED.get() or not any(path.iterdir()) or same_kind(path):
        return path
    raise VistokError(f"{what} {path} is a folder of other files, not a {kind}; writing would delete them: choose an "
                      "empty or new folder, or pass --overwrite to replace it")


def check_export_target(path: str | Path, family: str, overwrite: bool = False, what: str = "--out") -> Path:
    """An export of `family` may go to `path`: new, empty, an export of the same family, or `overwrite`."""
    return check_replaceable(path, lambda p: export_family(p) == family, f"vistok {family} export", overwrite, what)


__all__ = ["allow_replace", "check_apart", "check_cli_paths", "check_export_target", "check_replaceable",
           "export_family"]
