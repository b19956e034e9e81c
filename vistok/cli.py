"""The `vistok` command: `models`, `sample`, `reconstruct`, `encode`, `decode`, `cache-latents`, `fid`, `fid-stats`,
`em-segment`, `em-eval` and `demo`.

Each subcommand is one `add_*` function (its flags) and one `cmd_*` handler that parses, calls the Python API
(`vistok.api`: the same objects `vistok.load` returns, so the same seed gives the same bits from Python and the shell)
and writes files and a summary line. A user's mistake (bad path, bad flag, missing weights) prints one line and exits
non-zero, never a traceback. Long commands show tqdm progress on stderr when it is a terminal (`--quiet`: never).
`python -m vistok` runs the same command, also under `torchrun` (`vistok sample` then shards its images over ranks).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from vistok.engine.host_memory import keep_freed_memory
from vistok.io.paths import check_cli_paths
from vistok.errors import VistokError


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
                listing = f" (several values go after one flag: {option_string} A B)" if self.nargs in ("+", "*") else ""
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


def _ks(text: str | None, registers: int) -> list[int]:
    """Prefix lengths from "1,2,4" (None or "": the powers-of-two ladder up to K); each in 1..K."""
    from vistok.tokenizers.flextok_sampling import k_ladder

    if not text:
        return k_ladder(registers)
    try:
        ks = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise VistokError(f"--tokens {text!r} must be a comma list of integers, e.g. 1,2,4,{registers}") from None
    if not ks or not all(1 <= k <= registers for k in ks):
        raise VistokError(f"--tokens {text!r}: every k must lie in 1..{registers} (this model's registers)")
    return ks


def _load(args: argparse.Namespace, kind: type):
    """The --ckpt model through the Python API, checked to be of the kind this command needs."""
    import vistok.api as api

    obj = api.load(args.ckpt, api.resolve_device(args.device))
    if not isinstance(obj, kind):
        raise VistokError(f"{args.ckpt} is a {type(obj).__name__}, but `vistok {args.command}` needs a {kind.__name__}")
    return obj


_LOCKS: list = []  # writer locks the running command holds; `main` releases them when it ends


def _writer_lock(out: Path) -> None:
    """Hold the --out's writer lock until the command ends: a second run into the same --out is refused in one line
    (a lock left by a killed run is taken over; torchrun ranks of one job share it)."""
    from vistok.io.lock import WriterLock

    _LOCKS.append(WriterLock(out, "--out").acquire())


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
    p.add_argument("--guidance", choices=("cfg", "apg"), help="CFG or adaptive projected guidance (default: the export's)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; image i's noise depends on (seed, i) only (default 0)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast for the network")


# ---------------------------------------------------------------------------------------------------------- models
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list model presets with parameter counts, and shipped models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> None:
    from vistok import registry

    rows = [{"name": p.name, "family": p.family, "params": registry.param_count(p)} for p in registry.presets().values()]
    shipped = registry.shipped_models()
    for r in rows:
        r["shipped"] = r["name"] in shipped
    if args.json:
        print(json.dumps({"presets": rows, "shipped": sorted(shipped)}, indent=2))
        return
    print(f"{'preset':<28}{'family':<14}{'params':>14}")
    for r in rows:
        print(f"{r['name']:<28}{r['family']:<14}{r['params']:>14,}")
    print(f"\nshipped models in {registry.assets_dir()}: {', '.join(shipped) or 'none'}")


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
    p.add_argument("--out", required=True, help="folder for PNGs + grid.png + samples.npz, or a .png path for a grid alone")
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
                   help="generate and decode the first K tokens (GPT: any 1..K; xAR: a group end 1, 2, 4, ...; default all)")
    g.add_argument("--decode-steps", type=_positive, help="FlexTok decoder Euler steps (default: the export's)")
    g.add_argument("--temperature", type=float, help="GPT: softmax temperature, 0 = greedy (default: the export's)")
    g.add_argument("--top-k", type=int, help="GPT: sample among the K most likely tokens, 0 = off (default: the export's)")
    g.add_argument("--top-p", type=float, help="GPT: nucleus sampling mass in (0, 1], 1 = off (default: the export's)")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> None:
    """Images of every rank's share of the per-image seeds, written as they come; rank 0 merges (see api.outputs)."""
    import vistok.api as api
    from vistok.api.outputs import SampleWriter, check_out
    from vistok.engine import dist

    out = check_out(args.out)
    env = dist.setup(args.device)
    try:
        _writer_lock(out)  # until the command ends; torchrun ranks share it
        gen = _load(args, api.Generator)
        if args.compile:
            gen.model.compile_stack()
            if isinstance(gen, api.PairedGenerator):
                gen.codes.flextok.compile_stack()
        given = {key: getattr(args, key) for key in SAMPLE_FLAGS if getattr(args, key) is not None}
        gen.reject({key: SAMPLE_FLAGS[key] for key in given})
        labels = gen.labels(_split(args.labels), args.num if args.num or args.labels else 100)
        lo, hi = len(labels) * env.rank // env.world_size, len(labels) * (env.rank + 1) // env.world_size
        gen.settings(**{k: v for k, v in given.items() if k not in ("tokens", "decode_steps")})  # a bad --cfg: no files
        if env.is_main:
            SampleWriter(args.out)  # a fresh shard folder, before any rank writes into it
        dist.barrier()
        writer, start = SampleWriter(args.out, fresh=False), time.perf_counter()
        for first, arrays in gen.batches(labels[lo:hi], seed=args.seed, first_index=lo, batch_size=args.batch_size,
                                         precision=args.precision, progress=not args.quiet and env.is_main, **given):
            writer.add(lo + first, arrays)
        dist.barrier()
        if env.is_main:
            written = writer.finish(labels, gen.source)  # the pinned model name (hf://...@COMMIT)
            seconds = time.perf_counter() - start
            used = gen.settings(**{k: v for k, v in given.items() if k not in ("tokens", "decode_steps")})
            extra = ""
            if isinstance(gen, api.PairedGenerator):
                k = given.get("tokens") or gen.valid_ks()[-1]
                extra = (f" from k={k} of {gen.codes.registers} FlexTok tokens ({gen.kind}; decoder "
                         f"{gen.decoding(given.get('decode_steps')).steps} steps)")
            print(f"{len(labels)} images{extra} in {seconds:.1f} s (" + ", ".join(f"{k} {v}" for k, v in vars(used).items())
                  + f"; seed {args.seed}, {env.device.type}{', bf16' if args.precision == 'bf16' else ''}"
                  + (f", {env.world_size} processes" if env.world_size > 1 else "") + ") -> "
                  + ", ".join(str(p) for p in written) + (f" + {len(labels)} PNGs" if len(written) > 1 else ""))
        dist.barrier()
    finally:
        dist.cleanup(wait=False)  # the barrier above on success; none on an error path (a dead rank never arrives)


