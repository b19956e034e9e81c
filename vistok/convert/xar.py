"""Official xAR checkpoints (OliverRensu/xAR @ 121e9c9) -> a vistok `xar` export.

Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation", arXiv 2502.20388.

Inputs: the training container written by the official `util/misc.py save_model` (a pickled dict with `model`,
`model_ema`, `optimizer`, `epoch`, `scaler` and `args` as an `argparse.Namespace`; tensors tagged `cuda:0`), read with
`weights_only=True`, the Namespace allow-listed and `map_location="cpu"`; or a bare state dict (.pth/.safetensors, the
released files `eval.py` loads). `weights="ema"` (default) takes `model_ema`, "model" the raw weights.

Names: class_emb -> label_emb.table, time_embed -> time_emb, z_proj -> in_proj, z_proj_ln -> in_norm,
encoder_pos_embed_learned (1, L, D) -> pos_in (L, D), encoder_blocks -> blocks_in, encoder_norm -> mid_norm,
decoder_embed -> mid_proj, decoder_pos_embed_learned -> pos_mid, decoder_blocks -> blocks_out, decoder_norm ->
out_norm, pred -> head, ada_lin -> ada; qkv, proj and the SwiGLU/GEGLU fc1_g, fc1_x, fc2 keep their names. Both use
the same cell-major token order, so nothing is permuted. The official buffers (`mask`, each attention's RoPE tables)
are derived from the config in vistok; they are compared with vistok's own and then dropped, so a checkpoint of a
different layout fails here instead of sampling garbage. The preset is inferred from the shapes (head count from the
RoPE buffer, else from the official model name or the released widths). `time_floor` (default on) makes the export
embed floor(t * 1000) as the official code does, so the converted model reproduces official outputs.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vistok.convert import common
from vistok.errors import VistokError, require
from vistok.generators.xar import PRESETS, XARConfig
from vistok.modules.attention import rope_tables
from vistok.modules.mlp import glu_hidden

RENAMES = [  # (official regex, vistok replacement), first match wins
    (r"^class_emb\.weight$", "label_emb.table.weight"),
    (r"^time_embed\.mlp\.", "time_emb.mlp."),
    (r"^z_proj_ln\.", "in_norm."),
    (r"^z_proj\.", "in_proj."),
    (r"^encoder_pos_embed_learned$", "pos_in"),
    (r"^decoder_pos_embed_learned$", "pos_mid"),
    (r"^encoder_norm\.", "mid_norm."),
    (r"^decoder_embed\.", "mid_proj."),
    (r"^decoder_norm\.", "out_norm."),
    (r"^pred\.", "head."),
    (r"^encoder_blocks\.(\d+)\.ada_lin\.", r"blocks_in.\1.ada."),
    (r"^decoder_blocks\.(\d+)\.ada_lin\.", r"blocks_out.\1.ada."),
    (r"^encoder_blocks\.(\d+)\.(attn\.(qkv|proj)|mlp\.(fc1_g|fc1_x|fc2))\.", r"blocks_in.\1.\2."),
    (r"^decoder_blocks\.(\d+)\.(attn\.(qkv|proj)|mlp\.(fc1_g|fc1_x|fc2))\.", r"blocks_out.\1.\2."),
]
BUFFER = re.compile(r"^(mask|(encoder|decoder)_blocks\.\d+\.attn\.rope\.freqs(_cos|_sin)?)$")
OFFICIAL_NAMES = {"xar_base": "xar-b", "xar_large": "xar-l", "xar_huge": "xar-h"}
RELEASED_HEADS = {768: 12, 1024: 16, 1280: 16}  # width -> heads of xar_base / large / huge
SAMPLING = {  # official README evaluation settings (Euler-Maruyama SDE, CFG linear in the AR step)
    "xar-b": {"steps": 40, "cfg": 2.7}, "xar-l": {"steps": 50, "cfg": 2.3}, "xar-h": {"steps": 50, "cfg": 2.2},
}
LATENT_STRIDE = 16  # KL-16: one token per 16 x 16 pixels


def map_key(key: str) -> str | None:
    """vistok name of an official parameter; None for the derived buffers."""
    if BUFFER.match(key):
        return None
    for pattern, repl in RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    raise VistokError(f"unknown xAR key {key!r}: not an official xAR state dict (or a newer layout); check --from")


def pick_state(obj: Any, weights: str, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(official state dict, provenance) from a training container or a bare state dict."""
    require(weights in ("ema", "model"), f"--weights must be ema or model, got {weights!r}")
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        key = "model_ema" if weights == "ema" else "model"
        if not isinstance(obj.get(key), dict):
            raise VistokError(f"{source} has no {key!r} entry; use --weights model")
        info = {"weights": weights, "epoch": obj.get("epoch"), "args": common.namespace_dict(obj.get("args"))}
        return common.tensors_only(obj[key], f"{source}[{key!r}]"), info
    return common.tensors_only(obj, source), {"weights": "state_dict"}


