"""Feature-extraction throughput of vistok's FID extractors (images/s), as a table.

    python benchmarks/bench_fid.py [--num 512] [--batch-size 64] [--resolution 32]

`cifar10-net` uses the shipped weights when present (else random ones of the same shape); `inception-v3-compat`
uses random weights written to a temporary file (its speed does not depend on the values), so the benchmark runs
offline. Inputs are random uint8 images at --resolution; Inception resizes them to 299 internally.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from vistok.metrics import fid


def bench(extractor: str, weights: str | None, images: fid.Uint8Images, batch_size: int) -> float:
    fid.compute_statistics(fid.Uint8Images(images.source, batch_size), extractor, weights, batch_size)  # warm-up
    start = time.perf_counter()
    fid.compute_statistics(images, extractor, weights, batch_size)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = fid.Uint8Images(rng.integers(0, 256, (args.num, 3, args.resolution, args.resolution), dtype=np.uint8))
    device = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    print(f"FID feature extraction, {args.num} images {args.resolution}x{args.resolution}, batch {args.batch_size}, "
          f"{device}")
    print("| extractor | images/s |\n|---|---|")
    from vistok.registry import shipped_models

    c10 = None if "cifar10-net" in shipped_models() else _random_cifar10_net()
    print(f"| cifar10-net | {bench('cifar10-net', c10, images, args.batch_size):.1f} |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        w = str(fid.write_random_inception_weights(f"{tmp}/inception.pth"))
        print(f"| inception-v3-compat | {bench('inception-v3-compat', w, images, args.batch_size):.1f} |")


def _random_cifar10_net() -> str:
    from vistok.config import to_dict
    from vistok.io.exports import write_export as export
    from vistok.metrics.fid_net import FidNet, FidNetConfig

    out = tempfile.mkdtemp()
    cfg = FidNetConfig()
    export(out, "fid_net", to_dict(cfg), FidNet(cfg).state_dict())
    return out


if __name__ == "__main__":
    main()