def _split(items: Sequence[str] | None) -> list[str] | None:
    """--labels 3 5 / --labels 3,5 / --labels cat dog -> ["3", "5"] ...; a flag with only commas is refused."""
    if not items:
        return None
    labels = [s.strip() for item in items for s in item.split(",") if s.strip()]
    if not labels:
        raise VistokError(f"--labels {' '.join(items)!r} names no class; pass class indices or names, e.g. --labels 3 5")
    return labels


# ------------------------------------------------------------------------------------------- FlexTok: reconstruct
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
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder instead of the shipped one")
    p.add_argument("--grid-rows", type=_positive, default=8, help="images in grid.png (default 8)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoder (slow first batch, faster after)")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    """FlexTok reconstructions from the first k tokens, for each k: PNGs and an npz per k, a grid, JSON metrics."""
    import numpy as np
    from PIL import Image

    import vistok.api as api
    from vistok.data.outputs import check_output_folder, check_writable
    from vistok.data.sources import load_images
    from vistok.io.atomic import atomic_write, atomic_write_bytes
    from vistok.metrics import recon
    from vistok.viz import recon_grid

    out = check_output_folder(args.out, grid_suffix=None)  # writability of both outputs before any work
    if args.json and Path(args.json).expanduser().is_dir():
        raise VistokError(f"--json {args.json} is a folder; pass a file path for the JSON metrics")
    if args.json:
        check_writable(args.json, "--json")
    _writer_lock(out)
    tok = _load(args, api.Tokenizer)
    if args.compile:
        tok.model.compile_stack()
    decoding = tok.settings(steps=args.steps, cfg=args.cfg, guidance=args.guidance)
    ks = _ks(args.tokens, tok.registers)
    images, _ = load_images(args.input, tok.resolution, args.num, args.data_root)
    if not args.no_fid:
        recon.check_fid_extractor(args.extractor_weights)
    start = time.perf_counter()
    recons = tok.reconstruct(images, ks, seed=args.seed, steps=args.steps, cfg=args.cfg, guidance=args.guidance,
                             batch_size=args.batch_size, precision=args.precision, progress=not args.quiet)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    for k, rec in recons.items():
        folder = out / f"k{k:03d}"
        folder.mkdir(exist_ok=True)
        atomic_write(out / f"k{k:03d}.npz", lambda f, rec=rec: np.savez(f, arr_0=rec))
        for i, image in enumerate(rec):
            Image.fromarray(image).save(folder / f"{i:06d}.png")
    Image.fromarray(recon_grid(images, recons, rows=args.grid_rows)).save(out / "grid.png")
    metrics = recon.score(images, recons, not args.no_fid, args.fid_real, args.extractor_weights, args.data_root, out)
    result = {
        "ckpt": str(args.ckpt), "input": str(args.input), "num": len(images), "tokens": ks, "steps": decoding.steps,
        "cfg": decoding.cfg, "guidance": decoding.guidance, "seed": args.seed, "registers": tok.registers,
        "fid_real": None if args.no_fid else args.fid_real, "seconds": round(seconds, 2),
        "metrics": {str(k): v for k, v in metrics.items()},
    }
    if not args.no_fid:
        result["fid_inputs"] = recon.fid_of(images, args.fid_real, args.extractor_weights, args.data_root)  # the floor
    text = json.dumps(result, indent=2)
    atomic_write_bytes(out / "metrics.json", (text + "\n").encode())  # a kill never leaves half a file
    if args.json:
        atomic_write_bytes(Path(args.json).expanduser(), (text + "\n").encode())
    print(f"{'k':>4} {'MSE':>9} {'PSNR':>7} {'SSIM':>6}" + ("" if args.no_fid else f" {'FID':>8}"))
    for k, m in metrics.items():
        print(f"{k:>4} {m['mse']:>9.5f} {m['psnr']:>7.2f} {m['ssim']:>6.3f}" + (f" {m['fid']:>8.3f}" if "fid" in m else ""))
    print(f"{len(images)} images x {len(ks)} k in {seconds:.1f} s ({decoding.steps} steps, cfg {decoding.cfg} "
          f"({decoding.guidance}), seed {args.seed}) -> {out}/grid.png, {out}/metrics.json, k*/ and k*.npz")


