"""FlexTok's coarse-to-fine ordering on images unlike its training set (Bachmann et al., "FlexTok: Resampling Images
into 1D Token Sequences of Flexible Length", arXiv 2502.13967, Fig. 5: later tokens add detail to earlier ones).

    python eval/flextok_ood.py                                  # the shipped tokenizer on every set, 256 images each
    python eval/flextok_ood.py --ckpt runs/flextok/export --num 512 --json ood.json

Builds image sets that are not CIFAR-10, deterministically from a seed (nothing is downloaded), reconstructs each
image from its first k tokens (same decoder noise at every k) and prints MSE / PSNR against k per set, with the ratio
MSE(K) / MSE(1) that issue #13 asks to keep at or below 0.5. The sets (32x32 RGB, `build_set`):

- `shapes`: one to four filled ellipses, rectangles and triangles in saturated colours on a flat background: sharp
  edges and flat regions, no texture.
- `gray-textures`: grayscale sums of two oriented sinusoidal gratings and a soft blob: smooth, periodic, no colour.
- `strokes`: two to five dark strokes (polylines) of random width on a light background: line drawings.
- `cifar10-test` (for scale): the first `--num` CIFAR-10 test images, evenly over the classes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SETS = ("shapes", "gray-textures", "strokes")


def _colour(rng: np.random.Generator, saturated: bool = True) -> tuple[int, int, int]:
    c = rng.integers(0, 256, 3)
    if saturated:  # push one channel up and one down, so colours are vivid rather than grey
        hi, lo = rng.choice(3, 2, replace=False)
        c[hi], c[lo] = rng.integers(200, 256), rng.integers(0, 56)
    return tuple(int(v) for v in c)


def _shapes(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), _colour(rng, saturated=rng.random() < 0.5))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 5)):
        x0, y0 = rng.integers(-4, size - 6, 2)
        w, h = rng.integers(6, size // 2 + 6, 2)
        box, fill = [int(x0), int(y0), int(x0 + w), int(y0 + h)], _colour(rng)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(box, fill=fill)
        elif kind == 1:
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([tuple(int(v) for v in rng.integers(-2, size + 2, 2)) for _ in range(3)], fill=fill)
    return img


def _gray_textures(rng: np.random.Generator, size: int) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = np.zeros((size, size))
    for _ in range(2):
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        img += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.1, 0.4)]
    img += rng.uniform(-1.5, 1.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    img = (img - img.min()) / max(img.max() - img.min(), 1e-6)
    gray = (255 * (0.1 + 0.8 * img)).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))


def _strokes(rng: np.random.Generator, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 6)):
        points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(rng.integers(2, 5))]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 90, 3)), width=int(rng.integers(1, 4)))
    return img


BUILDERS = {"shapes": _shapes, "gray-textures": _gray_textures, "strokes": _strokes}


def build_set(name: str, num: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (num, size, size, 3) images of set `name` (see the module docstring), the same for the same seed."""
    if name not in BUILDERS:
        raise ValueError(f"unknown image set {name!r}; choose from {', '.join(BUILDERS)}")
    rng = np.random.default_rng([seed, SETS.index(name)])
    return np.stack([np.asarray(BUILDERS[name](rng, size)) for _ in range(num)])


def ladder(tokenizer, images: np.ndarray, ks: list[int], seed: int, steps: int | None,
           keep: str | Path | None = None) -> dict[int, dict[str, float]]:
    """{k: {"mse", "psnr"}} of reconstructions from the first k tokens, pixels in [0, 1]; with `keep`, the
    reconstructions also go to keep/recon-k{k}.npz (uint8 NHWC under arr_0, e.g. for FID)."""
    recon = tokenizer.reconstruct(images, ks, seed=seed, steps=steps, batch_size=128)
    if keep is not None:
        for k in ks:
            np.savez(Path(keep) / f"recon-k{k}.npz", arr_0=recon[k])
    ref = images.astype(np.float64) / 255
    out = {}
    for k in ks:
        err = ((recon[k].astype(np.float64) / 255 - ref) ** 2).mean(axis=(1, 2, 3))  # per image
        out[k] = {"mse": float(err.mean()), "psnr": float((10 * np.log10(1 / np.maximum(err, 1e-10))).mean())}
    return out


def main() -> None:
    import vistok
    from vistok.data.sources import load_images

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="cifar10-flextok-tiny", help="a FlexTok export or shipped name")
    p.add_argument("--num", type=int, default=256, help="images per set")
    p.add_argument("--sets", default=",".join(SETS + ("cifar10-test",)), help="comma list of sets")
    p.add_argument("--steps", type=int, default=None, help="decoder Euler steps (default: the export's, 25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sets and of the decoder noise")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    tokenizer = vistok.load(args.ckpt)
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= tokenizer.registers]
    results = {}
    for name in args.sets.split(","):
        images = load_images(name, 32, args.num)[0] if name == "cifar10-test" else build_set(name, args.num, seed=args.seed)
        results[name] = ladder(tokenizer, images, ks, args.seed, args.steps)
        r = results[name]
        print(f"{name}: MSE " + ", ".join(f"k={k} {r[k]['mse']:.4f}" for k in ks)
              + f"; MSE({ks[-1]})/MSE(1) = {r[ks[-1]]['mse'] / r[1]['mse']:.2f}", flush=True)
    print(f"\n| set | " + " | ".join(f"MSE k={k}" for k in ks) + f" | MSE({ks[-1]}) / MSE(1) |\n|---|" + "---:|" * (len(ks) + 1))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[k]['mse']:.4f}" for k in ks) + f" | {r[ks[-1]]['mse'] / r[1]['mse']:.2f} |")
    print(f"\n{args.num} images per set, seed {args.seed}, tokenizer {args.ckpt}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ckpt": args.ckpt, "num": args.num, "seed": args.seed, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
