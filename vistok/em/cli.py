"""`vistok em-segment` and `vistok em-eval`: neuron segmentation of an EM volume with a fine-tuned SegMamba, and its
VOI / ARAND score against ground truth (TokenUnify, Chen et al., arXiv 2405.16847; scores as scikit-image's).

    vistok em-segment --ckpt CKPT --input FILE[:DATASET] --out FILE[:DATASET] [--roi D,H,W] [--overlap F] ...
    vistok em-eval --seg FILE[:DATASET] --gt FILE[:DATASET] [--json]

`add_commands(subparsers)` registers both on the main `vistok` parser; `python -m vistok.em.cli ...` runs them alone.
Handlers raise VistokError for a user's mistake; the caller prints its one line and exits 1. Heavy imports (torch,
scikit-image) happen inside the handlers, so `vistok --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from vistok.errors import VistokError


def _roi(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        roi = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        roi = ()
    if len(roi) != 3 or min(roi) < 1:
        raise VistokError(f"--roi {text!r} must be three positive sizes D,H,W, e.g. --roi 16,64,64")
    return roi


def cmd_em_segment(args: argparse.Namespace) -> None:
    from vistok.config import from_dict
    from vistok.em.inference import InferenceConfig, load_segmenter, segment_to_file
    from vistok.em.volumes import DEFAULT_DATASET, Volume, check_output, parse_volume_arg

    roi = _roi(args.roi)
    src, dst = parse_volume_arg(args.input), parse_volume_arg(args.out)  # both checked before the model loads
    same_file = dst.path.resolve() == src.path.resolve()
    if same_file and (dst.format not in ("hdf5", "zarr") or (dst.dataset or DEFAULT_DATASET[dst.format]).strip("/") ==
                      (src.dataset or "").strip("/")):  # npz, npy and TIFF files are rewritten whole
        raise VistokError(f"--out {args.out} would overwrite the input; name another file or another :DATASET")
    check_output(dst)  # an unwritable folder or an existing file of another kind fails now, not after the work
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and _cuda()) else "cpu"
    if device == "cuda" and not _cuda():
        raise VistokError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    raw = Volume(src)  # lazily: metadata only; the volume is read window by window
    if 0 in raw.shape:  # before the model loads
        raise VistokError(f"{src} is empty (shape {raw.shape}); pass a volume with at least one voxel in each axis")
    model, meta = load_segmenter(args.ckpt, device)
    stored = meta.get("inference") or {}
    flags = {"roi": roi, "overlap": args.overlap, "batch_size": args.batch_size, "threshold": args.threshold,
             "fragment_threshold": args.fragment_threshold}
    cfg = from_dict(InferenceConfig, {**stored, **{k: v for k, v in flags.items() if v is not None}})
    start = time.perf_counter()
    segments, how = segment_to_file(model, raw, dst, cfg, progress=False if args.quiet else None)
    seconds = time.perf_counter() - start
    out = dst if dst.dataset or dst.format not in DEFAULT_DATASET else type(dst)(dst.path, DEFAULT_DATASET[dst.format],
                                                                                dst.format)
    print(f"{src} {raw.shape} -> {segments} segments in {seconds:.1f} s (roi {tuple(cfg.roi)}, overlap "
          f"{cfg.overlap}, agglomeration {cfg.score} > {cfg.threshold}, {device}, {how}) -> {out}")


def cmd_em_eval(args: argparse.Namespace) -> None:
    from vistok.em.metrics import evaluate
    from vistok.em.volumes import read_volume

    seg, gt = read_volume(args.seg), read_volume(args.gt)
    for name, vol in (("--seg", seg), ("--gt", gt)):
        if vol.dtype.kind not in "iub":
            raise VistokError(f"{name} volume has dtype {vol.dtype}; labels must be integers")
    scores = evaluate(seg, gt, ignore_labels=tuple(args.ignore))
    if args.json:
        print(json.dumps({"seg": args.seg, "gt": args.gt, "ignore_labels": list(args.ignore), **scores._asdict()},
                         indent=2))
    else:
        print(f"VOI split {scores.voi_split:.4f}  VOI merge {scores.voi_merge:.4f}  VOI {scores.voi:.4f}  "
              f"ARAND {scores.arand:.4f}")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `em-segment` and `em-eval` on the `vistok` command's subparsers."""
    p = subparsers.add_parser("em-segment", help="neuron segmentation of an EM volume with a fine-tuned SegMamba")
    p.add_argument("--ckpt", required=True, help="export of train/finetune_em_seg.py (folder) or shipped model name")
    p.add_argument("--input", required=True, metavar="FILE[:DATASET]", help="raw EM volume (.h5/.zarr/.npz/.tif/.npy)")
    p.add_argument("--out", required=True, metavar="FILE[:DATASET]", help="where the neuron ids go (uint32)")
    p.add_argument("--roi", metavar="D,H,W", help="sliding window (default: the export's, i.e. the training crop)")
    p.add_argument("--overlap", type=float, help="window overlap in [0, 1) (default: the export's, 0.25)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: the export's)")
    p.add_argument("--threshold", type=float, help="agglomeration threshold on affinities (default: the export's)")
    p.add_argument("--fragment-threshold", type=float, help="watershed seed threshold (default: the export's)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only when stderr is a terminal)")
    p.set_defaults(func=cmd_em_segment)

    p = subparsers.add_parser("em-eval", help="VOI split / merge / total and ARAND of a segmentation against ground "
                                              "truth")
    p.add_argument("--seg", required=True, metavar="FILE[:DATASET]", help="segmentation (integer labels)")
    p.add_argument("--gt", required=True, metavar="FILE[:DATASET]", help="ground truth (integer labels)")
    p.add_argument("--ignore", type=int, nargs="*", default=[0], metavar="ID",
                   help="ground-truth labels left out (default: 0, boundary / unlabelled)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_em_eval)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vistok.em.cli em-segment|em-eval ...`, with the main CLI's error behaviour."""
    parser = argparse.ArgumentParser(prog="vistok", description="EM neuron segmentation and its scores.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except VistokError as err:
        print(f"vistok {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