# ------------------------------------------------------------------------------------------------ FlexTok: encode
def add_encode(sub) -> None:
    p = sub.add_parser("encode", help="images -> FlexTok token ids (.npz: ids int32 (N, K), k per image, labels)")
    _common(p, "FlexTok export")
    _inputs(p)
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--tokens", help="tokens kept per image: K, or a comma list cycled over the images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of a VAE tokenizer's posterior sample (default 0)")
    p.set_defaults(func=cmd_encode)


def cmd_encode(args: argparse.Namespace) -> None:
    """Images -> FlexTok token ids in an .npz: ids (N, K') int32, k (N,) int32, labels when the input has them."""
    import numpy as np

    import vistok.api as api
    from vistok.data.sources import load_images
    from vistok.data.tokens import write_token_file

    from vistok.data.outputs import check_output_file

    out = check_output_file(args.out, ".npz")  # before any work
    tok = _load(args, api.Tokenizer)
    ks = _ks(args.tokens or str(tok.registers), tok.registers)
    images, labels = load_images(args.input, tok.resolution, args.num, args.data_root)
    ids = tok.encode(images, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet)  # (N, K)
    k = np.asarray(ks)[np.arange(len(ids)) % len(ks)]  # cycled over the images
    ids = np.where(np.arange(ids.shape[1]) < k[:, None], ids, 0)[:, :max(ks)]  # only each image's first k[i] kept
    write_token_file(out, ids, k, labels)
    print(f"{len(ids)} images -> {out}: ids {ids.shape} int32 (vocabulary {tok.vocab_size}), "
          f"k per image in {{{', '.join(map(str, sorted(set(ks))))}}}" + (", labels" if labels is not None else ""))


