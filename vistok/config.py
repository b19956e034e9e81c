"""Configs: frozen dataclasses, YAML files and `key=value` overrides with type checks.

A run's config is one frozen dataclass, possibly nesting others (`train.lr`, `model.width`). It is built from the
dataclass defaults, then a YAML file, then command-line overrides, in that order. Every key is checked: an unknown key
is an error that lists the valid ones, and a value that does not parse as the field's type is an error that names the
type. The resolved config is written next to the checkpoints, so a run can be reproduced from its folder alone.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from vistok.errors import VistokError
from vistok.io.atomic import atomic_write_bytes

C = TypeVar("C")


def _field_types(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise a VistokError naming `key` and the expected type."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if type(None) in args and (value is None
                                   or (isinstance(value, str) and value.strip() in ("null", "None", "~"))):
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except VistokError:
                continue
        raise VistokError(f"config key '{key}': {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        raise VistokError(f"config key '{key}': {value!r} is not {_type_name(tp)}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise VistokError(f"config key '{key}': expected a list like [1, 2], got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and len(args) != len(value):
            raise VistokError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
        item_types = [args[0]] * len(value) if (origin is list or args[1:] == (Ellipsis,)) else list(args)
        items = [_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, item_types, strict=True))]
        return origin(items)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise VistokError(f"config key '{key}': expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise VistokError(f"config key '{key}': {value!r} is not a bool (use true or false)")
    if tp in (int, float):
        if isinstance(value, bool):
            raise VistokError(f"config key '{key}': {value!r} is not a {tp.__name__}")
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if tp is float and isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if tp is float and isinstance(value, (int, float)):
            return float(value)
        if tp is int and isinstance(value, int):
            return value
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)
        raise VistokError(f"config key '{key}': {value!r} is not a {tp.__name__}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise VistokError(f"config key '{key}': {value!r} is not a string")
    return value


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted keys of a (nested) config dataclass, e.g. ['model.width', 'train.lr', ...]."""
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, prefix=f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _nested_defaults(cls: type) -> dict[str, dict[str, Any]]:
    """The default values of `cls`'s nested-config fields as plain dicts: a field declared with
    `default_factory=lambda: Sub(x=1)` keeps x=1 when the YAML or an override sets only some other key of it."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            out[f.name] = {g.name: getattr(default, g.name) for g in dataclasses.fields(default)}
    return out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, recursing where both hold a group of keys (a dict or a nested config)."""
    out = dict(base)
    for k, v in update.items():
        old = out.get(k)
        if isinstance(v, dict) and dataclasses.is_dataclass(old) and not isinstance(old, type):
            old = {g.name: getattr(old, g.name) for g in dataclasses.fields(old)}
        out[k] = _merge(old, v) if isinstance(v, dict) and isinstance(old, dict) else v
    return out


def _build(cls: type[C], values: dict[str, Any], prefix: str = "") -> C:
    types_ = _field_types(cls)
    unknown = [k for k in values if k not in types_]
    if unknown:
        raise VistokError(
            f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__}; valid keys: "
            + ", ".join(valid_keys(cls, prefix))
        )
    defaults = _nested_defaults(cls)
    merged = {k: _merge(defaults[k], v) if k in defaults and isinstance(v, dict) else v for k, v in values.items()}
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in merged.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise VistokError(f"invalid {cls.__name__} config: {err}") from None


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):
            raise VistokError(f"config key '{key}': '{p}' is not a group of keys")
        tree = node
    tree[leaf] = value


def load_config(cls: type[C], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> C:
    """Build `cls` from its defaults, then the YAML file at `path`, then `key=value` overrides (dotted for nesting)."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise VistokError(f"config file {path} does not exist; pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise VistokError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise VistokError(f"config file {path} must hold a mapping of keys to values")
        tree = loaded
    for item in overrides:
        if "=" not in item:
            raise VistokError(f"override '{item}' must look like key=value (valid keys: {', '.join(valid_keys(cls))})")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw)
    return from_dict(cls, tree)


def from_dict(cls: type[C], tree: dict[str, Any]) -> C:
    """Build a (nested) config dataclass from a plain dict, checking keys and types."""
    return _build(cls, tree)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-serialisable dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: a crash leaves the old file or the new one)."""
    atomic_write_bytes(path, yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
