"""Checks on an export folder (`config.json` + `model.safetensors`) before anything is allocated or loaded from it.

An export can come from anywhere (a download, a colleague, `hf://`), so its `config.json` is untrusted input:
- paths inside it (a paired generator's `tokenizer.path`) must stay inside the export: no absolute paths, no `..`,
  no symbolic link that leaves the folder;
- its sizes must be plausible: every integer of the model (and tokenizer) config is bounded, and the model is first
  built on the meta device (no memory) under a budget taken from the weights file's header (a few times the tensor
  elements the file holds, and a bounded number of modules), so even a meta build cannot run away. Its parameter and
  buffer shapes must then match the header exactly, so a mismatch is named (key and both shapes) before any weights are
  read.
The weights file is safetensors: reading it never runs code, and only its header (a few KB) is read here.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from torch import nn

from vistok.errors import VistokError

MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB
MAX_CONFIG_INT = 1 << 24  # widths, depths, vocabularies, resolutions: the largest real ones are ~1e5
MAX_CONFIG_DEPTH = 16  # exports nest 4 levels (tokenizer.config.ch_mult[i]); 16 leaves room, 1000 breaks parsers
MODULES_PER_TENSOR = 64  # containers, activations, dropouts per stored tensor, generously


def read_config(folder: str | Path) -> dict[str, Any]:
    """`config.json` of an export, size-bounded, as a dict; one-line errors."""
    path = Path(folder) / "config.json"
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise VistokError(f"{path} is {size:,} bytes, not an export's config (at most {MAX_CONFIG_BYTES:,})")
        meta = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: absurdly nested JSON
        raise VistokError(f"cannot read {path} ({type(err).__name__}); "
                          "pass a folder written by a vistok export") from None
    check_meta_shape(meta, path)
    return meta


def check_meta_shape(meta: Any, path: str | Path) -> None:
    """Refuse a config.json whose top-level entries have the wrong JSON types (a list for the whole file, a string for
    the tokenizer, a number for the class names, nesting deeper than any export's), naming the entry, so that no
    reader later fails inside `.get` or `dict(...)` with a traceback."""
    def bad(what: str) -> VistokError:
        return VistokError(f"{path}: {what}; the file is damaged or not a vistok export's config.json "
                           "(re-export the model)")

    if not isinstance(meta, dict):
        raise bad(f"the top level is a JSON {_json_type(meta)}, not an object with 'family' and 'config'")
    if _depth(meta) > MAX_CONFIG_DEPTH:
        raise bad(f"entries are nested more than {MAX_CONFIG_DEPTH} levels deep")
    if not isinstance(meta.get("family"), str):
        raise bad(f"'family' must be a string naming the model family, got {_json_type(meta.get('family'))}")
    if not isinstance(meta.get("config"), dict):
        raise bad(f"'config' must be an object of model settings, got {_json_type(meta.get('config'))}")
    for key in ("sample", "decode", "inference"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(f"'{key}' must be an object of settings, got a JSON {_json_type(meta[key])}")
    tokenizer = meta.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("family"), str):
            raise bad("'tokenizer' must be an object with a string 'family'")
        if not isinstance(tokenizer.get("config", {}), dict):
            raise bad(f"'tokenizer.config' must be an object, got a JSON {_json_type(tokenizer['config'])}")
        scale = tokenizer.get("code_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise bad(f"'tokenizer.code_scale' must be a positive number, got {scale!r}")
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise bad("'classes' must be a list of class names (strings)")
    resolution = meta.get("resolution")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                   or not 1 <= resolution <= MAX_CONFIG_INT):
        raise bad(f"'resolution' must be a positive integer, got {resolution!r}")


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def _depth(tree: Any) -> int:
    """Nesting depth of a JSON value, iteratively (a recursive walk is what deep nesting attacks)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth <= MAX_CONFIG_DEPTH:
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else
                                                  node if isinstance(node, list) else ()))
    return deepest


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of floating-point tensors holding a NaN or an infinity (a DTensor: this rank's shard)."""
    bad = []
    for name, t in named:
        t = t.to_local() if hasattr(t, "to_local") else t
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def check_finite(state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse weights with NaN or infinite values, naming the first tensors: such an export (a diverged run saved
    outside vistok, a damaged file) otherwise loads and yields black or garbage images with exit status 0."""
    bad = nonfinite_names(state.items())
    if bad:
        raise VistokError(f"{source}: non-finite (NaN or infinite) weights in {', '.join(bad[:3])}"
                          f"{f' and {len(bad) - 3} more tensors' if len(bad) > 3 else ''}; the export is damaged or "
                          "its run diverged: re-export it from a good checkpoint")


def check_config_values(meta: dict[str, Any], source: str) -> None:
    """Refuse absurd integers in the model config and the tokenizer config before anything is built."""
    trees = [("config", meta.get("config", {}))]
    tokenizer = meta.get("tokenizer")
    if isinstance(tokenizer, dict):
        trees.append(("tokenizer.config", tokenizer.get("config", {})))
    for prefix, tree in trees:
        for key, value in _ints(tree, prefix):
            if abs(value) > MAX_CONFIG_INT:
                raise VistokError(f"{source}/config.json: {key} = {value} is absurdly large (limit "
                                  f"{MAX_CONFIG_INT:,}); the export is damaged or not a vistok model")


def _ints(tree: Any, prefix: str) -> Iterator[tuple[str, int]]:
    if isinstance(tree, bool):
        return
    if isinstance(tree, int):
        yield prefix, tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from _ints(v, f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _ints(v, f"{prefix}[{i}]")


def inside_export(folder: str | Path, relative: Any, what: str) -> Path:
    """`folder / relative`, refused unless `relative` is a plain relative path that stays inside `folder`."""
    folder = Path(folder)
    text = str(relative) if isinstance(relative, str) else None
    if not text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() \
            or PureWindowsPath(text).drive or ".." in PurePosixPath(text.replace("\\", "/")).parts:
        raise VistokError(f"{folder}/config.json: {what} {relative!r} must be a relative path inside the export "
                          "(no absolute path, no '..'); re-export the model")
    target = folder / text
    try:
        inside = target.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        raise VistokError(f"{folder}/config.json: {what} {relative!r} leads outside the export (a symbolic link?); "
                          "copy the files into the export folder")
    return target


def weights_header(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a safetensors file from its header alone (no tensor is read); one-line errors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError, OSError, ValueError...
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise VistokError(f"cannot read {path}: not a safetensors weights file or damaged ({first})") from None


class _Budget(Exception):
    pass


@contextlib.contextmanager
def _construction_budget(max_params: int, max_modules: int) -> Iterator[None]:
    """Abort a model constructor that registers more parameter elements or modules than the budget."""
    from torch.nn.modules import module as torch_module

    count = {"params": 0, "modules": 0}

    def on_param(_module: nn.Module, name: str, param: Any) -> None:
        if param is not None:
            count["params"] += param.numel()
            if count["params"] > max_params:
                raise _Budget(f"more than {max_params:,} parameters")

    def on_module(_module: nn.Module, name: str, sub: Any) -> None:
        count["modules"] += 1
        if count["modules"] > max_modules:
            raise _Budget(f"more than {max_modules:,} modules")

    handles = [torch_module.register_module_parameter_registration_hook(on_param),
               torch_module.register_module_module_registration_hook(on_module)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_export(folder: str | Path, meta: dict[str, Any], build: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Everything about an export that can be checked without memory: config values (`meta`, its config.json as
    `read_config` returned it), a meta-device build within the weights file's budget, and the state-dict keys and
    shapes against the file's header."""
    folder = Path(folder)
    check_config_values(meta, str(folder))
    header = weights_header(folder / "model.safetensors")
    stored = sum(math.prod(shape) for shape in header.values())
    try:
        with _construction_budget(4 * stored + 10**7, MODULES_PER_TENSOR * len(header) + 256), torch.device("meta"):
            model = build(meta)
    except _Budget as err:
        raise VistokError(f"{folder}/config.json describes a model with {err}, but model.safetensors holds only "
                          f"{stored:,} values; the config does not belong to these weights") from None
    except VistokError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, OverflowError, MemoryError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise VistokError(f"{folder}/config.json does not describe a buildable model ({type(err).__name__}: "
                          f"{first})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(header)) if expected[k] != header[k]]
    if missing or unexpected or wrong:
        parts = [f"size mismatch for {wrong[0]}: file {list(header[wrong[0]])}, config {list(expected[wrong[0]])}"
                 if wrong else "", f"missing {missing[:3]}" if missing else "",
                 f"unexpected {unexpected[:3]}" if unexpected else ""]
        raise VistokError(f"{folder} does not match the model: " + "; ".join(p for p in parts if p)
                          + " (config.json against model.safetensors); was it exported from a different preset?")


__all__ = ["check_config_values", "check_export", "check_finite", "check_meta_shape", "inside_export",
           "nonfinite_names", "read_config", "weights_header"]