# ------------------------------------------------------------------------------------------------ FlexTok: decode
def add_decode(sub) -> None:
    p = sub.add_parser("decode", help="FlexTok token ids (.npz from encode) -> images, each from its own k tokens")
    _common(p, "FlexTok export")
    _decoding(p)
    p.add_argument("--tokens", required=True, help=".npz with ids (N, K) and optionally k (N,) and labels")
    p.add_argument("--out", required=True, help="folder for PNGs + grid.png + samples.npz, or a .png path for a grid alone")
    p.set_defaults(func=cmd_decode)


def cmd_decode(args: argparse.Namespace) -> None:
    """Token ids (.npz from `vistok encode` or `vistok sample`) -> images: PNGs, grid.png and samples.npz."""
    import numpy as np

    import vistok.api as api
    from vistok.api.outputs import check_out, save_samples
    from vistok.data.tokens import read_token_file

    check_out(args.out)
    arrays = read_token_file(args.tokens)
    ids = arrays["ids"]
    k = arrays.get("k", np.full(len(ids), ids.shape[1]))
    if k.shape != (len(ids),) or k.dtype.kind not in "iu":
        raise VistokError(f"{args.tokens}: 'k' must hold one integer prefix length per image ({len(ids)}), got {k.dtype} {k.shape}")
    labels = np.asarray(arrays.get("labels", np.zeros(len(ids), np.int64)))
    if labels.shape != (len(ids),) or labels.dtype.kind not in "iu":  # else written beside the images as they are
        raise VistokError(f"{args.tokens}: 'labels' must hold one integer class per image ({len(ids)}), got "
                          f"{labels.dtype} {labels.shape}")
    tok = _load(args, api.Tokenizer)
    decoding = tok.settings(steps=args.steps, cfg=args.cfg, guidance=args.guidance)
    start = time.perf_counter()
    images = tok.decode(ids, k, seed=args.seed, steps=args.steps, cfg=args.cfg, guidance=args.guidance,
                        batch_size=args.batch_size, precision=args.precision, progress=not args.quiet)
    written = save_samples(args.out, images, labels)
    print(f"{len(images)} images in {time.perf_counter() - start:.1f} s ({decoding.steps} steps, cfg {decoding.cfg} "
          f"({decoding.guidance}), seed {args.seed}) -> " + ", ".join(str(p) for p in written))


