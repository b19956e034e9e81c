"""xAR ablation at an equal training budget, in one run: prediction entity (cell vs token vs whole image) and context
(Noisy Context Learning vs clean teacher-forced context). Ren et al., "Beyond Next-Token: Next-X Prediction for
Autoregressive Visual Generation", arXiv 2502.20388, Tables 1 and 3 (there on ImageNet 256 with xAR-B; here the tiny
CIFAR-10 preset on 32x32 pixel tokens, so only the ranking is comparable).

    OMP_NUM_THREADS=1 python experiments/ablate_xar.py --out runs/xar_ablation --seeds 0,1   # the README table
    python experiments/ablate_xar.py --out runs/xar_ablation --train-steps 100 --num 100    # a quick look (seed 0)

Every variant is `train/train_xar.py --config train/configs/xar_cifar10_tiny.yaml` with the same steps, batch, LR
schedule, and only `model.entity` / `model.entity_size` / `model.context` changed. Seed s trains with
`train.seed=s` and samples with seed s, in OUT/seed{s}/; a variant whose run folder already holds an export is not
trained again and one already scored is not sampled again (rerunning resumes an interrupted run). Each export samples
`--num` images (round-robin classes) with the same sampler settings, FID with `cifar10-net` against the shipped
`cifar10-train` statistics (the samples stay in the run folder), and the wall time of sampling (decode included).
Each score records the fingerprint of the `cifar10-net` weights: after the feature network is retrained, a rerun
re-scores the kept samples against the new statistics without training or sampling again. Per seed
OUT/seed{s}/ablation.json; a markdown table of every seed and of mean +- spread (half the range for two seeds, the
standard deviation for more) goes to stdout.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchtools import fid_net_fingerprint, spread  # noqa: E402  (benchmarks/benchtools.py)

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
           f"train.total_steps={steps}", f"train.batch_size={batch}", f"train.warmup_steps={warmup}",
           "train.ckpt_every=250", "preview_per_class=0",
           *VARIANTS[name], *extra]
    print(f"[{name}] training: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def rescore(run_dir: Path, row: dict, seed: int) -> dict | None:
    """The row with its FID recomputed from the kept samples if they were scored by another feature network."""
    path = run_dir / f"samples-{row['num']}-seed{seed}.npz"
    if row.get("extractor") == fid_net_fingerprint() or not path.is_file():
        return None
    return {**row, "fid": fid.calculate(path, "cifar10-train")["fid"], "extractor": fid_net_fingerprint()}


def score(run_dir: Path, num: int, steps: int | None, cfg: float | None, seed: int, batch: int) -> dict:
    gen = vistok.load(run_dir / "export")
    sampling, labels = gen.settings(steps=steps, cfg=cfg), gen.labels(num=num)
    start = time.perf_counter()
    images = gen.sample(labels, seed=seed, steps=steps, cfg=cfg, batch_size=batch)  # (N, H, W, 3) uint8
    seconds = time.perf_counter() - start
    path = run_dir / f"samples-{num}-seed{seed}.npz"
    np.savez(path, arr_0=images, labels=labels)
    value = fid.calculate(path, "cifar10-train")["fid"]
    return {"fid": value, "extractor": fid_net_fingerprint(), "sample_s": seconds, "img_per_s": num / seconds,
            "entities": gen.model.config.partition.num_entities, "sampling": dataclasses.asdict(sampling)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/xar_ablation", help="folder of the variants' runs and ablation.json")
    p.add_argument("--train-steps", type=int, default=800, help="optimizer steps per variant (the equal budget)")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100, help="LR warmup steps of every variant")
    p.add_argument("--num", type=int, default=500, help="samples per variant for FID")
    p.add_argument("--steps", type=int, default=None, help="flow steps per entity (default: the export's, 50)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the export's, 2.0, linear)")
    p.add_argument("--seeds", default="0", help="comma list of seeds (training and sampling)")
    p.add_argument("--batch-size", type=int, default=250, help="sampling batch")
    p.add_argument("--only", help="comma list of variant slugs to run (e.g. token-noisy); default all")
    p.add_argument("overrides", nargs="*", help="extra key=value for every variant's training (e.g. data.root=...)")
    args = p.parse_args()
    seeds = [int(v) for v in args.seeds.split(",")]
    by_seed = {seed: run_seed(args, seed) for seed in seeds}
    names = [n for n in VARIANTS if all(n in rows for rows in by_seed.values())]
    print(f"\nxAR ablation, {args.train_steps} steps x batch {args.train_batch} per variant, FID (cifar10-net, "
          f"{args.num} samples vs cifar10-train statistics), seeds {seeds}\n")
    print("| variant | entities | " + " | ".join(f"FID seed {s}" for s in seeds)
          + " | FID mean +- spread | sampling img/s |\n"
          "|---|---|" + "---|" * (len(seeds) + 2))
    for name in names:
        fids = [by_seed[s][name]["fid"] for s in seeds]
        mean, sd = spread(fids)
        speed = np.mean([by_seed[s][name]["img_per_s"] for s in seeds])
        print(f"| {name} | {by_seed[seeds[0]][name]['entities']} | " + " | ".join(f"{v:.1f}" for v in fids)
              + f" | {mean:.1f} +- {sd:.1f} | {speed:.2f} |")
    if names:
        s = by_seed[seeds[0]][names[0]]["sampling"]
        print(f"\nsampling: {s['steps']} {s['method']} steps per entity, cfg {s['cfg']} ({s['cfg_schedule']}), "
              f"batch {args.batch_size}, one process, {torch.get_num_threads()} thread(s)")


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Train (or resume) and score every chosen variant with this seed; {variant: result} of OUT/seed{seed}."""
    out = Path(args.out) / f"seed{seed}"
    results_path = out / "ablation.json"
    saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
    rows = saved.get("rows", {})
    for name in VARIANTS:
        if args.only and slug(name) not in args.only.split(","):
            continue
        run_dir = out / slug(name)
        train_s = train(name, run_dir, args.train_steps, args.train_batch, args.warmup,
                        [f"train.seed={seed}", *args.overrides])
        if name in rows and rows[name].get("num", saved.get("num")) == args.num and train_s == 0.0:
            rows[name].setdefault("num", args.num)
            fresh = rescore(run_dir, rows[name], seed)  # already sampled with these settings
            if fresh is not None:
                print(f"[{name}, seed {seed}] re-scored with the current cifar10-net: FID {rows[name]['fid']:.2f} -> "
                      f"{fresh['fid']:.2f}", flush=True)
                rows[name] = fresh
                results_path.write_text(json.dumps({**saved, "rows": rows}, indent=2))
            continue
        result = score(run_dir, args.num, args.steps, args.cfg, seed, args.batch_size)
        if train_s == 0.0 and name in rows:
            train_s = rows[name].get("train_s", 0.0)
        rows[name] = {**result, "train_s": train_s, "num": args.num}
        print(f"[{name}, seed {seed}] FID {result['fid']:.2f}, sampling {result['img_per_s']:.2f} img/s", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps({"train_steps": args.train_steps, "train_batch": args.train_batch,
                                            "num": args.num, "seed": seed, "rows": rows}, indent=2))
    return rows

if __name__ == "__main__":
    main()
