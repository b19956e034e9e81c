"""Plot FlexTok reconstruction metrics against the number of tokens k, from `vistok reconstruct --json` files
(Bachmann et al., arXiv 2502.13967, Fig. 5: reconstruction quality against k).

    python experiments/plot_flextok_k.py --json recon.json recon_nond.json \
        --label "nested dropout" "no nested dropout" --out assets/demo/flextok_mse_vs_k.png

One panel per metric (MSE, PSNR, FID when present) against k on a log-2 axis, one line per file. Needs matplotlib
(`pip install matplotlib`); prints the same numbers as a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vistok.errors import VistokError


def load(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return {int(k): v for k, v in data["metrics"].items()}
    except (OSError, ValueError, KeyError) as err:
        raise VistokError(f"{path} is not a `vistok reconstruct --json` file ({err.__class__.__name__}: "
                          f"{err})") from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", nargs="+", required=True, help="reconstruct JSON files")
    p.add_argument("--label", nargs="+", help="one label per file (default: the file names)")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args()
    labels = args.label or [Path(f).stem for f in args.json]
    if len(labels) != len(args.json):
        raise SystemExit(f"error: {len(args.json)} files but {len(labels)} labels")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: the plot needs matplotlib: pip install matplotlib") from None
    runs = [load(f) for f in args.json]
    metrics = [m for m in ("mse", "psnr", "fid") if all(m in r[k] for r in runs for k in r)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, metric in zip(axes, metrics, strict=True):
        for run, label in zip(runs, labels, strict=True):
            ks = sorted(run)
            ax.plot(ks, [run[k][metric] for k in ks], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(runs[0]), [str(k) for k in sorted(runs[0])])
        ax.set_xlabel("tokens k")
        ax.set_title({"mse": "MSE (lower is better)", "psnr": "PSNR dB (higher is better)",
                      "fid": "FID cifar10-net (lower is better)"}[metric])
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    header = "| k | " + " | ".join(f"{label} {m.upper()}" for label in labels for m in metrics) + " |"
    print(header + "\n|" + "---|" * (1 + len(labels) * len(metrics)))
    for k in sorted(runs[0]):
        print(f"| {k} | " + " | ".join(f"{run[k][m]:.4f}" if m == "mse" else f"{run[k][m]:.2f}"
                                     for run in runs for m in metrics) + " |")


if __name__ == "__main__":
    main()
