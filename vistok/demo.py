"""`vistok demo`: the main job on embedded defaults, so a newcomer sees real output at once.

It grows as models land. Now: it loads the shipped `cifar10-net` FID extractor, scores real CIFAR-10 test images,
a blurred copy of them and noise images against the shipped `cifar10-train` statistics, and writes a grid of the
three sets and a JSON of the scores to the output folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur
from torchvision.utils import save_image

from vistok.data import build_image_dataset, subset
from vistok.metrics import fid
from vistok.registry import load_model


def degraded_sets(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Real images, a Gaussian-blurred copy (sigma 1.5) and uniform noise; (N, 3, H, W) uint8 each."""
    x = torch.from_numpy(images)
    blurred = gaussian_blur(x.float(), kernel_size=7, sigma=1.5).round().clamp(0, 255).to(torch.uint8)
    noise = torch.randint(0, 256, x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return {"real": images, "blurred": blurred.numpy(), "noise": noise.numpy()}


def run_demo(out: str | Path, num: int = 1000, data_root: str | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, meta = load_model("cifar10-net")
    print(f"cifar10-net: {meta.get('eval_data')} accuracy {meta.get('eval_accuracy', float('nan')):.4f}")
    test = subset(build_image_dataset("cifar10-test", data_root, 32), num)
    images = np.stack([test.dataset.uint8(i).numpy() for i in test.indices]) if hasattr(test, "indices") else test.images.transpose(0, 3, 1, 2)
    results = {}
    for name, arr in degraded_sets(images).items():
        path = out / f"cifar10-test-{name}.npz"
        np.savez(path, images=arr)
        results[name] = fid.calculate(path, "cifar10-train")["fid"]
        print(f"FID({name} CIFAR-10 test images vs cifar10-train statistics, cifar10-net, n={len(arr)}) = {results[name]:.3f}")
    shown = images[:: max(1, len(images) // 16)][:16]  # spread over the classes (datasets are stored by class)
    grid = torch.cat([torch.from_numpy(a) for a in degraded_sets(shown).values()]).float() / 255
    save_image(grid, out / "fid_sets.png", nrow=16)
    (out / "demo.json").write_text(json.dumps({"fid_vs_cifar10_train": results, "num": len(images)}, indent=2))
    print(f"wrote {out / 'fid_sets.png'} and {out / 'demo.json'}")
    return results
