"""xAR speed against the official implementation, per entity, and on a GPU (Ren et al., arXiv 2502.20388, Table 7).

    python benchmarks/bench_xar.py                   # the issue's table: official vs vistok, fp32, 2 threads (< 3 min)
    python benchmarks/bench_xar.py --rows t32,s8     # some rows only;  --repeats N  more interleaved rounds
    python benchmarks/bench_xar.py --compile         # the same with torch.compile (the first call of each row compiles)
    python benchmarks/bench_xar.py --compile t32,s8  # compile only these rows (the others eager): each row at its best
    python benchmarks/bench_xar.py --entities        # token / cell / image partitions of the tiny preset (README table)
    python benchmarks/bench_xar.py --gpu-only        # xar-b, bf16: train step + MFU at batch 64, sampling at batch 256
    python benchmarks/bench_xar.py --gpu-only --device cpu   # the same rows at tiny sizes on the CPU (a smoke test)
    python benchmarks/bench_xar.py --code /tmp/v0    # the issue's rows timed on another checkout of vistok (see below)
    python benchmarks/bench_xar.py --baseline /tmp/v0 [--compile ROWS]   # in lockstep with it: machine-corrected ratios
    python benchmarks/bench_xar.py --malloc-default  # without vistok's host-memory setting (vistok.engine.host_memory)

--code DIR imports vistok from DIR instead: with `git worktree add /tmp/v0 xar-bench-reference` (the code timed at
parity with the official implementation), runs of both measure how much faster this machine is than the one the
official column came from, so the ratios can be read on equal terms. `--baseline DIR` runs both in lockstep: one
worker process per checkout stays up, and each of `--rounds` rounds runs every row once on one side and straight
after on the other, so every ratio pairs two runs seconds apart (this machine's speed drifts by tens of per cent
over minutes, which unpaired medians taken minutes apart carry into the ratio). It prints, per row, the median and
quartiles of the paired ratios vistok / baseline, the corrected ratio (vistok / baseline) x (the reference's vistok /
official), the figure the 0.7x target is read against, and in how many rounds that was <= 0.7.

The official column holds the official code's medians, measured at this configuration: width 64,
2+2 blocks, 4 heads, 16x16x16 latents, 4 cells of 8x8, 1000 classes, fp32, 2 threads, random weights. Training
steps are forward + loss + backward + grad clip + AdamW on random latents; sampling is `sample_xar` with 10 SDE steps
per cell, CFG 2.0 linear over cells, no VAE decode. Rows run interleaved (round r runs every row once) after a
warm-up, and the medians are reported with the spread between rounds and the load average, because the machine
these numbers come from is shared: on a busy machine both the absolute times and the ratios move by tens of per cent.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

if "--code" in sys.argv[:-1]:  # before anything imports vistok: time another checkout (see the docstring)
    sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--code") + 1]))

from vistok.engine.optim import build_optimizer  # only what the issue rows need at module level: old checkouts run them
from vistok.generators.sampling import sample_xar
from vistok.generators.xar import PRESETS, XAR, XARConfig

from benchtools import timed  # benchmarks/benchtools.py

ISSUE = XARConfig(width=64, depth=2, heads=4, num_classes=1000)  # 16x16x16 latents, cells of 8x8 (the defaults)
# row key -> (label, official median in ms, what to run)
ROWS = {
    "t32": ("train step B=32, dropout 0 (fwd + loss + bwd + clip + AdamW)", 420, ("train", 32, 0.0)),
    "t8": ("train step B=8, dropout 0", 138, ("train", 8, 0.0)),
    "t32d": ("train step B=32, attention and projection dropout 0.1", 1171, ("train", 32, 0.1)),
    "t8d": ("train step B=8, dropout 0.1", 223, ("train", 8, 0.1)),
    "s8": ("sample 8 images, 10 steps per cell, CFG 2.0 linear, no VAE", 816, ("sample", 8, 0.0)),
    "s32": ("sample 32 images, same", 2785, ("sample", 32, 0.0)),
}
# the reference vistok column: the code (tag xar-bench-reference) timed against the official code in the same runs
ISSUE_VISTOK = {"t32": 408, "t8": 144, "t32d": 1084, "t8d": 235, "s8": 829, "s32": 2920}


def train_step(cfg: XARConfig, batch: int, device: torch.device, precision: str = "fp32",
               compile: bool = False) -> Callable[[], None]:
    """A closure running one optimizer step (forward, loss, backward, clip, AdamW) on fixed random latents."""
    model = XAR(cfg).to(device).train()
    if compile:  # as `train.compile=true` (imported here: a `--code` checkout may predate it)
        from vistok.engine.loop import compile_for_training

        compile_for_training(model, device)
    optimizer = build_optimizer(model, 1e-4, 0.02, (0.9, 0.96))  # fused AdamW (CPU and CUDA)
    tokens = torch.randn(batch, cfg.in_channels, *cfg.grid, device=device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            loss = model(tokens, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.model, step.tokens, step.labels = model, tokens, labels  # for the FLOP count
    return step


def sample(model: XAR, labels: torch.Tensor, steps: int, cfg_scale: float, **kw) -> torch.Tensor:
    """`sample_xar` from seed 0; a `--code` checkout that predates its settings object takes them as loose arguments."""
    if "settings" not in inspect.signature(sample_xar).parameters:
        return sample_xar(model, labels, steps, cfg_scale, seed=0, **kw)
    from vistok.generators.sampling import SampleConfig

    return sample_xar(model, labels, SampleConfig(steps=steps, cfg=cfg_scale), seed=0, **kw)


def sampler(cfg: XARConfig, batch: int, device: torch.device, steps: int, cfg_scale: float, precision: str = "fp32",
            compile: bool = False) -> Callable[[], None]:
    model = XAR(cfg).to(device).eval()
    labels = torch.arange(batch, device=device) % cfg.num_classes

    def run() -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
            sample(model, labels, steps, cfg_scale, **({"compile": True} if compile else {}))

    return run


def build_runs(keys: list[str], compiled: set[str]) -> dict[str, Callable[[], None]]:
    """One closure per issue row, warmed up (the rows in `compiled` through torch.compile)."""
    cpu, runs = torch.device("cpu"), {}
    for key in keys:
        kind, batch, drop = ROWS[key][2]
        cfg = dataclasses.replace(ISSUE, dropout=drop, attn_dropout=drop)
        compile = key in compiled
        runs[key] = train_step(cfg, batch, cpu, compile=compile) if kind == "train" else sampler(cfg, batch, cpu, 10,
                                                                                                 2.0, compile=compile)
        start = time.perf_counter()
        runs[key]()  # warm-up (and compilation with --compile)
        if kind == "train":
            runs[key]()
        print(f"  warmed up {key} ({time.perf_counter() - start:.1f} s)", flush=True)
    return runs


def time_rows(runs: dict[str, Callable[[], None]], repeats: int
              ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[int]], list[float]]:
    """Wall and process CPU ms and minor page faults per row over `repeats` interleaved rounds (every row once per
    round), and the load."""
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu_time: dict[str, list[float]] = {k: [] for k in runs}
    faults: dict[str, list[int]] = {k: [] for k in runs}
    loads = []
    for _ in range(repeats):
        for key, run in runs.items():
            t0, c0, f0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            run()
            wall[key].append(1000 * (time.perf_counter() - t0))
            cpu_time[key].append(1000 * (time.process_time() - c0))
            faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        loads.append(os.getloadavg()[0])
    return wall, cpu_time, faults, loads


def report_load(loads: list[float]) -> None:
    print(f"  load average during the runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores", flush=True)
    if max(loads) > (os.cpu_count() or 1) + 0.5:  # the load counts this process's own threads too
        print("  WARNING: other processes shared the cores; with several threads OpenMP then mostly waits on itself, "
              "so these times are not comparable to the official column (use --threads 1 "
              "for a relative check)", flush=True)


def issue_rows(keys: list[str], repeats: int, compiled: set[str]) -> list[tuple]:
    wall, cpu_time, faults, loads = time_rows(build_runs(keys, compiled), repeats)
    report_load(loads)
    rows = []
    for key in keys:
        label, official, _ = ROWS[key]
        ms, med = wall[key], statistics.median(wall[key])
        label += ", compiled" if key in compiled else ""
        rows.append((label, f"{official:,}", f"{med:,.0f} ({min(ms):,.0f}-{max(ms):,.0f})",
                     f"{statistics.median(cpu_time[key]):,.0f}", f"{statistics.median(faults[key]):,.0f}",
                     f"{med / official:.2f}"))
    return rows


def serve(keys: list[str], compiled: set[str]) -> None:
    """`--worker` (for `--baseline`): warm the rows up, print `ready`, then run the row named on each stdin line once
    and print its wall time in ms; the process blocks on stdin (no CPU) while the other side runs."""
    with contextlib.redirect_stdout(sys.stderr):  # warm-up lines stay off the protocol
        runs = build_runs(keys, compiled)
    print("ready", flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        runs[line.strip()]()
        print(f"{1000 * (time.perf_counter() - t0):.3f}", flush=True)


class Worker:
    """One side of `--baseline`: a `--worker` process of this script (on another checkout with `code`)."""

    def __init__(self, keys: list[str], threads: int, code: str | None, compiled: set[str],
                 malloc_default: bool) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--rows", ",".join(keys), "--threads",
               str(threads),
               *(["--code", code] if code else []), *(["--compile", ",".join(sorted(compiled))] if compiled else []),
               *(["--malloc-default"] if malloc_default else [])]
        self.name = code or "this checkout"
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:  # the worker died: show why
            self.log.seek(0)
            sys.exit(f"the benchmark worker for {self.name} stopped:\n{self.log.read()[-3000:]}")
        return line.strip()

    def wait_ready(self) -> None:
        while self._line() != "ready":
            pass

    def run(self, key: str) -> float:
        self.proc.stdin.write(key + "\n")
        return float(self._line())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def baseline_rows(keys: list[str], rounds: int, compiled: set[str], baseline: str, threads: int,
                  malloc_default: bool = False) -> list[tuple]:
    """This checkout against another one on this machine, in lockstep: two worker processes (the other checkout via
    `--code`, eager; this one with the rows in `compiled` compiled) stay up, and every round runs each row once on
    one side and at once on the other (which side goes first alternates), so each ratio compares two runs seconds
    apart, whatever the machine's speed does over minutes. Per row: the median and quartiles of those paired ratios,
    and the corrected ratio (now / baseline) x (the reference's own vistok / official, ISSUE_VISTOK)."""
    ratios: dict[str, list[float]] = {k: [] for k in keys}
    now_ms: dict[str, list[float]] = {k: [] for k in keys}
    base_ms: dict[str, list[float]] = {k: [] for k in keys}
    base, now = Worker(keys, threads, baseline, set(), False), Worker(keys, threads, None, compiled, malloc_default)
    try:
        base.wait_ready()
        now.wait_ready()
        loads = []
        for r in range(rounds):
            for key in keys:
                if r % 2:
                    t_now, t_base = now.run(key), base.run(key)
                else:
                    t_base, t_now = base.run(key), now.run(key)
                now_ms[key].append(t_now)
                base_ms[key].append(t_base)
                ratios[key].append(t_now / t_base)
            loads.append(os.getloadavg()[0])
            print(f"  round {r + 1}/{rounds}, load {loads[-1]:.1f}: "
                  + ", ".join(f"{k} {ratios[k][-1]:.2f}" for k in keys), flush=True)
    finally:
        base.close()
        now.close()
    report_load(loads)
    rows = []
    for key in keys:
        label, official, _ = ROWS[key]
        label += ", compiled" if key in compiled else ""
        factor = ISSUE_VISTOK[key] / official
        q1, ratio, q3 = quartiles(ratios[key])
        met = sum(r * factor <= 0.7 for r in ratios[key])
        rows.append((label, f"{official:,}", f"{ISSUE_VISTOK[key]:,}", f"{statistics.median(base_ms[key]):,.0f}",
                     f"{statistics.median(now_ms[key]):,.0f}", f"{ratio:.2f} ({q1:.2f}-{q3:.2f})",
                     f"{ratio * factor:.2f} ({q1 * factor:.2f}-{q3 * factor:.2f})", f"{met}/{len(ratios[key])}"))
    return rows


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile); a single value for all three when there is one."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


