"""xAR speed: training step time and sampling throughput per prediction entity (Ren et al., arXiv 2502.20388, Table 7).

    python eval/bench_xar.py                 # CPU table (tiny preset on 32x32 pixel tokens), under ~2 min on 2 cores
    python eval/bench_xar.py --threads 1     # the same on one thread (a busy machine)
    python eval/bench_xar.py --gpu-only      # on a CUDA machine: xar-b only

CPU rows: the tiny preset with token (64 entities of 1 token), cell (4 entities of 4x4 tokens) and image (1 entity of
64 tokens) partitions of the 8x8 grid of pixel-p4 tokens: training step time (forward, backward, AdamW) and sampling
images/s (KV-cached, CFG in a doubled batch, decode included). With CUDA, also xar-b (random weights, 16x16x16
latents, cells of 8x8 as in the paper): sampling images/s at 50 steps, CFG, bf16, batch 256 (latents only: the VAE
decode is not timed), and the training step time at batch 64 in bf16. Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from vistok.engine.optim import build_optimizer
from vistok.api import Generator
from vistok.generators.sampling import SampleConfig, sample_xar
from vistok.generators.xar import PRESETS, XAR, XARConfig
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer

from benchtools import timed  # eval/benchtools.py

TINY_PRESET = "xar-tiny-s"  # the preset of train/configs/xar_cifar10_tiny.yaml
ENTITIES = {"token": 1, "cell": 4, "image": 1}  # entity kind -> size on the 8x8 grid




def train_step_time(cfg: XARConfig, batch: int, device: torch.device, precision: str = "fp32", repeats: int = 5) -> float:
    """Seconds per optimizer step (forward, backward, clip, AdamW) on random tokens."""
    model = XAR(cfg).to(device).train()
    optimizer = build_optimizer(model, 1e-4, 0.02, (0.9, 0.96), fused=device.type == "cuda")
    tokens = torch.randn(batch, cfg.in_channels, *cfg.grid, device=device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = model(tokens, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, device, repeats, warmup=2)


def cpu_rows(steps: int, cfg_scale: float, train_batch: int, sample_batch: int) -> list[tuple]:
    tokenizer, rows = PixelTokenizer(PixelConfig(patch=4, scale=2.0)), []
    sampling = SampleConfig(steps=steps, cfg=cfg_scale)
    for kind, size in ENTITIES.items():
        cfg = dataclasses.replace(PRESETS[TINY_PRESET], entity=kind, entity_size=size)
        train_s = train_step_time(cfg, train_batch, torch.device("cpu"))
        model = XAR(cfg).eval()
        labels = torch.arange(sample_batch) % cfg.num_classes
        gen = Generator(model, tokenizer, sampling)
        sample_s = timed(lambda: gen.sample(labels, batch_size=sample_batch),  # noqa: B023
                         torch.device("cpu"), repeats=1)
        n = cfg.partition.num_entities
        rows.append((f"{TINY_PRESET} {kind} ({n} entit{'y' if n == 1 else 'ies'})", "cpu fp32",
                     f"{train_s * 1000:.0f} ms (batch {train_batch})",
                     f"{sample_batch / sample_s:.1f} ({steps} steps, cfg {cfg_scale}, batch {sample_batch})"))
        print(f"  measured {rows[-1][0]}", flush=True)
    return rows


def gpu_rows(preset: str, steps: int, cfg_scale: float, train_batch: int, sample_batch: int, device: torch.device) -> list[tuple]:
    cfg = PRESETS[preset]
    torch.backends.cuda.matmul.allow_tf32 = True
    train_s = train_step_time(cfg, train_batch, device, precision="bf16", repeats=10)
    model = XAR(cfg).to(device).eval()
    labels = torch.randint(0, cfg.num_classes, (sample_batch,), device=device)

    def sample() -> None:
        with torch.autocast(device.type, torch.bfloat16):
            sample_xar(model, labels, steps, cfg_scale, seed=0)  # (B, 16, 16, 16) latents

    sample_s = timed(sample, device, repeats=2)
    memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    return [(f"{preset} cell (random weights)", f"{device.type} bf16{memory}", f"{train_s * 1000:.0f} ms (batch {train_batch})",
             f"{sample_batch / sample_s:.1f} ({steps} steps, cfg {cfg_scale}, batch {sample_batch})")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=10, help="flow steps per entity on the CPU (default 10)")
    parser.add_argument("--cfg", type=float, default=2.0, help="guidance scale (default 2.0)")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU rows")
    parser.add_argument("--no-gpu", action="store_true", help="skip the xar-b rows even with CUDA")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    if not args.gpu_only:
        rows += cpu_rows(args.steps, args.cfg, train_batch=32, sample_batch=16)
    if torch.cuda.is_available() and not args.no_gpu:
        rows += gpu_rows("xar-b", 50, args.cfg, train_batch=64, sample_batch=256, device=torch.device("cuda"))
    elif not args.no_gpu:
        print("  (no CUDA device: xar-b rows skipped)")
    header = ("model / entity", "device", "train step", "sampling images/s")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
