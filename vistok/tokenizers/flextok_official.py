"""Released FlexTok tokenizers (apple/ml-flextok @ 87d00cc; EPFL-VILAB/flextok_*) -> a vistok `flextok` export.

Used by `vistok convert --from flextok` (`vistok/convert/flextok.py` reads bare files) and by the export loader, which
converts a released hub folder on first use (`cached`); it sits beside the model so the loader needs nothing above it.

Bachmann, Allardice, Mizrahi et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length",
arXiv 2502.13967.

Inputs: a released hub folder (`config.json` holding the Hydra tree {"encoder", "decoder", "regularizer", "vae", ...}
and `model.safetensors`), or a bare state-dict file (.safetensors, or a pickle read with `weights_only=True`).
Official names, all under `encoder.module_dict.<name>.` / `decoder.module_dict.<name>.`:
  enc_patch_emb.patch_proj -> encoder.patch_emb        dec_noise_patch_emb.patch_proj -> decoder.patch_emb
  enc_register_module.registers -> encoder.registers   dec_from_latents.proj -> decoder.from_codes
  enc_transformer.blocks.i -> encoder.blocks.i         dec_time_embedder.mlp -> decoder.time_emb.mlp
  enc_to_latents.proj -> encoder.head                  dec_nested_dropout.dropout_mask_token -> decoder.mask_token
  dec_to_patches.{adaLN_modulation.1, proj} -> decoder.head.{ada, linear}
  dec_transformer.blocks.i -> decoder.blocks.i (adaLN_modulation.1 -> ada)
  dec_registers_posemb_module.posembs (1, 1, D, K) -> register_pos (K, D)
  dec_latent_dropout.nullcond -> decoder.null_token (ZeroNullCond: 0)
In a block, attn.wq / wk / wv stack into attn.qkv, attn.proj stays, the gated MLP's fc1 (activated) / fc3 / fc2 become
fc1_g / fc1_x / fc2. Patches are flattened (p1 p2 c) officially and (c p1 p2) in vistok: the patch embeddings'
columns and the velocity head's rows are permuted. The fixed 2D sin-cos tables (`*_posemb_module.posembs`) are compared
with the ones vistok derives and dropped. `vae.*` keys (the official wrapper around a diffusers AutoencoderKL, so
`vae.vae.<diffusers name>`) become a diffusers folder in the export's `tokenizer/`; without them the export works on
latents only (`Tokenizer.encode_latents` / `decode_latents`).

Values the weights do not hold come from the hub config when it is there, else from the options, whose defaults are the
released models' (FSQ levels [8, 8, 8, 5, 5, 5]; time embedder max_timestep 1.0, i.e. t in [0, 1]; nested dropout
"uniform", as in the released decoder configs; head dim 64; 16 latent channels). The converted model runs with the
official numerics (`FlexTokConfig.official_numerics`): LayerNorm eps 1e-5, attention logits scaled by 8 / head_dim,
time frequencies scaled before the product with t. Decoding defaults: the official README's 20 steps, guidance 7.5 with
APG.

`cached(folder)` converts an official hub folder once into vistok's cache (`VISTOK_CACHE`, default
~/.cache/vistok), so `vistok.load("hf://EPFL-VILAB/flextok_d18_d28_dfn")` works directly and offline afterwards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from vistok.config import to_dict
from vistok.errors import VistokError, require
from vistok.io import exports
from vistok.io.checks import MAX_CONFIG_BYTES
from vistok.modules.posemb import sincos_posemb
from vistok.tokenizers.flextok import FlexTok, FlexTokConfig

LEVELS = (8, 8, 8, 5, 5, 5)  # released FSQ levels, 64,000 codes
MAX_TIMESTEP = 1.0  # released decoders see t in [0, 1]
NESTED_DROPOUT = "uniform"  # released decoder configs
HEAD_DIM = 64
LATENT_CHANNELS = 16
SAMPLE = {"steps": 20, "cfg": 7.5, "guidance": "apg"}  # the official README's decoding settings
ENC, DEC = "encoder.module_dict.", "decoder.module_dict."
BLOCK = re.compile(r"^(enc|dec)_transformer\.blocks\.(\d+)\.(.+)$")
BLOCK_NAMES = {"attn.proj.weight": "attn.proj.weight", "mlp.fc1.weight": "mlp.fc1_g.weight",
               "mlp.fc3.weight": "mlp.fc1_x.weight", "mlp.fc2.weight": "mlp.fc2.weight",
               "adaLN_modulation.1.weight": "ada.weight", "adaLN_modulation.1.bias": "ada.bias"}
SIMPLE = {  # official name (after the module_dict prefix) -> vistok name
    "enc_patch_emb.patch_proj.bias": "encoder.patch_emb.bias",
    "enc_register_module.registers": "encoder.registers",
    "enc_to_latents.proj.weight": "encoder.head.weight",
    "enc_to_latents.proj.bias": "encoder.head.bias",
    "dec_from_latents.proj.weight": "decoder.from_codes.weight",
    "dec_from_latents.proj.bias": "decoder.from_codes.bias",
    "dec_nested_dropout.dropout_mask_token": "decoder.mask_token",
    "dec_latent_dropout.nullcond": "decoder.null_token",
    "dec_noise_patch_emb.patch_proj.bias": "decoder.patch_emb.bias",
    "dec_time_embedder.mlp.0.weight": "decoder.time_emb.mlp.0.weight",
    "dec_time_embedder.mlp.0.bias": "decoder.time_emb.mlp.0.bias",
    "dec_time_embedder.mlp.2.weight": "decoder.time_emb.mlp.2.weight",
    "dec_time_embedder.mlp.2.bias": "decoder.time_emb.mlp.2.bias",
    "dec_to_patches.adaLN_modulation.1.weight": "decoder.head.ada.weight",
    "dec_to_patches.adaLN_modulation.1.bias": "decoder.head.ada.bias",
}


# ----------------------------------------------------------------------------------------------------- reading
def hub_config(folder: str | Path) -> dict[str, Any] | None:
    """The Hydra tree of a released hub folder's config.json ({"encoder", "decoder", ...}, also when nested under
    "config" as huggingface_hub's mixin may write it), or None for anything else (a vistok export has a "family")."""
    path = Path(folder) / "config.json"
    try:  # anything unreadable is left to the export reader, which names the problem in one line
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        spec = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return None
    if isinstance(spec, dict) and "family" not in spec and isinstance(spec.get("config"), dict):
        spec = spec["config"]
    ok = isinstance(spec, dict) and "family" not in spec and all(isinstance(spec.get(k), dict)
                                                                 for k in ("encoder", "decoder"))
    return spec if ok else None


