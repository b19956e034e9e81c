"""One GPU check: the paper-size speed figures and the CUDA-only code paths, as one table and a JSON file.

    python benchmarks/gpu_check.py --out gpu_check.json                 # on a CUDA machine: the real sizes
    python benchmarks/gpu_check.py --device cpu --out /tmp/check.json   # tiny sizes on the CPU (what CI runs)

Rows: xar-b (Ren et al., arXiv 2502.20388) training step time and MFU at batch 64 per GPU in bf16 (model
FLOPs of forward + backward counted once with torch.utils.flop_counter, over the device's dense bf16 peak, or
$VISTOK_PEAK_TFLOPS) and sampling images/s at batch 256, 50 steps, CFG, bf16, each eager and with `torch.compile`;
FlexTok d18-d18 (Bachmann et al., arXiv 2502.13967) decode images/s at batch 64, 20 steps, CFG (latents, random
weights); the selective scan (Gu & Dao, arXiv 2312.00752) forward + backward against mamba_ssm's CUDA kernel when
mamba_ssm is installed. Checks: xAR's FlexAttention block mask against SDPA with the same mask (and FlexTok's register
mask), the model eager and compiled, and xAR's training gradients; xAR sampling with the static KV cache against full
recompute, eager and compiled; all on the device. Every stage runs on its own (a
failure becomes a row, and the exit status says so) and the JSON file is rewritten after each one. With `--device
cpu` every row runs at tiny sizes, so the script itself is tested.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vistok.io.atomic import atomic_write_bytes
from vistok.modules.attention import set_attention_backend

import bench_xar  # benchmarks/bench_xar.py
from benchtools import timed  # benchmarks/benchtools.py

SIZES = {  # what each row runs at: the sizes on CUDA, tiny ones on the CPU
    "cuda": dict(flextok="flextok-d18-d18", flex_batch=64, flex_steps=20, scan=(8, 4096, 1536, 16)),
    "cpu": dict(flextok="flextok-test", flex_batch=2, flex_steps=2, scan=(1, 256, 16, 8)),
}


def flextok_decode_row(device: torch.device, preset: str, batch: int, steps: int, cfg_scale: float = 2.0) -> dict:
    from vistok.tokenizers import flextok_sampling as fs
    from vistok.tokenizers.flextok import PRESETS, FlexTok
    from vistok.tokenizers.flextok_sampling import DecodeConfig

    cfg = dataclasses.replace(PRESETS[preset], repa_dim=0)
    model = FlexTok(cfg).to(device).eval()
    ids = torch.randint(0, model.fsq.codebook_size, (batch, cfg.registers), device=device)

    def decode() -> None:
        with torch.autocast(device.type, torch.bfloat16):
            fs.decode(model, ids, DecodeConfig(steps=steps, cfg=cfg_scale), seed=0)

    seconds = timed(decode, device, repeats=3, warmup=1)
    return dict(row=f"{preset} decode, bf16, batch {batch}, {steps} steps, CFG {cfg_scale} (latents)",
                value=batch / seconds, unit="images/s", seconds=seconds)


def scan_row(device: torch.device, batch: int, length: int, d_inner: int, d_state: int) -> dict:
    from vistok.modules.mamba import selective_scan_torch

    g = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device).requires_grad_()  # noqa: E731
    u, delta = make(batch, length, d_inner), make(batch, length, d_inner)
    B, C = make(batch, length, d_state), make(batch, length, d_state)
    A = (-torch.rand(d_inner, d_state, generator=g) - 0.5).to(device).requires_grad_()
    D = torch.ones(d_inner, device=device, requires_grad=True)
    bias = torch.zeros(d_inner, device=device, requires_grad=True)

    def ours() -> None:
        selective_scan_torch(u, delta, A, B, C, D, bias, True).square().mean().backward()

    row = dict(row=f"selective scan fwd+bwd, batch {batch}, length {length}, d_inner {d_inner}, d_state {d_state}",
               value=timed(ours, device, repeats=3) * 1000, unit="ms")
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        row["mamba_ssm_ms"] = None
        row["note"] = "mamba_ssm not installed: no kernel to compare"
        return row
    if device.type != "cuda":
        row["mamba_ssm_ms"] = None
        row["note"] = "mamba_ssm's kernel needs CUDA"
        return row
    t = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731 - mamba_ssm takes (B, D, L) and (B, N, L)

    def kernel() -> None:
        selective_scan_fn(t(u), t(delta), A, t(B), t(C), D, delta_bias=bias,
                          delta_softplus=True).square().mean().backward()

    with torch.no_grad():
        ref = selective_scan_fn(t(u), t(delta), A, t(B), t(C), D, delta_bias=bias, delta_softplus=True).transpose(1, 2)
        err = (selective_scan_torch(u, delta, A, B, C, D, bias, True) - ref).abs().max().item()
    row["mamba_ssm_ms"] = timed(kernel, device, repeats=3) * 1000
    row["max_abs_diff_vs_mamba_ssm"] = err
    return row


@contextlib.contextmanager
def fp32_matmuls():
    """CUDA matmuls in full float32 (TF32 off, as the timed rows leave it on) for the equivalence checks."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@fp32_matmuls()
