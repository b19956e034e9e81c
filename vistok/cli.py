"""The `vistok` command: `models`, `sample`, `fid`, `fid-stats` and `demo`.

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


def cmd_sample(args: argparse.Namespace) -> None:
    import time

    from vistok.generators import generate as gen

    device = gen.resolve_device(args.device)
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
    p.set_defaults(func=cmd_sample)

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
