"""Blockwise, resumable neuron segmentation on daisy: the official post-processing cut into blocks and joined globally.

Funke et al., "Large Scale Image Segmentation with Structured Loss based Deep Learning for Connectome Reconstruction",
TPAMI 2018, and Sheridan et al., "Local shape descriptors for neuron segmentation", Nature Methods 2023 (blockwise
watershed + waterz agglomeration, region-graph edges joined by a global union-find, daisy task scheduling);
post-processing of TokenUnify (Chen et al., arXiv 2405.16847) as in `vistok.em.postprocess`.

    raw (zarr / HDF5 / npy) --task 1, per block: affinities predicted on the block grown by one window of context,
        cropped back; per-slice watershed fragments, ids offset by block index << 32 (unique without coordination)
    --task 2, per block: waterz agglomeration on the block grown by one voxel towards its lower neighbours (so edges
        across block faces are scored), its merges (fragment pairs) stored per block
    --in the scheduler: union-find over every stored merge -> one id per neuron, also across block faces; the table
        is cut into one small table per block (that block's fragment ids -> neuron ids)
    --task 3, per block: fragments relabelled through their block's table -> the output zarr

Memory: a worker holds one block grown by its context (prediction: one window each side; agglomeration: one voxel
slab below each lower face) and, for relabelling, its block's table, so its peak follows the block size, never the
volume (`eval/bench_em_segment.py` measures it at several volume sizes, up to 128x1024x1024). The scheduler's join
holds the fragment ids and the stored merges and contacts (the region graph), never voxels: it reads only the
per-block edge files.

Each task is a daisy Task with done markers under the work folder, so running the same command again skips finished
blocks (resume after a killed worker). A volume that fits in one block gives exactly the single-process result.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vistok.em import postprocess
from vistok.em.postprocess import QUEUE_BINS, SCORING_FUNCTION, check_affinities, optional_import, quiet_stdout
from vistok.errors import VistokError

BLOCK_ID_SHIFT = 32  # fragments of block i get ids (i << 32) + 1 ... : 4 billion fragments per block


def _blocks(shape: tuple[int, ...], block: tuple[int, ...]) -> dict[tuple[int, ...], int]:
    """Block start -> linear block index, in z-major order."""
    starts = itertools.product(*(range(0, s, b) for s, b in zip(shape, block, strict=True)))
    return {st: i for i, st in enumerate(starts)}


def _slices(begin, end) -> tuple[slice, ...]:
    return tuple(slice(int(b), int(e)) for b, e in zip(begin, end, strict=True))


class BlockwiseSegmentation:
    """The three block tasks and the global join over one raw volume; picklable, so daisy's workers run its methods.

    `predictor()` -> predict((N, 1, *roi) tensor in [0, 1]) -> (N, 3, *roi) affinities; called once per worker."""

    def __init__(self, raw: str, out: str, work: str | Path, predictor: Callable[[], Callable], roi: tuple[int, ...],
                 overlap: float, batch_size: int, threshold: float, block: tuple[int, ...],
                 value_range: tuple[float, float], shape: tuple[int, ...]) -> None:
        self.raw, self.out, self.work = raw, out, Path(work)
        self.predictor, self.roi, self.overlap, self.batch_size = predictor, tuple(roi), overlap, batch_size
        self.threshold, self.block, self.value_range, self.shape = threshold, tuple(block), value_range, tuple(shape)
        self.index = _blocks(self.shape, self.block)
        self._predict = None

    def __getstate__(self) -> dict:  # a worker loads its own network: the loaded one stays behind
        return {**self.__dict__, "_predict": None}

    # -- stores ---------------------------------------------------------------------------------------------------
    def _array(self, name: str, mode: str = "r+", shape=None, dtype=None, chunks=None):
        import zarr

        if mode == "w":
            return zarr.open_array(store=str(self.work / f"{name}.zarr"), mode="a", shape=shape, dtype=dtype,
                                   chunks=chunks)
        return zarr.open_array(store=str(self.work / f"{name}.zarr"), mode=mode)

    def create_stores(self) -> None:
        """Scratch arrays chunked by block (one writer per chunk, so workers never share a chunk)."""
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "edges").mkdir(exist_ok=True)
        for name, shape, dtype, chunks in (("affs", (3, *self.shape), np.float32, (3, *self.block)),
                                           ("fragments", self.shape, np.uint64, self.block)):
            path = self.work / f"{name}.zarr"
            if not path.exists():
                self._array(name, "w", shape, dtype, chunks)

    # -- task 1: affinities and fragments ---------------------------------------------------------------------
    def predict_block(self, block: Any) -> None:
        import torch

        from vistok.em.segmentation import sliding_window_inference
        from vistok.em.volumes import Volume, normalize_range

        if self._predict is None:
            self._predict = self.predictor()
        begin, end = np.array(block.write_roi.begin), np.array(block.write_roi.end)
        lo = np.maximum(begin - np.array(self.roi), 0)  # one window of context, clipped at the volume
        hi = np.minimum(end + np.array(self.roi), self.shape)
        raw = normalize_range(Volume(self.raw).read(_slices(lo, hi)), *self.value_range)
        with torch.no_grad():
            affs = sliding_window_inference(self._predict, torch.from_numpy(raw)[None, None], self.roi, self.overlap,
                                            self.batch_size)[0].cpu().numpy()  # (3, *context region)
        affs = np.ascontiguousarray(affs[(slice(None), *_slices(begin - lo, end - lo))])  # (3, *block)
        frags = postprocess.fragments(affs)
        frags += np.uint64(self.index[tuple(int(b) for b in begin)] << BLOCK_ID_SHIFT)
        self._array("affs")[(slice(None), *_slices(begin, end))] = affs
        self._array("fragments")[_slices(begin, end)] = frags

    # -- task 2: agglomeration inside the block, and the contacts across its lower faces ----------------------
    def agglomerate_block(self, block: Any) -> None:
        waterz = optional_import("waterz")
        begin, end = np.array(block.write_roi.begin), np.array(block.write_roi.end)
        region = _slices(begin, end)
        affs = check_affinities(self._array("affs")[(slice(None), *region)])
        frags = self._array("fragments")[region]
        ids, local = np.unique(frags, return_inverse=True)  # waterz sizes its graph by the largest id: compact them
        local = local.reshape(frags.shape)
        with quiet_stdout():
            _, history = next(iter(waterz.agglomerate(affs, [float(self.threshold)],
                                                      fragments=(local + 1).astype(np.uint64),
                                                      scoring_function=SCORING_FUNCTION, discretize_queue=QUEUE_BINS,
                                                      return_merge_history=True)))
        merges = ids[np.array([(m["a"], m["b"]) for m in history], np.int64).reshape(-1, 2) - 1]
        contacts = [self._face_contacts(begin, end, axis, frags, affs) for axis in range(3) if begin[axis] > 0]
        contacts = np.concatenate([_inner_contacts(ids, local, affs), *contacts])
        np.savez(self.work / "edges" / f"{self.index[tuple(int(b) for b in begin)]}.npz", merges=merges,
                 contacts=contacts, ids=ids)  # ids: the join needs every fragment, never the fragment volume

    def _face_contacts(self, begin, end, axis: int, frags: np.ndarray, affs: np.ndarray) -> np.ndarray:
        """Fragment pairs touching across the block's lower face on `axis` -> (E, 3) uint64: (u < v, bin of their
        largest affinity): the statistic waterz starts every edge from (InitWithMax)."""
        below = np.array(begin)
        below[axis] -= 1
        outside = self._array("fragments")[_slices(below, np.where(np.arange(3) == axis, begin, end))]
        inside = np.take(frags, [0], axis=axis)
        aff = np.take(affs[axis], [0], axis=axis)  # affinity of each face voxel with its predecessor below
        ids, inverse = np.unique(np.concatenate([inside.ravel(), outside.ravel()]), return_inverse=True)
        a, b = np.split(inverse.ravel(), 2)  # the face's fragment ids -> 0..n-1
        return _largest_bin_per_pair(ids, a, b, aff.ravel())

    # -- global join and task 3 ---------------------------------------------------------------------------------
    def join(self) -> None:
        """Every block's merges joined by union-find; then the agglomeration goes on over the graph of the segments
        that gives, as waterz would score it: each fragment contact (inside blocks and across their faces) counts once
        at the bin of its largest affinity, a segment pair's score is the median of its contacts, merged while
        1 - median < threshold. -> (fragment ids, neuron ids 1..n) saved as the relabelling table. On one block
        nothing is left to merge (waterz stopped at the same threshold): the single-process result."""
        from vistok.em.segmentation import edge_scores, merge_regions

        parts = [np.load(p) for p in sorted((self.work / "edges").glob("*.npz"))]
        ids = np.concatenate([p["ids"] for p in parts] + [np.zeros(0, np.uint64)])  # sorted: blocks own id ranges
        ids = np.unique(ids)
        merges = np.concatenate([p["merges"] for p in parts] + [np.zeros((0, 2), np.uint64)]).astype(np.uint64)
        contacts = np.concatenate([p["contacts"] for p in parts] + [np.zeros((0, 3), np.uint64)])
        component = _components(len(ids), np.searchsorted(ids, merges[:, 0]), np.searchsorted(ids, merges[:, 1]))
        n = int(component.max(initial=0)) + 1
        a = component[np.searchsorted(ids, contacts[:, 0])].astype(np.int64)
        b = component[np.searchsorted(ids, contacts[:, 1])].astype(np.int64)
        keep = a != b
        keys = (np.minimum(a, b) * n + np.maximum(a, b))[keep] * QUEUE_BINS + contacts[keep, 2].astype(np.int64)
        keys, counts = np.unique(keys, return_counts=True)  # (segment pair, bin) -> contacts
        uniq, stats, value, merge = edge_scores(None, None, "median", QUEUE_BINS, parts=(keys, counts, n))
        roots = merge_regions(uniq, stats, value, merge, 1.0 - self.threshold, n)  # merge while median > 1 - t
        _, labels = np.unique(roots[component], return_inverse=True)  # neurons numbered by their first fragment
        labels = labels.ravel().astype(np.uint64) + 1
        tables = self.work / "tables"
        tables.mkdir(exist_ok=True)
        cuts = np.searchsorted(ids, np.array(sorted(self.index.values()) + [len(self.index)], np.uint64)
                               << np.uint64(BLOCK_ID_SHIFT))  # block i owns ids [i << 32, (i + 1) << 32)
        for i in range(len(self.index)):  # one small table per block: a relabelling worker loads only its own
            np.save(tables / f"{i}.npy", np.stack([ids[cuts[i]: cuts[i + 1]], labels[cuts[i]: cuts[i + 1]]]))
        np.save(self.work / "segments.npy", np.array([int(labels.max(initial=0))]))

    def relabel_block(self, block: Any) -> None:
        import zarr

        begin = tuple(int(b) for b in block.write_roi.begin)
        ids, labels = np.load(self.work / "tables" / f"{self.index[begin]}.npy")  # (2, fragments of this block)
        region = _slices(block.write_roi.begin, block.write_roi.end)
        seg = labels[np.searchsorted(ids, self._array("fragments")[region])]
        zarr.open_array(store=self.out, mode="r+")[region] = seg.astype(np.uint32)


def _inner_contacts(ids: np.ndarray, local: np.ndarray, affs: np.ndarray) -> np.ndarray:
    """Touching fragment pairs inside a block -> (E, 3) uint64 (u < v, bin of their largest affinity). `local`:
    the block's fragments as indices into `ids` (z, y, x)."""
    u, v, a = [], [], []
    for axis in range(3):
        hi, lo = [slice(None)] * 3, [slice(None)] * 3
        hi[axis], lo[axis] = slice(1, None), slice(None, -1)
        above, below = local[tuple(hi)], local[tuple(lo)]
        differ = above != below  # boundary voxels only (in z, per-slice fragments differ almost everywhere)
        u.append(above[differ])
        v.append(below[differ])
        a.append(affs[axis][tuple(hi)][differ])
    return _largest_bin_per_pair(ids, np.concatenate(u), np.concatenate(v), np.concatenate(a))