def infer_config(official: dict[str, torch.Tensor], args: dict[str, Any], heads: int | None, time_floor: bool,
                 source: str) -> tuple[XARConfig, str]:
    """The vistok config of an official state dict, and the preset name it matches ("" for other widths)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in official:
            raise VistokError(f"{source} has no {key}; is it an xAR checkpoint?")
        return tuple(official[key].shape)

    rows, width = shape("class_emb.weight")
    in_channels = shape("z_proj.weight")[1]
    length = shape("encoder_pos_embed_learned")[-2]
    depths = [len({k.split(".")[1] for k in official if k.startswith(f"{half}_blocks.")})
              for half in ("encoder", "decoder")]
    require(depths[0] == depths[1] and depths[0] > 0,
            f"{source}: {depths[0]} encoder and {depths[1]} decoder blocks; vistok's xAR needs the same number (> 0)")
    side = math.isqrt(length)
    require(side * side == length and side % 2 == 0,
            f"{source}: {length} positions is not an even square grid; the official xAR uses 2 x 2 cells")
    hidden = shape("encoder_blocks.0.mlp.fc1_g.weight")[0]
    require(hidden == glu_hidden(width), f"{source}: MLP hidden width {hidden}, vistok expects int(8 x {width} / 3) = "
                                         f"{glu_hidden(width)}")
    if heads is None and "encoder_blocks.0.attn.rope.freqs" in official:  # head_dim / 4 frequencies (2D RoPE)
        heads = width // (4 * official["encoder_blocks.0.attn.rope.freqs"].numel())
    if heads is None:
        preset = OFFICIAL_NAMES.get(str(args.get("model", "")), "")
        heads = PRESETS[preset].heads if preset else RELEASED_HEADS.get(width)
    require(heads is not None, f"{source} has no RoPE buffers to read the head count from; pass --heads")
    cfg = XARConfig(in_channels=in_channels, grid=(side, side), entity="cell", entity_size=side // 2, width=width,
                    depth=depths[0], heads=heads, num_classes=rows - 1, time_floor=time_floor)
    if args:  # the training run's regularisation, for fine-tuning from the export
        cfg = replace(cfg, dropout=float(args.get("proj_dropout", cfg.dropout)),
                      attn_dropout=float(args.get("attn_dropout", cfg.attn_dropout)),
                      label_drop=float(args.get("label_drop_prob", cfg.label_drop)))
    for name in ("xar-b", "xar-l", "xar-h"):
        p = PRESETS[name]
        if (p.width, p.depth, p.heads, p.num_classes, p.in_channels, tuple(p.grid)) == (
                width, depths[0], heads, rows - 1, in_channels, (side, side)):
            return cfg, name
    return cfg, ""


def check_buffers(official: dict[str, torch.Tensor], cfg: XARConfig, source: str) -> None:
    """The official mask and RoPE tables must equal the ones vistok derives from the config."""
    part = cfg.partition
    if "mask" in official:
        mask = official["mask"].reshape(part.num_tokens, part.num_tokens) == 0
        require(torch.equal(mask, part.mask("cpu")), f"{source}: its attention mask is not vistok's block-causal mask "
                                                     f"over {part.num_entities} cells; the layout differs")
    cos, sin = rope_tables(part.positions(), cfg.width // cfg.heads, cfg.rope_theta)
    for key, value in official.items():
        if key.endswith("rope.freqs_cos") or key.endswith("rope.freqs_sin"):
            ref = cos if key.endswith("cos") else sin
            if value.shape != ref.shape or not torch.allclose(value.float(), ref, atol=1e-5):
                raise VistokError(f"{source}: {key} differs from vistok's 2D RoPE table for {cfg.heads} heads; "
                                  "wrong --heads, or a layout vistok does not implement")


def convert(input: str | Path, out: str | Path, weights: str = "ema", time_floor: bool = True, heads: int | None = None,
            vae: str | Path | None = None) -> tuple[Path, str]:
    """Write the export of an official xAR checkpoint; with `vae` (a KL VAE export folder or MAR's kl16.ckpt) the
    VAE goes into `out/tokenizer/` so `vistok sample --ckpt out` decodes to pixels. Returns (out, summary)."""
    source = str(input)
    official, info = pick_state(common.read_weights(input, "xAR checkpoint"), weights, source)
    official = common.strip_prefix(official)
    cfg, preset = infer_config(official, info.get("args", {}), heads, time_floor, source)
    check_buffers(official, cfg, source)
    state = {}
    for key, value in official.items():
        name = map_key(key)
        if name is not None:
            state[name] = value.squeeze(0) if name in ("pos_in", "pos_mid") else value
    meta: dict[str, Any] = {"converted_from": {"kind": "xar", "source": source, "preset": preset or "custom",
                                               **{k: v for k, v in info.items() if v not in (None, {})}}}
    if preset:
        meta["sample"] = {**SAMPLING[preset], "cfg_schedule": "linear", "method": "sde"}
    extra = None
    if vae is not None:  # checked before anything is written, written into the export's folder with it
        from vistok.convert import mar_vae

        spec, extra = mar_vae.attach(vae, tokens=(cfg.in_channels, *cfg.grid))
        meta.update(tokenizer=spec, resolution=cfg.grid[0] * LATENT_STRIDE)
    path = common.write(out, "xar", cfg, state, source, extra=extra, **meta)
    n = sum(v.numel() for k, v in state.items())
    what = {"ema": "EMA weights", "model": "raw (non-EMA) weights"}.get(info["weights"], "bare state dict")
    tokenizer = ", tokenizer: " + str(vae) if vae is not None else ", no tokenizer (pass --vae to sample images)"
    return path, (f"xAR {preset or f'(width {cfg.width}, depth {cfg.depth}+{cfg.depth}, {cfg.heads} heads)'}, {what}, "
                  f"{n:,} parameters, time embedding "
                  f"{'floor(t*1000) as official' if time_floor else 'continuous t*1000'}"
                  f"{tokenizer}")
