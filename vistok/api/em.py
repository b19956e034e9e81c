"""EM jobs as Python calls: segment a volume file into another (one process, streamed where it can, or blockwise on
daisy workers; or the no-network baseline), score a segmentation file against ground truth, and show one in
neuroglancer. The `vistok em-*` commands parse their flags, make one of these calls and print its report.

TokenUnify (Chen et al., arXiv 2405.16847); the blockwise pipeline follows the field's (fragments per block, waterz
agglomeration, a global union-find of region-graph edges, relabelling per block), scores as scikit-image's.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vistok.api.models import Segmenter
from vistok.errors import VistokError

DEFAULT_BLOCK = (64, 512, 512)


@dataclasses.dataclass(frozen=True)
class SegmentRun:
    """What `segment_file` did: the output (with its dataset), the number of segments and how they were made."""
    input: Any
    shape: tuple[int, ...]
    out: Any
    segments: int
    seconds: float
    how: str

    def summary(self) -> str:
        return (f"{self.input} {self.shape} -> {self.segments} segments in {self.seconds:.1f} s ({self.how}) -> "
                f"{self.out}")


def _shown(dst: Any) -> Any:
    """The output reference with the dataset a bare file name gets (what the user will open)."""
    from vistok.em.volumes import DEFAULT_DATASET

    if dst.dataset or dst.format not in DEFAULT_DATASET:
        return dst
    return type(dst)(dst.path, DEFAULT_DATASET[dst.format], dst.format)


def segment_file(
    source: str | Path | Segmenter | None, input: str | Path, out: str | Path, *, baseline: bool = False,
    per_slice: bool = False, roi: Sequence[int] | None = None, overlap: float | None = None,
    batch_size: int | None = None, threshold: float | None = None, fragment_threshold: float | None = None,
    postprocess: str | None = None, workers: int = 0, block: Sequence[int] | None = None,
    worker_command: str | None = None, device: str = "auto", progress: bool | None = None,
) -> SegmentRun:
    """Neuron ids (uint32) of the raw EM volume `input` (FILE[:DATASET]) written to `out` (FILE[:DATASET]).

    `source`: a fine-tuned segmenter (name, folder or loaded `Segmenter`), whose export's inference settings the
    keywords override; or None with `baseline=True`: the distance-transform watershed of the thresholded raw image (in
    memory; `per_slice`: one 2D watershed per z section). `workers` N >= 1: blockwise on daisy with N worker processes
    into a zarr `out`, resumable (scratch and done markers in `<out>/.<dataset>.blockwise/`; `worker_command` starts
    each worker elsewhere); 0: one process, reading the volume window by window. Every argument and output is checked
    before the model loads; one writer per output."""
    from vistok.em.volumes import Volume, check_output, parse_volume_arg
    from vistok.io.lock import WriterLock

    if baseline == (source is not None):
        raise VistokError("em-segment needs either --ckpt CKPT (a fine-tuned model) or --baseline (no network), "
                          "not both and not neither")
    src, dst = parse_volume_arg(input), parse_volume_arg(out)  # both checked before the model loads
    check_output(dst)  # an unwritable folder or an existing file of another kind fails now, not after the work
    if baseline:
        with WriterLock(dst.path, "--out"):
            return _baseline(src, dst, per_slice)
    from vistok.api import resolve_device

    device = resolve_device(device).type
    raw = Volume(src)  # lazily: metadata only; the volume is read window by window
    if 0 in raw.shape:  # before the model loads
        raise VistokError(f"{src} is empty (shape {raw.shape}); pass a volume with at least one voxel in each axis")
    if workers < 0:
        raise VistokError(f"--workers {workers} must be >= 0 (0: one process)")
    if block is not None and not workers:
        raise VistokError("--block needs --workers N (N >= 1); --workers 0 segments in one process")
    if worker_command and not workers:
        raise VistokError("--worker-command needs --workers N (N >= 1 worker slots)")
    if workers and dst.format != "zarr":
        raise VistokError(f"--workers {workers} writes blockwise into a zarr array; name one, e.g. --out seg.zarr:ids")
    if postprocess != "greedy":  # the official post-processing's libraries, checked before the model loads
        from vistok.em.inference import require_postprocess

        require_postprocess()
    with WriterLock(dst.path, "--out"):  # one writer per output
        from vistok.api.jobs import load_as
        from vistok.em.inference import segment_to_file

        seg = load_as(source, Segmenter, device, "`vistok em-segment`")
        cfg = seg.settings(roi=None if roi is None else tuple(roi), overlap=overlap, batch_size=batch_size,
                           threshold=threshold, fragment_threshold=fragment_threshold, postprocess=postprocess)
        start = time.perf_counter()
        if workers:
            segments = _blockwise(source, src, dst, raw, cfg, tuple(block or DEFAULT_BLOCK), device, workers,
                                  worker_command)
            how = f"{workers} daisy workers"
        else:
            segments, how = segment_to_file(seg.model, raw, dst, cfg, progress=progress)
        seconds = time.perf_counter() - start
    merge = (f"waterz, 1 - median < {cfg.threshold}" if cfg.postprocess == "waterz" else
             f"greedy {cfg.score} > {cfg.threshold}")
    return SegmentRun(src, raw.shape, _shown(dst), segments, seconds,
                      f"roi {tuple(cfg.roi)}, overlap {cfg.overlap}, agglomeration {merge}, {device}, {how}")


def _blockwise(source: Any, src: Any, dst: Any, raw: Any, cfg: Any, block: tuple[int, ...], device: str, workers: int,
               worker_command: str | None) -> int:
    """The official pipeline blockwise on daisy (`vistok.em.blockwise`): every worker loads the export itself."""
    from vistok.em.blockwise import BlockwiseSegmentation, load_predictor, segment_blockwise
    from vistok.em.volumes import DEFAULT_DATASET, intensity_range

    if cfg.postprocess != "waterz":
        raise VistokError("--workers runs the official post-processing (waterz); drop --postprocess greedy")
    if not isinstance(source, (str, Path)):
        raise VistokError("workers load the segmenter themselves: pass its name or folder, not a loaded Segmenter")
    name = (dst.dataset or DEFAULT_DATASET["zarr"]).strip("/")
    work = Path(dst.path) / f".{name.replace('/', '_')}.blockwise"
    block = tuple(min(b, s) for b, s in zip(block, raw.shape, strict=True))
    job = BlockwiseSegmentation(str(src), str(Path(dst.path) / name), work,
                                functools.partial(load_predictor, str(source), device), tuple(cfg.roi), cfg.overlap,
                                cfg.batch_size, cfg.threshold, block, intensity_range(raw), tuple(raw.shape))
    return segment_blockwise(job, workers, worker_command)


def _baseline(src: Any, dst: Any, per_slice: bool) -> SegmentRun:
    """The no-network distance-transform watershed of the raw volume (in memory)."""
    from vistok.em.baseline import distance_watershed
    from vistok.em.volumes import read_volume, write_volume

    start = time.perf_counter()
    seg = distance_watershed(read_volume(src), per_slice=per_slice)
    write_volume(dst, seg.astype(np.uint32 if seg.max(initial=0) < 2**32 else np.uint64))
    how = f"baseline: distance-transform watershed of the thresholded raw image, {'per slice' if per_slice else '3D'}"
    return SegmentRun(src, seg.shape, _shown(dst), len(np.unique(seg)), time.perf_counter() - start, how)


def evaluate_files(seg: str | Path, gt: str | Path, ignore: Sequence[int] = (0,), per_slice: bool = False) -> Any:
    """VOI split / merge / total and ARAND (`vistok.em.metrics.Scores`) of the segmentation file `seg` against the
    ground-truth file `gt` (FILE[:DATASET] each); `ignore`: ground-truth labels left out; `per_slice`: 2D scores
    averaged over z sections."""
    from vistok.em.metrics import evaluate, evaluate_per_slice
    from vistok.em.volumes import read_volume

    seg_vol, gt_vol = read_volume(seg), read_volume(gt)
    for name, vol in (("--seg", seg_vol), ("--gt", gt_vol)):
        if vol.dtype.kind not in "iub":
            raise VistokError(f"{name} volume has dtype {vol.dtype}; labels must be integers")
    if per_slice and gt_vol.ndim != 3:
        raise VistokError(f"--per-slice scores the z sections of (z, y, x) volumes; these have shape {gt_vol.shape}")
    return (evaluate_per_slice if per_slice else evaluate)(seg_vol, gt_vol, ignore_labels=tuple(ignore))


def view(raw: str | Path, seg: str | Path, *, voxel_size: str | Sequence[float] | None = None,
         bind_address: str = "127.0.0.1", port: int = 0, on_url: Callable[[str], None] = print) -> None:
    """Serve `seg` over `raw` in neuroglancer: `on_url(url)` once it serves, then block until Ctrl-C, then stop."""
    from vistok.em.view import parse_voxel_size, serve

    voxel_size = parse_voxel_size(voxel_size) if isinstance(voxel_size, str) else voxel_size
    _viewer, url = serve(raw, seg, voxel_size=voxel_size, bind_address=bind_address, port=port)
    import neuroglancer  # present: serve checked it

    on_url(url)
    try:
        while True:  # the server runs in a background thread until Ctrl-C
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        neuroglancer.server.stop()


__all__ = ["SegmentRun", "evaluate_files", "segment_file", "view"]
