"""`vistok em-segment`, `vistok em-eval` and `vistok em-view`: neuron segmentation of an EM volume with a fine-tuned
SegMamba, its VOI / ARAND score against ground truth, and a neuroglancer view of it over the raw volume (TokenUnify,
Chen et al., arXiv 2405.16847; scores as scikit-image's).

    vistok em-segment --ckpt CKPT --input FILE[:DATASET] --out FILE[:DATASET] [--roi D,H,W] [--overlap F] ...
    vistok em-segment --baseline --input FILE[:DATASET] --out FILE[:DATASET]   (no network: distance watershed)
    vistok em-eval --seg FILE[:DATASET] --gt FILE[:DATASET] [--per-slice] [--json]
    vistok em-view RAW SEG [--voxel-size Z,Y,X] [--bind-address 127.0.0.1] [--port 0]   (neuroglancer, until Ctrl-C)

`add_commands(subparsers)` registers them on the main `vistok` parser; `python -m vistok.em.cli ...` runs them alone.
Handlers raise VistokError for a user's mistake; the caller prints its one line and exits 1. Heavy imports (torch,
scikit-image) happen inside the handlers, so `vistok --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from vistok.checks import sizes_arg
from vistok.io.paths import check_cli_paths
from vistok.errors import VistokError


def _roi(text: str | None) -> tuple[int, int, int] | None:
    return None if text is None else sizes_arg(text, "--roi", "--roi 16,64,64")


def cmd_em_segment(args: argparse.Namespace) -> None:
    from vistok.config import from_dict
    from vistok.em.inference import InferenceConfig, load_segmenter, segment_to_file
    from vistok.em.volumes import Volume, check_output, parse_volume_arg
    from vistok.io.lock import WriterLock

    roi = _roi(args.roi)
    if args.baseline == (args.ckpt is not None):
        raise VistokError("em-segment needs either --ckpt CKPT (a fine-tuned model) or --baseline (no network), "
                          "not both and not neither")
    src, dst = parse_volume_arg(args.input), parse_volume_arg(args.out)  # both checked before the model loads
    check_output(dst)  # an unwritable folder or an existing file of another kind fails now, not after the work
    if args.baseline:
        with WriterLock(dst.path, "--out"):
            _segment_baseline(args, src, dst)
        return
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and _cuda()) else "cpu"
    if device == "cuda" and not _cuda():
        raise VistokError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    raw = Volume(src)  # lazily: metadata only; the volume is read window by window
    if 0 in raw.shape:  # before the model loads
        raise VistokError(f"{src} is empty (shape {raw.shape}); pass a volume with at least one voxel in each axis")
    block = _block(args.block, args.workers)
    if args.worker_command and not args.workers:
        raise VistokError("--worker-command needs --workers N (N >= 1 worker slots)")
    if args.workers and dst.format != "zarr":
        raise VistokError(f"--workers {args.workers} writes blockwise into a zarr array; name one, e.g. --out "
                          "seg.zarr:ids")
    if args.postprocess != "greedy":  # the official post-processing's libraries, checked before the model loads
        from vistok.em.inference import require_postprocess

        require_postprocess()
    with WriterLock(dst.path, "--out"):  # one writer per output
        model, meta = load_segmenter(args.ckpt, device)
        stored = meta.get("inference") or {}
        flags = {"roi": roi, "overlap": args.overlap, "batch_size": args.batch_size, "threshold": args.threshold,
                 "fragment_threshold": args.fragment_threshold, "postprocess": args.postprocess}
        cfg = from_dict(InferenceConfig, {**stored, **{k: v for k, v in flags.items() if v is not None}})
        start = time.perf_counter()
        if args.workers:
            segments, how = _segment_blockwise(args, src, dst, raw, cfg, block, device), f"{args.workers} daisy workers"
        else:
            segments, how = segment_to_file(model, raw, dst, cfg, progress=False if args.quiet else None)
        seconds = time.perf_counter() - start
    merge = (f"waterz, 1 - median < {cfg.threshold}" if cfg.postprocess == "waterz" else
             f"greedy {cfg.score} > {cfg.threshold}")
    print(f"{src} {raw.shape} -> {segments} segments in {seconds:.1f} s (roi {tuple(cfg.roi)}, overlap "
          f"{cfg.overlap}, agglomeration {merge}, {device}, {how}) -> {_shown(dst)}")


def _block(text: str | None, workers: int) -> tuple[int, int, int] | None:
    if workers < 0:
        raise VistokError(f"--workers {workers} must be >= 0 (0: one process)")
    if text is None:
        return (64, 512, 512) if workers else None
    if not workers:
        raise VistokError("--block needs --workers N (N >= 1); --workers 0 segments in one process")
    return sizes_arg(text, "--block", "--block 64,512,512")


def _segment_blockwise(args, src, dst, raw, cfg, block, device: str) -> int:
    """`--workers N`: the official pipeline blockwise on daisy (vistok.em.blockwise); scratch and done markers in
    `<out>.blockwise/`, so the same command resumes."""
    import functools
    from pathlib import Path

    from vistok.em.blockwise import BlockwiseSegmentation, load_predictor, segment_blockwise
    from vistok.em.volumes import DEFAULT_DATASET, intensity_range

    if cfg.postprocess != "waterz":
        raise VistokError("--workers runs the official post-processing (waterz); drop --postprocess greedy")
    name = (dst.dataset or DEFAULT_DATASET["zarr"]).strip("/")
    out = str(Path(dst.path) / name)
    work = Path(dst.path) / f".{name.replace('/', '_')}.blockwise"
    block = tuple(min(b, s) for b, s in zip(block, raw.shape))
    job = BlockwiseSegmentation(str(src), out, work, functools.partial(load_predictor, str(args.ckpt), device),
                                tuple(cfg.roi), cfg.overlap, cfg.batch_size, cfg.threshold, block,
                                intensity_range(raw), tuple(raw.shape))
    return segment_blockwise(job, args.workers, args.worker_command)


def cmd_em_worker(args: argparse.Namespace) -> None:
    from vistok.em.blockwise import run_worker

    n = run_worker(args.job, args.task)
    print(f"em-worker: {n} block(s) of '{args.task}' done")


def _shown(dst):
    from vistok.em.volumes import DEFAULT_DATASET

    if dst.dataset or dst.format not in DEFAULT_DATASET:
        return dst
    return type(dst)(dst.path, DEFAULT_DATASET[dst.format], dst.format)


def _segment_baseline(args: argparse.Namespace, src, dst) -> None:
    """`em-segment --baseline`: the no-network distance-transform watershed of the raw volume (in memory)."""
    import numpy as np

    from vistok.em.baseline import distance_watershed
    from vistok.em.volumes import read_volume, write_volume

    start = time.perf_counter()
    seg = distance_watershed(read_volume(src), per_slice=args.per_slice)
    write_volume(dst, seg.astype(np.uint32 if seg.max(initial=0) < 2**32 else np.uint64))
    print(f"{src} {seg.shape} -> {len(np.unique(seg))} segments in {time.perf_counter() - start:.1f} s (baseline: "
          f"distance-transform watershed of the thresholded raw image, {'per slice' if args.per_slice else '3D'}) "
          f"-> {_shown(dst)}")


def cmd_em_eval(args: argparse.Namespace) -> None:
    from vistok.em.metrics import evaluate, evaluate_per_slice
    from vistok.em.volumes import read_volume

    seg, gt = read_volume(args.seg), read_volume(args.gt)
    for name, vol in (("--seg", seg), ("--gt", gt)):
        if vol.dtype.kind not in "iub":
            raise VistokError(f"{name} volume has dtype {vol.dtype}; labels must be integers")
    if args.per_slice and gt.ndim != 3:
        raise VistokError(f"--per-slice scores the z sections of (z, y, x) volumes; these have shape {gt.shape}")
    scores = (evaluate_per_slice if args.per_slice else evaluate)(seg, gt, ignore_labels=tuple(args.ignore))
    if args.json:
        print(json.dumps({"seg": args.seg, "gt": args.gt, "ignore_labels": list(args.ignore),
                          "per_slice": bool(args.per_slice), **scores._asdict()}, indent=2))
    else:
        print(f"{'2D, mean over z sections: ' if args.per_slice else ''}VOI split {scores.voi_split:.4f}  "
              f"VOI merge {scores.voi_merge:.4f}  VOI {scores.voi:.4f}  ARAND {scores.arand:.4f}")


def cmd_em_view(args: argparse.Namespace) -> None:
    from vistok.em.view import parse_voxel_size, serve

    voxel_size = None if args.voxel_size is None else parse_voxel_size(args.voxel_size)
    _viewer, url = serve(args.raw, args.seg, voxel_size=voxel_size, bind_address=args.bind_address, port=args.port)
    import neuroglancer  # present: serve checked it
    print(url, flush=True)
    try:
        while True:  # the server runs in a background thread until Ctrl-C
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        neuroglancer.server.stop()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `em-segment`, `em-worker`, `em-eval` and `em-view` on the `vistok` command's subparsers."""
    p = subparsers.add_parser("em-segment", help="neuron segmentation of an EM volume with a fine-tuned SegMamba")
    p.add_argument("--ckpt", help="export of train/finetune_em_seg.py (folder) or shipped model name")
    p.add_argument("--baseline", action="store_true",
                   help="no network: distance-transform watershed of the thresholded raw image (instead of --ckpt)")
    p.add_argument("--per-slice", action="store_true", help="--baseline: one 2D watershed per z section (default 3D)")
    p.add_argument("--input", required=True, metavar="FILE[:DATASET]", help="raw EM volume (.h5/.zarr/.npz/.tif/.npy)")
    p.add_argument("--out", required=True, metavar="FILE[:DATASET]", help="where the neuron ids go (uint32)")
    p.add_argument("--roi", metavar="D,H,W", help="sliding window (default: the export's, i.e. the training crop)")
    p.add_argument("--overlap", type=float, help="window overlap in [0, 1) (default: the export's, 0.25)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: the export's)")
    p.add_argument("--threshold", type=float,
                   help="agglomeration threshold (default: the export's, 0.5); waterz merges while 1 - median affinity "
                        "< it (larger merges more), greedy while the affinity > it")
    p.add_argument("--fragment-threshold", type=float, help="watershed seed threshold (default: the export's)")
    p.add_argument("--postprocess", choices=("waterz", "greedy"),
                   help="waterz: the official mahotas watershed + waterz (default); greedy: vistok's streamed merge, "
                        "memory bounded by the region graph")
    p.add_argument("--workers", type=int, default=0,
                   help="N >= 1: blockwise on daisy with N worker processes into a zarr --out, resumable (run the same "
                        "command again); 0 (default): one process")
    p.add_argument("--block", metavar="Z,Y,X", help="--workers: block size (default 64,512,512)")
    p.add_argument("--worker-command", metavar="CMD",
                   help="--workers: start each worker with this shell command instead of a local process, e.g. "
                        "\"ssh node1 DAISY_CONTEXT={context} vistok em-worker --job {job} --task {task}\" "
                        "(workers on other machines, same paths, join over daisy's TCP protocol)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: CUDA when present")
    p.add_argument("--quiet", action="store_true", help="no progress bar (it shows only when stderr is a terminal)")
    p.set_defaults(func=cmd_em_segment)

    p = subparsers.add_parser("em-worker", help="join a blockwise em-segment run as a worker (any machine)")
    p.add_argument("--job", required=True, help="the run's job file (<out>/.<dataset>.blockwise/job.json)")
    p.add_argument("--task", required=True, choices=("fragments", "agglomerate", "relabel"))
    p.set_defaults(func=cmd_em_worker)

    p = subparsers.add_parser("em-eval", help="VOI split / merge / total and ARAND of a segmentation against ground "
                                              "truth")
    p.add_argument("--seg", required=True, metavar="FILE[:DATASET]", help="segmentation (integer labels)")
    p.add_argument("--gt", required=True, metavar="FILE[:DATASET]", help="ground truth (integer labels)")
    p.add_argument("--ignore", type=int, nargs="*", default=[0], metavar="ID",
                   help="ground-truth labels left out (default: 0, boundary / unlabelled)")
    p.add_argument("--per-slice", action="store_true",
                   help="2D scores averaged over z sections (serial-section data whose labels are 2D)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_em_eval)

    p = subparsers.add_parser("em-view", help="look at a segmentation over its raw EM volume in neuroglancer (prints "
                                              "the URL, serves until Ctrl-C)")
    p.add_argument("raw", metavar="RAW", help="raw EM volume FILE[:DATASET] (.h5/.zarr/.npy/...), an image layer")
    p.add_argument("seg", metavar="SEG", help="segmentation FILE[:DATASET] (integer ids), a segmentation layer")
    p.add_argument("--voxel-size", metavar="Z,Y,X",
                   help="voxel size in nm (default: the dataset's 'resolution' attribute, else 1,1,1)")
    p.add_argument("--bind-address", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0 shares it on the network)")
    p.add_argument("--port", type=int, default=0, help="port to serve on (default 0: any free port)")
    p.set_defaults(func=cmd_em_view)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vistok.em.cli em-segment|em-eval ...`, with the main CLI's error behaviour."""
    parser = argparse.ArgumentParser(prog="vistok", description="EM neuron segmentation and its scores.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        check_cli_paths(args)  # as the main `vistok` command: an --out in an input's file (any :DATASET) is refused
        args.func(args)
    except VistokError as err:
        print(f"vistok {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
