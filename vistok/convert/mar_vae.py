"""MAR's KL-16 VAE (LTH14/mar @ fe470ac, `kl16.ckpt`) -> a vistok `kl-vae` export.

Li et al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838; the architecture is LDM's
KL autoencoder (Rombach et al., arXiv 2112.10752), written in `vistok/tokenizers/kl_vae.py` with the official
parameter names, so conversion is: read `torch.load(path)["model"]` safely (weights_only, CPU), drop LDM's
training-only `loss.*` entries, read the widths, levels and attention placement off the shapes, and check the result
loads strictly. The official loader uses `strict=False` and only prints what it skipped; here any key that does not
fit is an error.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from vistok.convert import common
from vistok.errors import VistokError
from vistok.io.atomic import atomic_write
from vistok.io.exports import read_export
from vistok.tokenizers.kl_vae import config_from_state, official_state

TOKENIZER_DIR = "tokenizer"


def convert(input: str | Path, out: str | Path) -> tuple[Path, str]:
    """Write the export of a KL VAE checkpoint (kl16.ckpt, or a .safetensors of its state dict)."""
    source = str(input)
    state = official_state(common.read_weights(input, "VAE checkpoint"), source)
    cfg = config_from_state(state)
    path = common.write(out, "kl-vae", cfg, state, source, converted_from={"kind": "mar-vae", "source": source})
    n = sum(v.numel() for v in state.values())
    return path, (f"KL VAE ch {cfg.ch}, ch_mult {list(cfg.ch_mult)}, {cfg.embed_dim} latent channels, f{cfg.factor}, "
                  f"scale {cfg.scale_factor}, {n:,} parameters")


def _copy(src: Path, dst: BinaryIO) -> None:
    with open(src, "rb") as f:
        shutil.copyfileobj(f, dst)


def attach(vae: str | Path, tokens: tuple[int, int, int]) -> tuple[dict[str, Any], Callable[[Path], None]]:
    """A KL VAE (an export folder, or a checkpoint file converted on the way) for a generator whose tokens are
    (channels, h, w): checked now, then (the generator export's `tokenizer` entry, a writer that puts the VAE export
    into `FOLDER/tokenizer/`, for `exports.write_export(..., extra=writer)`)."""
    vae = Path(vae).expanduser()
    if vae.is_dir():
        meta, _ = read_export(vae)
        if meta.get("family") != "kl-vae":
            raise VistokError(f"--vae {vae} holds a {meta.get('family')!r} model, not a KL VAE; convert MAR's "
                              "kl16.ckpt with `vistok convert --from mar-vae` first, or pass the .ckpt itself")
        channels = meta["config"]["embed_dim"]
    else:
        state = official_state(common.read_weights(vae, "VAE checkpoint"), str(vae))
        channels = config_from_state(state).embed_dim
    if channels != tokens[0]:
        raise VistokError(f"--vae {vae} makes {channels}-channel latents but the generator expects {tokens[0]} "
                          "channels")

    def write(folder: Path) -> None:
        target = folder / TOKENIZER_DIR
        if vae.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            for name in ("model.safetensors", "config.json"):
                atomic_write(target / name, lambda f, src=vae / name: _copy(src, f))
        else:
            convert(vae, target)

    # the VAE adapter (`vae.VAE`, arch kl16) over the export in tokenizer/: the loader sets its weights to that folder
    return {"family": "vae", "config": {"arch": "kl16"}, "path": TOKENIZER_DIR, "source": str(vae)}, write
