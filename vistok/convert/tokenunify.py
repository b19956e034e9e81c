"""TokenUnify's pretrained model (ydchen0806/TokenUnify, `src/segmamba_ar.py`) -> a vistok `tokenunify` export.

Chen et al., "TokenUnify: Scalable Autoregressive Visual Pre-training with Mixture Token Prediction", arXiv 2405.16847.
The released pretrained weights (TokenUnify-Base / -Large / -Huge, the Hugging Face repository `cyd0806/TokenUnify`)
come from the official autoregressive pretraining script (`src/main_pretrain_autoregress.py`), whose model is the
SegMamba of `src/segmamba_ar.py`: the SegMamba layout (`vit.*` Mamba encoder, MONAI UNETR `encoder1..5`,
`decoder1..5`, `out`) plus the next-token head `preciever.*`, three stride-2 3^3 convolutions (1 -> 12 -> 12 -> 1
channels) and one Linear from the reduced map (2 x 20 x 20 for the paper's 16 x 160 x 160 crop) to the next token's
voxels (4 x 16 x 16). vistok's `TokenUnify` (vistok/em/objectives.py) is the same network: the SegMamba under
`backbone.` (mapped by `vistok.convert.segmamba.map_key`) and `next_head` for the head. segmamba_ar.py's own sizes
(depths [3, 3, 3, 3], (1, 3, 3) kernels, widths 32-256, hidden 512) convert to the preset `tokenunify-ar-base`:

    preciever.conv1 / conv2 / conv3 -> next_head.convs.0 / .2 / .4      preciever.mlp -> next_head.proj

A training container (`{'model', 'optimizer', 'epoch', 'scaler', 'args'}`, as the official scripts save it) is
unwrapped to its `model`, and DistributedDataParallel's `module.` prefix is dropped. The crop and token size are not in
the weights: the Linear fixes prod(ceil(crop / 8)) and prod(patch), which the paper's (16, 160, 160) and (4, 16, 16)
satisfy; other sizes are given with `--input-size` / `--patch-size` and checked against the Linear. A file without
`preciever.*` (the random-token stage alone, `src/segmamba.py`) holds no next-token head: convert it with
`--from segmamba`.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vistok.convert import common, segmamba
from vistok.em.objectives import PRESETS, TokenUnifyConfig
from vistok.errors import VistokError

HEAD = {"conv1": "convs.0", "conv2": "convs.2", "conv3": "convs.4", "mlp": "proj"}
PAPER_CROP = (16, 160, 160)
PAPER_PATCH = (4, 16, 16)


def map_key(key: str) -> str:
    """vistok name of an official `segmamba_ar.SegMamba` state-dict key."""
    if key.startswith("preciever."):
        layer, _, rest = key[len("preciever."):].partition(".")
        if layer not in HEAD or rest not in ("weight", "bias"):
            raise VistokError(f"unknown next-token head key {key!r}: not TokenUnify's src/segmamba_ar.py layout")
        return f"next_head.{HEAD[layer]}.{rest}"
    return "backbone." + segmamba.map_key(key)


def _sizes(state: dict[str, torch.Tensor], channels: int, input_size: tuple[int, ...] | None,
           patch_size: tuple[int, ...] | None, source: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The crop and token sizes: given, or the paper's; either way they must fit the head's Linear."""
    out_features, in_features = state["preciever.mlp.weight"].shape
    crop = tuple(input_size or PAPER_CROP)
    patch = tuple(patch_size or PAPER_PATCH)
    reduced = math.prod(math.ceil(s / 8) for s in crop)
    if reduced != in_features or channels * math.prod(patch) != out_features:
        raise VistokError(
            f"{source}: the next-token head maps {in_features} -> {out_features} features, which a {crop} crop with "
            f"{patch} tokens does not give ({reduced} -> {channels * math.prod(patch)}); pass the run's "
            "--input-size Z,Y,X and --patch-size Z,Y,X")
    return crop, patch


def convert(input: str | Path, out: str | Path, nslices: int = 5, input_size: tuple[int, ...] | None = None,
            patch_size: tuple[int, ...] | None = None) -> tuple[Path, str]:
    """Write the `tokenunify` export of an official TokenUnify pretraining checkpoint (.pth / .safetensors)."""
    source = str(input)
    official = common.read_state_dict(input, "TokenUnify checkpoint")
    if "preciever.mlp.weight" not in official:
        raise VistokError(f"{source} has no next-token head (preciever.*): it is not a TokenUnify pretraining "
                          "checkpoint; a SegMamba without the head converts with --from segmamba")
    backbone = segmamba.infer_config({k: v for k, v in official.items() if not k.startswith("preciever.")},
                                     nslices, source)
    crop, patch = _sizes(official, backbone.in_chans, input_size, patch_size, source)
    cfg = TokenUnifyConfig(backbone=backbone, input_size=crop, patch_size=patch,
                           head_channels=official["preciever.conv1.weight"].shape[0])
    state = {map_key(k): v for k, v in official.items()}
    path = common.write(out, "tokenunify", cfg, state, source, converted_from={"kind": "tokenunify", "source": source})
    n = sum(v.numel() for v in state.values())
    preset = next((name for name, c in PRESETS.items() if c == cfg), None)  # e.g. tokenunify-ar-base (segmamba_ar.py)
    named = f" (preset {preset})" if preset else ""
    return path, (f"TokenUnify{named}: SegMamba feat_size {list(backbone.feat_size)}, hidden {backbone.hidden_size}, "
                  f"depths {list(backbone.depths)}, Mamba {backbone.bimamba_type}; next-token head for {crop} crops of "
                  f"{patch} tokens; {n:,} parameters")