ENTITIES = {"token": 1, "cell": 4, "image": 1}  # entity kind -> size on the 8x8 grid of the tiny preset
TINY_PRESET = "xar-tiny-s"  # the preset of train/configs/xar_cifar10_tiny.yaml


def entity_rows(steps: int, cfg_scale: float, train_batch: int, sample_batch: int) -> list[tuple]:
    from vistok.api import Generator
    from vistok.generators.sampling import SampleConfig
    from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer

    tokenizer, rows, cpu = PixelTokenizer(PixelConfig(patch=4, scale=2.0)), [], torch.device("cpu")
    sampling = SampleConfig(steps=steps, cfg=cfg_scale)
    for kind, size in ENTITIES.items():
        cfg = dataclasses.replace(PRESETS[TINY_PRESET], entity=kind, entity_size=size)
        train_s = timed(train_step(cfg, train_batch, cpu), cpu, 5, warmup=2)
        model = XAR(cfg).eval()
        labels = torch.arange(sample_batch) % cfg.num_classes
        gen = Generator(model, tokenizer, sampling)
        sample_s = timed(lambda: gen.sample(labels, batch_size=sample_batch), cpu, repeats=1)  # noqa: B023
        n = cfg.partition.num_entities
        rows.append((f"{TINY_PRESET} {kind} ({n} entit{'y' if n == 1 else 'ies'})",
                     f"{train_s * 1000:.0f} ms (batch {train_batch})",
                     f"{sample_batch / sample_s:.1f} ({steps} steps, cfg {cfg_scale}, batch {sample_batch})"))
        print(f"  measured {rows[-1][0]}", flush=True)
    return rows


