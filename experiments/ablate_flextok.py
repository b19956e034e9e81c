"""FlexTok nested-dropout ablation at an equal training budget, several seeds: how k is drawn in training
(`pow2`: k ~ U{1, 2, 4, ..., K}, `uniform`: k ~ U{1..K}, `off`: always K). Bachmann et al., "FlexTok: Resampling
Images into 1D Token Sequences of Flexible Length", arXiv 2502.13967, Sec. 3 (nested dropout orders the registers
coarse to fine); here the tiny CIFAR-10 recipe, so only the comparison is meaningful.

    OMP_NUM_THREADS=1 python experiments/ablate_flextok.py --out runs/flextok_ablation --fid         # the README table
    python experiments/ablate_flextok.py --out runs/flextok_ablation --train-steps 50 --num 32 --seeds 0  # a quick look

Every variant is `train/train_flextok.py --config train/configs/flextok_cifar10_tiny.yaml` with the same steps,
batch, LR schedule (warm-up scaled with the budget) and per-seed `train.seed`, and only `model.nested_dropout` changed
(the default budget is the shipped recipe's: at 2,000 steps the decoder has not yet learned to use the later tokens,
MSE falls only 5% from k = 1 to 16 even with nested dropout, so no variant can be told apart);
a run folder that already holds an export is not trained again (rerunning resumes). Each export then reconstructs the
first `--num` CIFAR-10 test images (evenly over the classes) from their first k tokens (same decoder noise at every
k, the export's 25 Euler steps, no guidance): MSE and PSNR per k, and with `--fid` the FID of the reconstructions
(`cifar10-net` against the `cifar10-train` statistics; the reconstructions are kept as RUN/recon-k*.npz, and a run
scored by an older `cifar10-net` is re-scored from them on the next call, without decoding again). A markdown table
of mean +- spread over seeds (half the range for two seeds, the standard deviation for more) goes to stdout and
OUT/ablation.json. Calls over disjoint variants or seeds may run at once on one --out (one per core: each merges its
runs into the file), and a last call over everything prints the whole table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchtools import fid_net_fingerprint, spread  # noqa: E402  (benchmarks/benchtools.py)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "train/configs/flextok_cifar10_tiny.yaml"
VARIANTS = ("pow2", "uniform", "off")


def train(variant: str, seed: int, run_dir: Path, steps: int, extra: list[str]) -> float:
    """Train (or resume) one variant and seed; seconds spent here (0 if it was already exported)."""
    if (run_dir / "export" / "model.safetensors").is_file():
        return 0.0
    cmd = [sys.executable, str(ROOT / "train/train_flextok.py"), "--config", str(CONFIG), f"train.run_dir={run_dir}",
           f"train.total_steps={steps}", f"train.warmup_steps={max(1, round(steps * 500 / 12000))}",
           f"train.seed={seed}", f"model.nested_dropout={variant}", "preview_images=0", *extra]
    print(f"[{variant} seed {seed}] training: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def evaluate(run_dir: Path, num: int, fid_stats: str | None) -> dict[int, dict[str, float]]:
    from flextok_ood import ladder  # experiments/flextok_ood.py

    import vistok
    from vistok.data.sources import load_images
    from vistok.metrics import fid

    tokenizer = vistok.load(run_dir / "export")
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= tokenizer.registers]
    images = load_images("cifar10-test", 32, num)[0]
    result = ladder(tokenizer, images, ks, seed=0, steps=None, keep=run_dir if fid_stats else None)
    if fid_stats:
        for k in ks:
            result[k]["fid"] = fid.calculate(run_dir / f"recon-k{k}.npz", fid_stats)["fid"]
    return result


def rescore(run_dir: Path, run: dict, fid_stats: str) -> bool:
    """Recompute a run's FIDs from its kept reconstructions if another feature network scored them; True if done."""
    from vistok.metrics import fid

    current = fid_net_fingerprint()
    paths = {k: run_dir / f"recon-k{k}.npz" for k in run["ladder"]}
    if run.get("extractor") == current or not all(p.is_file() for p in paths.values()):
        return False
    for k, path in paths.items():
        run["ladder"][k]["fid"] = fid.calculate(path, fid_stats)["fid"]
    run["extractor"] = current
    return True


