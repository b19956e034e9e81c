"""The `vistok` command: `models`, `sample`, `reconstruct`, `encode`, `decode`, `cache-latents`, `fid`, `fid-stats`,
`em-*` (vistok/em/cli.py), `convert` (vistok/convert/cli.py) and `demo`.

Each subcommand is one `add_*` function (its flags) and one `cmd_*` handler that makes ONE call into the Python API
(`vistok.api.jobs`; `vistok.api.em` for em-*, `vistok.convert`, `vistok.demo`) and prints what it returns, so the same
seed gives the same bits from Python and the shell. A user's mistake (bad path, bad flag, missing weights) prints one
line and exits non-zero, never a traceback. Long commands show tqdm progress on stderr when it is a terminal
(`--quiet`: never).
`python -m vistok` runs the same command, also under `torchrun` (`vistok sample` then shards its images over ranks).
Parsing imports no torch, so every `--help` is quick.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings
from collections.abc import Callable, Sequence

from vistok.convert.cli import add_commands as add_convert
from vistok.em.cli import add_commands as add_em
from vistok.engine.host_memory import keep_freed_memory
from vistok.errors import VistokError
from vistok.io.paths import check_cli_paths


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that refuses a flag given twice.

    argparse lets the last of `--labels 3 --labels 5` win silently (the user gets [5]); here every flag that takes a
    value may appear once per command (a flag and its alias, `--num` and `--samples`, count as one). Flags without a
    value (`--quiet`) may repeat: repeating them changes nothing."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._given: dict[str, str] = {}  # dest -> the option string that set it, for this parse
        for action in self._actions:
            if action.option_strings and action.nargs != 0 and not isinstance(action, _Once):
                action.__class__ = _once(type(action))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # one line, not argparse's usage block
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class _Once(argparse.Action):
    """Marks an action that refuses to be given twice (see _Parser)."""


@functools.cache
def _once(cls: type[argparse.Action]) -> type[argparse.Action]:
    """`cls` with a __call__ that refuses a second value for the same destination in one parse."""
    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(parser, "_given", None)
        if given is not None:
            if self.dest in given:
                first = given[self.dest]
                what = f"{option_string} given twice" if first == option_string else \
                    f"{first} and {option_string} (the same setting) both given"
                listing = (f" (several values go after one flag: {option_string} A B)"
                           if self.nargs in ("+", "*") else "")
                parser.error(f"{what}; the second would silently replace the first, so give it once{listing}")
            given[self.dest] = option_string
        cls.__call__(self, parser, namespace, values, option_string)

    return type(f"Once{cls.__name__}", (cls, _Once), {"__call__": __call__})


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid positive int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _jobs():
    """vistok.api.jobs, imported when a command runs (it imports torch; parsing and --help do not)."""
    import vistok.api.jobs as jobs

    return jobs


def _common(p: argparse.ArgumentParser, ckpt_help: str) -> None:
    p.add_argument("--ckpt", required=True, help=ckpt_help + " (folder, shipped model name or hf://org/repo[@rev])")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per forward batch (default 64)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="image folder, dataset name (cifar10-test, ...) or .npz of images")
    p.add_argument("--num", type=_positive, help="use N images (evenly spaced in a dataset or folder; default all)")
    p.add_argument("--data-root", help="data root for dataset names (default $VISTOK_DATA)")


def _decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=_positive, help="Euler steps T (default: the export's)")
    p.add_argument("--cfg", type=float, help="guidance scale, 1 = none (default: the export's)")
    p.add_argument("--guidance", choices=("cfg", "apg"), help="CFG or adaptive projected guidance (default: the "
                                                              "export's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; image i's noise depends on (seed, i) only "
                                                       "(default 0)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast for the network")


# ---------------------------------------------------------------------------------------------------------- models
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
    p.add_argument("--num", "--samples", dest="num", type=_positive,
                   help="number of images (default: one per --labels entry, else 100); --samples is the same flag "
                        "(torchrun claims --num)")
    p.add_argument("--out", required=True, help="folder for PNGs + grid.png + samples.npz, or a .png path for a grid "
                                                "alone")
    p.add_argument("--cfg", type=float, help="guidance scale, 1 = none (default: the export's)")
    p.add_argument("--steps", type=_positive, help="flow steps per entity (default: the export's)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images, whatever the batch size (default 0)")
    p.add_argument("--labels", nargs="+", help="class indices or names (spaces or commas), cycled over the images "
                                               "(default: round-robin over the classes)")
    p.add_argument("--cfg-schedule", choices=CFG_SCHEDULES,
                   help="guidance scale over AR steps: linear (first entity unguided), constant, linear-guided (every "
                        "entity guided, rising to --cfg); default: the export's")
    p.add_argument("--method", choices=("sde", "ode"), help="Euler-Maruyama SDE or Euler ODE (default: the export's)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast for the network")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (slow first batch, faster after)")
    g = p.add_argument_group("generators on FlexTok tokens (GPT, xAR)")
    g.add_argument("--tokens", type=_positive, metavar="K",
                   help="generate and decode the first K tokens (GPT: any 1..K; xAR: a group end 1, 2, 4, ...; "
                        "default all)")
    g.add_argument("--decode-steps", type=_positive, help="FlexTok decoder Euler steps (default: the export's)")
    g.add_argument("--temperature", type=float, help="GPT: softmax temperature, 0 = greedy (default: the export's)")
    g.add_argument("--top-k", type=int, help="GPT: sample among the K most likely tokens, 0 = off (default: the "
                                             "export's)")
    g.add_argument("--top-p", type=float, help="GPT: nucleus sampling mass in (0, 1], 1 = off (default: the export's)")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> None:
    """Every rank generates its share of the per-image seeds; rank 0 merges and prints (jobs.sample_folder)."""
    run = _jobs().sample_folder(args.ckpt, args.out, _split(args.labels), args.num, seed=args.seed,
                                batch_size=args.batch_size, precision=args.precision, device=args.device,
                                compile=args.compile, progress=not args.quiet, spelled=SAMPLE_FLAGS,
                                **{key: getattr(args, key) for key in SAMPLE_FLAGS})
    if run.is_main:
        print(run.summary())


def _split(items: Sequence[str] | None) -> list[str] | None:
    """--labels 3 5 / --labels 3,5 / --labels cat dog -> ["3", "5"] ...; a flag with only commas is refused."""
    if not items:
        return None
    labels = [s.strip() for item in items for s in item.split(",") if s.strip()]
    if not labels:
        raise VistokError(f"--labels {' '.join(items)!r} names no class; pass class indices or names, e.g. --labels 3 "
                          "5")
    return labels


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
    p.add_argument("--fid-real", default="cifar10-train", help="FID reference: dataset name (shipped statistics), "
                   "statistics .npz or image folder (default cifar10-train)")
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder instead of the shipped "
                                                              "one")
    p.add_argument("--grid-rows", type=_positive, default=8, help="images in grid.png (default 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (slow first batch, faster after)")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    print(_jobs().reconstruct_report(
        args.ckpt, args.input, args.out, tokens=args.tokens, num=args.num, data_root=args.data_root, seed=args.seed,
        steps=args.steps, cfg=args.cfg, guidance=args.guidance, batch_size=args.batch_size, precision=args.precision,
        fid=not args.no_fid, fid_real=args.fid_real, extractor_weights=args.extractor_weights,
        grid_rows=args.grid_rows, json_path=args.json, compile=args.compile, device=args.device,
        progress=not args.quiet).summary())


def add_encode(sub) -> None:
    p = sub.add_parser("encode", help="images -> FlexTok token ids (.npz: ids int32 (N, K), k per image, labels)")
    _common(p, "FlexTok export")
    _inputs(p)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--tokens", help="tokens kept per image: K, or a comma list cycled over the images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of a VAE tokenizer's posterior sample (default 0)")
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> None:
    print(_jobs().encode_file(args.ckpt, args.input, args.out, tokens=args.tokens, num=args.num,
                              data_root=args.data_root, seed=args.seed, batch_size=args.batch_size, device=args.device,
                              progress=not args.quiet).summary())


def add_decode(sub) -> None:
    p = sub.add_parser("decode", help="FlexTok token ids (.npz from encode) -> images, each from its own k tokens")
    _common(p, "FlexTok export")
    _decoding(p)
    p.add_argument("--tokens", required=True, help=".npz with ids (N, K) and optionally k (N,) and labels")
    p.add_argument("--out", required=True, help="folder for PNGs + grid.png + samples.npz, or a .png path for a grid "
                                                "alone")
    p.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> None:
    print(_jobs().decode_folder(args.ckpt, args.tokens, args.out, seed=args.seed, steps=args.steps, cfg=args.cfg,
                                guidance=args.guidance, batch_size=args.batch_size, precision=args.precision,
                                device=args.device, progress=not args.quiet).summary())


# --------------------------------------------------------------------------------------------------- cache-latents
def add_cache_latents(sub) -> None:
    p = sub.add_parser("cache-latents", help="posterior moments of an image folder through a VAE, sharded over "
                                             "torchrun ranks and resumable (training reads them with "
                                             "data.latents=CACHE)")
    p.add_argument("--vae", required=True, help="VAE: a mar-vae export folder, kl16.ckpt, a diffusers AutoencoderKL "
                                                "folder, or a preset with weights")
    p.add_argument("--input", required=True, help="image folder, ImageNet-style (one sub-folder per class)")
    p.add_argument("--out", required=True, help="cache folder (manifest.json, files.txt, shard-*.safetensors)")
    p.add_argument("--resolution", type=_positive, default=256, help="ADM center crop size (default 256)")
    p.add_argument("--flip", action="store_true", help="also cache each image's horizontal flip (as MAR does)")
    p.add_argument("--shard-size", type=_positive, default=1024, help="images per shard file (default 1024)")
    p.add_argument("--batch-size", type=_positive, default=32, help="images per VAE forward (default 32)")
    p.add_argument("--workers", type=int, default=4, help="image decoding workers per process (default 4)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="stored precision")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache_latents)


def cmd_cache_latents(args: argparse.Namespace) -> None:
    print(_jobs().cache_latents(args.vae, args.input, args.out, resolution=args.resolution, flip=args.flip,
                                shard_size=args.shard_size, batch_size=args.batch_size, num_workers=args.workers,
                                dtype=args.dtype, device=args.device, progress=not args.quiet).summary())


# ------------------------------------------------------------------------------------------------------ fid, stats
def _fid_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extractor", default="cifar10-net", choices=("cifar10-net", "inception-v3-compat"),
                   help="feature network (default cifar10-net; inception-v3-compat is the standard one)")
    p.add_argument("--inception-weights", metavar="PATH", help="local Inception weights (no download)")
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder instead of the shipped "
                                                              "one")
    p.add_argument("--num", type=_positive, help="use at most N images")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--resolution", type=_positive, help="resize/crop folder images to this size (default: the first "
                                                        "image's)")
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
                                                      "splits), "
                   "sFID, precision/recall (k=3, its half-precision distances); needs real images")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid)


def cmd_fid(args: argparse.Namespace) -> None:
    scores = _jobs().fid(args.fake, args.real, extractor=args.extractor, kid=args.kid, num=args.num,
                         weights=args.inception_weights or args.extractor_weights, batch_size=args.batch_size,
                         data_root=args.data_root, resolution=args.resolution, isc=args.isc, prc=args.prc,
                         progress=not args.quiet, adm=args.adm)
    print(json.dumps(scores.result, indent=2) if args.json else scores.summary())


def add_fid_stats(sub) -> None:
    p = sub.add_parser("fid-stats", help="write FID reference statistics (mu, sigma) of a set of images")
    p.add_argument("--input", required=True, help="image folder, .npz of uint8 images or dataset name")
    p.add_argument("--out", required=True, help="output .npz")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid_stats)


def cmd_fid_stats(args: argparse.Namespace) -> None:
    print(_jobs().fid_stats(args.input, args.out, extractor=args.extractor, num=args.num, resolution=args.resolution,
                            weights=args.inception_weights or args.extractor_weights, data_root=args.data_root,
                            batch_size=args.batch_size, progress=not args.quiet).summary())


# ------------------------------------------------------------------------------------------------------------ demo
def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: show what the shipped models do (see README)")
    p.add_argument("--out", default="demo_out", help="folder for the demo's outputs (an earlier demo's are replaced)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it holds other files (they are "
                                                            "deleted)")
    p.add_argument("--num", type=_positive, default=1000, help="images to score (at least 1)")
    p.add_argument("--data-root", help="data root (default $VISTOK_DATA)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from vistok.demo import run_demo

    run_demo(args.out, args.num, args.data_root, overwrite=args.overwrite)


# subcommands in `vistok --help` order; another one is one more add_* function here
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_models, add_sample, add_reconstruct, add_encode, add_decode, add_cache_latents, add_fid, add_fid_stats, add_em,
    add_convert, add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vistok", description="Visual tokenizers and autoregressive image generation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
