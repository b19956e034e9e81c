"""`vistok em-segment`, `em-worker`, `em-eval` and `em-view`: neuron segmentation of an EM volume with a fine-tuned
SegMamba (one process or blockwise on daisy workers), its VOI / ARAND score against ground truth, and a neuroglancer
view of it over the raw volume (TokenUnify, Chen et al., arXiv 2405.16847; scores as scikit-image's).

    vistok em-segment --ckpt CKPT --input FILE[:DATASET] --out FILE[:DATASET] [--roi D,H,W] [--overlap F] ...
    vistok em-segment --baseline --input FILE[:DATASET] --out FILE[:DATASET]   (no network: distance watershed)
    vistok em-eval --seg FILE[:DATASET] --gt FILE[:DATASET] [--per-slice] [--json]
    vistok em-view RAW SEG [--voxel-size Z,Y,X] [--bind-address 127.0.0.1] [--port 0]   (neuroglancer, until Ctrl-C)

`add_commands(subparsers)` registers them on the main `vistok` parser; `python -m vistok.em.cli ...` runs them alone.
Each handler parses, makes one call into `vistok.api.em` (or `vistok.em.blockwise.run_worker`) and prints; heavy
imports (torch, scikit-image) happen inside those calls, so `vistok --help` stays fast.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence

from vistok.checks import sizes_arg
from vistok.cli_args import same_named


def cmd_em_segment(args: argparse.Namespace) -> None:
    from vistok.api.em import segment_file

    roi = None if args.roi is None else sizes_arg(args.roi, "--roi", "--roi 16,64,64")
    block = None if args.block is None else sizes_arg(args.block, "--block", "--block 64,512,512")
    same = same_named(args, "baseline per_slice overlap batch_size threshold fragment_threshold postprocess workers "
                            "worker_command device")
    print(segment_file(args.ckpt, args.input, args.out, roi=roi, block=block, progress=False if args.quiet else None,
                       **same).summary())


def cmd_em_worker(args: argparse.Namespace) -> None:
    from vistok.em.blockwise import run_worker

    print(f"em-worker: {run_worker(args.job, args.task)} block(s) of '{args.task}' done")


def cmd_em_eval(args: argparse.Namespace) -> None:
    from vistok.api.em import evaluate_files

    scores = evaluate_files(args.seg, args.gt, args.ignore, args.per_slice)
    if args.json:
        print(json.dumps({"seg": args.seg, "gt": args.gt, "ignore_labels": list(args.ignore),
                          "per_slice": bool(args.per_slice), **scores._asdict()}, indent=2))
    else:
        print(f"{'2D, mean over z sections: ' if args.per_slice else ''}VOI split {scores.voi_split:.4f}  "
              f"VOI merge {scores.voi_merge:.4f}  VOI {scores.voi:.4f}  ARAND {scores.arand:.4f}")


def cmd_em_view(args: argparse.Namespace) -> None:
    from vistok.api.em import view

    view(args.raw, args.seg, voxel_size=args.voxel_size, bind_address=args.bind_address, port=args.port,
         on_url=functools.partial(print, flush=True))  # serves until Ctrl-C
    print("stopped", file=sys.stderr)


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
    """`python -m vistok.em.cli em-segment|em-eval ...`: these commands alone, run as the main `vistok` command runs."""
    from vistok.cli import main as run
    from vistok.cli_args import Parser

    parser = Parser(prog="vistok", description="EM neuron segmentation and its scores.")
    add_commands(parser.add_subparsers(dest="command", required=True, parser_class=Parser))
    return run(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