# --------------------------------------------------------------------------------------------------- cache-latents
def add_cache_latents(sub) -> None:
    p = sub.add_parser("cache-latents", help="posterior moments of an image folder through a VAE, sharded over "
                                             "torchrun ranks and resumable (training reads them with data.latents=CACHE)")
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
    from vistok.data.outputs import check_output_folder
    from vistok.tokenizers.latent_cache import cache_latents, world

    _writer_lock(check_output_folder(args.out, grid_suffix=None))  # torchrun ranks of one job share it
    report = cache_latents(args.vae, args.input, args.out, args.resolution, args.flip, args.shard_size, args.batch_size,
                           args.workers, args.dtype, args.device, progress=not args.quiet)
    rank, world_size, _ = world()
    print(f"rank {rank}/{world_size}: encoded {report.images} images into {len(report.written)} shards, "
          f"{len(report.skipped)} already finished -> {args.out}")


# ------------------------------------------------------------------------------------------------------ fid, stats
def _fid_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extractor", default="cifar10-net", choices=("cifar10-net", "inception-v3-compat"),
                   help="feature network (default cifar10-net; inception-v3-compat is the standard one)")
    p.add_argument("--inception-weights", metavar="PATH", help="local Inception weights (no download)")
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder instead of the shipped one")
    p.add_argument("--num", type=_positive, help="use at most N images")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--resolution", type=_positive, help="resize/crop folder images to this size (default: the first image's)")
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
    p.add_argument("--adm", action="store_true", help="ADM's evaluator definitions: IS (contiguous 5,000-image splits), "
                   "sFID, precision/recall (k=3, its half-precision distances); needs real images")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid)


def cmd_fid(args: argparse.Namespace) -> None:
    from vistok.metrics import fid

    res = fid.calculate(args.fake, args.real, extractor=args.extractor, kid=args.kid, num=args.num,
                        weights=args.inception_weights or args.extractor_weights, batch_size=args.batch_size,
                        data_root=args.data_root, resolution=args.resolution, isc=args.isc, prc=args.prc,
                        progress=not args.quiet, adm=args.adm)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        line = f"FID {res['fid']:.4f}" + (f"  sFID {res['sfid']:.4f}" if "sfid" in res else "")
        if "kid" in res:
            line += f"  KID {res['kid']:.6f} +- {res['kid_std']:.6f}"
        if "isc" in res:
            line += f"  IS {res['isc']:.4f} +- {res['isc_std']:.4f}"
        if "precision" in res:
            line += f"  precision {res['precision']:.4f}  recall {res['recall']:.4f}"
        adm = ", ADM definitions" if args.adm else ""
        print(f"{line}  ({res['num_fake']} images, {res['extractor']}{adm}, real: {res.get('real_stats', res['real'])})")


def add_fid_stats(sub) -> None:
    p = sub.add_parser("fid-stats", help="write FID reference statistics (mu, sigma) of a set of images")
    p.add_argument("--input", required=True, help="image folder, .npz of uint8 images or dataset name")
    p.add_argument("--out", required=True, help="output .npz")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid_stats)


def cmd_fid_stats(args: argparse.Namespace) -> None:
    from vistok.metrics import fid

    fid.check_output(args.out)  # before any work
    images = fid.as_images(args.input, args.num, args.resolution, args.data_root)
    weights = args.inception_weights or args.extractor_weights
    stats = fid.compute_statistics(images, args.extractor, weights, args.batch_size, progress=not args.quiet)
    fid.save_statistics(stats, args.out, extractor=args.extractor, source=str(args.input), num=len(images),
                        fingerprint=fid.extractor_fingerprint(args.extractor, weights))
    print(f"wrote {args.out}: {args.extractor} statistics of {len(images)} images from {args.input}")


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


def add_em(sub) -> None:
    from vistok.em.cli import add_commands

    add_commands(sub)


def add_convert(sub) -> None:
    from vistok.convert.cli import add_commands

    add_commands(sub)


# subcommands in `vistok --help` order; another one is one more add_* function here
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_models, add_sample, add_reconstruct, add_encode, add_decode, add_cache_latents, add_fid, add_fid_stats, add_em,
    add_convert,
    add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vistok", description="Visual tokenizers and autoregressive image generation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    finally:
        while _LOCKS:
            _LOCKS.pop().release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
