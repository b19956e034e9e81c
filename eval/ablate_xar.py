"""xAR ablation at an equal training budget, in one run: prediction entity (cell vs token vs whole image) and context
(Noisy Context Learning vs clean teacher-forced context). Ren et al., "Beyond Next-Token: Next-X Prediction for
Autoregressive Visual Generation", arXiv 2502.20388, Tables 1 and 3 (there on ImageNet 256 with xAR-B; here the tiny
CIFAR-10 preset on 32x32 pixel tokens, so only the ranking is comparable).

    OMP_NUM_THREADS=1 python eval/ablate_xar.py --out runs/xar_ablation            # the README table
    python eval/ablate_xar.py --out runs/xar_ablation --train-steps 100 --num 100   # a quick look

Every variant is `train/train_xar.py --config train/configs/xar_cifar10_tiny.yaml` with the same steps, batch, LR
schedule and seed, and only `model.entity` / `model.entity_size` / `model.context` changed; a variant whose run folder
already holds an export is not trained again (rerunning resumes an interrupted run). Then each export samples `--num`
images (round-robin classes, fixed seed) with the same sampler settings, FID with `cifar10-net` against the shipped
`cifar10-train` statistics, and the wall time of sampling (decode included). A markdown table goes to stdout and
OUT/ablation.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vistok
from vistok.metrics import fid

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "train/configs/xar_cifar10_tiny.yaml"
# name -> overrides of the shipped config; "cell, noisy" is the shipped model's recipe (the paper's choice)
VARIANTS = {
    "cell 4x4, noisy context (NCL)": ["model.entity=cell", "model.entity_size=4", "model.context=noisy"],
    "token, noisy context": ["model.entity=token", "model.entity_size=1", "model.context=noisy"],
    "image, noisy context": ["model.entity=image", "model.entity_size=1", "model.context=noisy"],
    "cell 4x4, clean context": ["model.entity=cell", "model.entity_size=4", "model.context=clean"],
}


def slug(name: str) -> str:
    return name.split(",")[0].split()[0] + "-" + name.split(", ")[1].split()[0]


def train(name: str, run_dir: Path, steps: int, batch: int, warmup: int, extra: list[str]) -> float:
    """Train one variant (or resume it); seconds spent in this call (0 if it was already exported)."""
    if (run_dir / "export" / "model.safetensors").is_file():
        return 0.0
    cmd = [sys.executable, str(ROOT / "train/train_xar.py"), "--config", str(CONFIG), f"train.run_dir={run_dir}",
           f"train.total_steps={steps}", f"train.batch_size={batch}", f"train.warmup_steps={warmup}", "train.ckpt_every=250", "preview_per_class=0",
           *VARIANTS[name], *extra]
    print(f"[{name}] training: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def score(run_dir: Path, num: int, steps: int | None, cfg: float | None, seed: int, batch: int) -> dict:
    gen = vistok.load(run_dir / "export")
    sampling, labels = gen.settings(steps=steps, cfg=cfg), gen.labels(num=num)
    start = time.perf_counter()
    images = gen.sample(labels, seed=seed, steps=steps, cfg=cfg, batch_size=batch)  # (N, H, W, 3) uint8
    seconds = time.perf_counter() - start
    path = run_dir / f"samples-{num}-seed{seed}.npz"
    np.savez(path, arr_0=images, labels=labels)
    value = fid.calculate(path, "cifar10-train")["fid"]
    return {"fid": value, "sample_s": seconds, "img_per_s": num / seconds, "entities": gen.model.config.partition.num_entities,
            "sampling": dataclasses.asdict(sampling)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/xar_ablation", help="folder of the variants' runs and ablation.json")
    p.add_argument("--train-steps", type=int, default=800, help="optimizer steps per variant (the equal budget)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100, help="LR warmup steps of every variant")
    p.add_argument("--num", type=int, default=500, help="samples per variant for FID")
    p.add_argument("--steps", type=int, default=None, help="flow steps per entity (default: the export's, 50)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the export's, 2.0, linear)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch")
    p.add_argument("--only", help="comma list of variant slugs to run (e.g. token-noisy); default all")
    p.add_argument("overrides", nargs="*", help="extra key=value for every variant's training (e.g. data.root=...)")
    args = p.parse_args()
    out = Path(args.out)
    rows = {}
    results_path = out / "ablation.json"
    if results_path.is_file():
        rows = json.loads(results_path.read_text())["rows"]
    for name in VARIANTS:
        if args.only and slug(name) not in args.only.split(","):
            continue
        run_dir = out / slug(name)
        train_s = train(name, run_dir, args.train_steps, args.train_batch, args.warmup, args.overrides)
        result = score(run_dir, args.num, args.steps, args.cfg, args.seed, args.batch_size)
        if train_s == 0.0 and name in rows:
            train_s = rows[name].get("train_s", 0.0)
        rows[name] = {**result, "train_s": train_s}
        print(f"[{name}] FID {result['fid']:.2f}, sampling {result['img_per_s']:.2f} img/s", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps({"train_steps": args.train_steps, "train_batch": args.train_batch,
                                            "num": args.num, "seed": args.seed, "rows": rows}, indent=2))
    print(f"\nxAR ablation, {args.train_steps} steps x batch {args.train_batch} per variant, FID (cifar10-net, "
          f"{args.num} samples vs cifar10-train statistics)\n")
    print("| variant | entities | FID | sampling img/s | sampling s | training s |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        s = r["sampling"]
        print(f"| {name} | {r['entities']} | {r['fid']:.2f} | {r['img_per_s']:.2f} | {r['sample_s']:.0f} | "
              f"{r['train_s']:.0f} |")
    print(f"\nsampling: {s['steps']} {s['method']} steps per entity, cfg {s['cfg']} ({s['cfg_schedule']}), "
          f"batch {args.batch_size}, one process, {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
