"""FlexTok speed: encode and decode images/s against the number of tokens k and the Euler steps T (Bachmann et al.,
arXiv 2502.13967; decoding dominates the cost, and the spec's §8 predicts it does not depend on k: masked registers
are still computed).

    python eval/bench_flextok.py                 # CPU table: the tiny CIFAR-10 preset, random weights (~1 min)
    python eval/bench_flextok.py --threads 1     # the same on one thread (a busy machine)
    python eval/bench_flextok.py --gpu-only      # on a CUDA machine: flextok-d18-d18 only
    python eval/bench_flextok.py --gpu-only --large flextok-test --device cpu --large-batch 4 --large-steps 2  # smoke test

CPU rows: the model of train/configs/flextok_cifar10_tiny.yaml (32x32 pixels, 16 registers, width 96) at batch 64:
encode images/s (images -> ids) and decode images/s (ids -> images, Euler, pixel tokenizer) for k = 1, 4, 16 and
T = 10, 25 without guidance and T = 25 with CFG (both branches in one doubled batch). With CUDA, also flextok-d18-d18
(random weights; 256 px through the FlexTok VAE, 16x32x32 latents, 256 registers) at batch 64 in bf16: encode
images/s (VAE encode included), and decode images/s at 20 steps with CFG, for the latents alone and with the
(random) VAE decode. Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import yaml

from vistok.tokenizers import flextok_sampling as sampling
from vistok.tokenizers.flextok import PRESETS, FlexTok, FlexTokConfig
from vistok.tokenizers.flextok_sampling import DecodeConfig
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer

from benchtools import timed  # eval/benchtools.py

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


def large_rows(preset: str, device: torch.device, batch: int, steps: int, cfg_scale: float, repeats: int) -> list[tuple]:
    """One row: encode and decode images/s of a paper-size preset with random weights, bf16 autocast."""
    cfg = dataclasses.replace(PRESETS[preset], repa_dim=0)  # the REPA projector is training-only
    torch.backends.cuda.matmul.allow_tf32 = True
    model = randomized(FlexTok(cfg).to(device)).eval()
    if cfg.in_channels == 16:  # FlexTok-VAE latents: 8x the latent size in pixels
        from vistok.tokenizers.vae import VAE, VAEConfig

        tokenizer, size = VAE(VAEConfig(arch="flextok-c16", random_init=True)).to(device), cfg.grid[0] * 8
    else:
        tokenizer, size = PixelTokenizer(PixelConfig(patch=1)), cfg.grid[0]
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    bf16 = lambda: torch.autocast(device.type, torch.bfloat16)  # noqa: E731

    def encode() -> torch.Tensor:
        with bf16():
            return sampling.encode(model, images, tokenizer)

    enc_s = timed(encode, device, repeats)
    ids = encode()

    def decode(with_tokenizer: bool) -> None:
        with bf16():
            sampling.decode(model, ids, DecodeConfig(steps=steps, cfg=cfg_scale), seed=0,
                            tokenizer=tokenizer if with_tokenizer else None)

    latents_s = timed(lambda: decode(False), device, repeats)
    images_s = timed(lambda: decode(True), device, repeats)
    memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    params = sum(p.numel() for p in model.parameters())
    header = ("model", "device", "encode img/s", f"decode img/s ({steps} steps, CFG {cfg_scale})", "+ VAE decode")
    row = (f"{preset} ({params / 1e6:.0f}M, random weights, {size}px)", f"{device.type} bf16, batch {batch}{memory}",
           f"{batch / enc_s:.1f}", f"{batch / latents_s:.2f}", f"{batch / images_s:.2f}")
    return [header, row]


def print_table(rows: list[tuple]) -> None:
    print("\n| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=64, help="CPU batch (default 64)")
    parser.add_argument("--cfg", type=float, default=2.0, help="CPU guidance scale (default 2.0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (median; default 3)")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU table")
    parser.add_argument("--no-gpu", action="store_true", help="skip the large-model row even with CUDA")
    parser.add_argument("--large", default="flextok-d18-d18", help="preset of the large row (default flextok-d18-d18)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="device of the large row (default cuda)")
    parser.add_argument("--large-batch", type=int, default=64)
    parser.add_argument("--large-steps", type=int, default=20)
    parser.add_argument("--large-cfg", type=float, default=7.5, help="guidance scale of the large row (default 7.5)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.gpu_only:
        print_table(cpu_rows(args.batch, [1, 4, 16], [10, 25], args.cfg, args.repeats))
    if args.device == "cpu" or (torch.cuda.is_available() and not args.no_gpu):
        print_table(large_rows(args.large, torch.device(args.device), args.large_batch, args.large_steps, args.large_cfg,
                               repeats=3))
    elif not args.no_gpu:
        print("\n  (no CUDA device: the flextok-d18-d18 row is skipped)")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
