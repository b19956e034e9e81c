"""`vistok convert`: parse, call `vistok.convert.convert`, print one line."""

from __future__ import annotations

import argparse
import contextlib

from vistok.convert import KINDS, convert
from vistok.data.outputs import check_output_folder
from vistok.engine.outputs import allow_replace, check_export_target

# the family each kind's export names in config.json: an --out holding an export of it is replaced without asking
FAMILIES = {"xar": "xar", "mar-vae": "kl-vae", "mamba": "mamba", "segmamba": "segmamba"}

EPILOG = """examples:
  vistok convert --from mar-vae --input kl16.ckpt --out vae-kl16
  vistok convert --from xar --input checkpoint-last.pth --out xar-b --vae vae-kl16   # EMA weights, floor(t*1000)
  vistok convert --from xar --input xar_base.pth --out xar-b --vae kl16.ckpt
  vistok convert --from mamba --input mamba.pth --out layer --prefix backbone.layers.0.mixer.
  vistok convert --from segmamba --input segmamba.pth --out segmamba
Pickled inputs are read with weights_only=True (argparse.Namespace allowed); anything naming code is refused."""


def cmd_convert(args: argparse.Namespace) -> None:
    """The export replaces --out whole: a folder of other files is refused before the input is read (--overwrite:
    replaced; `checkpoint.export` checks again at the write, within `allow_replace`)."""
    check_export_target(check_output_folder(args.out, grid_suffix=None), FAMILIES[args.kind], args.overwrite)
    time_floor = None if args.time is None else args.time == "floor"
    with allow_replace(args.out) if args.overwrite else contextlib.nullcontext():
        done = convert(args.kind, args.input, args.out, weights=args.weights, time_floor=time_floor, heads=args.heads,
                       vae=args.vae, prefix=args.prefix, nslices=args.nslices)
    print(f"wrote {done.path}: {done.summary}")


def add_commands(sub) -> None:
    p = sub.add_parser("convert", help="released checkpoints (xAR, MAR KL-16 VAE, Mamba, SegMamba) -> a vistok export",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="kind", required=True, choices=list(KINDS), help="what the input is")
    p.add_argument("--input", required=True, help="the checkpoint file (.pth/.pt/.ckpt or .safetensors)")
    p.add_argument("--out", required=True, help="export folder to write (config.json + model.safetensors); an "
                                               "existing export of the same kind is replaced, other folders only "
                                               "with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it holds other files (they are "
                                                            "deleted)")
    g = p.add_argument_group("xar")
    g.add_argument("--weights", choices=["ema", "model"], help="from a training container: EMA (default) or raw weights")
    g.add_argument("--time", choices=["floor", "continuous"],
                   help="time embedding: floor(t*1000) as the official code (default) or continuous t*1000")
    g.add_argument("--heads", type=int, help="attention heads, if the checkpoint has no RoPE buffers to read them from")
    g.add_argument("--vae", help="KL VAE export folder or MAR kl16.ckpt, copied into OUT/tokenizer/ so `vistok sample` "
                                 "decodes to pixels")
    g = p.add_argument_group("mamba / segmamba")
    g.add_argument("--prefix", help="mamba: key prefix of the layer to take from a multi-layer file")
    g.add_argument("--nslices", type=int, help="v3 (tri-directional) Mamba: interleaved slices (default 5, official)")
    p.set_defaults(func=cmd_convert)
