"""Exports: the one reader, loader and writer of `config.json` + `model.safetensors` folders.

An export is everything needed to rebuild one model: `config.json` names the model family and its config (plus what
the API needs: tokenizer, class names, default settings) and `model.safetensors` holds the EMA weights. Every loader
in vistok (`vistok.load`, the converters, the training scripts' `init_from`, the segmenter, the FID network) goes
through `open_export` (the source resolved once, config.json read and checked once) and `load_model` (the family
looked up in `FAMILIES`, built on the meta device against the weights file's header before any memory is taken,
then loaded strictly); every writer goes through `write_export` (atomic: the folder appears whole or not at all).

Exports are self-contained: every file an export needs sits inside its folder and config.json names it by a relative
path, so a folder moved, copied or uploaded anywhere still loads. A tokenizer that names its weights by a local path
(a latent model's VAE folder or file) has them copied into `tokenizer/` at export time; no absolute path is written
(provenance entries such as `source` keep the name only, and a model config naming one is refused).

The family table is plain data (module, config class, model class), imported on first use, so this low layer never
imports model code at import time.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save
from torch import nn

from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.io import sources
from vistok.io.atomic import atomic_folder
from vistok.io.checks import check_export, check_finite, nonfinite_names, read_config
from vistok.io.paths import check_export_target

CONFIG, WEIGHTS = "config.json", "model.safetensors"
TOKENIZER_DIR = "tokenizer"  # where an export keeps its tokenizer's files (a VAE, a paired generator's FlexTok)
ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")  # POSIX, home, Windows drive or UNC paths

# family name -> (module, config class, model class): what `build` constructs for an export's "family"
FAMILIES: dict[str, tuple[str, str, str]] = {
    "fid_net": ("vistok.metrics.fid_net", "FidNetConfig", "FidNet"),
    "flextok": ("vistok.tokenizers.flextok", "FlexTokConfig", "FlexTok"),
    "xar": ("vistok.generators.xar", "XARConfig", "XAR"),
    "ar": ("vistok.generators.ar", "ARConfig", "AR"),
    "segmamba": ("vistok.em.backbone", "SegMambaConfig", "SegMamba"),
    "tokenunify": ("vistok.em.objectives", "TokenUnifyConfig", "TokenUnify"),
    "kl-vae": ("vistok.tokenizers.kl_vae", "KLVAEConfig", "KLVAE"),
    "mamba": ("vistok.modules.mamba_config", "MambaConfig", "MambaLayerModel"),
}


def family_classes(family: str) -> tuple[type, type]:
    """(config class, model class) of a family name; one line naming the known ones otherwise."""
    if family not in FAMILIES:
        raise VistokError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    module, config_cls, model_cls = FAMILIES[family]
    mod = importlib.import_module(module)
    return getattr(mod, config_cls), getattr(mod, model_cls)


def build(family: str, config: Any) -> nn.Module:
    """The model of `family` at `config` (a config dataclass, or a dict as config.json stores it)."""
    config_cls, model_cls = family_classes(family)
    if isinstance(config, dict):
        config = from_dict(config_cls, config)
    return model_cls(config)


class Export(NamedTuple):
    """An export found and read: its local folder, its config.json, and the pinned name of its source."""

    folder: Path
    meta: dict[str, Any]
    source: str


def open_folder(folder: str | Path, source: str | None = None) -> Export:
    """A local export folder with its config.json read and checked (sizes, types): the one reader."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise VistokError(f"{folder} is not an exported vistok model (needs {CONFIG} and {WEIGHTS}); pass a training "
                          "run's export, a shipped model name (`vistok models` lists them) or hf://org/repo")
    return Export(folder, read_config(folder), str(folder) if source is None else source)


def open_export(source: str | Path | Export) -> Export:
    """A source (shipped name, folder, hf://org/repo[@rev]) resolved once and read (`open_folder`)."""
    if isinstance(source, Export):
        return source
    found = sources.resolve(source)
    return open_folder(found.folder, found.pinned)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that names what is missing or unexpected instead of silently dropping weights."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False: name the first one, on one line
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err).splitlines()[0])
        raise VistokError(f"{source} does not match the model: {detail}; was it exported from a different "
                          "preset?") from None
    if result.missing_keys or result.unexpected_keys:
        raise VistokError(f"{source} does not match the model: missing {result.missing_keys[:4]}, "
                          f"unexpected {result.unexpected_keys[:4]}; was it exported from a different preset?")


def read_weights(export: Export) -> dict[str, torch.Tensor]:
    """The export's weights on the CPU, refused when any is NaN or infinite (they would give black images)."""
    state = load_file(export.folder / WEIGHTS)
    check_finite(state, export.folder)
    return state


