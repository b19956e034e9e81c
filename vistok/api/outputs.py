"""What `vistok sample` and `vistok decode` write: one PNG per image, grid.png and samples.npz (uint8 NHWC under
`arr_0`, as ADM's evaluator and torch-fidelity read it, plus `labels`), or a grid alone for an `--out` ending in .png.

`SampleWriter` writes batch by batch, so no process holds all images: each batch's PNGs go straight to the folder and
its arrays to a shard file; at the end one process merges the shards, in image order, into samples.npz (and
tokens.npz when the generator made token ids), streaming one shard at a time into the zip. Under torchrun every rank
writes the shards of its own images and rank 0 merges them: the files equal those of one process.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from vistok.data.tokens import write_token_file
from vistok.errors import VistokError
from vistok.io.atomic import atomic_write
from vistok.viz import GRID_MAX, class_grid

SHARDS = ".shards"


SAMPLE_FILES = re.compile(rf"\d{{6,}}\.png|grid\.png|samples\.npz|tokens\.npz|{re.escape(SHARDS)}")


def check_out(out: str | Path) -> Path:
    """An --out that is a .png (grid alone) or a folder (not an existing file), and writable: checked before any work.

    A folder may be new, empty or an earlier sample output: one that holds other files is refused, since the PNGs
    (`000000.png`, ...) and `grid.png` would be written over whatever of the user's has those names."""
    from vistok.data.outputs import check_output_folder

    path = check_output_folder(out)
    if path.suffix.lower() != ".png" and path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not SAMPLE_FILES.fullmatch(p.name))
        if foreign:
            raise VistokError(f"--out {path} holds files a sample run did not write ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); pass a new or empty folder (an earlier "
                              "`vistok sample` output is fine)")
    return path


def write_npz_streaming(path: Path, arrays: dict[str, tuple[tuple[int, ...], np.dtype, Iterable[np.ndarray]]]) -> Path:
    """An .npz (what np.load reads) whose arrays are written chunk by chunk: name -> (shape, dtype, row chunks)."""
    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, (shape, dtype, chunks) in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                              "shape": tuple(shape)}
                    np.lib.format.write_array_header_2_0(member, header)
                    for chunk in chunks:
                        member.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
    return atomic_write(path, write)


def save_samples(out: str | Path, images: np.ndarray, labels: np.ndarray, source: str | None = None) -> list[Path]:
    """Images in memory (uint8 (N, H, W, 3)) -> the files of `SampleWriter`; returns the files written."""
    writer = SampleWriter(out)
    writer.add(0, {"images": images})
    return writer.finish(labels, source)


class SampleWriter:
    """Writes generated batches as they come (see the module docstring). `add(start, arrays)` on every rank for its
    batches (start: the global index of the batch's first image), then `finish(labels)` on one rank after all have
    added theirs."""

    def __init__(self, out: str | Path, fresh: bool = True) -> None:
        """fresh: drop shards a killed earlier run left behind (under torchrun only rank 0 does, before a barrier)."""
        self.out = check_out(out)
        self.grid_only = self.out.suffix.lower() == ".png"
        folder = self.out.parent if self.grid_only else self.out
        self.shards = folder / (f".{self.out.name}{SHARDS}" if self.grid_only else SHARDS)
        if fresh and self.shards.exists():
            shutil.rmtree(self.shards)
        self.shards.mkdir(parents=True, exist_ok=True)

    def add(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """One batch: PNGs named by global index (a folder --out), and its arrays as a shard for the merge."""
        images = arrays["images"]
        if not self.grid_only:
            for i, image in enumerate(images):
                Image.fromarray(image).save(self.out / f"{start + i:06d}.png")
        atomic_write(self.shards / f"{start:012d}.npz", lambda f: np.savez(f, **arrays))

    def _parts(self) -> list[Path]:
        return sorted(self.shards.glob("*.npz"), key=lambda p: int(p.stem))

    def _chunks(self, name: str) -> Iterator[np.ndarray]:
        for path in self._parts():
            with np.load(path) as z:
                yield z[name]

    def finish(self, labels: np.ndarray, source: str | None = None) -> list[Path]:
        """Merge the shards into samples.npz (+ tokens.npz) and draw grid.png; returns the files written. `source`
        (the model's pinned name, e.g. hf://org/repo@COMMIT) is recorded in samples.npz as `source`."""
        parts, labels = self._parts(), np.asarray(labels, np.int64)
        rows = 0
        for path in parts:  # every image of the run once, in order (one shard in memory at a time)
            with np.load(path) as z:
                rows = rows + len(z["images"]) if int(path.stem) == rows else -1
        if rows != len(labels):
            raise VistokError(f"the shards in {self.shards} do not hold images 0..{len(labels) - 1} "
                              "in order; run again")
        with np.load(parts[0]) as z:
            first = {name: z[name] for name in z.files}
        shown, count = [], 0
        for chunk in self._chunks("images"):
            shown.append(chunk[:GRID_MAX - count])
            count += len(shown[-1])
            if count >= GRID_MAX:
                break
        grid = class_grid(np.concatenate(shown), labels[:count])
        if self.grid_only:
            atomic_write(self.out, lambda f: Image.fromarray(grid).save(f, format="PNG"))
            shutil.rmtree(self.shards)
            return [self.out]
        atomic_write(self.out / "grid.png", lambda f: Image.fromarray(grid).save(f, format="PNG"))
        n, written = len(labels), [self.out / "grid.png"]
        written.append(write_npz_streaming(self.out / "samples.npz", {
            "arr_0": ((n, *first["images"].shape[1:]), np.uint8, self._chunks("images")),
            "labels": ((n,), np.int64, [labels]),
            **({"source": ((), f"<U{max(len(source), 1)}", [np.array(source)])} if source else {}),
        }))
        if "ids" in first:  # `vistok encode`'s token format, which `vistok decode` reads (ids are small: N x k int32)
            written.append(write_token_file(self.out / "tokens.npz", np.concatenate(list(self._chunks("ids"))),
                                            labels=labels))
        shutil.rmtree(self.shards)
        return written


__all__ = ["SampleWriter", "check_out", "save_samples", "write_npz_streaming"]
