"""`vistok convert`: parse, call `vistok.convert.convert`, print one line."""

from __future__ import annotations

import argparse
import contextlib

from vistok.checks import sizes_arg
from vistok.convert import KINDS, convert
from vistok.data.outputs import check_output_folder
from vistok.errors import VistokError
from vistok.io.paths import allow_replace, check_export_target

# the family each kind's export names in config.json: an --out holding an export of it is replaced without asking
FAMILIES = {"xar": "xar", "mar-vae": "kl-vae", "mamba": "mamba", "segmamba": "segmamba", "tokenunify": "tokenunify",
            "flextok": "flextok"}

EPILOG = """examples:
  vistok convert --from mar-vae --input kl16.ckpt --out vae-kl16
  vistok convert --from xar --input checkpoint-last.pth --out xar-b --vae vae-kl16   # EMA weights, floor(t*1000)
  vistok convert --from xar --input xar_base.pth --out xar-b --vae kl16.ckpt
  vistok convert --from mamba --input mamba.pth --out layer --prefix backbone.layers.0.mixer.
  vistok convert --from segmamba --input segmamba.pth --out segmamba
  vistok convert --from tokenunify --input tokenunify_base.pth --out tokenunify-base   # then finetune init_from=
  vistok convert --from flextok --input flextok_d18_d28_dfn/ --out flextok-d18-d28   # a hub folder: VAE included
  vistok convert --from flextok --input state.safetensors --out ft --fsq-levels 8,8,8,5,5,5 --max-timestep 1
Pickled inputs are read with weights_only=True (argparse.Namespace allowed); anything naming code is refused."""


def _zyx(text: str) -> tuple[int, int, int]:
    try:
        return sizes_arg(text, "size", "16,160,160")
    except VistokError as err:  # argparse's own one-line error (exit 2), after the flag's name
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_convert(args: argparse.Namespace) -> None:
    """The export replaces --out whole: a folder of other files is refused before the input is read (--overwrite:
    replaced; `exports.write_export` checks again at the write, within `allow_replace`)."""
    check_export_target(check_output_folder(args.out, grid_suffix=None), FAMILIES[args.kind], args.overwrite)
    time_floor = None if args.time is None else args.time == "floor"
    with allow_replace(args.out) if args.overwrite else contextlib.nullcontext():
        done = convert(args.kind, args.input, args.out, weights=args.weights, time_floor=time_floor, heads=args.heads,
                       vae=args.vae, prefix=args.prefix, nslices=args.nslices, input_size=args.input_size,
                       patch_size=args.patch_size, fsq_levels=args.fsq_levels, max_timestep=args.max_timestep,
                       nested_dropout=args.nested_dropout, head_dim=args.head_dim)
    print(f"wrote {done.path}: {done.summary}")


def add_commands(sub) -> None:
    p = sub.add_parser("convert", help="released checkpoints (xAR, MAR KL-16 VAE, Mamba, SegMamba, TokenUnify, "
                                       "FlexTok) "
                                       "-> a vistok export",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="kind", required=True, choices=list(KINDS), help="what the input is")
    p.add_argument("--input", required=True, help="the checkpoint file (.pth/.pt/.ckpt or .safetensors), or a FlexTok "
                                                  "hub folder")
    p.add_argument("--out", required=True, help="export folder to write (config.json + model.safetensors); an "
                                               "existing export of the same kind is replaced, other folders only "
                                               "with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it holds other files (they are "
                                                            "deleted)")
    g = p.add_argument_group("xar")
    g.add_argument("--weights", choices=["ema", "model"], help="from a training container: EMA (default) or raw "
                                                               "weights")
    g.add_argument("--time", choices=["floor", "continuous"],
                   help="time embedding: floor(t*1000) as the official code (default) or continuous t*1000")
    g.add_argument("--heads", type=int, help="attention heads, if the checkpoint has no RoPE buffers to read them from")
    g.add_argument("--vae", help="KL VAE export folder or MAR kl16.ckpt, copied into OUT/tokenizer/ so `vistok sample` "
                                 "decodes to pixels")
    g = p.add_argument_group("mamba / segmamba / tokenunify")
    g.add_argument("--prefix", help="mamba: key prefix of the layer to take from a multi-layer file")
    g.add_argument("--nslices", type=int, help="v3 (tri-directional) Mamba: interleaved slices (default 5, official)")
    g.add_argument("--input-size", type=_zyx, metavar="Z,Y,X",
                   help="tokenunify: the pretraining crop (default 16,160,160, the paper's)")
    g.add_argument("--patch-size", type=_zyx, metavar="Z,Y,X",
                   help="tokenunify: the token size (default 4,16,16, the paper's)")
    g = p.add_argument_group("flextok (values the weights do not hold; a hub folder's config.json gives them itself)")
    g.add_argument("--fsq-levels", type=_levels, help="FSQ levels, comma-separated (default 8,8,8,5,5,5, released)")
    g.add_argument("--max-timestep", type=float, help="the time embedder's max_timestep (default 1.0, released: t in "
                                                      "[0, 1])")
    g.add_argument("--nested-dropout", choices=["uniform", "pow2"], help="nested-dropout mode for fine-tuning (default "
                                                                          "uniform, released)")
    g.add_argument("--head-dim", type=int, help="attention head dim (default 64, released)")
    p.set_defaults(func=cmd_convert)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("--fsq-levels takes comma-separated integers such as 8,8,8,5,5,5, not "
                                         f"{text!r}") from None
    if not levels or min(levels) < 2:
        raise argparse.ArgumentTypeError(f"--fsq-levels must be integers >= 2, got {text!r}")
    return levels