def read_export(source: str | Path | Export) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json, weights) of an export, without building its model (training's `init_from`, converters)."""
    export = open_export(source)
    return export.meta, read_weights(export)


def load_model(source: str | Path | Export, device: str | torch.device = "cpu",
               family: str | tuple[str, ...] | None = None, fix: str = "") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the exported EMA weights, its config.json) of an export.

    With `family`, an export of another family is refused before anything is built (`fix` says what to pass). Sizes,
    keys and shapes are checked against the weights file's header on the meta device before any memory is taken."""
    export = open_export(source)
    name = export.meta["family"]
    wanted = (family,) if isinstance(family, str) else family
    if wanted is not None and name not in wanted:
        raise VistokError(f"{export.source} holds a {name!r} model, not {' or '.join(map(repr, wanted))}"
                          f"{'; ' + fix if fix else ''}")
    check_export(export.folder, export.meta, lambda meta: build(meta["family"], meta["config"]))
    model = build(name, export.meta["config"])
    load_state_strict(model, read_weights(export), str(export.folder))
    return model.to(device).eval(), export.meta


def embed_tokenizer(meta: dict[str, Any], folder: Path) -> dict[str, Any]:
    """`meta` with a tokenizer that names its weights by a local path (`tokenizer.config.weights`: a VAE folder or
    file) made self-contained: the weights copied into `folder/tokenizer/` and named by `tokenizer.path`, relative to
    the export (what `tokenizers.build.build_tokenizer` reads). Other metadata is returned as it is."""
    spec = meta.get("tokenizer")
    weights = spec.get("config", {}).get("weights") if isinstance(spec, dict) and "path" not in spec else None
    if not weights:
        return meta
    source = Path(weights).expanduser()
    if not source.exists():
        raise VistokError(f"the tokenizer's weights {weights} are gone, so the export could not carry them; restore "
                          "them (or set the tokenizer's weights to where they are now) and export again")
    target = folder / TOKENIZER_DIR
    if source.is_dir():
        shutil.copytree(source, target)  # symbolic links (a hub cache's blobs) are copied as the files they point at
        relative = TOKENIZER_DIR
    else:
        target.mkdir()
        shutil.copyfile(source, target / source.name)
        relative = f"{TOKENIZER_DIR}/{source.name}"
    config = {k: v for k, v in spec["config"].items() if k != "weights"}
    return {**meta, "tokenizer": {**spec, "config": config, "path": relative, "source": source.name}}


def tokenizer_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer spec without where its weights are (`config.weights`, `path`, `source`): two specs of the same
    tokenizer compare equal whether its weights sit in a training config's folder or inside an export."""
    config = {k: v for k, v in spec.get("config", {}).items() if k != "weights"}
    return {**{k: v for k, v in spec.items() if k not in ("path", "source")}, "config": config}


def relative_only(meta: dict[str, Any], where: str = "") -> dict[str, Any]:
    """`meta` without absolute paths: a provenance string (`source`, `init_from`, ...) that is one keeps its last
    component; one inside a model or tokenizer config is refused (the export would not load elsewhere)."""
    def clean(value: Any, key: str) -> Any:
        if key == "classes":  # names, not paths, whatever they look like
            return value
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if not isinstance(value, str) or not ABSOLUTE.match(value):
            return value
        if key.startswith(("config.", "tokenizer.config.")):
            raise VistokError(f"{key} = {value!r} is an absolute path, so the export would not load on another "
                              "machine; exports carry their files inside (give the weights to the tokenizer config as "
                              "`weights`, which the export copies in)")
        return Path(value.replace("\\", "/")).name
    return clean(meta, where)


def write_export(out_dir: str | Path, family: str, config: dict[str, Any], weights: dict[str, torch.Tensor],
                 extra: Callable[[Path], None] | None = None, overwrite: bool = False, **meta: Any) -> Path:
    """Write `config.json` (family, model config, metadata) and `model.safetensors` to `out_dir`, as one unit.

    Both files (and whatever `extra(folder)` adds, e.g. a tokenizer sub-folder) are written into a temporary sibling
    folder that then replaces `out_dir` whole, so a crash never leaves a new config beside old weights. Since the
    whole folder is replaced, `out_dir` must be new, empty or an export of the same family (a re-export); a folder
    of other files is refused unless `overwrite` (or `paths.allow_replace`) says to replace it. Non-finite
    weights are refused before anything is written. Files a caller adds to `out_dir` afterwards (a preview) stay.
    The export is self-contained (`embed_tokenizer`, `relative_only`): moved anywhere, it still loads."""
    out = check_export_target(out_dir, family, overwrite, what="export folder")
    bad = nonfinite_names(weights.items())
    if bad:
        raise VistokError(f"refusing to export {out}: non-finite weights in {', '.join(bad[:4])}; "
                          "the run diverged (lower train.lr and train again from an earlier checkpoint)")
    relative_only({"config": config})  # refused before anything is written
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    with atomic_folder(out) as tmp:
        blob = relative_only(embed_tokenizer({"family": family, "config": config, **meta}, tmp))
        (tmp / WEIGHTS).write_bytes(save(tensors))
        (tmp / CONFIG).write_text(json.dumps(blob, indent=2))
        if extra is not None:
            extra(tmp)
    return out


__all__ = ["CONFIG", "FAMILIES", "TOKENIZER_DIR", "WEIGHTS", "Export", "build", "embed_tokenizer", "family_classes",
           "load_model", "load_state_strict", "open_export", "open_folder", "read_export", "read_weights",
           "relative_only", "tokenizer_identity", "write_export"]
