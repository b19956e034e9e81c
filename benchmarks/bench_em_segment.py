"""`em-segment` at scale: wall time and peak memory of neuron segmentation on a synthetic EM volume (default
64x512x512, 16.8M voxels), as a table: `waterz` (the default post-processing: the official mahotas watershed +
waterz agglomeration, affinities of the whole volume in memory), `streamed` (`--postprocess greedy`: vistok's
streamed greedy merge) and `in-memory` (the same greedy merge on in-memory arrays).

    python benchmarks/bench_em_segment.py [--shape 64,512,512] [--cells 400] [--ckpt CKPT] [--modes waterz,streamed,in-memory]
                                    [--roi 16,64,64] [--threads 1] [--work DIR]

Each mode runs in its own process (so its peak RSS is its own) on the same zarr volume (chunks 16x128x128). Without
`--ckpt` the affinities come from a network-free stand-in (in-plane smoothed intensity; about the cost of a 3x3
convolution per window), so the table measures the pipeline around the network: window reads and blending,
watershed fragments, the sparse region graph and agglomeration, the chunk-wise write. With `--ckpt` (a fine-tuned
SegMamba export or shipped name) the network runs too. Columns: seconds, peak RSS of the process (getrusage), peak
Python/numpy allocation (tracemalloc; torch's allocator is not traced), fragments and final segments.
TokenUnify (Chen et al., arXiv 2405.16847) post-processing: watershed + median-affinity agglomeration (waterz).
`fragments` is filled in for the in-memory modes only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch


def smooth_affinities(x: torch.Tensor) -> torch.Tensor:
    """Network-free stand-in: bright cytoplasm = connected; in-plane 3x3 mean; the same value for z, y, x."""
    s = torch.nn.functional.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    return s.expand(-1, 3, -1, -1, -1)


def make_volume(work: Path, shape: tuple[int, int, int], cells: int) -> str:
    import zarr

    from vistok.em.synthetic import synthetic_em_volume

    store = work / f"raw_{'x'.join(map(str, shape))}_{cells}.zarr"
    if not (store / "raw").exists():
        raw, _ = synthetic_em_volume(shape, num_cells=cells, seed=0)
        z = zarr.open_array(store=str(store / "raw"), mode="w", shape=shape, chunks=(16, 128, 128), dtype=np.uint8)
        z[...] = raw
    return f"{store}:raw"


def run_one(args: argparse.Namespace) -> dict:
    from vistok.em.segmentation import fragments, segment, sliding_window_inference
    from vistok.em.streaming import segment_streaming
    from vistok.em.volumes import Volume, normalize_minmax, parse_volume_arg, write_volume

    roi = tuple(int(v) for v in args.roi.split(","))
    predict = smooth_affinities
    if args.ckpt:
        from vistok.em.inference import load_segmenter

        model, _ = load_segmenter(args.ckpt)
        predict = lambda x: torch.sigmoid(model(x))  # noqa: E731
    vol = Volume(args.volume)
    out = Path(args.work) / f"seg_{args.mode}.zarr"
    tracemalloc.start()
    start = time.perf_counter()
    with torch.no_grad():
        if args.mode == "streamed":
            segments = segment_streaming(predict, vol, parse_volume_arg(f"{out}:ids"), roi, 0.25, 4)
            frags = None
        elif args.mode == "waterz":
            from vistok.em import postprocess

            raw = vol.read()
            affs = sliding_window_inference(predict, torch.from_numpy(normalize_minmax(raw))[None, None], roi, 0.25, 4)
            affs = affs[0].numpy()
            fragments_ = postprocess.fragments(affs)
            frags = int(fragments_.max())
            seg = postprocess.agglomerate(affs, fragments_)
            write_volume(f"{out}:ids", seg.astype(np.uint32))
            segments = int(seg.max())
        else:
            raw = vol.read()
            affs = sliding_window_inference(predict, torch.from_numpy(normalize_minmax(raw))[None, None], roi, 0.25, 4)
            affs = affs[0].numpy()
            frags = int(fragments(affs).max())
            seg = segment(affs)
            write_volume(f"{out}:ids", seg.astype(np.uint32))
            segments = int(seg.max())
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"mode": args.mode, "shape": list(vol.shape), "seconds": round(seconds, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_numpy_mb": round(traced / 2**20, 1), "segments": segments, "fragments": frags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,512,512", help="synthetic volume z,y,x (default 64,512,512)")
    parser.add_argument("--cells", type=int, default=400, help="neurons in the synthetic volume")
    parser.add_argument("--ckpt", default="", help="fine-tuned SegMamba export (default: network-free affinities)")
    parser.add_argument("--modes", default="waterz,streamed,in-memory")
    parser.add_argument("--roi", default="16,64,64", help="sliding window z,y,x")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/vistok-bench-em", help="folder for the volume and outputs")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: one mode in a child process
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode:
        print(json.dumps(run_one(args)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(v) for v in args.shape.split(","))
    volume = make_volume(work, shape, args.cells)
    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--mode", mode, "--volume", volume, "--roi", args.roi, "--work", str(work),
               "--threads", str(args.threads)] + (["--ckpt", args.ckpt] if args.ckpt else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{mode} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"em-segment on a synthetic {'x'.join(map(str, shape))} volume ({np.prod(shape) / 1e6:.1f}M voxels, "
          f"{args.cells} cells), roi {args.roi}, "
          f"{'SegMamba ' + args.ckpt if args.ckpt else 'network-free affinities'}, "
          f"{args.threads} thread(s)")
    print("| mode | seconds | peak RSS (MB) | peak numpy (MB) | fragments | segments |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']} | {r['peak_rss_mb']} | {r['peak_numpy_mb']} | {r['fragments'] or '-'} "
              f"| {r['segments']} |")


if __name__ == "__main__":
    main()
