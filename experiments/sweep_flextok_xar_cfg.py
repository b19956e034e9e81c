"""xAR on FlexTok codes: FID against the CFG schedule over prefix groups, with and without snapping each finished group
to the FSQ lattice (xAR, Ren et al., arXiv 2502.20388, CFG linear in the AR step; FlexTok, Bachmann et al.,
arXiv 2502.13967, whose first tokens carry the semantics).

    python experiments/sweep_flextok_xar_cfg.py                              # the README's sweep (about 15 CPU-minutes)
    python experiments/sweep_flextok_xar_cfg.py --seeds 0 1 --variants constant linear --ks 1 16 --num 1000

A variant is a CFG schedule (`flow.CFG_SCHEDULES`), optionally with the suffix `-nosnap` (only the final codes are
snapped, to read off the ids: the sampler before snapping existed). For each variant, k and seed: `--num` samples of
the shipped model (round-robin classes, per-image seeds, the export's 50 SDE steps per group, FlexTok's 25 decoder
steps), FID with cifar10-net against the cifar10-train statistics. One JSON line per run on stdout (and `--out`),
then a markdown table: mean over the seeds, and the spread (max - min) when there are several.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import vistok
from vistok.generators.flextok_codes import sample_ids
from vistok.metrics import fid


def run(ckpt: str, variant: str, k: int, seed: int, num: int, cfg: float, batch: int,
        keep_dir: str | None = None) -> dict:
    import vistok.api.models as models  # the paired generator's sampler, to switch snapping off for a `-nosnap` run

    schedule, snap = (variant.removesuffix("-nosnap"), False) if variant.endswith("-nosnap") else (variant, True)
    gen = vistok.load(ckpt)
    start, keep = time.time(), models.sample_ids
    models.sample_ids = lambda *a, **kw: sample_ids(*a, **kw, snap=snap)  # noqa: E731
    try:
        images = gen.sample(num=num, tokens=k, seed=seed, cfg=cfg, cfg_schedule=schedule, batch_size=batch)
    finally:
        models.sample_ids = keep
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(keep_dir or tmp) / f"{variant}-k{k}-seed{seed}-{num}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, arr_0=images)
        value = fid.calculate(path, "cifar10-train")["fid"]
    return dict(schedule=schedule, snap=snap, k=k, seed=seed, num=num, cfg=cfg, fid=round(value, 2),
                seconds=round(time.time() - start, 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="cifar10-flextok-xar-tiny")
    p.add_argument("--variants", nargs="+", default=["linear", "constant", "linear-guided", "linear-nosnap"])
    p.add_argument("--ks", nargs="+", type=int, default=[1, 16])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="append the JSON lines to this file too")
    p.add_argument("--keep", help="keep the samples in this folder (VARIANT-kK-seedS-NUM.npz), e.g. to re-score them")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for variant in args.variants:
        for k in args.ks:
            for seed in args.seeds:
                rows.append(run(args.ckpt, variant, k, seed, args.num, args.cfg, args.batch, args.keep))
                print(json.dumps(rows[-1]), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    print("\n| schedule | snap | " + " | ".join(f"FID k={k}" for k in args.ks) + " |")
    print("|---|---|" + "---:|" * len(args.ks))
    for variant in args.variants:
        cells = []
        for k in args.ks:
            values = [r["fid"] for r in rows if r["k"] == k
                      and f"{r['schedule']}{'' if r['snap'] else '-nosnap'}" == variant]
            spread = f" (spread {max(values) - min(values):.1f})" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.1f}{spread}")
        schedule, snap = variant.removesuffix("-nosnap"), "no" if variant.endswith("-nosnap") else "yes"
        print(f"| {schedule} | {snap} | " + " | ".join(cells) + " |")
    print(f"\n{sum(r['seconds'] for r in rows) / 60:.1f} minutes in all ({len(rows)} runs of {args.num} samples)")


if __name__ == "__main__":
    main()