def flex_checks(device: torch.device, compile: bool = True) -> list[dict]:
    """FlexAttention against SDPA with the same mask, on the device, in float32 (TF32 off): xAR's block-causal mask
    and FlexTok's register mask, with the model compiled and eager (on CUDA the eager model calls the separately
    compiled kernel), and on CUDA xAR's training gradients (the path `train.compile=false` takes there; FlexAttention
    has no backward on the CPU). One row each with the largest difference."""
    from vistok.generators.xar import PRESETS as XAR_PRESETS, XAR
    from vistok.tokenizers.flextok import PRESETS as FLEXTOK_PRESETS, FlexTok

    rows = []
    torch.manual_seed(0)
    xar = XAR(dataclasses.replace(XAR_PRESETS["xar-test"], entity_size=2)).to(device).eval()
    tokens = torch.randn(2, xar.config.in_channels, *xar.config.grid, device=device)
    labels, t = torch.tensor([1, 2], device=device), torch.rand(2, xar.partition.num_entities, device=device)
    noise = torch.randn(2, xar.partition.num_tokens, xar.config.in_channels, device=device)
    flextok = FlexTok(FLEXTOK_PRESETS["flextok-test"]).to(device).eval()
    torch.nn.init.normal_(flextok.encoder.head.weight)
    images = torch.randn(2, flextok.config.in_channels, *flextok.config.grid, device=device)
    for name, model, fn in (("xAR block-causal mask", xar, lambda m: m(tokens, labels, t=t, noise=noise)),
                            ("FlexTok register mask", flextok, lambda m: m.encode(images))):
        with torch.no_grad():
            set_attention_backend(model, "sdpa")
            ref = fn(model)
            set_attention_backend(model, "flex")
            kernel = "fused kernel" if device.type == "cuda" else "unfused reference"
            outs = [(f"eager model, {kernel}", fn(model))]
            if compile:  # a failure here fails the stage (a row saying so)
                outs.append(("compiled model", torch.compile(fn, dynamic=False)(model)))
        for label, out in outs:
            diff = (out.float() - ref.float()).abs().max().item()
            rows.append(dict(row=f"FlexAttention vs SDPA: {name}, {label}", value=diff,
                             unit="max |diff|", ok=diff < 1e-4))
    if device.type != "cuda":
        return rows  # FlexAttention has no backward on the CPU
    xar.train()
    grads = {}
    for backend in ("sdpa", "flex"):  # the training loss of one fixed draw, then every gradient
        set_attention_backend(xar, backend)
        xar.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same label drop (CFG training) for both
        xar(tokens, labels, t=t, noise=noise).backward()
        grads[backend] = [p.grad.clone() for p in xar.parameters() if p.grad is not None]
    diff = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
               for a, b in zip(grads["flex"], grads["sdpa"], strict=True))
    rows.append(dict(row="FlexAttention vs SDPA: xAR training gradients, eager model", value=diff,
                     unit="max rel. |diff|", tensors=len(grads["sdpa"]), ok=diff < 1e-4))
    return rows


