"""Where exported models come from: a folder, the name of a model shipped with the package, or a Hugging Face repo.

Shipped models live in `assets/`: beside the package in a source checkout or editable install, inside it
(`vistok/shipped/`, package data) when installed from a wheel; `VISTOK_ASSETS` overrides both. `hf://org/repo[@rev]`
(optionally `hf://org/repo/sub/folder@rev`) goes through `huggingface_hub.snapshot_download`, so the local cache and
`HF_HUB_OFFLINE=1` work as everywhere in the Hugging Face ecosystem.

This module sits low (it imports no model code), so every layer may turn a source into a folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from vistok.errors import VistokError

HF_PREFIX = "hf://"
HF_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?")  # the hub's org and repo names


def assets_dir() -> Path:
    """The folder of shipped models: $VISTOK_ASSETS, else vistok/shipped (wheel), else assets/ beside the package."""
    if os.environ.get("VISTOK_ASSETS"):
        return Path(os.environ["VISTOK_ASSETS"])
    package = Path(__file__).resolve().parent.parent  # vistok/, two levels above this file
    inside = package / "shipped"  # package data of a wheel install (setup.py)
    return inside if inside.is_dir() else package.parent / "assets"


def shipped_models() -> dict[str, Path]:
    """Exported models in the assets folder: name -> folder."""
    root = assets_dir()
    if not root.is_dir():
        return {}
    return {p.parent.name: p.parent for p in sorted(root.glob("*/config.json"))
            if (p.parent / "model.safetensors").is_file()}


def parse_hf(source: str) -> tuple[str, str | None, str]:
    """"hf://org/repo[/sub/folder][@revision]" -> (repo id, revision or None, subfolder or "")."""
    rest = source[len(HF_PREFIX):]
    rest, _, revision = rest.partition("@")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2 or (_ and not revision):
        raise VistokError(f"{source!r} is not a Hugging Face source; write hf://org/repo or hf://org/repo@revision")
    bad = ([p for p in parts[:2] if not HF_NAME.fullmatch(p) or ".." in p or "--" in p]
           + [p for p in parts[2:] if p == ".."])
    if bad:  # checked here, not by huggingface_hub's validator, whose error would surface as a traceback
        raise VistokError(f"{source!r}: {bad[0]!r} is not a valid Hugging Face name (letters, digits, '-', '_', '.', "
                          "at most 96, not starting or ending with '-' or '.'; no '..' in a sub-folder); "
                          "write hf://org/repo")
    return f"{parts[0]}/{parts[1]}", revision or None, "/".join(parts[2:])


class Source(NamedTuple):
    """A source resolved once: its local folder, and what names exactly these files (`pinned`): for an hf:// source
    `hf://org/repo[/sub]@COMMIT` (the commit the revision resolved to), else the source as given."""

    folder: Path
    pinned: str


def download_hf(source: str) -> Path:
    """The local snapshot folder of an hf:// source (downloaded, or from the cache when offline)."""
    repo_id, revision, sub = parse_hf(source)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise VistokError("hf:// sources need huggingface_hub; pip install huggingface_hub") from None
    try:
        folder = Path(snapshot_download(repo_id, revision=revision))
    except LocalEntryNotFoundError:
        raise VistokError(f"{source} is not in the local Hugging Face cache and the hub cannot be reached (offline?); "
                          "download it once with network access, or unset HF_HUB_OFFLINE") from None
    except RevisionNotFoundError:
        raise VistokError(f"{source}: no revision {revision!r} in {repo_id}; name a branch, tag or commit") from None
    except RepositoryNotFoundError:
        raise VistokError(f"{source}: no repository {repo_id} on the hub (or it is private: log in first)") from None
    except ValueError as err:  # huggingface_hub's HFValidationError: a name it refuses that HF_NAME let through
        raise VistokError(f"{source}: not a valid Hugging Face repo id or revision "
                          f"({str(err).splitlines()[0][:120]})") from None
    except OSError as err:  # network and file-system errors: one line, not a traceback
        raise VistokError(f"cannot fetch {source} ({err.__class__.__name__}: "
                          f"{str(err).splitlines()[0][:120]})") from None
    folder = folder / sub if sub else folder
    if not (folder / "config.json").is_file():
        raise VistokError(f"{source} holds no vistok export (config.json + model.safetensors) at "
                          f"{sub or 'its top level'}")
    return folder


def pinned_hf(source: str, folder: Path) -> str:
    """hf://org/repo[/sub]@COMMIT for the snapshot folder `folder` of `source` (huggingface_hub's cache lays a
    snapshot out as .../snapshots/COMMIT[/sub]), so a later revision of the repo never changes what was recorded."""
    repo_id, _, sub = parse_hf(source)
    snapshot = folder
    for _ in sub.split("/") if sub else ():
        snapshot = snapshot.parent
    commit = snapshot.name if snapshot.parent.name == "snapshots" else None
    return f"{HF_PREFIX}{repo_id}{'/' + sub if sub else ''}" + (f"@{commit}" if commit else "")


def resolve(source: str | Path) -> Source:
    """An exported folder, the name of a shipped model, or an hf:// source -> (local folder, pinned name)."""
    if str(source).startswith(HF_PREFIX):
        folder = download_hf(str(source))
        return Source(folder, pinned_hf(str(source), folder))
    path = Path(source).expanduser()
    if path.is_dir():
        return Source(path, str(source))
    shipped = shipped_models()
    if str(source) in shipped:
        return Source(shipped[str(source)], str(source))
    raise VistokError(f"checkpoint {str(source)!r} is neither an exported folder nor a shipped model "
                      f"({', '.join(shipped) or 'none shipped'}); hf://org/repo[@revision] names a Hugging Face repo")


def resolve_ckpt(ckpt: str | Path) -> Path:
    """The local folder of a source (`resolve(ckpt).folder`)."""
    return resolve(ckpt).folder