def is_official(folder: str | Path) -> bool:
    """Whether a folder is laid out as a released FlexTok hub repository (Hydra config.json + model.safetensors)."""
    return hub_config(folder) is not None and (Path(folder) / "model.safetensors").is_file()


def read_hub(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(official state dict, Hydra config tree) of a released hub folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not is_official(path):
        raise VistokError(f"{path} is not a released FlexTok folder (config.json with the encoder/decoder Hydra tree + "
                          "model.safetensors); pass that folder or a state-dict file")
    try:
        state = load_file(str(path / "model.safetensors"))
    except (OSError, SafetensorError) as err:
        raise VistokError(f"cannot read {path / 'model.safetensors'} ({type(err).__name__}); "
                          "is the download complete?") from None
    return state, hub_config(path) or {}


def _get(tree: dict[str, Any], *keys: str) -> Any:
    """tree[k0][k1]... or None; module entries sit under "module_dict" in the Hydra tree."""
    node: Any = tree
    for key in keys:
        if isinstance(node, dict) and key not in node and isinstance(node.get("module_dict"), dict):
            node = node["module_dict"]
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def hub_settings(hub: dict[str, Any]) -> dict[str, Any]:
    """What the hub config says about values the weights do not hold (absent entries are left out)."""
    found = {
        "levels": _get(hub, "regularizer", "levels"),
        "max_timestep": _get(hub, "decoder", "dec_time_embedder", "max_timestep"),
        "nested_dropout": _get(hub, "decoder", "dec_nested_dropout", "size_sampling_mode"),
        "head_dim": _get(hub, "encoder", "enc_transformer", "head_dim"),
        "dec_head_dim": _get(hub, "decoder", "dec_transformer", "head_dim"),
        "null_target": _get(hub, "decoder", "dec_latent_dropout", "_target_"),
        "null_p": _get(hub, "decoder", "dec_latent_dropout", "dropout_prob"),
        "null_single": _get(hub, "decoder", "dec_latent_dropout", "replace_with_single_token"),
        "register_posemb": _get(hub, "decoder", "dec_registers_posemb_module", "posemb_type"),
        "enc_mask": _get(hub, "encoder", "enc_seq_packer", "mask_mode"),
        "dec_mask": _get(hub, "decoder", "dec_seq_packer", "mask_mode"),
        "channels": _get(hub, "encoder", "enc_patch_emb", "channels_in"),
        "patch_sizes": _get(hub, "encoder", "enc_patch_emb", "patch_sizes"),
        "vae_scaling": _get(hub, "vae", "scaling_factor"),
        "vae_sample": _get(hub, "vae", "sample_posterior"),
        "vae_groups": _get(hub, "vae", "norm_num_groups"),
    }
    return {k: v for k, v in found.items() if v is not None}


# ----------------------------------------------------------------------------------------------------- config
def infer_config(official: dict[str, torch.Tensor], hub: dict[str, Any], levels: Sequence[int] | None,
                 max_timestep: float | None, nested_dropout: str | None, head_dim: int | None,
                 source: str) -> FlexTokConfig:
    """The FlexTokConfig of an official state dict: widths, depths, registers and grid from the shapes; the rest from
    the hub config, else the options, else the released defaults."""
    def shape(key: str) -> tuple[int, ...]:
        require(key in official, f"{source} has no {key}; is it a FlexTok checkpoint (--from flextok)?")
        return tuple(official[key].shape)

    def setting(name: str, given: Any, default: Any) -> Any:
        if name in hub:
            if given is not None and given != hub[name]:
                raise VistokError(f"{source}: its config.json sets {name}={hub[name]!r}, the option says {given!r}; "
                                  "drop the option")
            return hub[name]
        return default if given is None else given

    enc_width = shape(ENC + "enc_patch_emb.patch_proj.weight")[0]
    patch_dim = shape(ENC + "enc_patch_emb.patch_proj.weight")[1]
    dec_width = shape(DEC + "dec_noise_patch_emb.patch_proj.weight")[0]
    registers = shape(ENC + "enc_register_module.registers")[0]
    depth = {side: 1 + max((int(m.group(2)) for k in official if (m := BLOCK.match(k.split("module_dict.", 1)[-1]))
                            and m.group(1) == side), default=-1) for side in ("enc", "dec")}
    require(depth["enc"] >= 1 and depth["dec"] >= 1,
            f"{source} has no transformer blocks under enc_transformer / dec_transformer")
    channels = hub.get("channels") or (shape("vae.vae.decoder.conv_in.weight")[1]
                                       if "vae.vae.decoder.conv_in.weight" in official
                                       else LATENT_CHANNELS)
    patch = math.isqrt(patch_dim // channels)
    require(patch * patch * channels == patch_dim,
            f"{source}: patches of {patch_dim} values do not fit {channels} latent "
             "channels in a square patch")
    grid = shape(ENC + "enc_posemb_module.posembs")[-2:] if ENC + "enc_posemb_module.posembs" in official else None
    require(grid is not None, f"{source} has no enc_posemb_module.posembs to read the latent grid from")
    levels = tuple(int(v) for v in setting("levels", None if levels is None else list(levels), list(LEVELS)))
    require(len(levels) == shape(ENC + "enc_to_latents.proj.weight")[0],
            f"{source}: the encoder emits {shape(ENC + 'enc_to_latents.proj.weight')[0]} values per token but the FSQ "
            f"levels {list(levels)} have {len(levels)}; pass --fsq-levels")
    head_dim = int(setting("head_dim", head_dim, HEAD_DIM))
    require(hub.get("dec_head_dim", head_dim) == head_dim,
            f"{source}: encoder and decoder head dims differ; vistok uses one")
    mode = str(setting("nested_dropout", nested_dropout, NESTED_DROPOUT))
    require(mode in ("uniform", "pow2"),
            f"{source}: nested-dropout mode {mode!r} is not one vistok trains with (uniform, pow2)")
    require(hub.get("enc_mask", "causal_last") == "causal_last" and hub.get("dec_mask", "full") == "full",
            f"{source}: attention masks {hub.get('enc_mask')!r} / {hub.get('dec_mask')!r}; vistok implements "
            "causal_last / full")
    require(not hub.get("null_single", False),
            f"{source}: a single-token null condition (replace_with_single_token) is "
            "not implemented in vistok")
    require(hub.get("register_posemb", "learnable_sum") == "learnable_sum",
            f"{source}: register positions of type {hub.get('register_posemb')!r}; vistok implements learnable_sum")
    ada = shape(DEC + "dec_transformer.blocks.0.adaLN_modulation.1.weight")[0]
    require(ada == 12 * dec_width, f"{source}: adaLN modulation of {ada} rows; vistok's decoder modulates patches and "
                                   f"registers separately (expansion 2: {12 * dec_width} rows)")
    null_p = float(hub.get("null_p", 0.1))
    return FlexTokConfig(
        in_channels=channels, grid=(grid[0] * patch, grid[1] * patch), patch=patch, registers=registers, levels=levels,
        enc_width=enc_width, enc_depth=depth["enc"], dec_width=dec_width, dec_depth=depth["dec"], head_dim=head_dim,
        nested_dropout=mode, null_cond_p=null_p if 0 <= null_p < 1 else 0.1, repa_dim=0, official_numerics=True,
        max_timestep=float(setting("max_timestep", max_timestep, MAX_TIMESTEP)),
    )


# ----------------------------------------------------------------------------------------------------- weights
def map_state(official: dict[str, torch.Tensor],
              cfg: FlexTokConfig, source: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(vistok FlexTok state dict, names of the official keys left out on purpose: sin-cos tables, REPA heads)."""
    p, c = cfg.patch, cfg.in_channels
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in official.items():
        if key.startswith("vae."):
            continue
        name = key[len(ENC):] if key.startswith(ENC) else key[len(DEC):] if key.startswith(DEC) else None
        if name is None:
            raise VistokError(f"{source}: unexpected key {key!r} (neither encoder.module_dict, "
                              "decoder.module_dict nor vae)")
        if name in SIMPLE:
            state[SIMPLE[name]] = value
        elif name in ("enc_patch_emb.patch_proj.weight", "dec_noise_patch_emb.patch_proj.weight"):  # columns (p1 p2 c)
            state[f"{'encoder' if name[0] == 'e' else 'decoder'}.patch_emb.weight"] = rearrange(
                value, "d (p1 p2 c) -> d (c p1 p2)", p1=p, p2=p, c=c)
        elif name == "dec_to_patches.proj.weight":  # rows (p1 p2 c)
            state["decoder.head.linear.weight"] = rearrange(value, "(p1 p2 c) d -> (c p1 p2) d", p1=p, p2=p, c=c)
        elif name == "dec_to_patches.proj.bias":
            state["decoder.head.linear.bias"] = rearrange(value, "(p1 p2 c) -> (c p1 p2)", p1=p, p2=p, c=c)
        elif name == "dec_registers_posemb_module.posembs":  # (1, 1, D, K): one learnable axis
            require(value.shape[:2] == (1, 1),
                    f"{source}: register positions of shape {tuple(value.shape)}; expected (1, 1, D, K)")
            state["decoder.register_pos"] = rearrange(value[0, 0], "d k -> k d")
        elif name in ("enc_posemb_module.posembs", "dec_patches_posemb_module.posembs"):
            check_sincos(value, source, name)
            dropped.append(key)
        elif "repa" in name:  # REPA projector heads: training only
            dropped.append(key)
        elif m := BLOCK.match(name):
            side, i, rest = ("encoder" if m.group(1) == "enc" else "decoder"), m.group(2), m.group(3)
            if rest in ("attn.wq.weight", "attn.wk.weight", "attn.wv.weight"):
                qkv.setdefault(f"{side}.blocks.{i}.attn.qkv.weight", {})[rest[6]] = value
            elif rest in BLOCK_NAMES:
                state[f"{side}.blocks.{i}.{BLOCK_NAMES[rest]}"] = value
            else:
                raise VistokError(f"{source}: unexpected block parameter {key!r}; the official blocks are bias-free")
        else:
            raise VistokError(f"{source}: unexpected key {key!r}; is this a FlexTok checkpoint of apple/ml-flextok?")
    for name, parts in qkv.items():
        require(set(parts) == {"q", "k", "v"}, f"{source}: {name} lacks one of wq / wk / wv")
        state[name] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3D, D): rows q | k | v, as attention splits
    state.setdefault("decoder.register_pos", torch.zeros(cfg.registers, cfg.dec_width))  # no register positions
    state.setdefault("decoder.null_token", torch.zeros(cfg.dec_width))  # ZeroNullCond: all-zero null registers
    return state, dropped


def check_sincos(table: torch.Tensor, source: str, name: str) -> None:
    """An official (1, D, h, w) sin-cos table must be the one vistok derives for that grid."""
    ours = rearrange(sincos_posemb(tuple(table.shape[-2:]), table.shape[1]), "(h w) d -> 1 d h w", h=table.shape[-2])
    if table.shape != ours.shape or not torch.allclose(table.float(), ours, atol=1e-5):
        raise VistokError(f"{source}: {name} is not the 2D sin-cos table vistok derives; "
                          "a layout vistok does not implement")


# ----------------------------------------------------------------------------------------------------- the VAE
def vae_part(official: dict[str, torch.Tensor], hub: dict[str, Any], source: str):
    """(diffusers config, state) of the `vae.*` keys, or None. The architecture is read from the shapes (the released
    VAE: block widths [128, 256, 512, 512], 2 layers per block, 16 latent channels)."""
    prefix = "vae.vae." if any(k.startswith("vae.vae.") for k in official) else "vae."
    state = {k[len(prefix):]: v for k, v in official.items() if k.startswith(prefix)}
    if not state:
        return None
    widths, i = [], 0
    while f"encoder.down_blocks.{i}.resnets.0.conv1.weight" in state:
        widths.append(state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
        i += 1
    require(widths and "decoder.conv_in.weight" in state, f"{source}: its vae.* keys are not a diffusers AutoencoderKL")
    layers = len({k.split(".")[4] for k in state if k.startswith("encoder.down_blocks.0.resnets.")})
    scaling = hub.get("vae_scaling")
    require(scaling, f"{source}: its config.json gives no vae.scaling_factor, so its latents cannot be scaled as in "
                     "training; add the VAE's scaling_factor to config.json")
    n = len(widths)
    config = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "act_fn": "silu",
              "block_out_channels": widths, "layers_per_block": layers,
              "norm_num_groups": int(hub.get("vae_groups", 32)),
              "latent_channels": int(state["decoder.conv_in.weight"].shape[1]), "scaling_factor": float(scaling),
              "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n}
    return config, state


def check_on_meta(build, state: dict[str, torch.Tensor], source: str) -> None:
    """`state` must load strictly (keys and shapes) into the model `build()` makes on the meta device (no memory)."""
    with torch.device("meta"):
        model = build()
    with warnings.catch_warnings():  # copying into meta parameters is the no-op wanted here
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        exports.load_state_strict(model, state, source)


# ----------------------------------------------------------------------------------------------------- export
def export(official: dict[str, torch.Tensor], hub_tree: dict[str, Any], out: str | Path, source: str,
           fsq_levels: Sequence[int] | None = None, max_timestep: float | None = None,
           nested_dropout: str | None = None, head_dim: int | None = None) -> tuple[Path, str]:
    """Write the vistok export of an official state dict (with its hub config tree, or {}). Everything is checked
    before anything is written. Returns (out, summary)."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise VistokError(f"--out {out} is a file; pass a folder for the export")
    hub = hub_settings(hub_tree)
    cfg = infer_config(official, hub, fsq_levels, max_timestep, nested_dropout, head_dim, source)
    state, dropped = map_state(official, cfg, source)
    check_on_meta(lambda: FlexTok(cfg), state, source)
    vae = vae_part(official, hub, source)
    meta: dict[str, Any] = {"converted_from": {"kind": "flextok", "source": source, "dropped": len(dropped)},
                            "sample": SAMPLE}
    extra = None
    if vae is not None:
        vae_config, vae_state = vae
        from diffusers import AutoencoderKL

        check_on_meta(lambda: AutoencoderKL(**{k: v for k, v in vae_config.items() if not k.startswith("_")}),
                      vae_state, f"{source} (vae.*)")
        require(vae_config["latent_channels"] == cfg.in_channels,
                f"{source}: the VAE has {vae_config['latent_channels']} latent channels, the tokenizer "
                f"{cfg.in_channels}")
        spec = {"family": "vae", "path": "tokenizer",
                "config": {"arch": "flextok-c16", "scaling_factor": vae_config["scaling_factor"],
                            "sample": bool(hub.get("vae_sample", True))}}
        meta.update(tokenizer=spec, resolution=cfg.grid[0] * 2 ** (len(vae_config["block_out_channels"]) - 1))

        def extra(folder: Path) -> None:
            from safetensors.torch import save_file

            (folder / "tokenizer").mkdir()
            (folder / "tokenizer" / "config.json").write_text(json.dumps(vae_config, indent=2))
            save_file({k: v.contiguous() for k, v in vae_state.items()},
                      str(folder / "tokenizer" / "diffusion_pytorch_model.safetensors"))
    else:
        meta.update(tokenizer={"family": "latents", "config": {"channels": cfg.in_channels, "grid": list(cfg.grid)}},
                    resolution=cfg.grid[0])
    path = exports.write_export(out, "flextok", to_dict(cfg), state, extra=extra, **meta)
    n = sum(v.numel() for v in state.values())
    return path, (f"FlexTok d{cfg.enc_depth}-d{cfg.dec_depth} (widths {cfg.enc_width}/{cfg.dec_width}), {n:,} "
                  f"parameters, {cfg.registers} tokens of {math.prod(cfg.levels):,}, "
                  f"{cfg.in_channels}x{cfg.grid[0]}x{cfg.grid[1]} latents, "
                  + ("VAE in tokenizer/" if vae is not None
                     else "no VAE (latents only: encode_latents / decode_latents)"))


def cache_root() -> Path:
    return Path(os.environ.get("VISTOK_CACHE") or Path.home() / ".cache" / "vistok").expanduser()


def cached(folder: str | Path) -> Path:
    """The vistok export of an official hub folder, converted on first use into the cache and reused afterwards. The
    cache entry is keyed by the folder's path and its files' sizes and times (a hub snapshot's path names its
    commit)."""
    folder = Path(folder).resolve()
    stamp = [str(folder)] + [f"{(folder / n).stat().st_size}:{(folder / n).stat().st_mtime_ns}"
                             for n in ("config.json", "model.safetensors")]
    key = hashlib.sha256("|".join(stamp).encode()).hexdigest()[:16]
    target = cache_root() / "flextok" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', folder.name)[:40]}-{key}"
    if not ((target / "config.json").is_file() and (target / "model.safetensors").is_file()):
        export(*read_hub(folder), target, str(folder))
    return target


__all__ = ["cached", "export", "infer_config", "is_official", "map_state", "read_hub"]
