"""The `vistok` command: `models`, `sample`, `reconstruct`, `encode`, `decode`, `fid`, `fid-stats` and `demo`.

A user's mistake (bad path, bad flag, missing weights) prints one line and exits non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from vistok.errors import VistokError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


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


# flags of generators on FlexTok tokens, and of the GPT alone: named in errors when the export cannot take them
FLEXTOK_FLAGS = {"tokens": "--tokens", "decode_steps": "--decode-steps"}
GPT_FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p"}
FLOW_FLAGS = {"steps": "--steps", "cfg_schedule": "--cfg-schedule", "method": "--method"}


def _reject(args: argparse.Namespace, flags: dict[str, str], why: str) -> None:
    given = [flag for key, flag in flags.items() if getattr(args, key) is not None]
    if given:
        raise VistokError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply: {why}")


def cmd_sample(args: argparse.Namespace) -> None:
    import time

    from vistok.generators import generate as gen
    from vistok.generators import paired

    device = gen.resolve_device(args.device)
    if paired.is_paired(args.ckpt):
        _sample_paired(args, device)
        return
    _reject(args, {**FLEXTOK_FLAGS, **GPT_FLAGS},
            f"{args.ckpt} is an xAR on its tokenizer's grid (prefix lengths and top-k/top-p sampling are for "
            "generators on FlexTok tokens)")
    model, tokenizer, meta = gen.load_generator(args.ckpt, device)
    sampling = gen.sample_config(meta, steps=args.steps, cfg=args.cfg, cfg_schedule=args.cfg_schedule, method=args.method)
    labels = gen.parse_labels(args.labels, args.num, meta["classes"])
    start = time.perf_counter()
    images = gen.generate(model, tokenizer, labels, sampling, args.seed, args.batch_size, args.precision,
                          log_every=0 if args.quiet else 30.0)
    written = gen.save_samples(args.out, images, labels.numpy())
    seconds = time.perf_counter() - start
    print(f"{len(images)} images in {seconds:.1f} s ({sampling.steps} steps, cfg {sampling.cfg} {sampling.cfg_schedule}, "
          f"{sampling.method}, seed {args.seed}, {device.type}{', bf16' if args.precision == 'bf16' else ''}) -> "
          + ", ".join(str(p) for p in written) + (f" + {len(images)} PNGs" if len(written) > 1 else ""))


def _sample_paired(args: argparse.Namespace, device) -> None:
    """`vistok sample` for a GPT or xAR on FlexTok tokens: the first --tokens k tokens, decoded by FlexTok."""
    import dataclasses
    import time
    from pathlib import Path

    import numpy as np

    from vistok.generators import generate as gen
    from vistok.generators import paired
    from vistok.generators.ar import AR

    model, codes, meta = paired.load_paired(args.ckpt, device)
    if isinstance(model, AR):
        _reject(args, FLOW_FLAGS, f"{args.ckpt} is a GPT (one token per step, no flow steps; FlexTok's decoder "
                                  "steps are --decode-steps)")
        sampling = paired.sample_config(model, meta, cfg=args.cfg, temperature=args.temperature, top_k=args.top_k,
                                        top_p=args.top_p)
    else:
        _reject(args, GPT_FLAGS, f"{args.ckpt} is an xAR on FlexTok codes (flow matching, not token sampling)")
        sampling = paired.sample_config(model, meta, steps=args.steps, cfg=args.cfg, cfg_schedule=args.cfg_schedule,
                                        method=args.method)
    k = paired.check_k(model, args.tokens)
    if args.decode_steps is not None:
        codes.decoding = dataclasses.replace(codes.decoding, steps=args.decode_steps)
    labels = gen.parse_labels(args.labels, args.num, meta["classes"])
    start = time.perf_counter()
    images, ids = paired.generate_paired(model, codes, labels, k, sampling, args.seed, args.batch_size, args.precision,
                                         log_every=0 if args.quiet else 30.0)
    written = gen.save_samples(args.out, images, labels.numpy())
    out = Path(args.out)
    if out.suffix.lower() != ".png":  # the ids too, in `vistok encode`'s format (`vistok decode` reads them)
        np.savez(out / "tokens.npz", ids=ids, k=np.full(len(ids), k, np.int32), labels=labels.numpy())
        written.append(out / "tokens.npz")
    seconds = time.perf_counter() - start
    kind = "GPT" if isinstance(model, AR) else "xAR"
    print(f"{len(images)} images from k={k} of {codes.registers} FlexTok tokens in {seconds:.1f} s ({kind}, "
          + ", ".join(f"{key} {value}" for key, value in vars(sampling).items())
          + f"; decoder {codes.decoding.steps} steps; seed {args.seed}, {device.type}"
          + f"{', bf16' if args.precision == 'bf16' else ''}) -> " + ", ".join(str(p) for p in written)
          + (f" + {len(images)} PNGs" if len(written) > 1 else ""))


def cmd_reconstruct(args: argparse.Namespace) -> None:
    """FlexTok reconstructions from the first k tokens, for each k: PNGs and an npz per k, a grid, JSON metrics."""
    import time
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from vistok.generators.generate import resolve_device
    from vistok.tokenizers import flextok_eval as fe

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise VistokError(f"--out {out} is a file; pass a folder")
    device = resolve_device(args.device)
    model, tokenizer, meta = fe.load_flextok(args.ckpt, device)
    decoding = fe.decode_config(meta, steps=args.steps, cfg=args.cfg, guidance=args.guidance)
    ks = fe.parse_ks(args.tokens, model.config.registers)
    images, _ = fe.load_images(args.input, meta["resolution"], args.num, args.data_root)
    if not args.no_fid:
        fe.check_fid_extractor(args.extractor_weights)
    start = time.perf_counter()
    recons = fe.reconstruct_images(model, tokenizer, images, ks, decoding, args.seed, args.batch_size, args.precision)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    for k, rec in recons.items():
        folder = out / f"k{k:03d}"
        folder.mkdir(exist_ok=True)
        nhwc = rec.permute(0, 2, 3, 1).numpy()
        np.savez(out / f"k{k:03d}.npz", arr_0=nhwc)
        for i, image in enumerate(nhwc):
            Image.fromarray(image).save(folder / f"{i:06d}.png")
    Image.fromarray(fe.recon_grid(images, recons, rows=args.grid_rows)).save(out / "grid.png")
    metrics = fe.score(images, recons, not args.no_fid, args.fid_real, args.extractor_weights, args.data_root, out)
    result = {
        "ckpt": str(args.ckpt), "input": str(args.input), "num": len(images), "tokens": ks, "steps": decoding.steps,
        "cfg": decoding.cfg, "guidance": decoding.guidance, "seed": args.seed, "registers": model.config.registers,
        "step": meta.get("step"), "fid_real": None if args.no_fid else args.fid_real, "seconds": round(seconds, 2),
        "metrics": {str(k): v for k, v in metrics.items()},
    }
    if not args.no_fid:
        result["fid_inputs"] = fe.fid_of(images, args.fid_real, args.extractor_weights, args.data_root)  # the floor
    text = json.dumps(result, indent=2)
    (out / "metrics.json").write_text(text + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    print(f"{'k':>4} {'MSE':>9} {'PSNR':>7} {'SSIM':>6}" + ("" if args.no_fid else f" {'FID':>8}"))
    for k, m in metrics.items():
        print(f"{k:>4} {m['mse']:>9.5f} {m['psnr']:>7.2f} {m['ssim']:>6.3f}" + (f" {m['fid']:>8.3f}" if "fid" in m else ""))
    print(f"{len(images)} images x {len(ks)} k in {seconds:.1f} s ({decoding.steps} steps, cfg {decoding.cfg} "
          f"({decoding.guidance}), seed {args.seed}) -> {out}/grid.png, {out}/metrics.json, k*/ and k*.npz")


def cmd_encode(args: argparse.Namespace) -> None:
    """Images -> FlexTok token ids in an .npz: ids (N, K') int32, k (N,) int32, labels when the input has them."""
    from pathlib import Path

    import numpy as np
    import torch

    from vistok.generators.generate import resolve_device
    from vistok.tokenizers import flextok_eval as fe

    out = Path(args.out)
    if out.suffix != ".npz":
        raise VistokError(f"--out {out} must end in .npz")
    device = resolve_device(args.device)
    model, tokenizer, meta = fe.load_flextok(args.ckpt, device)
    ks = fe.parse_ks(args.tokens or str(model.config.registers), model.config.registers)
    images, labels = fe.load_images(args.input, meta["resolution"], args.num, args.data_root)
    torch.manual_seed(args.seed)  # a VAE tokenizer samples its posterior
    ids = fe.encode_images(model, tokenizer, images, args.batch_size)  # (N, K)
    k = torch.tensor(ks)[torch.arange(len(ids)) % len(ks)]  # cycled over the images
    ids = torch.where(torch.arange(ids.shape[1]) < k[:, None], ids, 0)[:, :max(ks)]  # only each image's first k[i] kept
    arrays = {"ids": ids.numpy().astype(np.int32), "k": k.numpy().astype(np.int32)}
    if labels is not None:
        arrays["labels"] = labels
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"{len(ids)} images -> {out}: ids {arrays['ids'].shape} int32 (vocabulary {model.fsq.codebook_size}), "
          f"k per image in {{{', '.join(map(str, sorted(set(ks))))}}}" + (", labels" if labels is not None else ""))


