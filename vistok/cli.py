"""The `vistok` command (`em-*`: vistok/em/cli.py, `convert`: vistok/convert/cli.py; the parser: vistok/cli_args.py).

Each subcommand is one `add_*` function (its flags) and one `cmd_*` handler that makes ONE call into the Python API
(`vistok.api.jobs`) and prints what it returns, so the same seed gives the same bits from Python and the shell. A
user's mistake prints one line and exits non-zero, never a traceback. `python -m vistok` is the same command, also
under `torchrun` (`vistok sample` then shards its images over ranks). Parsing imports no torch: `--help` is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence

from vistok.cli_args import Parser, positive, same_named, split_labels
from vistok.convert.cli import add_commands as add_convert
from vistok.em.cli import add_commands as add_em
from vistok.engine.host_memory import keep_freed_memory
from vistok.errors import VistokError
from vistok.io.paths import check_cli_paths


def _jobs():
    """vistok.api.jobs, imported when a command runs (it imports torch; parsing and --help do not)."""
    import vistok.api.jobs as jobs

    return jobs


DEFAULT = "(default: the export's)"


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _common(p: argparse.ArgumentParser, ckpt_help: str) -> None:
    p.add_argument("--ckpt", required=True, help=ckpt_help + " (folder, shipped model name or hf://org/repo[@rev])")
    p.add_argument("--batch-size", type=positive, default=64, help="images per forward batch (default 64)")
    _device(p)


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="image folder, dataset name (cifar10-test, ...) or .npz of images")
    p.add_argument("--num", type=positive, help="use N images (evenly spaced in a dataset or folder; default all)")
    p.add_argument("--data-root", help="data root for dataset names (default $VISTOK_DATA)")


def _noise(p: argparse.ArgumentParser, steps: str) -> None:
    p.add_argument("--steps", type=positive, help=f"{steps} {DEFAULT}")
    p.add_argument("--cfg", type=float, help=f"guidance scale, 1 = none {DEFAULT}")
    p.add_argument("--seed", type=int, default=0, help="image i's noise depends on (seed, i) only (default 0)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast for the network")


def _decoding(p: argparse.ArgumentParser) -> None:
    _noise(p, "Euler steps T")
    p.add_argument("--guidance", choices=("cfg", "apg"), help=f"CFG or adaptive projected guidance {DEFAULT}")


def _out_images(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for PNGs + grid.png + samples.npz, or a .png for a grid alone")


def add_models(sub) -> None:
    p = sub.add_parser("models", help="list model presets with parameter counts, and shipped models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> None:
    table = _jobs().preset_table()
    print(json.dumps(table.result, indent=2) if args.json else table.summary())


# ---------------------------------------------------------------------------------------------------------- sample
# sampling flags by API keyword: a flag the loaded generator does not take is a one-line error naming the flag
SAMPLE_FLAGS = {"steps": "--steps", "cfg": "--cfg", "cfg_schedule": "--cfg-schedule", "method": "--method",
                "tokens": "--tokens", "decode_steps": "--decode-steps", "temperature": "--temperature",
                "top_k": "--top-k", "top_p": "--top-p"}
CFG_SCHEDULES = ("linear", "constant", "linear-guided")  # flow.CFG_SCHEDULES, without importing torch for --help


def add_sample(sub) -> None:
    p = sub.add_parser("sample", help="class-conditional samples from a generator: PNGs, a grid and an .npz for FID")
    _common(p, "generator export")
    _noise(p, "flow steps per entity")
    _out_images(p)
    p.add_argument("--num", "--samples", dest="num", type=positive,
                   help="images (default: one per --labels entry, else 100); --samples: the same (torchrun owns --num)")
    p.add_argument("--labels", nargs="+", help="class indices or names, cycled over the images (default: round-robin)")
    p.add_argument("--cfg-schedule", choices=CFG_SCHEDULES, help="guidance over AR steps: linear (first entity "
                   f"unguided), constant, linear-guided (every entity guided, rising to --cfg) {DEFAULT}")
    p.add_argument("--method", choices=("sde", "ode"), help=f"Euler-Maruyama SDE or Euler ODE {DEFAULT}")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow first batch, faster after)")
    g = p.add_argument_group("generators on FlexTok tokens (GPT, xAR)")
    g.add_argument("--tokens", type=positive, metavar="K",
                   help="generate and decode the first K tokens (GPT: any 1..K; xAR: a group end 1, 2, 4, ...)")
    g.add_argument("--decode-steps", type=positive, help=f"FlexTok decoder Euler steps {DEFAULT}")
    g.add_argument("--temperature", type=float, help=f"GPT: softmax temperature, 0 = greedy {DEFAULT}")
    g.add_argument("--top-k", type=int, help=f"GPT: sample among the K most likely tokens, 0 = off {DEFAULT}")
    g.add_argument("--top-p", type=float, help=f"GPT: nucleus sampling mass in (0, 1], 1 = off {DEFAULT}")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> None:
    """Every rank generates its share of the per-image seeds; rank 0 merges and prints (jobs.sample_folder)."""
    run = _jobs().sample_folder(args.ckpt, args.out, split_labels(args.labels), args.num, progress=not args.quiet,
                                spelled=SAMPLE_FLAGS, **same_named(args, " ".join(SAMPLE_FLAGS)),
                                **same_named(args, "seed batch_size precision device compile"))
    if run.is_main:
        print(run.summary())


# ------------------------------------------------------------------------------ FlexTok: reconstruct, encode, decode
def add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="FlexTok reconstructions and MSE/PSNR/SSIM/FID per number of tokens k")
    _common(p, "FlexTok export")
    _decoding(p)
    _inputs(p)
    p.add_argument("--out", required=True, help="folder: k*/ PNGs and k*.npz per k, grid.png, metrics.json")
    p.add_argument("--tokens", help="comma list of k (default 1, 2, 4, ..., K)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON metrics to FILE")
    p.add_argument("--no-fid", action="store_true", help="skip FID (MSE, PSNR and SSIM only)")
    p.add_argument("--fid-real", default="cifar10-train",
                   help="FID reference: dataset name, statistics .npz or image folder (default cifar10-train)")
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder, not the shipped one")
    p.add_argument("--grid-rows", type=positive, default=8, help="images in grid.png (default 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (slow first batch, faster after)")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    same = same_named(args, "tokens num data_root seed steps cfg guidance batch_size precision fid_real "
                            "extractor_weights grid_rows compile device")
    print(_jobs().reconstruct_report(args.ckpt, args.input, args.out, fid=not args.no_fid, json_path=args.json,
                                     progress=not args.quiet, **same).summary())


def add_encode(sub) -> None:
    p = sub.add_parser("encode", help="images -> FlexTok token ids (.npz: ids int32 (N, K), k per image, labels)")
    _common(p, "FlexTok export")
    _inputs(p)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--tokens", help="tokens kept per image: K, or a comma list cycled over the images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of a VAE tokenizer's posterior sample (default 0)")
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> None:
    print(_jobs().encode_file(args.ckpt, args.input, args.out, progress=not args.quiet,
                              **same_named(args, "tokens num data_root seed batch_size device")).summary())


def add_decode(sub) -> None:
    p = sub.add_parser("decode", help="FlexTok token ids (.npz from encode) -> images, each from its own k tokens")
    _common(p, "FlexTok export")
    _decoding(p)
    _out_images(p)
    p.add_argument("--tokens", required=True, help=".npz with ids (N, K) and optionally k (N,) and labels")
    p.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> None:
    print(_jobs().decode_folder(args.ckpt, args.tokens, args.out, progress=not args.quiet,
                                **same_named(args, "seed steps cfg guidance batch_size precision device")).summary())


def add_cache_latents(sub) -> None:
    p = sub.add_parser("cache-latents", help="posterior moments of an image folder through a VAE, sharded over "
                       "torchrun ranks and resumable (training reads them with data.latents=CACHE)")
    p.add_argument("--vae", required=True,
                   help="a mar-vae export, kl16.ckpt, a diffusers AutoencoderKL folder, or a preset with weights")
    p.add_argument("--input", required=True, help="image folder, ImageNet-style (one sub-folder per class)")
    p.add_argument("--out", required=True, help="cache folder (manifest.json, files.txt, shard-*.safetensors)")
    p.add_argument("--resolution", type=positive, default=256, help="ADM center crop size (default 256)")
    p.add_argument("--flip", action="store_true", help="also cache each image's horizontal flip (as MAR does)")
    p.add_argument("--shard-size", type=positive, default=1024, help="images per shard file (default 1024)")
    p.add_argument("--batch-size", type=positive, default=32, help="images per VAE forward (default 32)")
    p.add_argument("--workers", type=int, default=4, help="image decoding workers per process (default 4)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="stored precision")
    _device(p)
    p.set_defaults(func=cmd_cache_latents)


def cmd_cache_latents(args: argparse.Namespace) -> None:
    print(_jobs().cache_latents(args.vae, args.input, args.out, num_workers=args.workers, progress=not args.quiet,
                                **same_named(args, "resolution flip shard_size batch_size dtype device")).summary())


# ------------------------------------------------------------------------------------------------------ fid, stats
def _fid_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extractor", default="cifar10-net", choices=("cifar10-net", "inception-v3-compat"),
                   help="feature network (default cifar10-net; inception-v3-compat is the standard one)")
    p.add_argument("--inception-weights", metavar="PATH", help="local Inception weights (no download)")
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder, not the shipped one")
    p.add_argument("--num", type=positive, help="use at most N images")
    p.add_argument("--batch-size", type=positive, default=64)
    p.add_argument("--resolution", type=positive, help="resize/crop folder images to this size (default: the first's)")
    p.add_argument("--data-root", help="data root for dataset names (default $VISTOK_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_fid(sub) -> None:
    p = sub.add_parser("fid", help="FID (KID, Inception Score, precision/recall) of generated images against real "
                       "images, statistics or an ADM reference batch")
    p.add_argument("--fake", required=True, help="image folder or .npz of uint8 images (samples.npz: arr_0)")
    p.add_argument("--real", required=True, help="image folder, .npz, dataset name, statistics .npz or an ADM "
                   "reference batch (mu/sigma and/or arr_0)")
    p.add_argument("--kid", action="store_true", help="also compute KID (needs real images)")
    p.add_argument("--isc", action="store_true", help="also compute the Inception Score of --fake")
    p.add_argument("--prc", action="store_true", help="also compute precision and recall (needs real images)")
    p.add_argument("--adm", action="store_true", help="ADM's evaluator definitions: IS (contiguous 5,000-image "
                   "splits), sFID, precision/recall (k=3, its half-precision distances); needs real images")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid)


def cmd_fid(args: argparse.Namespace) -> None:
    scores = _jobs().fid(args.fake, args.real, weights=args.inception_weights or args.extractor_weights,
                         progress=not args.quiet,
                         **same_named(args, "extractor kid num batch_size data_root resolution isc prc adm"))
    print(json.dumps(scores.result, indent=2) if args.json else scores.summary())


def add_fid_stats(sub) -> None:
    p = sub.add_parser("fid-stats", help="write FID reference statistics (mu, sigma) of a set of images")
    p.add_argument("--input", required=True, help="image folder, .npz of uint8 images or dataset name")
    p.add_argument("--out", required=True, help="output .npz")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid_stats)


def cmd_fid_stats(args: argparse.Namespace) -> None:
    same = same_named(args, "extractor num resolution data_root batch_size")
    print(_jobs().fid_stats(args.input, args.out, weights=args.inception_weights or args.extractor_weights,
                            progress=not args.quiet, **same).summary())


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: show what the shipped models do (see README)")
    p.add_argument("--out", default="demo_out", help="folder for the demo's outputs (an earlier demo's are replaced)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it holds other files (deleted)")
    p.add_argument("--num", type=positive, default=1000, help="images to score (at least 1)")
    p.add_argument("--data-root", help="data root (default $VISTOK_DATA)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from vistok.demo import run_demo

    run_demo(args.out, args.num, args.data_root, overwrite=args.overwrite)


# subcommands in `vistok --help` order; another one is one more add_* function here
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_models, add_sample, add_reconstruct, add_encode,
                                                                 add_decode, add_cache_latents, add_fid, add_fid_stats,
                                                                 add_em, add_convert, add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vistok", description="Visual tokenizers and autoregressive image generation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command (argv: sys.argv[1:] when None; parser: `build_parser()`'s, or one with fewer commands)."""
    args = (parser or build_parser()).parse_args(argv)
    keep_freed_memory()  # this process's tensors reuse freed host memory (see vistok.engine.host_memory)
    try:
        check_cli_paths(args)  # an --out or --json that is, holds or sits in an input: refused before any work
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            args.func(args)
    except VistokError as err:
        print(f"vistok {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