@torch.no_grad()
@fp32_matmuls()
def kv_cache_checks(device: torch.device, compile: bool = True) -> list[dict]:
    """xAR sampling with the static KV cache (eager, and with the compiled stack) against full recompute, in float32
    with TF32 off, 2+2 blocks, 4 heads, 4 cells, CFG: the largest difference over the samples."""
    from vistok.generators.sampling import SampleConfig, sample_xar
    from vistok.generators.xar import PRESETS as XAR_PRESETS, XAR

    torch.manual_seed(0)
    model = XAR(dataclasses.replace(XAR_PRESETS["xar-test"], depth=2, entity_size=2)).to(device).eval()
    labels = torch.tensor([0, 3, 7], device=device)
    run = lambda **kw: sample_xar(model, labels, SampleConfig(steps=3, cfg=2.0), seed=0, **kw)  # noqa: E731
    ref, rows = run(full_recompute=True), []
    for label, kw in (("eager", {}), ("compiled stack", {"compile": True}))[: 2 if compile else 1]:
        diff = (run(**kw) - ref).abs().max().item()
        rows.append(dict(row=f"static KV cache vs full recompute: xAR sampling, {label}", value=diff,
                         unit="max |diff|", scale=ref.abs().max().item(), ok=diff < 1e-3))
    return rows


def stages(device: torch.device, sizes: dict, args: argparse.Namespace) -> list[tuple[str, Callable[[], list[dict]]]]:
    """The checks in the order they run (the cheapest and most telling first), each a thunk returning rows."""
    out = [("FlexAttention checks", lambda: flex_checks(device, compile=not args.no_flex_compile)),
           ("xar-b eager", lambda: bench_xar.gpu_rows(device)),
           ("FlexTok decode",
            lambda: [flextok_decode_row(device, sizes["flextok"], sizes["flex_batch"], sizes["flex_steps"])]),
           ("selective scan", lambda: [scan_row(device, *sizes["scan"])]),
           ("KV cache checks", lambda: kv_cache_checks(device, compile=not args.no_flex_compile))]
    if not args.no_compile:
        out.append(("xar-b compiled", lambda: bench_xar.gpu_rows(device, compile=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    parser.add_argument("--out", default="gpu_check.json", help="JSON file of all rows (default gpu_check.json)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the compiled xar-b rows (slow to build on a CPU)")
    parser.add_argument("--no-flex-compile", action="store_true",
                        help="check FlexAttention eagerly (no inductor build)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda"
                          or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here; use --device cpu for the tiny sizes")
    start, rows = time.perf_counter(), []
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__,
                tiny_sizes=device.type != "cuda")
    for name, run in stages(device, SIZES[device.type], args):
        t0 = time.perf_counter()
        try:
            new = run()
        except Exception as err:  # noqa: BLE001 - one failing stage must not cost the others (a GPU lease is short)
            new = [dict(row=f"{name}: failed", value=float("nan"), unit="",
                        error=f"{type(err).__name__}: {str(err)[:300]}", ok=False)]
        rows += new
        for line in format_rows(new):
            print(line, flush=True)
        print(f"  ({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
        # the file is rewritten after every stage: a killed run keeps its rows
        meta["seconds"] = time.perf_counter() - start
        atomic_write_bytes(Path(args.out), json.dumps(dict(meta=meta, rows=rows), indent=1, default=str).encode())
    print("\n| check | measured | details |\n|---|---|---|")
    for line in format_rows(rows):
        print(line)
    print(f"\n{meta['device']}, torch {torch.__version__}; wrote {args.out}")
    if not all(r.get("ok", True) for r in rows):
        raise SystemExit("a check failed or FlexAttention and SDPA disagree (see the table)")


def format_rows(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        details = {k: v for k, v in r.items() if k not in ("row", "value", "unit") and v is not None}
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in details.items())
        out.append(f"| {r['row']} | {r['value']:,.4g} {r['unit']} | {text} |")
    return out


if __name__ == "__main__":
    main()