def cmd_decode(args: argparse.Namespace) -> None:
    """Token ids (.npz from `vistok encode`) -> images: PNGs, grid.png and samples.npz (or a .png grid alone)."""
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from vistok.data.tokens import read_token_file
    from vistok.generators.generate import resolve_device, save_samples
    from vistok.tokenizers import flextok_eval as fe

    path = Path(args.tokens)
    arrays = read_token_file(path)
    ids = arrays["ids"]
    k = arrays.get("k", np.full(len(ids), ids.shape[1]))
    if k.shape != (len(ids),) or k.dtype.kind not in "iu":
        raise VistokError(f"{path}: 'k' must hold one integer prefix length per image ({len(ids)}), got {k.dtype} {k.shape}")
    device = resolve_device(args.device)
    model, tokenizer, meta = fe.load_flextok(args.ckpt, device)
    decoding = fe.decode_config(meta, steps=args.steps, cfg=args.cfg, guidance=args.guidance)
    start = time.perf_counter()
    images = fe.decode_ids(model, tokenizer, torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(k.astype(np.int64)),
                           decoding, args.seed, args.batch_size, args.precision)
    labels = arrays.get("labels", np.zeros(len(ids), np.int64))
    written = save_samples(args.out, images.permute(0, 2, 3, 1).numpy(), np.asarray(labels))
    print(f"{len(images)} images in {time.perf_counter() - start:.1f} s ({decoding.steps} steps, cfg {decoding.cfg} "
          f"({decoding.guidance}), seed {args.seed}) -> " + ", ".join(str(p) for p in written))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid positive int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_fid(args: argparse.Namespace) -> None:
    from vistok.metrics import fid

    res = fid.calculate(args.fake, args.real, extractor=args.extractor, kid=args.kid, num=args.num,
                        weights=args.inception_weights or args.extractor_weights, batch_size=args.batch_size,
                        data_root=args.data_root, resolution=args.resolution)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        line = f"FID {res['fid']:.4f}"
        if "kid" in res:
            line += f"  KID {res['kid']:.6f} +- {res['kid_std']:.6f}"
        print(f"{line}  ({res['num_fake']} images, {res['extractor']}, real: {res.get('real_stats', res['real'])})")


