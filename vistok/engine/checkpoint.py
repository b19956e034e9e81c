"""Checkpoints: atomic training state with auto-resume, and safetensors export of EMA weights.

Training state (`RUN/last.pt`): model, EMA, optimizer, scheduler, step, RNG states and the resolved config. It is
written to a temporary file in the same folder, flushed to disk and renamed over the old one, so a crash or SIGKILL
at any moment leaves either the old or the new checkpoint, never a torn one. Running the same command again finds
`last.pt` and resumes. It loads with `torch.load(weights_only=True)`: RNG states are stored as tensors and plain
Python values, never pickled objects.

Export (`DIR/config.json` + `DIR/model.safetensors`): the EMA weights and the model's own config, enough to rebuild the
model from that folder alone (`load_exported`). Model families are looked up in `vistok.registry`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from vistok.engine.atomic import atomic_write
from vistok.errors import VistokError

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), py[-1]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plain tensors / containers / numbers / strings) to RUN/last.pt."""
    path = Path(run_dir) / LAST
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def load_training_state(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/last.pt loaded on the CPU with weights_only=True, or None when the run has no checkpoint yet."""
    path = Path(run_dir) / LAST
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign or damaged file: say which and how to proceed
        raise VistokError(
            f"cannot load checkpoint {path} ({type(err).__name__}); move it away to start a fresh run"
        ) from None


def export(out_dir: str | Path, family: str, config: dict[str, Any], weights: dict[str, torch.Tensor], **meta: Any) -> Path:
    """Write `config.json` (family, model config, metadata) and `model.safetensors` to `out_dir`, atomically each."""
    out = Path(out_dir)
    blob = {"family": family, "config": config, **meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    atomic_write(out / "model.safetensors", lambda f: f.write(save(tensors)))
    atomic_write(out / "config.json", lambda f: f.write(json.dumps(blob, indent=2).encode()))
    return out


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json contents, state dict) of an exported folder."""
    path = Path(path)
    cfg_file, weights_file = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights_file.is_file():
        raise VistokError(
            f"{path} is not an exported vistok model (needs config.json and model.safetensors); "
            "pass a folder written by a training run's export or the name of a shipped model (`vistok models` lists them)"
        )
    return json.loads(cfg_file.read_text()), load_file(weights_file)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that names what is missing or unexpected instead of silently dropping weights."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False: name the first one, on one line
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err).splitlines()[0])
        raise VistokError(f"{source} does not match the model: {detail}; was it exported from a different preset?") from None
    if result.missing_keys or result.unexpected_keys:
        raise VistokError(
            f"{source} does not match the model: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}; was it exported from a different preset?"
        )


__all__ = [
    "export",
    "load_state_strict",
    "load_training_state",
    "read_export",
    "rng_state",
    "save_training_state",
    "set_rng_state",
]
