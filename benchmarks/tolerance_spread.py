"""How far float32 results move when only the order of the sums changes: the spread that the tests' tolerances on deep
decoders are set from (a CPU with another vector width or thread count reorders sums the same way).

Decodes the MAR KL-16 fixture latents with 1 and 2 threads, in float64, and through the 0.2325 scale round trip, and
prints each one's largest difference from the official output, absolute and relative to the output's largest value.

    python benchmarks/tolerance_spread.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from vistok.tokenizers.kl_vae import KLVAE, KLVAEConfig

FIX = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"


def main() -> None:
    state = load_file(FIX / "mar_vae_small_state.safetensors")
    io = load_file(FIX / "mar_vae_small_io.safetensors")
    model = KLVAE(KLVAEConfig(ch=32)).eval()
    model.load_state_dict(state)
    official = io["decoded"]
    scale = official.abs().max().item()
    rows = []
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows.append((f"float32, {threads} thread(s)", model.decode_raw(io["mean"])))
            rows.append((f"float32, {threads} thread(s), x 0.2325 / 0.2325",
                         model.decode_raw(io["mean"] * 0.2325 / 0.2325)))
        rows.append(("float64", model.double().decode_raw(io["mean"].double()).float()))
    print(f"{'decode of the fixture latents':<48} {'max |diff| vs official':>22} {'/ max |official|':>16}")
    for name, out in rows:
        diff = (out - official).abs().max().item()
        print(f"{name:<48} {diff:>22.2e} {diff / scale:>16.2e}")


if __name__ == "__main__":
    main()