def cmd_fid_stats(args: argparse.Namespace) -> None:
    from vistok.metrics import fid

    images = fid.as_images(args.input, args.num, args.resolution, args.data_root)
    weights = args.inception_weights or args.extractor_weights
    stats = fid.compute_statistics(images, args.extractor, weights, args.batch_size)
    fid.save_statistics(stats, args.out, extractor=args.extractor, source=str(args.input), num=len(images),
                        fingerprint=fid.extractor_fingerprint(args.extractor, weights))
    print(f"wrote {args.out}: {args.extractor} statistics of {len(images)} images from {args.input}")


def _fid_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--extractor", default="cifar10-net", choices=("cifar10-net", "inception-v3-compat"),
                   help="feature network (default cifar10-net; inception-v3-compat is the standard one)")
    p.add_argument("--inception-weights", metavar="PATH", help="local Inception weights (no download)")
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder instead of the shipped one")
    p.add_argument("--num", type=int, help="use at most N images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resolution", type=int, help="resize/crop folder images to this size (default: the first image's)")
    p.add_argument("--data-root", help="data root for dataset names (default $VISTOK_DATA)")


def _flextok_commands(sub) -> None:
    def common(p: argparse.ArgumentParser, decoding: bool) -> None:
        p.add_argument("--ckpt", required=True, help="exported FlexTok folder or shipped model name")
        if decoding:
            p.add_argument("--steps", type=_positive, help="Euler steps T (default: the export's)")
            p.add_argument("--cfg", type=float, help="guidance scale, 1 = none (default: the export's)")
            p.add_argument("--guidance", choices=("cfg", "apg"),
                           help="CFG or adaptive projected guidance (default: the export's)")
            p.add_argument("--seed", type=int, default=0,
                           help="noise seed; image i's noise depends on (seed, i) only (default 0)")
            p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast for the network")
        p.add_argument("--batch-size", type=_positive, default=64, help="images per forward batch (default 64)")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")

    def inputs(p: argparse.ArgumentParser) -> None:
        p.add_argument("--num", type=_positive, help="use N images (evenly spaced in a dataset or folder; default all)")
        p.add_argument("--data-root", help="data root for dataset names (default $VISTOK_DATA)")

    p = sub.add_parser("reconstruct", help="FlexTok reconstructions and MSE/PSNR/SSIM/FID per number of tokens k")
    common(p, decoding=True)
    p.add_argument("--input", required=True, help="image folder, dataset name (cifar10-test, ...) or .npz of images")
    p.add_argument("--out", required=True, help="folder: k*/ PNGs and k*.npz per k, grid.png, metrics.json")
    p.add_argument("--tokens", help="comma list of k (default 1, 2, 4, ..., K)")
    p.add_argument("--json", metavar="FILE", help="also write the JSON metrics to FILE")
    p.add_argument("--no-fid", action="store_true", help="skip FID (MSE, PSNR and SSIM only)")
    p.add_argument("--fid-real", default="cifar10-train", help="FID reference: dataset name (shipped statistics), "
                   "statistics .npz or image folder (default cifar10-train)")
    p.add_argument("--extractor-weights", metavar="DIR", help="an exported cifar10-net folder instead of the shipped one")
    p.add_argument("--grid-rows", type=_positive, default=8, help="images in grid.png (default 8)")
    inputs(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", help="images -> FlexTok token ids (.npz: ids int32 (N, K), k per image, labels)")
    common(p, decoding=False)
    p.add_argument("--input", required=True, help="image folder, dataset name or .npz of images")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--tokens", help="tokens kept per image: K, or a comma list cycled over the images (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of a VAE tokenizer's posterior sample (default 0)")
    inputs(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="FlexTok token ids (.npz from encode) -> images, each from its own k tokens")
    common(p, decoding=True)
    p.add_argument("--tokens", required=True, help=".npz with ids (N, K) and optionally k (N,) and labels")
    p.add_argument("--out", required=True, help="folder for PNGs + grid.png + samples.npz, or a .png path for a grid alone")
    p.set_defaults(func=cmd_decode)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vistok", description="Visual tokenizers and autoregressive image generation.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list model presets with parameter counts, and shipped models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("sample", help="class-conditional samples from a generator: PNGs, a grid and an .npz for FID")
    p.add_argument("--ckpt", required=True, help="exported folder (config.json + model.safetensors) or shipped model name")
    p.add_argument("--num", type=_positive, default=100, help="number of images (default 100)")
    p.add_argument("--out", required=True, help="folder for PNGs + grid.png + samples.npz, or a .png path for a grid alone")
    p.add_argument("--cfg", type=float, help="guidance scale, 1 = none (default: the export's)")
    p.add_argument("--steps", type=_positive, help="flow steps per entity (default: the export's)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images, whatever the batch size (default 0)")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per forward batch (default 64)")
    p.add_argument("--labels", help="comma list of class indices or names, cycled (default: round-robin over classes)")
    p.add_argument("--cfg-schedule", choices=("linear", "constant"), help="guidance over AR steps (default: the export's)")
    p.add_argument("--method", choices=("sde", "ode"), help="Euler-Maruyama SDE or Euler ODE (default: the export's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast for the network")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("generators on FlexTok tokens (GPT, xAR)")
    g.add_argument("--tokens", type=_positive, metavar="K",
                   help="generate and decode the first K tokens (GPT: any 1..K; xAR: a group end 1, 2, 4, ...; default all)")
    g.add_argument("--decode-steps", type=_positive, help="FlexTok decoder Euler steps (default: the export's)")
    g.add_argument("--temperature", type=float, help="GPT: softmax temperature, 0 = greedy (default: the export's)")
    g.add_argument("--top-k", type=int, help="GPT: sample among the K most likely tokens, 0 = off (default: the export's)")
    g.add_argument("--top-p", type=float, help="GPT: nucleus sampling mass in (0, 1], 1 = off (default: the export's)")
    p.set_defaults(func=cmd_sample)

    _flextok_commands(sub)

    p = sub.add_parser("fid", help="FID (and KID) of generated images against real images or statistics")
    p.add_argument("--fake", required=True, help="image folder or .npz of uint8 images")
    p.add_argument("--real", required=True, help="image folder, .npz, dataset name or statistics .npz")
    p.add_argument("--kid", action="store_true", help="also compute KID (needs real images)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid)

    p = sub.add_parser("fid-stats", help="write FID reference statistics (mu, sigma) of a set of images")
    p.add_argument("--input", required=True, help="image folder, .npz of uint8 images or dataset name")
    p.add_argument("--out", required=True, help="output .npz")
    _fid_flags(p)
    p.set_defaults(func=cmd_fid_stats)

    from vistok.em.cli import add_commands as add_em_commands

    add_em_commands(sub)

    p = sub.add_parser("demo", help="the main job: show what the shipped models do (see README)")
    p.add_argument("--out", default="demo_out", help="folder for the demo's outputs")
    p.add_argument("--num", type=int, default=1000, help="images to score")
    p.add_argument("--data-root", help="data root (default $VISTOK_DATA)")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args: argparse.Namespace) -> None:
    from vistok.demo import run_demo

    run_demo(args.out, args.num, args.data_root)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
