"""`vistok demo`: the main job on embedded defaults, so a newcomer sees real output at once.

Three steps, each on a model shipped in `assets/`:
1. FID sanity: the `cifar10-net` extractor scores real CIFAR-10 test images, a blurred copy and noise images against
   the shipped `cifar10-train` statistics (`fid_sets.png`).
2. FlexTok (`cifar10-flextok-tiny`): a few test images reconstructed from their first k = 1, 2, 4, ..., K tokens
   (`flextok_recon.png`: rows are images, columns the original then k), with the MSE per k.
3. xAR (`cifar10-xar-tiny`): 300 class-conditional samples (seed 0) with the export's sampler settings, a grid with
   one row per class (`xar_samples.png`) and their FID against the `cifar10-train` statistics: the value
   `tests/test_shipped.py` checks (the README's FID uses 1,000 samples).
Scores go to `demo.json`. The files appear together when the demo is done (`atomic_folder`, the user's umask); an
`--out` holding anything but an earlier demo's files is refused before any work unless `--overwrite` is given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

import vistok
from vistok.data import build_image_dataset, subset
from vistok.data.outputs import check_output_folder
from vistok.io.atomic import atomic_folder
from vistok.io.paths import check_replaceable
from vistok.metrics import fid
from vistok.metrics.recon import image_metrics
from vistok.tokenizers.flextok_sampling import k_ladder
from vistok.viz import class_grid, recon_grid, tile

FLEXTOK_MODEL, XAR_MODEL = "cifar10-flextok-tiny", "cifar10-xar-tiny"


def degraded_sets(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Real images, a Gaussian-blurred copy (sigma 1.5) and uniform noise; (N, 3, H, W) uint8 each."""
    x = torch.from_numpy(images)
    blurred = gaussian_blur(x.float(), kernel_size=7, sigma=1.5).round().clamp(0, 255).to(torch.uint8)
    noise = torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return {"real": images, "blurred": blurred.numpy(), "noise": noise.numpy()}


def flextok_step(out: Path, images: np.ndarray, rows: int = 8, sources: dict | None = None) -> dict[int, float]:
    """Reconstruct `rows` test images (spread over the classes) at every k of the ladder; MSE in [0, 1] per k.
    `sources` gets the model's pinned source (a hub model: hf://org/repo@COMMIT)."""
    tok = vistok.load(FLEXTOK_MODEL)
    if sources is not None:
        sources["flextok"] = tok.source
    shown = images[:: max(1, len(images) // rows)][:rows].transpose(0, 2, 3, 1)  # (rows, H, W, 3)
    recons = tok.reconstruct(shown, k_ladder(tok.registers))
    Image.fromarray(recon_grid(shown, recons, rows=rows)).save(out / "flextok_recon.png")
    mse = {k: image_metrics(shown, r)["mse"] for k, r in recons.items()}
    print(f"{FLEXTOK_MODEL}: reconstruction MSE of {len(shown)} test images from their first k tokens: "
          + ", ".join(f"k={k} {v:.4f}" for k, v in mse.items()) + " -> flextok_recon.png")
    return mse


def xar_step(out: Path, num: int) -> dict:
    """Sample `num` images round-robin over the classes (seed 0), write the grid, score FID."""
    gen = vistok.load(XAR_MODEL)
    labels, sampling = gen.labels(num=num), gen.settings()
    images = gen.sample(labels, seed=0, batch_size=250)  # (N, H, W, 3) uint8
    per_class = max(1, min(10, num // len(gen.classes)))
    shown = np.concatenate([images[labels == c][:per_class] for c in range(len(gen.classes))])
    Image.fromarray(class_grid(shown, np.repeat(np.arange(len(gen.classes)), per_class))).save(out / "xar_samples.png")
    path = out / "xar_samples.npz"
    np.savez(path, arr_0=images, labels=labels)
    value = fid.calculate(path, "cifar10-train")["fid"]
    print(f"{XAR_MODEL}: FID({num} samples vs cifar10-train statistics, cifar10-net) = {value:.3f} "
          f"({sampling.steps} {sampling.method} steps per entity, cfg {sampling.cfg} {sampling.cfg_schedule}, seed 0)"
          f" -> xar_samples.png (rows: {', '.join(gen.classes)})")
    return {"fid": value, "num": num, "source": gen.source, "sampling": {"steps": sampling.steps, "cfg": sampling.cfg,
                                                  "cfg_schedule": sampling.cfg_schedule, "method": sampling.method}}


def is_demo_folder(path: Path) -> bool:
    """An earlier demo's output: its demo.json and nothing but files the demo writes."""
    names = {p.name for p in path.iterdir()}
    return "demo.json" in names and all(n.endswith((".png", ".npz", ".json")) for n in names)


def run_demo(out: str | Path, num: int = 1000, data_root: str | None = None, xar_num: int = 300,
             overwrite: bool = False) -> dict:
    """Write the demo's files into `out` (replaced as a whole: new, empty, an earlier demo's, or `overwrite`)."""
    out = check_replaceable(check_output_folder(out, grid_suffix=None), is_demo_folder, "vistok demo folder", overwrite)
    with atomic_folder(out) as folder:
        report = _demo(folder, num, data_root, xar_num)
    print(f"wrote {out / 'fid_sets.png'}, {out / 'flextok_recon.png'}, {out / 'xar_samples.png'} and "
          f"{out / 'demo.json'}")
    return report


def _demo(out: Path, num: int, data_root: str | None, xar_num: int) -> dict:
    from vistok.api import read_meta

    _, meta = read_meta("cifar10-net")
    print(f"cifar10-net: {meta.get('eval_data')} accuracy {meta.get('eval_accuracy', float('nan')):.4f}")
    test = subset(build_image_dataset("cifar10-test", data_root, 32), num)
    images = (np.stack([test.dataset.uint8(i).numpy() for i in test.indices]) if hasattr(test, "indices")
              else test.images.transpose(0, 3, 1, 2))
    results = {}
    for name, arr in degraded_sets(images).items():
        path = out / f"cifar10-test-{name}.npz"
        np.savez(path, images=arr)
        results[name] = fid.calculate(path, "cifar10-train")["fid"]
        print(f"FID({name} CIFAR-10 test images vs cifar10-train statistics, cifar10-net, n={len(arr)}) = "
              f"{results[name]:.3f}")
    shown = images[:: max(1, len(images) // 16)][:16]  # spread over the classes (datasets are stored by class)
    rows = np.concatenate([a.transpose(0, 2, 3, 1) for a in degraded_sets(shown).values()])  # real, blurred, noise
    Image.fromarray(tile(rows, cols=len(shown))).save(out / "fid_sets.png")
    report = {"fid_vs_cifar10_train": results, "num": len(images), "sources": {"fid_net": "cifar10-net"}}
    report["flextok_mse_per_k"] = flextok_step(out, images, sources=report["sources"])
    report["xar"] = xar_step(out, xar_num)
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    return report
