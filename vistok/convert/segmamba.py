"""TokenUnify's SegMamba (ydchen0806/TokenUnify @ 221674f, `src/segmamba.py`) -> a vistok `segmamba` export.

Xing et al., "SegMamba", MICCAI 2024; Chen et al., "TokenUnify", arXiv 2405.16847. The official model nests the Mamba
encoder under `vit.` and MONAI UNETR blocks under `encoder1..5`, `decoder1..5` and `out`; vistok's
`vistok/em/backbone.py` names them after what they do. Mamba layers (the vendored v3 fork: `A_log/D/conv1d/x_proj/
dt_proj` plus `_b` and `_s` copies, shared `in_proj`/`out_proj`) keep their names. The map (official -> vistok):

    vit.downsample_layers.0.0 (stem) -> encoder.downsample.0     vit.downsample_layers.i.1 -> encoder.downsample.i.1
    vit.stages.i.j.{norm,mamba}      -> encoder.stages.i.j.*     vit.mlps.i.fc1 / fc2      -> encoder.mlps.i.0 / .2
    vit.gscs.i.proj / proj2          -> encoder.gscs.i.conv3.0.0 / conv3.1.0 (the two 3^3 convs)
    vit.gscs.i.proj3 / proj4         -> encoder.gscs.i.conv1.0 / mix.0 (the 1^3 branch / the 1^3 mixing conv)
    encoder1.layer.conv{1,2,3}.conv  -> enc_input.{conv1,conv2,proj}
    encoder{2..5}.layer.conv{1,2,3}.conv -> enc_skips.{0..3}.{conv1,conv2,proj}
    decoder{5..2}.transp_conv.conv   -> decoders.{0..3}.up       decoder{5..2}.conv_block.conv{1,2,3}.conv -> .block.*
    decoder1.layer.conv{1,2}.conv    -> dec_out.{conv1,conv2}    out.conv.conv -> head

InstanceNorms have no parameters on either side. The config is read off the shapes (`nslices` is not stored: 5, the
official default).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from vistok.convert import common
from vistok.em.backbone import SegMambaConfig
from vistok.errors import VistokError, require

_UNETR = {"conv1": "conv1", "conv2": "conv2", "conv3": "proj"}
_GSC = {"proj": "conv3.0.0", "proj2": "conv3.1.0", "proj3": "conv1.0", "proj4": "mix.0"}


def map_key(key: str) -> str:
    """vistok name of an official SegMamba state-dict key."""
    rules = [
        (r"^vit\.downsample_layers\.0\.0\.(.+)$", lambda m: f"encoder.downsample.0.{m[1]}"),
        (r"^vit\.downsample_layers\.(\d)\.1\.(.+)$", lambda m: f"encoder.downsample.{m[1]}.1.{m[2]}"),
        (r"^vit\.stages\.(.+)$", lambda m: f"encoder.stages.{m[1]}"),
        (r"^vit\.gscs\.(\d)\.(proj\d?)\.(.+)$", lambda m: f"encoder.gscs.{m[1]}.{_GSC[m[2]]}.{m[3]}"),
        (r"^vit\.mlps\.(\d)\.fc([12])\.(.+)$", lambda m: f"encoder.mlps.{m[1]}.{2 * (int(m[2]) - 1)}.{m[3]}"),
        (r"^encoder1\.layer\.(conv[123])\.conv\.(.+)$", lambda m: f"enc_input.{_UNETR[m[1]]}.{m[2]}"),
        (r"^encoder([2-5])\.layer\.(conv[123])\.conv\.(.+)$",
         lambda m: f"enc_skips.{int(m[1]) - 2}.{_UNETR[m[2]]}.{m[3]}"),
        (r"^decoder([2-5])\.transp_conv\.conv\.(.+)$", lambda m: f"decoders.{5 - int(m[1])}.up.{m[2]}"),
        (r"^decoder([2-5])\.conv_block\.(conv[123])\.conv\.(.+)$",
         lambda m: f"decoders.{5 - int(m[1])}.block.{_UNETR[m[2]]}.{m[3]}"),
        (r"^decoder1\.layer\.(conv[123])\.conv\.(.+)$", lambda m: f"dec_out.{_UNETR[m[1]]}.{m[2]}"),
        (r"^out\.conv\.conv\.(.+)$", lambda m: f"head.{m[1]}"),
    ]
    for pattern, name in rules:
        match = re.match(pattern, key)
        if match and (not pattern.startswith(r"^vit\.gscs") or match[2] in _GSC):
            return name(match)
    raise VistokError(f"unknown SegMamba key {key!r}: not TokenUnify's src/segmamba.py layout; check --from")


def infer_config(state: dict[str, torch.Tensor], nslices: int, source: str) -> SegMambaConfig:
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise VistokError(f"{source} has no {key}; is it TokenUnify's SegMamba?")
        return tuple(state[key].shape)

    feat = tuple(shape(f"vit.gscs.{i}.proj.weight")[0] for i in range(4))
    depths = tuple(len({k.split(".")[3] for k in state if k.startswith(f"vit.stages.{i}.")}) for i in range(4))
    first = next((f"vit.stages.{i}.0.mamba." for i in range(4) if depths[i]), None)
    mamba = {}
    if first is not None:
        d_inner, d_state = shape(first + "A_log")
        mamba = dict(d_state=d_state, d_conv=shape(first + "conv1d.weight")[-1],
                     expand=d_inner // shape(first + "in_proj.weight")[1],
                     bimamba_type="v3" if first + "A_s_log" in state
                     else "v2" if first + "A_b_log" in state else "none")
    if shape("vit.downsample_layers.0.0.weight")[2] > 1:  # a stem with a z kernel: vistok's isotropic layout
        mamba["encoder_z"] = "isotropic"
    return SegMambaConfig(in_chans=shape("vit.downsample_layers.0.0.weight")[1],
                          out_chans=shape("out.conv.conv.weight")[0],
                          feat_size=feat, hidden_size=shape("encoder5.layer.conv1.conv.weight")[0], depths=depths,
                          kernel_size=shape("encoder1.layer.conv1.conv.weight")[2:], nslices=nslices, **mamba)


def convert(input: str | Path, out: str | Path, nslices: int = 5) -> tuple[Path, str]:
    """Write the export of a TokenUnify SegMamba state dict (.pth / .safetensors; a `model` / `state_dict` entry of
    a training checkpoint is unwrapped)."""
    source = str(input)
    official = common.read_state_dict(input, "SegMamba checkpoint")
    cfg = infer_config(official, nslices, source)
    state = {map_key(k): v for k, v in official.items()}
    require(len(state) == len(official), f"{source}: two official keys map to one vistok key; report this layout")
    path = common.write(out, "segmamba", cfg, state, source, converted_from={"kind": "segmamba", "source": source})
    n = sum(v.numel() for v in state.values())
    return path, (f"SegMamba feat_size {list(cfg.feat_size)}, hidden {cfg.hidden_size}, depths {list(cfg.depths)}, "
                  f"Mamba {cfg.bimamba_type}, {n:,} parameters")