def save(results_path: Path, key: str, run: dict) -> dict:
    """Merge one run into OUT/ablation.json and return all runs; re-read first and replace atomically, so that
    several calls over disjoint variants or seeds (one per core) can share one folder."""
    results_path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(results_path.read_text())["runs"] if results_path.is_file() else {}
    runs[key] = run
    tmp = results_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=2))
    tmp.replace(results_path)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/flextok_ablation", help="folder of the runs and ablation.json")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1", help="comma list of training seeds")
    p.add_argument("--train-steps", type=int, default=12000,
                   help="optimizer steps per run (default: the shipped recipe's 12,000, about 65 CPU-minutes per run)")
    p.add_argument("--num", type=int, default=500, help="CIFAR-10 test images to reconstruct")
    p.add_argument("--fid", action="store_true", help="also FID of the reconstructions at every k")
    p.add_argument("--fid-stats", default="cifar10-train", help="reference statistics for --fid")
    p.add_argument("overrides", nargs="*", help="extra key=value for every run's training")
    args = p.parse_args()
    out = Path(args.out)
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    results_path = out / "ablation.json"
    runs = json.loads(results_path.read_text())["runs"] if results_path.is_file() else {}
    for seed in seeds:
        for variant in variants:
            key, run_dir = f"{variant}/seed{seed}", out / f"{variant}-seed{seed}-{args.train_steps}steps"
            if key in runs and runs[key]["train_steps"] == args.train_steps and runs[key]["num"] == args.num \
                    and (not args.fid or "fid" in runs[key]["ladder"]["1"]):
                if args.fid and rescore(run_dir, runs[key], args.fid_stats):
                    print(f"[{key}] re-scored with the current cifar10-net: FID " + ", ".join(
                        f"k={k} {v['fid']:.1f}" for k, v in runs[key]["ladder"].items()), flush=True)
                    runs = save(results_path, key, runs[key])
                continue
            train_s = train(variant, seed, run_dir, args.train_steps, args.overrides)
            ladder = evaluate(run_dir, args.num, args.fid_stats if args.fid else None)
            runs[key] = {"variant": variant, "seed": seed, "train_steps": args.train_steps, "num": args.num,
                         "train_s": train_s, "ladder": {str(k): v for k, v in ladder.items()}}
            if args.fid:
                runs[key]["extractor"] = fid_net_fingerprint()
            print(f"[{key}] MSE " + ", ".join(f"k={k} {v['mse']:.4f}" for k, v in ladder.items()), flush=True)
            runs = save(results_path, key, runs[key])
    ks = sorted({int(k) for r in runs.values() for k in r["ladder"]})
    metrics = ["mse", "psnr"] + (["fid"] if args.fid else [])
    print(f"\nFlexTok nested dropout, {args.train_steps} steps x batch 64 per run, seeds {seeds}, {args.num} CIFAR-10 "
          "test images; mean +- spread over seeds\n")
    print("| k | " + " | ".join(f"{v}: {m.upper()}" for v in variants for m in metrics)
          + " |\n|---:|" + "---:|" * (len(variants) * len(metrics)))
    for k in ks:
        cells = []
        for v in variants:
            for m in metrics:
                vals = [runs[f"{v}/seed{s}"]["ladder"][str(k)][m] for s in seeds if f"{v}/seed{s}" in runs]
                mean, sd = spread(vals)
                cells.append(f"{mean:.4f} +- {sd:.4f}" if m == "mse" else f"{mean:.2f} +- {sd:.2f}")
        print(f"| {k} | " + " | ".join(cells) + " |")
    print("\n| variant | MSE(K) / MSE(1) per seed |\n|---|---|")
    for v in variants:
        ratios = [runs[f"{v}/seed{s}"]["ladder"][str(ks[-1])]["mse"] / runs[f"{v}/seed{s}"]["ladder"]["1"]["mse"]
                  for s in seeds if f"{v}/seed{s}" in runs]
        print(f"| {v} | " + ", ".join(f"{r:.2f}" for r in ratios) + " |")


if __name__ == "__main__":
    main()
