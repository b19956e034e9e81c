"""Training curves of one or more runs from their `RUN/metrics.jsonl`: a markdown table of the mean per window of
steps, and optionally a PNG (the raw values faint, a moving average on top).

    python experiments/plot_loss.py runs/flextok_gpt_cifar10_tiny --window 1000 --out gpt_loss.png
    python experiments/plot_loss.py runs/a runs/b --key flow --label "pow2" "off" --out flow.png

A resumed run's log already holds one row per step (the engine truncates it to the checkpoint it resumes from); should
a step still appear twice, its later row counts. The PNG needs matplotlib.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from vistok.engine.logging import read_metrics
from vistok.errors import VistokError


def curve(run_dir: str | Path, key: str = "loss") -> list[tuple[int, float]]:
    """(step, value) pairs of `key` in step order, one per step (the later row of a repeated step)."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        raise VistokError(f"{run_dir} has no metrics.jsonl; pass a training run folder (train.run_dir)")
    rows = read_metrics(run_dir)
    by_step = {int(r["step"]): float(r[key]) for r in rows if key in r and "step" in r}
    if not by_step:
        keys = sorted({k for r in rows for k in r} - {"step"})
        raise VistokError(f"{run_dir}/metrics.jsonl has no {key!r} values; it logs {', '.join(keys) or 'nothing yet'}")
    return sorted(by_step.items())


def windows(points: list[tuple[int, float]], window: int) -> list[tuple[int, int, float]]:
    """(first step, last step, mean) over consecutive windows of `window` steps: steps 1..window, window+1..2 window,
    ... (the last window may be partial); non-finite values are left out of the means."""
    out: dict[int, list[tuple[int, float]]] = {}
    for step, value in points:
        out.setdefault((step - 1) // window, []).append((step, value))
    table = []
    for _, pts in sorted(out.items()):
        finite = [v for _, v in pts if math.isfinite(v)]
        table.append((pts[0][0], pts[-1][0], sum(finite) / len(finite) if finite else math.nan))
    return table


def moving_average(values: list[float], n: int) -> list[float]:
    """Mean of the last n values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= n:
            total -= values[i - n]
        out.append(total / min(i + 1, n))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="training run folders (each with metrics.jsonl)")
    p.add_argument("--key", default="loss", help="the logged value to show (default loss)")
    p.add_argument("--window", type=int, default=0, help="steps per table row (default: a tenth of the longest run)")
    p.add_argument("--label", nargs="+", help="one label per run (default: the folder names)")
    p.add_argument("--out", help="also write a PNG here (needs matplotlib)")
    args = p.parse_args()
    labels = args.label or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        p.error(f"{len(args.runs)} runs but {len(labels)} labels")
    if args.window < 0:
        p.error(f"--window must be positive, got {args.window}")
    try:
        curves = [curve(r, args.key) for r in args.runs]
    except VistokError as err:
        raise SystemExit(f"error: {err}") from None
    last = max(c[-1][0] for c in curves)
    window = args.window or max(1, math.ceil(last / 10))
    print("| steps | " + " | ".join(f"{label}: mean {args.key}" for label in labels) + " |")
    print("|---|" + "---:|" * len(labels))
    tables = [{(a - 1) // window: m for a, _, m in windows(c, window)} for c in curves]
    for w in range(math.ceil(last / window)):
        cells = [f"{t[w]:.4f}" if w in t else "-" for t in tables]
        print(f"| {w * window + 1}-{min((w + 1) * window, last)} | " + " | ".join(cells) + " |")
    if args.out:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise SystemExit("error: the plot needs matplotlib: pip install matplotlib") from None
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for c, label in zip(curves, labels, strict=True):
            steps, values = [s for s, _ in c], [v for _, v in c]
            line, = ax.plot(steps, values, alpha=0.25, linewidth=0.8)
            ax.plot(steps, moving_average(values, max(1, len(values) // 50)), color=line.get_color(), label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(args.key)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