def _largest_bin_per_pair(ids: np.ndarray, a: np.ndarray, b: np.ndarray, aff: np.ndarray) -> np.ndarray:
    """Voxel pairs (fragment ids[a], fragment ids[b], affinity) with a, b indices into the sorted `ids` -> (E, 3)
    uint64: each fragment pair once (smaller id first) with the queue bin of its largest affinity. A pair and its bin
    are packed into one int64 key and sorted once (np.unique over (E, 2) rows sorts void records: it was most of a
    block's agglomeration time)."""
    n = len(ids)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    keep = a != b
    bins = np.clip((aff[keep] * QUEUE_BINS).astype(np.int64), 0, QUEUE_BINS - 1)
    keys = np.sort((np.minimum(a, b)[keep] * n + np.maximum(a, b)[keep]) * QUEUE_BINS + bins)  # n^2 * 256 < 2^63
    pair = keys // QUEUE_BINS
    last = np.flatnonzero(np.r_[pair[1:] != pair[:-1], True]) if len(keys) else np.zeros(0, np.int64)
    pair, largest = pair[last], keys[last] % QUEUE_BINS  # sorted: the last entry of a pair holds its largest bin
    return np.stack([ids[pair // n], ids[pair % n], largest.astype(np.uint64)], 1).astype(np.uint64)


def _components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Union-find over n nodes and edges (u, v) -> component index of every node."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(u)), (np.asarray(u, np.int64), np.asarray(v, np.int64))), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def load_predictor(ckpt: str, device: str = "cpu") -> Callable:
    """In a worker: the fine-tuned SegMamba of `ckpt` as predict((N, 1, *roi) in [0, 1]) -> (N, 3, *roi)."""
    import torch

    from vistok.em.inference import load_segmenter

    model, _ = load_segmenter(ckpt, device)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(x.to(device))).float().cpu()

    return predict


TASKS = {"fragments": "predict_block", "agglomerate": "agglomerate_block", "relabel": "relabel_block"}


def _launch(command: str, job_path: str, task: str) -> None:
    """A daisy worker slot that starts `command` (a worker on any machine) and waits for it. `{context}` in the
    command becomes this slot's DAISY_CONTEXT (scheduler host, port, task, worker id), shell-quoted; `{job}` the
    pickled job and `{task}` the task name."""
    import os
    import shlex
    import subprocess

    line = command.format(context=shlex.quote(os.environ["DAISY_CONTEXT"]), job=shlex.quote(job_path),
                          task=shlex.quote(task))
    subprocess.run(line, shell=True, check=True)


def run_worker(job_path: str | Path, task: str) -> int:
    """`vistok em-worker`: join a running blockwise segmentation over daisy's TCP protocol (DAISY_CONTEXT from the
    environment) and process blocks of `task` until the scheduler has none left -> number of blocks processed."""
    import functools
    import json

    daisy = optional_import("daisy")
    if task not in TASKS:
        raise VistokError(f"em-worker --task {task!r} must be one of {', '.join(TASKS)}")
    try:
        spec = json.loads(Path(job_path).read_text())
        ckpt, device = spec.pop("ckpt"), spec.pop("device")
        job = BlockwiseSegmentation(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()},
                                    predictor=functools.partial(load_predictor, ckpt, device))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise VistokError(f"em-worker --job {job_path}: not a job file written by em-segment --workers "
                          f"({err})") from None
    process, client, done = getattr(job, TASKS[task]), daisy.Client(), 0
    while True:
        with client.acquire_block() as block:
            if block is None:
                return done
            process(block)
            done += 1


def segment_blockwise(job: BlockwiseSegmentation, workers: int, worker_command: str | None = None) -> int:
    """Run the three tasks on daisy with `workers` worker processes (resuming finished blocks) -> neuron count.

    `worker_command`: each worker slot runs this shell command instead (e.g. `ssh node{...} vistok em-worker ...`,
    see `_launch`), so workers on other machines with the same files join over TCP."""
    import functools
    import json

    optional_import("waterz")
    optional_import("mahotas")
    daisy = optional_import("daisy")
    import zarr

    job.create_stores()
    from daisy.logging import set_log_basedir

    set_log_basedir(str(job.work / "logs"))  # worker logs beside the run's scratch, not in the current folder
    zarr.open_array(store=job.out, mode="a", shape=job.shape, dtype=np.uint32, chunks=job.block)
    total = daisy.Roi((0,) * len(job.shape), job.shape)
    block = daisy.Roi((0,) * len(job.shape), job.block)
    job_path = job.work / "job.json"
    if worker_command:  # what a worker elsewhere needs to rebuild the job: plain JSON, never a pickle
        p = job.predictor
        if not (isinstance(p, functools.partial) and p.func is load_predictor):
            raise VistokError("--worker-command needs a job whose network comes from a checkpoint (load_predictor)")
        spec = {"raw": job.raw, "out": job.out, "work": str(job.work), "roi": job.roi, "overlap": job.overlap,
                "batch_size": job.batch_size, "threshold": job.threshold, "block": job.block,
                "value_range": job.value_range, "shape": job.shape, "ckpt": p.args[0],
                "device": p.args[1] if len(p.args) > 1 else "cpu"}
        job_path.write_text(json.dumps(spec, indent=1))

    def run(name: str) -> None:
        fn = (functools.partial(_launch, worker_command, str(job_path), name) if worker_command else
              getattr(job, TASKS[name]))
        task = daisy.Task(name, total_roi=total, read_roi=block, write_roi=block, process_function=fn,
                          read_write_conflict=False, fit="shrink", max_workers=max(1, workers), max_retries=0,
                          tracking_path=str(job.work / "done" / name))
        try:
            ok = daisy.run_blockwise([task], multiprocessing=workers > 0, progress=False, summary=False)
        except Exception as err:  # in one process daisy re-raises a block's error; the finished blocks stay done
            raise VistokError(f"blockwise segmentation: a block of '{name}' failed ({type(err).__name__}: {err}); "
                              "run the same command again to redo only the unfinished blocks") from err
        if not ok:
            raise VistokError(f"blockwise segmentation: some blocks of '{name}' failed (see the worker logs under "
                              f"{job.work}); run the same command again to redo only those")

    run("fragments")
    run("agglomerate")
    job.join()
    run("relabel")
    return int(np.load(job.work / "segments.npy")[0])
