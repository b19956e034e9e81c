"""Whole jobs as Python calls: sample into a folder (sharded over torchrun ranks), reconstruct with a report per
number of tokens k, encode images to a token file, decode a token file, FID statistics, latent caches, the preset
table.

Each job checks its arguments and outputs before any work (one-line `VistokError`s), holds its output's writer lock
while it runs and returns a small report whose `summary()` is the line the `vistok` command prints. The command only
parses its flags, makes one of these calls and prints, so the shell and Python share every step and every bit.
A job takes a source (anything `vistok.load` takes) or an object already loaded.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistok.api.models import Generator, PairedGenerator, Tokenizer, as_images, as_ints
from vistok.errors import VistokError

Source = str | Path


def load_as(source: Any, kind: type, device: str | torch.device = "auto", command: str = "this job") -> Any:
    """`source` (a name, folder or hf:// source, or an object already loaded) as a `kind`, else one line naming both."""
    from vistok.api import load, resolve_device

    obj = load(source, resolve_device(device)) if isinstance(source, (str, Path)) else source
    if not isinstance(obj, kind):
        raise VistokError(f"{source} is a {type(obj).__name__}, but {command} needs a {kind.__name__}")
    return obj


def prefix_list(tokens: str | int | Sequence[int] | None, registers: int) -> list[int]:
    """Prefix lengths k from "1,2,4", an int or a list (None or "": the ladder 1, 2, 4, ..., K); each in 1..K."""
    from vistok.tokenizers.flextok_sampling import k_ladder

    if tokens is None or isinstance(tokens, str) and not tokens:
        return k_ladder(registers)
    text = isinstance(tokens, str)
    flag, shown = ("--tokens", repr(tokens)) if text else ("tokens", str(tokens))
    try:
        ks = [int(s) for s in tokens.split(",") if s.strip()] if text else \
            np.atleast_1d(as_ints(tokens, "tokens")).tolist()
    except (ValueError, TypeError):
        raise VistokError(f"{flag} {shown} must be a comma list of integers, e.g. 1,2,4,{registers}") from None
    if not ks or not all(1 <= k <= registers for k in ks):
        raise VistokError(f"{flag} {shown}: every k must lie in 1..{registers} (this model's registers)")
    return ks


def _images(source: Source | np.ndarray | torch.Tensor, resolution: int, num: int | None,
            data_root: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(uint8 (N, R, R, 3) images, labels or None) from a dataset name, folder or .npz, or from images in memory."""
    from vistok.data.sources import load_images

    if isinstance(source, (str, Path)):
        return load_images(source, resolution, num, data_root)
    return as_images(source)[:num], None


# ---------------------------------------------------------------------------------------------------------- sample
@dataclasses.dataclass(frozen=True)
class SampleRun:
    """What `sample_folder` did: `written` (rank 0's files; empty on other ranks) and the settings it used."""
    num: int
    written: list[Path]
    seconds: float
    settings: Any
    seed: int
    device: str
    precision: str
    world_size: int
    is_main: bool
    tokens: str = ""  # FlexTok generators: which k of how many tokens, and the decoder's steps

    def summary(self) -> str:
        used = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(self.settings).items())
        return (f"{self.num} images{self.tokens} in {self.seconds:.1f} s ({used}; seed {self.seed}, {self.device}"
                f"{', bf16' if self.precision == 'bf16' else ''}"
                + (f", {self.world_size} processes" if self.world_size > 1 else "") + ") -> "
                + ", ".join(str(p) for p in self.written) + (f" + {self.num} PNGs" if len(self.written) > 1 else ""))


def sample_folder(
    source: Source | Generator, out: str | Path, labels: Sequence[int | str] | None = None, num: int | None = None, *,
    seed: int = 0, batch_size: int = 64, precision: str = "fp32", device: str = "auto", compile: bool = False,
    progress: bool | None = False, spelled: Mapping[str, str] | None = None, **settings: Any,
) -> SampleRun:
    """Generate `labels` (cycled to `num`; default one per label, else 100 round-robin over the classes) into `out`:
    a folder of PNGs + grid.png + samples.npz (+ tokens.npz), or a grid alone for a .png path.

    Under torchrun every rank calls this: each generates its share of the per-image seeds and writes it as it comes,
    rank 0 merges (`vistok.api.outputs.SampleWriter`), so the files equal one process's. `settings` are the sampling
    keywords of `Generator.sample` (None: the export's); `spelled` names them in errors (the CLI: flag names)."""
    from vistok.api.outputs import SampleWriter, check_out
    from vistok.engine import dist
    from vistok.io.lock import WriterLock

    out = check_out(out)
    started = not torch.distributed.is_initialized()  # a process group the caller made is the caller's to end
    env = dist.setup(source.device.type if isinstance(source, Generator) else device)
    try:
        with WriterLock(out, "--out"):  # torchrun ranks of one job share it
            gen = load_as(source, Generator, device, "`vistok sample`")
            if compile:
                gen.model.compile_stack()
                if isinstance(gen, PairedGenerator):
                    gen.codes.flextok.compile_stack()
            given = {key: value for key, value in settings.items() if value is not None}
            gen.reject({key: (spelled or {}).get(key, key) for key in given})
            labels = gen.labels(labels, num if num or labels else 100)
            lo, hi = len(labels) * env.rank // env.world_size, len(labels) * (env.rank + 1) // env.world_size
            flow = {k: v for k, v in given.items() if k not in ("tokens", "decode_steps")}
            used = gen.settings(**flow)  # a bad cfg: refused before any file
            if env.is_main:
                SampleWriter(out)  # a fresh shard folder, before any rank writes into it
            dist.barrier()
            writer, start = SampleWriter(out, fresh=False), time.perf_counter()
            for first, arrays in gen.batches(labels[lo:hi], seed=seed, first_index=lo, batch_size=batch_size,
                                             precision=precision, progress=progress if env.is_main else False, **given):
                writer.add(lo + first, arrays)
            dist.barrier()
            written = writer.finish(labels, gen.source) if env.is_main else []  # with the pinned source
            tokens = ""
            if isinstance(gen, PairedGenerator):
                tokens = (f" from k={given.get('tokens') or gen.valid_ks()[-1]} of {gen.codes.registers} FlexTok "
                          f"tokens ({gen.kind}; decoder {gen.decoding(given.get('decode_steps')).steps} steps)")
            run = SampleRun(len(labels), written, time.perf_counter() - start, used, seed, env.device.type, precision,
                            env.world_size, env.is_main, tokens)
            dist.barrier()
        return run
    finally:
        if started:
            dist.cleanup(wait=False)  # the barrier above on success; none on an error path (a dead rank never arrives)


# ----------------------------------------------------------------------------------------------------- reconstruct
@dataclasses.dataclass(frozen=True)
class ReconstructReport:
    """`reconstruct_report`'s result: `metrics` is what metrics.json holds ({"metrics": {k: {mse, psnr, ssim[, fid]}},
    settings, "fid_inputs": the FID of the inputs themselves, the floor})."""
    out: Path
    metrics: dict[str, Any]

    def summary(self) -> str:
        m, fid = self.metrics, self.metrics["fid_real"] is not None
        lines = [f"{'k':>4} {'MSE':>9} {'PSNR':>7} {'SSIM':>6}" + (f" {'FID':>8}" if fid else "")]
        lines += [f"{k:>4} {v['mse']:>9.5f} {v['psnr']:>7.2f} {v['ssim']:>6.3f}"
                  + (f" {v['fid']:>8.3f}" if "fid" in v else "") for k, v in m["metrics"].items()]
        lines.append(f"{m['num']} images x {len(m['tokens'])} k in {m['seconds']:.1f} s ({m['steps']} steps, cfg "
                     f"{m['cfg']} ({m['guidance']}), seed {m['seed']}) -> {self.out}/grid.png, "
                     f"{self.out}/metrics.json, k*/ and k*.npz")
        return "\n".join(lines)


def reconstruct_report(
    source: Source | Tokenizer, input: Source | np.ndarray | torch.Tensor, out: str | Path, *,
    tokens: str | Sequence[int] | None = None, num: int | None = None, data_root: str | None = None, seed: int = 0,
    steps: int | None = None, cfg: float | None = None, guidance: str | None = None, batch_size: int = 64,
    precision: str = "fp32", fid: bool = True, fid_real: str = "cifar10-train", extractor_weights: str | None = None,
    grid_rows: int = 8, json_path: str | Path | None = None, compile: bool = False, device: str = "auto",
    progress: bool | None = False,
) -> ReconstructReport:
    """FlexTok reconstructions of `input` from its first k tokens for each k of `tokens` (default 1, 2, 4, ..., K):
    into `out` a folder k{k:03d}/ of PNGs and k{k:03d}.npz per k, grid.png and metrics.json (MSE, PSNR, SSIM and, with
    `fid`, FID against `fid_real` per k); `json_path`: metrics.json's text again there."""
    from PIL import Image

    from vistok.data.outputs import check_output_folder, check_writable
    from vistok.io.atomic import atomic_write, atomic_write_bytes
    from vistok.io.lock import WriterLock
    from vistok.metrics import recon
    from vistok.viz import recon_grid

    out = check_output_folder(out, grid_suffix=None)  # writability of both outputs before any work
    if json_path is not None and Path(json_path).expanduser().is_dir():
        raise VistokError(f"--json {json_path} is a folder; pass a file path for the JSON metrics")
    if json_path is not None:
        check_writable(json_path, "--json")
    with WriterLock(out, "--out"):
        tok = load_as(source, Tokenizer, device, "`vistok reconstruct`")
        if compile:
            tok.model.compile_stack()
        decoding = tok.settings(steps=steps, cfg=cfg, guidance=guidance)
        ks = prefix_list(tokens, tok.registers)
        images, _ = _images(input, tok.resolution, num, data_root)
        if fid:
            recon.check_fid_extractor(extractor_weights)
        start = time.perf_counter()
        recons = tok.reconstruct(images, ks, seed=seed, steps=steps, cfg=cfg, guidance=guidance, batch_size=batch_size,
                                 precision=precision, progress=progress)
        seconds = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        for k, rec in recons.items():
            folder = out / f"k{k:03d}"
            folder.mkdir(exist_ok=True)
            atomic_write(out / f"k{k:03d}.npz", lambda f, rec=rec: np.savez(f, arr_0=rec))
            for i, image in enumerate(rec):
                Image.fromarray(image).save(folder / f"{i:06d}.png")
        Image.fromarray(recon_grid(images, recons, rows=grid_rows)).save(out / "grid.png")
        metrics = recon.score(images, recons, fid, fid_real, extractor_weights, data_root, out)
        result = {"ckpt": str(source if isinstance(source, (str, Path)) else tok.source),
                  "input": str(input) if isinstance(input, (str, Path)) else "images", "num": len(images), "tokens": ks,
                  "steps": decoding.steps, "cfg": decoding.cfg, "guidance": decoding.guidance, "seed": seed,
                  "registers": tok.registers, "fid_real": fid_real if fid else None, "seconds": round(seconds, 2),
                  "metrics": {str(k): v for k, v in metrics.items()}}
        if fid:
            result["fid_inputs"] = recon.fid_of(images, fid_real, extractor_weights, data_root)  # the floor
        text = (json.dumps(result, indent=2) + "\n").encode()
        atomic_write_bytes(out / "metrics.json", text)  # a kill never leaves half a file
        if json_path is not None:
            atomic_write_bytes(Path(json_path).expanduser(), text)
    return ReconstructReport(out, result)


# -------------------------------------------------------------------------------------------------- encode, decode
@dataclasses.dataclass(frozen=True)
class TokenFile:
    """`encode_file`'s result: the .npz written and what it holds."""
    out: Path
    shape: tuple[int, int]
    vocab_size: int
    ks: list[int]
    labels: bool

    def summary(self) -> str:
        return (f"{self.shape[0]} images -> {self.out}: ids {self.shape} int32 (vocabulary {self.vocab_size}), k per "
                f"image in {{{', '.join(map(str, sorted(set(self.ks))))}}}" + (", labels" if self.labels else ""))


def encode_file(
    source: Source | Tokenizer, input: Source | np.ndarray | torch.Tensor, out: str | Path, *,
    tokens: str | int | Sequence[int] | None = None, num: int | None = None, data_root: str | None = None,
    seed: int = 0, batch_size: int = 64, device: str = "auto", progress: bool | None = False,
) -> TokenFile:
    """Images -> FlexTok token ids in an .npz (`vistok.data.tokens`): ids int32 (N, max k), k int32 (N,) and the
    labels a dataset has. Image i keeps its first k_i ids, `tokens` cycled over the images (default: all K)."""
    from vistok.data.outputs import check_output_file
    from vistok.data.tokens import write_token_file

    out = check_output_file(out, ".npz")  # before any work
    tok = load_as(source, Tokenizer, device, "`vistok encode`")
    ks = prefix_list([tok.registers] if tokens is None or isinstance(tokens, str) and not tokens else tokens,
                     tok.registers)
    images, labels = _images(input, tok.resolution, num, data_root)
    ids = tok.encode(images, seed=seed, batch_size=batch_size, progress=progress)  # (N, K)
    k = np.asarray(ks)[np.arange(len(ids)) % len(ks)]  # (N,) cycled over the images
    ids = np.where(np.arange(ids.shape[1]) < k[:, None], ids, 0)[:, :max(ks)]  # only each image's first k[i] kept
    write_token_file(out, ids, k, labels)
    return TokenFile(out, ids.shape, tok.vocab_size, ks, labels is not None)


@dataclasses.dataclass(frozen=True)
class DecodeRun:
    """`decode_folder`'s result: the files written and the decoding settings used."""
    num: int
    written: list[Path]
    seconds: float
    settings: Any
    seed: int

    def summary(self) -> str:
        d = self.settings
        return (f"{self.num} images in {self.seconds:.1f} s ({d.steps} steps, cfg {d.cfg} ({d.guidance}), seed "
                f"{self.seed}) -> " + ", ".join(str(p) for p in self.written))


def decode_folder(
    source: Source | Tokenizer, tokens: str | Path, out: str | Path, *, seed: int = 0, steps: int | None = None,
    cfg: float | None = None, guidance: str | None = None, batch_size: int = 64, precision: str = "fp32",
    device: str = "auto", progress: bool | None = False,
) -> DecodeRun:
    """Token ids (.npz from `encode_file` or `sample_folder`) -> images, each from its own k ids: PNGs, grid.png and
    samples.npz in `out` (or a grid alone for a .png path)."""
    from vistok.api.outputs import check_out, save_samples
    from vistok.data.tokens import read_token_file

    check_out(out)
    arrays = read_token_file(tokens)
    ids = arrays["ids"]
    k = arrays.get("k", np.full(len(ids), ids.shape[1]))
    if k.shape != (len(ids),) or k.dtype.kind not in "iu":
        raise VistokError(f"{tokens}: 'k' must hold one integer prefix length per image ({len(ids)}), got {k.dtype} "
                          f"{k.shape}")
    labels = np.asarray(arrays.get("labels", np.zeros(len(ids), np.int64)))
    if labels.shape != (len(ids),) or labels.dtype.kind not in "iu":  # else written beside the images as they are
        raise VistokError(f"{tokens}: 'labels' must hold one integer class per image ({len(ids)}), got "
                          f"{labels.dtype} {labels.shape}")
    tok = load_as(source, Tokenizer, device, "`vistok decode`")
    decoding = tok.settings(steps=steps, cfg=cfg, guidance=guidance)
    start = time.perf_counter()
    images = tok.decode(ids, k, seed=seed, steps=steps, cfg=cfg, guidance=guidance, batch_size=batch_size,
                        precision=precision, progress=progress)
    written = save_samples(out, images, labels)
    return DecodeRun(len(images), written, time.perf_counter() - start, decoding, seed)


# ------------------------------------------------------------------------------- FID, statistics, caches, presets
@dataclasses.dataclass(frozen=True)
class Scores:
    """A job's result as a dict (`result`, what `--json` prints) and its one-line `summary()`."""
    result: dict[str, Any]
    line: str

    def summary(self) -> str:
        return self.line


def fid(fake: Source, real: Source, *, adm: bool = False, **options: Any) -> Scores:
    """`vistok.metrics.fid.calculate(fake, real, adm=adm, **options)` with its summary line (FID, and sFID, KID, IS,
    precision/recall where asked for)."""
    from vistok.metrics import fid as fid_metric

    res = fid_metric.calculate(fake, real, adm=adm, **options)
    line = f"FID {res['fid']:.4f}" + (f"  sFID {res['sfid']:.4f}" if "sfid" in res else "")
    line += f"  KID {res['kid']:.6f} +- {res['kid_std']:.6f}" if "kid" in res else ""
    line += f"  IS {res['isc']:.4f} +- {res['isc_std']:.4f}" if "isc" in res else ""
    line += f"  precision {res['precision']:.4f}  recall {res['recall']:.4f}" if "precision" in res else ""
    return Scores(res, f"{line}  ({res['num_fake']} images, {res['extractor']}{', ADM definitions' if adm else ''}, "
                       f"real: {res.get('real_stats', res['real'])})")


def fid_stats(input: Source, out: str | Path, *, extractor: str = "cifar10-net", weights: str | None = None,
              num: int | None = None, resolution: int | None = None, data_root: str | None = None,
              batch_size: int = 64, progress: bool | None = False) -> Scores:
    """Write FID reference statistics (mu, sigma, the extractor's fingerprint) of a set of images to `out` (.npz)."""
    from vistok.metrics import fid as fid_metric

    fid_metric.check_output(out)  # before any work
    images = fid_metric.as_images(input, num, resolution, data_root)
    stats = fid_metric.compute_statistics(images, extractor, weights, batch_size, progress=progress)
    fid_metric.save_statistics(stats, out, extractor=extractor, source=str(input), num=len(images),
                               fingerprint=fid_metric.extractor_fingerprint(extractor, weights))
    return Scores({"out": str(out), "num": len(images)},
                  f"wrote {out}: {extractor} statistics of {len(images)} images from {input}")


def cache_latents(vae: str, input: str | Path, out: str | Path, *, resolution: int = 256, flip: bool = False,
                  shard_size: int = 1024, batch_size: int = 32, num_workers: int = 4, dtype: str = "float16",
                  device: str = "auto", progress: bool | None = True) -> Scores:
    """Posterior moments of an image folder through a VAE into the cache folder `out`
    (`vistok.tokenizers.latent_cache.cache_latents`: this rank's shards under torchrun, resumable), under `out`'s
    writer lock (torchrun ranks of one job share it)."""
    from vistok.data.outputs import check_output_folder
    from vistok.io.lock import WriterLock
    from vistok.tokenizers import latent_cache

    with WriterLock(check_output_folder(out, grid_suffix=None), "--out"):
        report = latent_cache.cache_latents(vae, input, out, resolution, flip, shard_size, batch_size, num_workers,
                                            dtype, device, progress=progress)
    rank, world_size, _ = latent_cache.world()
    return Scores({"rank": rank, "world_size": world_size, "images": report.images, "written": len(report.written),
                   "skipped": len(report.skipped)},
                  f"rank {rank}/{world_size}: encoded {report.images} images into {len(report.written)} shards, "
                  f"{len(report.skipped)} already finished -> {out}")


def preset_table() -> Scores:
    """{"presets": [{name, family, params (counted on the meta device), shipped}], "shipped": [names]} and a table."""
    from vistok import registry

    shipped = registry.shipped_models()
    rows = [{"name": p.name, "family": p.family, "params": registry.param_count(p), "shipped": p.name in shipped}
            for p in registry.presets().values()]
    lines = [f"{'preset':<28}{'family':<14}{'params':>14}"] + [f"{r['name']:<28}{r['family']:<14}{r['params']:>14,}"
                                                               for r in rows]
    lines.append(f"\nshipped models in {registry.assets_dir()}: {', '.join(shipped) or 'none'}")
    return Scores({"presets": rows, "shipped": sorted(shipped)}, "\n".join(lines))


__all__ = ["DecodeRun", "ReconstructReport", "SampleRun", "Scores", "TokenFile", "cache_latents", "decode_folder",
           "encode_file", "fid", "fid_stats", "load_as", "prefix_list", "preset_table", "reconstruct_report",
           "sample_folder"]
