"""Generators on FlexTok tokens: sampling throughput against the number of tokens k (FlexTok, Bachmann et al.,
arXiv 2502.13967, §4: one AR model, any k; xAR on FlexTok codes, Ren et al., arXiv 2502.20388).

    python benchmarks/bench_pairing.py                       # CPU, tiny presets, random weights (about a minute)
    python benchmarks/bench_pairing.py --threads 1 --batch 8 # a busy machine
    python benchmarks/bench_pairing.py --preset paper --device cuda --batch 64 # gpt-d12, xar-flextok-b, flextok-d12-d12

For each k on the ladder 1, 2, 4, ..., K: images/s of the GPT drawing k ids (KV cache, CFG in a doubled batch) and of
xAR generating k codes (prefix groups, flow steps per group, CFG, snapped to FSQ ids), of FlexTok decoding them (whose
cost does not depend on k: masked registers are still computed), and of the two stages together. Random weights:
speed only. Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from vistok.api import resolve_device
from vistok.generators.ar import AR, PRESETS as AR_PRESETS
from vistok.generators.flextok_codes import CFG_SCHEDULE, FlexTokCodes, check_pairing, sample_ids, valid_ks
from vistok.generators.sampling import ARSampleConfig, SampleConfig
from vistok.generators.xar import PRESETS as XAR_PRESETS, XAR
from vistok.tokenizers import flextok_sampling
from vistok.tokenizers.flextok import PRESETS as FLEXTOK_PRESETS, FlexTok
from vistok.tokenizers.flextok_sampling import DecodeConfig, k_ladder

from benchtools import timed  # benchmarks/benchtools.py

# preset -> (GPT, xAR, FlexTok): the CPU sizes of the cifar10 configs, and paper sizes (ImageNet, 256 tokens)
PAIRS = {"tiny": ("gpt-tiny", "xar-flextok-tiny", "flextok-tiny-s"),
         "paper": ("gpt-d12", "xar-flextok-b", "flextok-d12-d12")}


def build(preset: str, device: torch.device) -> tuple[AR, XAR, FlexTok]:
    gpt_name, xar_name, flextok_name = PAIRS[preset]
    flextok_cfg = dataclasses.replace(FLEXTOK_PRESETS[flextok_name], repa_dim=0)  # REPA's projector trains only
    gpt_cfg, xar_cfg = AR_PRESETS[gpt_name], XAR_PRESETS[xar_name]
    check_pairing(gpt_cfg, flextok_cfg)
    check_pairing(xar_cfg, flextok_cfg)
    torch.manual_seed(0)
    return AR(gpt_cfg).to(device).eval(), XAR(xar_cfg).to(device).eval(), FlexTok(flextok_cfg).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PAIRS), default="tiny", help="model sizes (default tiny)")
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default 16)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu", help="default cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--steps", type=int, default=50, help="xAR flow steps per group (default 50)")
    parser.add_argument("--decode-steps", type=int, default=25, help="FlexTok decoder Euler steps (default 25)")
    parser.add_argument("--cfg", type=float, default=2.0, help="guidance scale of both generators (default 2.0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell, median (default 3)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpt, xar, flextok = build(args.preset, device)
    codes = FlexTokCodes(flextok, torch.nn.Identity(), code_scale=1.5, decoding=DecodeConfig(steps=args.decode_steps))
    labels = torch.arange(args.batch) % gpt.config.num_classes
    settings = {"gpt": ARSampleConfig(cfg=args.cfg),
                "xar": SampleConfig(steps=args.steps, cfg=args.cfg, cfg_schedule=CFG_SCHEDULE)}
    bf16 = device.type == "cuda"

    def seconds(fn) -> float:
        def run() -> None:
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                fn()
        return timed(run, device, args.repeats)

    rows = []
    for k in k_ladder(flextok.config.registers):
        ids = torch.randint(0, flextok.fsq.codebook_size, (args.batch, k))
        decode_s = seconds(lambda: flextok_sampling.decode(flextok, ids, DecodeConfig(steps=args.decode_steps), seed=0))  # noqa: B023
        row = [str(k)]
        for name, model in (("gpt", gpt), ("xar", xar)):
            if k not in valid_ks(model):
                row += ["-", "-"]
                continue
            gen = torch.Generator().manual_seed(0)
            sample_s = seconds(lambda: sample_ids(model, codes, labels, k, settings[name], gen))  # noqa: B023
            row += [f"{args.batch / sample_s:.1f}", f"{args.batch / (sample_s + decode_s):.1f}"]
        rows.append([*row, f"{args.batch / decode_s:.1f}"])
        print(f"  measured k={k}", flush=True)

    header = ("k", "GPT ids", "GPT + decode", "xAR codes", "xAR + decode", "FlexTok decode")
    print(f"\nimages/s, batch {args.batch}, {device.type}{' bf16' if bf16 else ' fp32'}, random weights: "
          f"{' + '.join(PAIRS[args.preset])}; CFG {args.cfg} (both generators), xAR {args.steps} steps per group, "
          f"decoder {args.decode_steps} Euler steps (latents, no VAE)")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


if __name__ == "__main__":
    main()
