"""`em-segment` at scale: voxels per second and peak memory of neuron segmentation on a synthetic EM volume, as a table.

    python benchmarks/bench_em_segment.py [--shape 128,1024,1024 [--shape ...]] [--modes blockwise-1,blockwise-2,...]
                                         [--block 32,256,256] [--cells-per-mvoxel 24] [--ckpt CKPT] [--roi 16,64,64]
                                         [--threads 1] [--work DIR]

Modes (each in its own process, so its peak RSS is its own, on the same zarr volume chunked 16x128x128):
- `blockwise-N`: `em-segment --workers N --block ...` (`vistok.em.blockwise` on daisy): N worker processes predict,
  cut fragments, agglomerate and relabel block by block; the scheduler joins the per-block edges. `worker RSS` is the
  largest peak RSS of any worker process (VmHWM polled from /proc), `RSS` the scheduler's (it holds the join's
  region graph).
- `waterz`: the single-process default (official mahotas + waterz post-processing; affinities of the whole volume in
  memory).
- `streamed` / `in-memory`: the greedy post-processing (`--postprocess greedy`) streamed through scratch files
  (`vistok.em.streaming`) or on in-memory arrays; the same segments.

Without `--ckpt` the affinities come from a network-free stand-in (in-plane smoothed intensity, about the cost of a
3x3 convolution per window), so the table measures the pipeline around the network: window reads and blending,
fragments, the region graph and agglomeration, the writes. With `--ckpt` (a fine-tuned SegMamba export or shipped
name, e.g. `em-segmamba-tiny-scratch` with `--roi 16,32,32`) the network runs too. Several `--shape`s at one `--block`
show whether a worker's peak grows with the volume (it should not). A volume larger than 32x256x256 is that synthetic
tile mirrored along every axis (cells stay whole across tile faces), so any size is written slab by slab.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

TILE = (32, 256, 256)


def smooth_affinities(x: torch.Tensor) -> torch.Tensor:
    """Network-free stand-in: bright cytoplasm = connected; in-plane 3x3 mean; the same value for z, y, x."""
    s = torch.nn.functional.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    return s.expand(-1, 3, -1, -1, -1)


def network_free() -> object:
    """Predictor factory of a blockwise worker (shipped to the worker process by value)."""
    return smooth_affinities


def _mirror_index(n: int, tile: int) -> np.ndarray:
    """Indices 0..n-1 folded into a tile of `tile` by mirroring: 0 1 .. t-1 t-1 .. 1 0 0 1 .."""
    i = np.arange(n) % (2 * tile)
    return np.where(i < tile, i, 2 * tile - 1 - i)


def make_volume(work: Path, shape: tuple[int, int, int], cells_per_mvoxel: float) -> str:
    """A synthetic raw volume at `work`, cached: one synthetic tile (at most TILE large), mirrored to `shape`."""
    import zarr

    from vistok.em.synthetic import synthetic_em_volume

    store = work / f"raw_{'x'.join(map(str, shape))}_{cells_per_mvoxel:g}.zarr"
    if not (store / "raw" / "done").exists():
        tile_shape = tuple(min(s, t) for s, t in zip(shape, TILE, strict=True))
        cells = max(1, round(cells_per_mvoxel * np.prod(tile_shape) / 1e6))
        tile, _ = synthetic_em_volume(tile_shape, num_cells=cells, seed=0)
        z = zarr.open_array(store=str(store / "raw"), mode="w", shape=shape, chunks=(16, 128, 128), dtype=np.uint8)
        ys, xs = _mirror_index(shape[1], tile_shape[1]), _mirror_index(shape[2], tile_shape[2])
        zs = _mirror_index(shape[0], tile_shape[0])
        for z0 in range(0, shape[0], 16):  # one slab at a time
            z[z0: z0 + 16] = tile[zs[z0: z0 + 16]][:, ys][:, :, xs]
        (store / "raw" / "done").touch()
    return f"{store}:raw"


class WorkerPeaks:
    """Largest peak RSS (VmHWM) of any process started below this one, polled from /proc while the run lasts. Not
    getrusage(RUSAGE_CHILDREN): on Linux a child that execs inherits its parent's high-water mark, so workers started
    after the scheduler's join would report the scheduler's peak."""

    def __init__(self, every: float = 0.2) -> None:
        import os
        import threading

        self.peaks: dict[int, int] = {}
        self._stop, self._me = threading.Event(), os.getpid()
        self._thread = threading.Thread(target=self._poll, args=(every,), daemon=True)
        self._thread.start()

    def _descendants(self) -> set[int]:
        parent = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = set(), {self._me}
        while frontier:
            frontier = {pid for pid, pp in parent.items() if pp in frontier} - found
            found |= frontier
        return found

    def _poll(self, every: float) -> None:
        while not self._stop.wait(every):
            for pid in self._descendants():
                try:
                    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                                if x.startswith("VmHWM:"))
                except (OSError, StopIteration):
                    continue
                self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]))  # kB

    def stop(self) -> float:
        """-> the largest worker peak in MB."""
        self._stop.set()
        self._thread.join()
        return max(self.peaks.values(), default=0) / 1024


def _predictor(args: argparse.Namespace):
    if not args.ckpt:
        return smooth_affinities
    from vistok.em.inference import load_segmenter

    model, _ = load_segmenter(args.ckpt)
    return lambda x: torch.sigmoid(model(x))


def run_one(args: argparse.Namespace) -> dict:
    from vistok.em import postprocess
    from vistok.em.segmentation import agglomerate, fragments, sliding_window_inference
    from vistok.em.streaming import segment_streaming
    from vistok.em.volumes import Volume, intensity_range, normalize_range, parse_volume_arg, write_volume

    roi = tuple(int(v) for v in args.roi.split(","))
    vol = Volume(args.volume)
    out = Path(args.work) / f"seg_{args.mode}_{'x'.join(map(str, vol.shape))}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    value_range = intensity_range(vol)  # stored or one pass; before the clock, as em-segment does it once
    frags, worker_rss = None, None
    start = time.perf_counter()
    with torch.no_grad():
        if args.mode.startswith("blockwise"):
            from vistok.em.blockwise import BlockwiseSegmentation, load_predictor, segment_blockwise

            factory = functools.partial(load_predictor, args.ckpt) if args.ckpt else network_free
            block = tuple(int(v) for v in args.block.split(","))
            job = BlockwiseSegmentation(args.volume, str(out / "ids"), out / "work", factory, roi, 0.25, 4, 0.5,
                                        block, value_range, vol.shape)
            peaks = WorkerPeaks()
            segments = segment_blockwise(job, int(args.mode.split("-")[1]))
            worker_rss = peaks.stop()
        elif args.mode == "streamed":
            segments = segment_streaming(_predictor(args), vol, parse_volume_arg(f"{out}:ids"), roi, 0.25, 4,
                                         value_range=value_range)
        else:
            raw = torch.from_numpy(normalize_range(vol.read(), *value_range))[None, None]
            affs = sliding_window_inference(_predictor(args), raw, roi, 0.25, 4)[0].numpy()
            if args.mode == "waterz":
                cut = postprocess.fragments(affs)
                seg = postprocess.agglomerate(affs, cut)
            else:  # in-memory greedy, as `segmentation.segment`
                cut = fragments(affs)
                seg = agglomerate(cut, affs)
            frags = int(len(np.unique(cut)))
            write_volume(f"{out}:ids", seg.astype(np.uint32))
            segments = int(seg.max())
    seconds = time.perf_counter() - start
    return {"mode": args.mode, "shape": list(vol.shape), "seconds": round(seconds, 1),
            "mvoxels_per_s": round(np.prod(vol.shape) / seconds / 1e6, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "worker_rss_mb": None if worker_rss is None else round(worker_rss), "segments": segments,
            "fragments": frags}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", help="synthetic volume z,y,x; repeat for several sizes "
                        "(default 128,1024,1024; e.g. 32,256,256 for a quick run)")
    parser.add_argument("--cells-per-mvoxel", type=float, default=24.0, help="neuron density of the synthetic tile")
    parser.add_argument("--ckpt", default="", help="fine-tuned SegMamba export (default: network-free affinities)")
    parser.add_argument("--modes", default="blockwise-1,blockwise-2",
                        help="comma list of blockwise-N, waterz, streamed, in-memory")
    parser.add_argument("--block", default="32,256,256", help="blockwise block z,y,x")
    parser.add_argument("--roi", default="16,64,64", help="sliding window z,y,x")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/vistok-bench-em", help="folder for the volumes and outputs")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: one mode in a child process
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode:
        print(json.dumps(run_one(args)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in args.shape or ["128,1024,1024"]:
        shape = tuple(int(v) for v in text.split(","))
        volume = make_volume(work, shape, args.cells_per_mvoxel)
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--mode", mode, "--volume", volume, "--roi", args.roi, "--work",
                   str(work), "--threads", str(args.threads), "--block", args.block]
            proc = subprocess.run(cmd + (["--ckpt", args.ckpt] if args.ckpt else []), capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{mode} failed:\n{proc.stderr[-2000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # progress of a long run
    network = f"SegMamba {args.ckpt}" if args.ckpt else "network-free affinities"
    print(f"em-segment on synthetic volumes, roi {args.roi}, block {args.block}, {network}, "
          f"{args.threads} thread(s) per process")
    print("| volume | mode | seconds | Mvoxels/s | peak RSS (MB) | worker peak RSS (MB) | fragments | segments |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {'x'.join(map(str, r['shape']))} | {r['mode']} | {r['seconds']} | {r['mvoxels_per_s']} | "
              f"{r['peak_rss_mb']} | {r['worker_rss_mb'] or '-'} | {r['fragments'] or '-'} | {r['segments']} |")


if __name__ == "__main__":
    main()