GPU_SIZES = {  # preset, train batch, sample batch, flow steps: the issue's sizes on CUDA, tiny ones on the CPU
    "cuda": ("xar-b", 64, 256, 50),
    "cpu": ("xar-test", 4, 4, 2),
}


def gpu_rows(device: torch.device, cfg_scale: float = 2.0, compile: bool = False, repeats: int = 5) -> list[dict]:
    """xar-b in bf16 (tiny sizes on the CPU): training step time and MFU, sampling images/s; one dict per row."""
    from vistok.engine.flops import model_flops, peak_flops

    preset, train_batch, sample_batch, steps = GPU_SIZES["cuda" if device.type == "cuda" else "cpu"]
    cfg = PRESETS[preset]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    step = train_step(cfg, train_batch, device, precision="bf16", compile=compile)
    def forward_backward() -> None:
        with torch.autocast(device.type, torch.bfloat16):
            loss = step.model(step.tokens, step.labels)
        loss.backward()

    flops = model_flops(forward_backward)
    step.model.zero_grad(set_to_none=True)
    train_s = timed(step, device, repeats, warmup=2)
    peak = peak_flops(device, torch.bfloat16, float(os.environ.get("VISTOK_PEAK_TFLOPS", 0)))
    mfu = flops / train_s / peak if peak else None
    run = sampler(cfg, sample_batch, device, steps, cfg_scale, precision="bf16", compile=compile)
    sample_s = timed(run, device, repeats=max(1, repeats // 3), warmup=1)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return [
        dict(row=f"{preset} train step, bf16, batch {train_batch}{', compiled' if compile else ''}",
             value=train_s * 1000,
             unit="ms", images_per_s=train_batch / train_s, model_tflop_per_step=flops / 1e12, mfu=mfu,
             peak_gib=memory),
        dict(row=f"{preset} sampling, bf16, batch {sample_batch}, {steps} steps, CFG "
                 f"{cfg_scale}{', compiled' if compile else ''}",
             value=sample_batch / sample_s, unit="images/s", seconds=sample_s, peak_gib=memory),
    ]


def format_gpu(rows: list[dict]) -> list[tuple]:
    out = []
    for r in rows:
        extra = []
        if "mfu" in r:
            extra.append(f"{r['images_per_s']:.1f} images/s, {r['model_tflop_per_step']:.3g} TFLOP/step, MFU "
                         + (f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None
                            else "n/a (no known peak; set VISTOK_PEAK_TFLOPS)"))
        if r.get("peak_gib") is not None:
            extra.append(f"peak {r['peak_gib']:.1f} GiB")
        out.append((r["row"], f"{r['value']:,.1f} {r['unit']}", "; ".join(extra)))
    return out


def table(header: tuple, rows: list[tuple]) -> None:
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as the official figures)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)} (default all)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--compile", nargs="?", const="all", default="", metavar="ROWS",
                        help="torch.compile the model / the sampler's stack: every row, "
                             "or the rows listed (comma list)")
    parser.add_argument("--entities", action="store_true", help="the per-entity table of the tiny preset instead")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the xar-b bf16 rows (tiny sizes with --device cpu)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="for --gpu-only (default: CUDA if present)")
    parser.add_argument("--code", metavar="DIR", help="import vistok from this checkout (reference rows only)")
    parser.add_argument("--baseline", metavar="DIR", help="run in lockstep with this checkout (e.g. of the tag "
                        "xar-bench-reference) and print the machine-corrected ratio to the official column (see the "
                        "docstring)")
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds with --baseline (default 15)")
    parser.add_argument("--malloc-default", action="store_true", help="leave glibc's malloc thresholds alone (vistok's "
                        "training loop and CLI keep freed host memory for reuse: vistok.engine.host_memory)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one side of --baseline
    args = parser.parse_args()
    if not args.code and not args.malloc_default:  # as `vistok` and every training script run (an older checkout: not)
        from vistok.engine.host_memory import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.gpu_only:
        device = torch.device("cuda" if args.device == "cuda"
                              or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
        if device.type == "cpu":
            print("  (CPU: the xar-b rows at tiny sizes, a smoke test of the GPU rows)")
        table(("xAR, bf16", "measured", "details"), format_gpu(gpu_rows(device, compile=bool(args.compile))))
    elif args.entities:
        table(("model / entity", "train step", "sampling images/s"),
              entity_rows(10, 2.0, train_batch=32, sample_batch=16))
    else:
        keys = [k.strip() for k in args.rows.split(",") if k.strip()]
        unknown = [k for k in keys if k not in ROWS]
        if unknown:
            parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
        compiled = set(keys) if args.compile == "all" else {k.strip() for k in args.compile.split(",") if k.strip()}
        if bad := sorted(compiled - set(ROWS)):
            parser.error(f"--compile: unknown rows {bad}; choose from {', '.join(ROWS)}")
        compiled &= set(keys)
        title = "xAR (width 64, 2+2 blocks, 16x16x16 latents, 4 cells of 8x8, 1000 classes)"
        if args.baseline:
            rows = baseline_rows(keys, args.rounds, compiled, args.baseline, args.threads, args.malloc_default)
            table((title, "official ms", "issue's vistok ms", "baseline here ms", "vistok here ms",
                   "vistok / baseline, paired (quartiles)", "vistok / official, corrected (quartiles)",
                   "rounds at <= 0.7"), rows)
        elif args.worker:
            serve(keys, compiled)
            return
        else:
            rows = issue_rows(keys, args.repeats, compiled)
            table((title, "official ms", "vistok ms (min-max)", "process CPU ms", "page faults",
                   "vistok / official"), rows)
    import vistok

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
          + f"; vistok from {os.path.dirname(os.path.dirname(os.path.abspath(vistok.__file__)))}")


if __name__ == "__main__":
    main()
