"""FlexTok speed and memory (Bachmann et al., arXiv 2502.13967; decoding dominates the cost, and the spec's §8 predicts
it does not depend on k: masked registers are still computed).

    python benchmarks/bench_flextok.py --threads 1     # CPU table: the tiny CIFAR-10 preset, random weights (~1 min)
    OMP_NUM_THREADS=2 python benchmarks/bench_flextok.py --skip-tiny --released flextok-d12-d12,flextok-d18-d28 \
        --threads 2
    python benchmarks/bench_flextok.py --skip-tiny --released flextok-d12-d12,flextok-d18-d28 --device cuda   # on a GPU
    python benchmarks/bench_flextok.py --skip-tiny --released flextok-test --measure-steps 2   # smoke test (seconds)

Tiny rows: the model of train/configs/flextok_cifar10_tiny.yaml (32x32 pixels, 16 registers, width 96) at batch 64:
encode images/s (images -> ids) and decode images/s (ids -> images, Euler, pixel tokenizer) for k = 1, 4, 16 and
T = 10, 25 without guidance and T = 25 with CFG (both branches in one doubled batch).

Released rows (`--released`): the released shapes (flextok.py's presets; the REPA projector left out, it is
training-only) with random weights, fp32, batch 1, one 256x256 image through the random FlexTok VAE (16x32x32
latents, 256 registers): wall time and peak memory of encode (VAE encode + FlexTok encode -> 256 ids) and of decode
at 25 Euler steps with APG at scale 7.5 (the released default guidance: `perform_norm_guidance=True`,
`guidance_scale=7.5`) then the VAE decode. Peak memory is the process's peak resident set (VmHWM, reset before each
phase through /proc/self/clear_refs, so it includes the resident weights) and, on CUDA, torch's max allocated.
`--measure-steps N` times N Euler steps only and extrapolates to 25 (labelled `extrapolated`): VAE decode + 25 x the
measured per-step time. One timed run per cell, no warm-up (a d18-d28 step takes minutes on two CPU cores).
Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from vistok.tokenizers import flextok_sampling as sampling
from vistok.tokenizers.flextok import PRESETS, FlexTok, FlexTokConfig
from vistok.tokenizers.flextok_sampling import DecodeConfig
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer

from benchtools import sync, timed  # benchmarks/benchtools.py

TINY_CONFIG = Path(__file__).resolve().parents[1] / "train" / "configs" / "flextok_cifar10_tiny.yaml"




def tiny_config() -> FlexTokConfig:
    """The shipped tiny model's architecture, read from its training config."""
    model = yaml.safe_load(TINY_CONFIG.read_text())["model"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
    return dataclasses.replace(PRESETS["flextok-tiny-s"], **values)


def randomized(model: FlexTok, seed: int = 0) -> FlexTok:
    """Zero-initialised heads and gates made random, so the network computes what a trained one would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=gen).to(p.device) * 0.02)
    return model


def cpu_rows(batch: int, ks: list[int], steps: list[int], cfg_scale: float, repeats: int) -> list[tuple]:
    cfg, device = tiny_config(), torch.device("cpu")
    model = randomized(FlexTok(cfg)).eval()
    tokenizer = PixelTokenizer(PixelConfig(patch=1, scale=2.0))
    images = torch.rand(batch, 3, *cfg.grid) * 2 - 1
    enc_s = timed(lambda: sampling.encode(model, images, tokenizer), device, repeats)
    ids = sampling.encode(model, images, tokenizer)
    settings = [(t, 1.0) for t in steps] + [(max(steps), cfg_scale)]  # scale 1: no guidance, no null pass
    rows = []
    for k in ks:
        row = [f"{k}", f"{batch / enc_s:.0f}"]
        for t, scale in settings:
            decoding = DecodeConfig(steps=t, cfg=scale)
            s = timed(lambda: sampling.decode(model, ids, decoding, keep_k=k, seed=0, tokenizer=tokenizer),  # noqa: B023
                      device, repeats, warmup=0)
            row.append(f"{batch / s:.1f}")
        rows.append(tuple(row))
        print(f"  measured k = {k}", flush=True)
    header = ("k", "encode img/s", *(f"decode T={t}" + (f" CFG {s}" if s != 1.0 else "") for t, s in settings))
    print(f"  ({cfg.registers} registers, width {cfg.enc_width}/{cfg.dec_width}, batch {batch}, random weights; the "
          "encoder always computes all K registers, so one encode figure serves every k)")
    return [header, *rows]


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0: `5` into /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set of this process in bytes since the last `reset_peak_rss` (VmHWM; ru_maxrss elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux (bytes on macOS: a rough bound)


def measured(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float, int, int]:
    """(fn's result, seconds, peak RSS bytes, CUDA max allocated bytes or 0) of one call."""
    gc.collect()
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    seconds = time.perf_counter() - start
    return out, seconds, peak_rss(), torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def released_model(preset: str, device: torch.device) -> FlexTok:
    """A random-weight model of the preset's shapes, built on the meta device then materialised once (no second copy
    of the weights, no default init run before ours)."""
    cfg = dataclasses.replace(PRESETS[preset], repa_dim=0)  # the REPA projector is training-only
    with torch.device("meta"):
        model = FlexTok(cfg)
    model.to_empty(device=device)
    with torch.no_grad():
        model.reset_parameters()
    return randomized(model).eval().requires_grad_(False)


def released_row(preset: str, device: torch.device, steps: int, cfg_scale: float, measure_steps: int) -> tuple:
    """One row: encode and decode (APG) of one image at the preset's resolution, time and peak memory."""
    from vistok.tokenizers.vae import VAE, VAEConfig

    start = time.perf_counter()
    model = released_model(preset, device)
    c = model.config
    if c.in_channels == 16:  # FlexTok-VAE latents: 8x the latent size in pixels
        tokenizer, size = VAE(VAEConfig(arch="flextok-c16", random_init=True)).to(device), c.grid[0] * 8
    else:
        tokenizer, size = PixelTokenizer(PixelConfig(patch=1)), c.grid[0]
    build_s = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for m in (model, tokenizer) for p in m.parameters())
    image = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    print(f"  {preset}: built in {build_s:.0f} s, weights {gib(weights)} GiB; encoding", flush=True)
    ids, enc_s, enc_rss, enc_cuda = measured(lambda: sampling.encode(model, image, tokenizer), device)
    n = measure_steps if 0 < measure_steps < steps else steps
    print(f"  {preset}: encode {enc_s:.1f} s; decoding {n} steps", flush=True)
    latents, flow_s, dec_rss, dec_cuda = measured(
        lambda: sampling.decode(model, ids, DecodeConfig(steps=n, cfg=cfg_scale, guidance="apg"),
                                seed=0, progress=None), device)
    images, vae_s, vae_rss, vae_cuda = measured(lambda: tokenizer.decode(latents), device)
    assert images.shape == (1, 3, size, size) and bool(torch.isfinite(images).all())
    per_step = flow_s / n
    decode_s = vae_s + per_step * steps
    label = "" if n == steps else f" (extrapolated from {n} steps)"
    secs = lambda x: f"{x:.1f}" if x < 100 else f"{x:.0f}"  # noqa: E731
    cuda = device.type == "cuda"
    what = "VAE" if isinstance(tokenizer, VAE) else "pixels"
    row = (f"{preset} ({sum(p.numel() for p in model.parameters()) / 1e6:,.1f}M + {what})", gib(weights), secs(enc_s),
           gib(enc_rss), f"{secs(decode_s)}{label}", f"{per_step:.2f}", secs(vae_s), gib(max(dec_rss, vae_rss)))
    if cuda:
        row += (gib(enc_cuda), gib(max(dec_cuda, vae_cuda)))
    print(f"  {preset}: {n} steps {flow_s:.1f} s, VAE decode {vae_s:.1f} s", flush=True)
    return row  # the model goes with this frame, before the next preset is built


def released_rows(presets: list[str], device: torch.device, steps: int, cfg_scale: float,
                  measure_steps: int) -> list[tuple]:
    header = ("model (random weights)", "weights GiB", "encode s", "encode peak RSS GiB",
              f"decode s ({steps} steps, APG {cfg_scale}, + VAE)", "s / step", "VAE decode s", "decode peak RSS GiB")
    if device.type == "cuda":
        header += ("encode CUDA max alloc GiB", "decode CUDA max alloc GiB")
    return [header, *(released_row(p, device, steps, cfg_scale, measure_steps) for p in presets)]


def print_table(rows: list[tuple]) -> None:
    print("\n| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=64, help="tiny table: batch (default 64)")
    parser.add_argument("--cfg", type=float, default=2.0, help="tiny table: guidance scale (default 2.0)")
    parser.add_argument("--repeats", type=int, default=3, help="tiny table: timed repeats per cell (median; default 3)")
    parser.add_argument("--skip-tiny", action="store_true", help="skip the tiny table")
    parser.add_argument("--released", default="", help="comma-separated presets for the released-size table, e.g. "
                        "flextok-d12-d12,flextok-d18-d28 (default: none)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device of the released rows")
    parser.add_argument("--steps", type=int, default=25, help="released rows: Euler steps (default 25)")
    parser.add_argument("--apg", type=float, default=7.5, help="released rows: APG scale (default 7.5, as released)")
    parser.add_argument("--measure-steps", type=int, default=0,
                        help="released rows: time this many steps and extrapolate to --steps (default 0: run them all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    presets = [p for p in args.released.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown FlexTok presets {unknown}; choose from {', '.join(PRESETS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device; use --device cpu")
    if not args.skip_tiny:
        print_table(cpu_rows(args.batch, [1, 4, 16], [10, 25], args.cfg, args.repeats))
    if presets:
        print_table(released_rows(presets, torch.device(args.device), args.steps, args.apg, args.measure_steps))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads, fp32, batch 1 in the released rows"
          + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))


if __name__ == "__main__":
    main()
