"""`mamba_ssm` Mamba layers (state-spaces/mamba @ e9594ce) -> a vistok `mamba` export.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752. vistok's `Mamba`
(`vistok/modules/mamba.py`) keeps `mamba_ssm`'s parameter names (`A_log`, `D`, `in_proj`, `conv1d`, `x_proj`,
`dt_proj`, `out_proj`, and the `_b` / `_s` copies of the bidirectional forks), so the state dict carries over as is;
the config (d_model, d_inner = expand * d_model, d_state, d_conv, dt_rank, biases, directions) is read off the shapes.
A file with several layers (a whole `MambaLMHeadModel`, a Vision Mamba) needs `prefix` naming one of them, e.g.
`backbone.layers.3.mixer.`; `nslices` (v3 only) is not stored in the weights and defaults to 5, as in TokenUnify.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vistok.convert import common
from vistok.errors import VistokError, require
from vistok.modules.mamba_config import MambaConfig

KEYS = ("A_log", "D", "in_proj.weight", "conv1d.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
        "out_proj.weight")


def layer_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """Prefixes of the Mamba layers in a state dict (every key ending in `A_log` marks one)."""
    return sorted({k[: -len("A_log")] for k in state if k.endswith("A_log") and not k.endswith(("_b_log", "_s_log"))})


def infer_config(state: dict[str, torch.Tensor], nslices: int, source: str) -> MambaConfig:
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise VistokError(f"{source} is not a mamba_ssm Mamba layer (no {missing[0]}); check --from or --prefix")
    d_inner2, d_model = state["in_proj.weight"].shape
    d_inner, d_state = state["A_log"].shape
    require(d_inner2 == 2 * d_inner, f"{source}: in_proj {tuple(state['in_proj.weight'].shape)} does not match "
                                     f"A_log {tuple(state['A_log'].shape)}")
    directions = "v3" if "A_s_log" in state else "v2" if "A_b_log" in state else "none"
    return MambaConfig(d_model=d_model, d_state=d_state, d_conv=state["conv1d.weight"].shape[-1],
                       expand=d_inner / d_model if d_inner % d_model else d_inner // d_model,
                       dt_rank=state["dt_proj.weight"].shape[1], conv_bias="conv1d.bias" in state,
                       bias="in_proj.bias" in state, bimamba_type=directions, nslices=nslices)


def convert(input: str | Path, out: str | Path, prefix: str = "", nslices: int = 5) -> tuple[Path, str]:
    """Write the export of one Mamba layer of a state dict (.safetensors / .pth)."""
    source = str(input)
    obj = common.read_weights(input, "Mamba checkpoint")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    state = common.strip_prefix(common.tensors_only(obj, source))
    layers = layer_prefixes(state)
    if not prefix and len(layers) > 1:
        raise VistokError(f"{source} holds {len(layers)} Mamba layers; pick one with --prefix (e.g. {layers[0]!r})")
    prefix = prefix or (layers[0] if layers else "")
    if prefix:
        require(prefix in layers,
                f"--prefix {prefix!r} names no Mamba layer in {source}; found: {', '.join(layers[:4])}")
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    cfg = infer_config(state, nslices, source)
    path = common.write(out, "mamba", cfg, state, source,
                        converted_from={"kind": "mamba", "source": source, "prefix": prefix})
    n = sum(v.numel() for v in state.values())
    return path, (f"Mamba layer d_model {cfg.d_model}, d_state {cfg.d_state}, dt_rank {cfg.dt_rank}, directions "
                  f"{cfg.bimamba_type}, {n:,} parameters")
