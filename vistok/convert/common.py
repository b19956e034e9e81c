"""Shared steps of the converters: read a weights file without running code, check a mapped state dict against the
vistok model it is meant for (on the meta device, so a 1B-parameter check costs no memory), write the export."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistok.config import to_dict
from vistok.errors import VistokError
from vistok.io import exports
from vistok.io.paths import check_export_target
from vistok.io.safeload import load_pickle

# classes an official checkpoint may name besides tensors and containers: the xAR/MAR training container stores its
# command line as an argparse.Namespace (nn.Parameter entries of `model_ema` are allowed by weights_only already)
ALLOWED = (argparse.Namespace,)
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")


def read_weights(path: str | Path, what: str) -> Any:
    """A .safetensors file (dict of tensors) or a PyTorch pickle loaded with weights_only=True on the CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VistokError(f"{what} not found: {path} (pass --input the checkpoint file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:
            raise VistokError(f"cannot read {what} {path} ({type(err).__name__}); "
                              "is it a complete .safetensors file?") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise VistokError(f"{what} {path} must be a .safetensors or PyTorch checkpoint ({', '.join(PICKLE_SUFFIXES)}) "
                          "file")
    return load_pickle(path, allow=ALLOWED, what=what)


def tensors_only(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A plain {name: tensor} dict (parameters detached), or a one-line error."""
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VistokError(f"{source} is not a state dict of tensors")
    return {str(k): v.detach() for k, v in obj.items()}


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a prefix that every key carries (DistributedDataParallel's `module.`)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """The model's tensors of a weights file: a training container's `model` / `state_dict` / `model_state_dict`
    entry unwrapped, DistributedDataParallel's `module.` prefix dropped."""
    obj = read_weights(path, what)
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    return strip_prefix(tensors_only(obj, str(path)))


def check_against(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """The mapped state must have exactly the model's keys and shapes (what a strict load needs)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise VistokError(f"{source} does not map onto the vistok model: missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]} ({len(missing)} / {len(unexpected)} in all); is --from the right kind?")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise VistokError(f"{source}: {k} has shape {tuple(state[k].shape)}, the vistok model expects {shape}")


def build_meta(family: str, config: Any) -> nn.Module:
    """The vistok model on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return exports.build(family, config)


def write(out: str | Path, family: str, config: Any, state: dict[str, torch.Tensor], source: str,
          extra: Callable[[Path], None] | None = None, **meta: Any) -> Path:
    """Check `state` against the family's model at `config`, then write `out/config.json` + `out/model.safetensors`
    (tensors as stored, contiguous, on the CPU) and whatever `extra(folder)` adds, as one unit (`exports.write_export`
    replaces the folder whole). Nothing is written when the check fails."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise VistokError(f"--out {out} is a file; pass a folder for the export")
    check_export_target(out, family, what="--out")  # before the check against the model, not at the write
    check_against(build_meta(family, config), state, source)
    cfg = to_dict(config) if not isinstance(config, dict) else config
    return exports.write_export(out, family, cfg, {k: v.to("cpu") for k, v in state.items()}, extra=extra, **meta)


def namespace_dict(args: Any) -> dict[str, Any]:
    """JSON-safe subset of an argparse.Namespace (numbers, strings, booleans)."""
    if not isinstance(args, argparse.Namespace):
        return {}
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) or v is None}


__all__ = ["ALLOWED", "build_meta", "check_against", "namespace_dict", "read_state_dict", "read_weights",
           "strip_prefix", "tensors_only", "write"]
