"""The typed objects `vistok.load` returns: Generator, PairedGenerator, Tokenizer, Segmenter, FeatureNet.

Each holds its networks and its settings (defaults from the export; every keyword overrides them), takes numpy or
torch arrays and returns numpy arrays: images are uint8 (N, H, W, 3). The CLI calls these same methods, so the same
seed gives the same bits from Python and from the shell.

One batched, per-image-seeded loop (`run_batches`) serves every generator family and FlexTok decoding: image i draws
its noise from generators seeded by (seed, i) (`vistok.seeding`), so results do not depend on the batch size or on how
images are split over processes (`first_index`), and batches are padded to at least MIN_ROWS rows (BLAS switches
kernels for very few rows, e.g. gemv for one, which rounds differently). Bitwise equality across batch sizes holds on
the CPU in fp32; GPU libraries may pick other kernels per batch size (expect rare off-by-one pixels there).

Papers: xAR (Ren et al., arXiv 2502.20388), FlexTok (Bachmann et al., arXiv 2502.13967), TokenUnify (Chen et al.,
arXiv 2405.16847), FID (Heusel et al., NeurIPS 2017).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vistok.api.sharing import Shareable
from vistok.checks import MAX_IMAGES, array_arg, choice_arg, float_arg, int_arg
from vistok.data.images import to_float, to_uint8
from vistok.engine.precision import warn_slow_precision
from vistok.errors import ArgumentTypeError, ArgumentValueError, VistokError, require
from vistok.generators.ar import AR
from vistok.generators.flextok_codes import (
    SAMPLING as FLEXTOK_SAMPLING,
    FlexTokCodes,
    TokenGenerator,
    check_k,
    sample_ids,
    valid_ks,
)
from vistok.generators.sampling import ARSampleConfig, SampleConfig, sample_xar
from vistok.generators.xar import XAR
from vistok.progress import progress as progress_bar
from vistok.seeding import image_generators
from vistok.tokenizers import flextok_sampling
from vistok.tokenizers.flextok import FlexTok
from vistok.tokenizers.flextok_sampling import DecodeConfig
from vistok.viz import class_grid

MIN_ROWS = 8
Arrays = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------------ arrays in
def as_images(images: np.ndarray | torch.Tensor, what: str = "images") -> np.ndarray:
    """uint8 (N, H, W, 3) from numpy or torch uint8 images, NHWC or NCHW, at least one (zero images would give an
    empty result that looks like success)."""
    arr = array_arg(images, what, nonempty=False, finite=False)
    if arr.ndim == 4 and arr.shape[-1] != 3 and arr.shape[1] == 3:
        arr = arr.transpose(0, 2, 3, 1)
    if not (arr.ndim == 4 and arr.shape[-1] == 3 and arr.dtype == np.uint8):
        raise (ArgumentValueError if arr.dtype == np.uint8 else ArgumentTypeError)(
            f"{what} must be uint8 (N, H, W, 3) or (N, 3, H, W), got {arr.dtype} {arr.shape}")
    if len(arr) == 0 or arr.size == 0:
        raise ArgumentValueError(f"{what} hold no pixels (shape {arr.shape}); pass at least one image")
    return np.ascontiguousarray(arr)


def as_ints(values: Any, what: str, nonempty: bool = False) -> np.ndarray:
    """int64 numpy array from numpy, torch, an int or a list of integers."""
    arr = array_arg(values, what, nonempty=nonempty, finite=False)
    if arr.dtype.kind not in "iu" and arr.size:
        raise ArgumentTypeError(f"{what} must be integers, got {arr.dtype}")
    return arr.astype(np.int64)


def common_args(seed: Any, batch_size: Any, precision: Any = "fp32") -> tuple[int, int, str]:
    """The keywords every generating method takes, checked: (seed >= 0, batch_size >= 1, precision)."""
    return (int_arg(seed, "seed", 0), int_arg(batch_size, "batch_size", 1),
            choice_arg(precision, "precision", ("fp32", "bf16")))


def nchw(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy -> uint8 (B, 3, H, W) tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)


def nhwc(images: torch.Tensor) -> np.ndarray:
    """uint8 (B, 3, H, W) tensor -> uint8 (B, H, W, 3) numpy."""
    return images.permute(0, 2, 3, 1).cpu().numpy()


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x (B, ...) with its last row repeated up to `rows` rows (throw-away images that keep the batch wide)."""
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])]) if rows > len(x) else x


# ------------------------------------------------------------------------------------------------- the one loop
CPU = torch.device("cpu")  # run_batches' default device (a module constant: defaults are evaluated once)


def run_batches(
    step: Callable[[int, int, int], Arrays], count: int, batch_size: int = 64, precision: str = "fp32",
    device: torch.device = CPU, desc: str = "", progress: bool | None = False,
) -> Iterator[tuple[int, Arrays]]:
    """Yield (start, arrays of images start..start+n-1) for `count` images in batches. `step(start, n, rows)` makes
    `rows` >= n rows (padded to MIN_ROWS) from local index `start` on, under bf16 autocast when asked; the loop keeps
    the first n rows and shows progress."""
    _, batch_size, precision = common_args(0, batch_size, precision)
    warn_slow_precision(precision, device)
    with progress_bar(total=count, desc=desc, enabled=progress) as bar, torch.no_grad():
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            with torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16"):
                arrays = step(start, n, max(n, MIN_ROWS))
            yield start, {name: a[:n] for name, a in arrays.items()}
            bar.update(n)


def collect(batches: Iterator[tuple[int, Arrays]], empty: Arrays) -> Arrays:
    """Concatenate the arrays of all batches (`empty` when there are none)."""
    parts: dict[str, list[np.ndarray]] = {}
    for _, arrays in batches:
        for name, a in arrays.items():
            parts.setdefault(name, []).append(a)
    return {name: np.concatenate(parts[name]) if name in parts else a for name, a in empty.items()}


# --------------------------------------------------------------------------------------------------- generators
class Generator(Shareable):
    """A class-conditional image generator: xAR on its tokenizer's grid (pixels or VAE latents).

    `sample(labels=[3, 5], seed=0)` -> uint8 (2, H, W, 3); steps, cfg (1 = no guidance), cfg_schedule and method
    default to the export's."""

    what = ("an xAR on its tokenizer's grid (prefix lengths and top-k/top-p sampling are for generators "
            "on FlexTok tokens)")
    keywords: tuple[str, ...] = ("steps", "cfg", "cfg_schedule", "method")

    def __init__(self, model: XAR | TokenGenerator, tokenizer: nn.Module,
                 sampling: SampleConfig | ARSampleConfig | None = None,
                 classes: Sequence[str] | None = None, source: str = "generator") -> None:
        self.model, self.tokenizer, self.source = model.eval(), tokenizer, str(source)
        self.defaults = sampling if sampling is not None else SampleConfig()
        self.classes = list(classes) if classes else [str(i) for i in range(model.config.num_classes)]
        require(len(self.classes) == model.config.num_classes,  # else labels would silently cover only some classes
                f"{source} names {len(self.classes)} classes but its model has {model.config.num_classes}; "
                "fix 'classes' in its config.json or re-export it")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {len(self.classes)} classes, {self.defaults})"

    def reject(self, given: dict[str, str]) -> None:
        """A one-line error naming the settings (keyword -> how the caller spelled it) this generator does not take."""
        wrong = [label for key, label in given.items() if key not in self.keywords]
        if wrong:
            raise VistokError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply: {self.source} is "
                              f"{self.what}")

    def settings(self, **overrides: Any) -> SampleConfig | ARSampleConfig:
        """The export's sampling settings with the given (non-None) keywords applied."""
        given = {k: v for k, v in overrides.items() if v is not None}
        self.reject({k: k for k in given})
        fields = {f.name for f in dataclasses.fields(self.defaults)}
        return dataclasses.replace(self.defaults, **{k: v for k, v in given.items() if k in fields})

    def labels(self, labels: Sequence[int | str] | np.ndarray | torch.Tensor | None = None,
               num: int | None = None) -> np.ndarray:
        """(num,) int64 class indices: `labels` (indices or class names) cycled to `num` (default: as many as given),
        or round-robin over all classes (num default: one per class)."""
        num = None if num is None else int_arg(num, "num", 1, MAX_IMAGES)
        if isinstance(labels, (str, bytes)) or (labels is not None and not hasattr(labels, "__len__")):
            raise ArgumentTypeError(f"labels must be a list of class indices or names, got {type(labels).__name__} "
                                    f"{labels!r}; e.g. labels=[3] or labels=[{self.classes[0]!r}]")
        if labels is None:
            return np.arange(num if num is not None else len(self.classes)) % len(self.classes)
        if len(labels) == 0:  # e.g. a rank's empty share of a short run
            return np.zeros(0, np.int64)
        chosen = []
        for item in (labels.tolist() if isinstance(labels, (np.ndarray, torch.Tensor)) else labels):
            text = str(item).strip()
            if text in self.classes and not text.lstrip("-").isdigit():
                chosen.append(self.classes.index(text))
            elif text.lstrip("-").isdigit() and 0 <= int(text) < len(self.classes):
                chosen.append(int(text))
            else:
                raise VistokError(f"label {item!r} is not a class index 0..{len(self.classes) - 1} nor a class name "
                                  f"({', '.join(self.classes)})")
        return np.asarray(chosen, np.int64)[np.arange(num if num is not None else len(chosen)) % len(chosen)]

    def batches(
        self, labels: Sequence[int | str] | np.ndarray | torch.Tensor | None = None, *, num: int | None = None,
        seed: int = 0, first_index: int = 0, batch_size: int = 64, precision: str = "fp32",
        progress: bool | None = False, **overrides: Any,
    ) -> Iterator[tuple[int, Arrays]]:
        """Generate batch by batch: yields (start, {"images": uint8 (B, H, W, 3)[, "ids": int32 (B, k)]}); keywords as
        in `sample`. Image i of this call is seeded as image first_index + i of a whole run, so processes that split
        a run between them reproduce it."""
        given = {k: v for k, v in overrides.items() if v is not None}
        self.reject({k: k for k in given})
        seed, batch_size, precision = common_args(seed, batch_size, precision)
        first_index = int_arg(first_index, "first_index", 0)
        classes = torch.from_numpy(self.labels(labels, num)).to(self.device)
        return run_batches(self._step(given, classes, seed, first_index), len(classes), batch_size, precision,
                           self.device, "sample", progress)

    def _step(self, given: dict[str, Any], labels: torch.Tensor,
              seed: int, first: int) -> Callable[[int, int, int], Arrays]:
        s = self.settings(**given)

        def step(start: int, n: int, rows: int) -> Arrays:
            batch = pad_rows(labels[start:start + n], rows)
            gens = image_generators(seed, first + start, rows)
            tokens = sample_xar(self.model, batch, s, generator=gens)  # (B, C, h, w)
            return {"images": nhwc(to_uint8(self.tokenizer.decode(tokens.float())))}  # (B, H, W, 3)
        return step

    def sample(
        self, labels: Sequence[int | str] | np.ndarray | torch.Tensor | None = None, *, num: int | None = None,
        seed: int = 0, steps: int | None = None, cfg: float | None = None, cfg_schedule: str | None = None,
        method: str | None = None, batch_size: int = 64, precision: str = "fp32", progress: bool | None = False,
    ) -> np.ndarray:
        """uint8 (N, H, W, 3) images of `labels` (class indices or names; None: round-robin, `num` images)."""
        _nonempty_labels(labels)
        batches = self.batches(labels, num=num, seed=seed, batch_size=batch_size, precision=precision,
                               progress=progress, steps=steps, cfg=cfg, cfg_schedule=cfg_schedule, method=method)
        return collect(batches, {"images": np.zeros((0, 1, 1, 3), np.uint8)})["images"]


def _nonempty_labels(labels: Any) -> None:
    """`sample` of no labels would return an empty (0, 1, 1, 3) array that looks like success (`batches` allows it: a
    rank's empty share of a short run)."""
    if labels is not None and hasattr(labels, "__len__") and len(labels) == 0:
        raise ArgumentValueError("labels is empty; pass at least one class index or name (or labels=None, num=N)")


class PairedGenerator(Generator):
    """A class-conditional generator on FlexTok tokens (the GPT over ids, or xAR over FSQ codes) with its FlexTok.

    `sample(labels=[0, 1], tokens=8, seed=0)` -> uint8 images decoded from the first `tokens` generated tokens
    (default all K); `decode_steps` sets FlexTok's decoder steps. `batches(...)` also yields the token ids ("ids")."""

    def __init__(self, model: TokenGenerator, codes: FlexTokCodes,
                 sampling: SampleConfig | ARSampleConfig | None = None,
                 classes: Sequence[str] | None = None, source: str = "generator") -> None:
        gpt = isinstance(model, AR)
        default = ARSampleConfig() if gpt else FLEXTOK_SAMPLING
        super().__init__(model, codes, sampling if sampling is not None else default, classes, source)
        self.codes, self.kind = codes, "GPT" if gpt else "xAR"
        if gpt:
            self.what = "a GPT (one token per step, no flow steps; FlexTok's decoder steps are decode_steps)"
            self.keywords = ("cfg", "temperature", "top_k", "top_p", "tokens", "decode_steps")
        else:
            self.what = "an xAR on FlexTok codes (flow matching, not token sampling)"
            self.keywords = ("steps", "cfg", "cfg_schedule", "method", "tokens", "decode_steps")

    def valid_ks(self) -> list[int]:
        """The prefix lengths this generator stops at (GPT: 1..K; xAR: its group ends 1, 2, 4, ..., K)."""
        return valid_ks(self.model)

    def decoding(self, decode_steps: int | None = None) -> DecodeConfig:
        """FlexTok's decoding settings (the export's), with another number of decoder steps if given."""
        if decode_steps is None:
            return self.codes.decoding
        return dataclasses.replace(self.codes.decoding, steps=decode_steps)

    def _step(self, given: dict[str, Any], labels: torch.Tensor,
              seed: int, first: int) -> Callable[[int, int, int], Arrays]:
        tokens = given.pop("tokens", None)
        tokens = None if tokens is None else int_arg(tokens, "tokens")  # check_k names the lengths it stops at
        k, decoding = check_k(self.model, tokens), self.decoding(given.pop("decode_steps", None))
        s = self.settings(**given)

        def step(start: int, n: int, rows: int) -> Arrays:
            batch = pad_rows(labels[start:start + n], rows)
            ids = sample_ids(self.model, self.codes, batch, k, s, image_generators(seed, first + start, rows))  # (B, k)
            pixels = self.codes.decode(ids, image_generators(seed, first + start, rows, stream=1), decoding)
            return {"images": nhwc(pixels), "ids": ids.cpu().numpy().astype(np.int32)}
        return step

    def sample(  # type: ignore[override]
        self, labels: Sequence[int | str] | np.ndarray | torch.Tensor | None = None, *, tokens: int | None = None,
        num: int | None = None, seed: int = 0, steps: int | None = None, cfg: float | None = None,
        cfg_schedule: str | None = None, method: str | None = None, temperature: float | None = None,
        top_k: int | None = None, top_p: float | None = None, decode_steps: int | None = None, batch_size: int = 64,
        precision: str = "fp32", progress: bool | None = False,
    ) -> np.ndarray:
        """uint8 (N, H, W, 3) images decoded from the first `tokens` generated tokens (default all K)."""
        batches = self.batches(labels, num=num, seed=seed, batch_size=batch_size, precision=precision,
                               progress=progress,
                               tokens=tokens, steps=steps, cfg=cfg, cfg_schedule=cfg_schedule, method=method,
                               temperature=temperature, top_k=top_k, top_p=top_p, decode_steps=decode_steps)
        _nonempty_labels(labels)
        return collect(batches, {"images": np.zeros((0, 1, 1, 3), np.uint8)})["images"]

    def ladder(self, labels: Sequence[int | str], seed: int = 0) -> np.ndarray:
        """(H', W', 3) uint8 grid: one row per k on FlexTok's ladder 1, 2, 4, ..., K that the generator stops at, one
        column per label, the same seeds in every row (so a column shows one image gaining tokens)."""
        ks = [k for k in flextok_sampling.k_ladder(self.codes.registers) if k in self.valid_ks()]
        rows = [self.sample(labels, tokens=k, seed=seed) for k in ks]
        return class_grid(np.concatenate(rows), np.repeat(np.arange(len(ks)), len(labels)))


# ------------------------------------------------------------------------------------------------------- tokenizer
class Tokenizer(Shareable):
    """A FlexTok tokenizer: images <-> K ordered token ids, any prefix of which decodes.

    `encode(images)` -> int64 (N, K); `decode(ids, k=4, seed=0)` and `reconstruct(images, k, seed=0)` -> uint8
    (N, H, W, 3); steps, cfg (1 = no guidance) and guidance ("cfg" or "apg") default to the export's. The latent space
    is public: `encode_latents(latents)` -> ids and `decode_latents(ids, k, noise=...)` -> float32 (N, C, H, W) work
    without the VAE, and `decode(..., noise=...)` starts from given noise."""

    keywords = ("steps", "cfg", "guidance")

    def __init__(self, model: FlexTok, tokenizer: nn.Module,
                 decoding: DecodeConfig = DecodeConfig(),  # noqa: B008 (a frozen dataclass)
                 resolution: int | None = None, source: str = "tokenizer") -> None:
        self.model, self.tokenizer, self.defaults, self.source = model.eval(), tokenizer.eval(), decoding, str(source)
        self.resolution = resolution or model.config.grid[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def registers(self) -> int:
        return self.model.config.registers

    @property
    def vocab_size(self) -> int:
        return self.model.fsq.codebook_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r}, {self.registers} tokens of {self.vocab_size}, {self.defaults})"

    def settings(self, **overrides: Any) -> DecodeConfig:
        """The export's decoding settings with the given (non-None) keywords applied."""
        return dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})

    def encode(self, images: np.ndarray | torch.Tensor, *, seed: int = 0, batch_size: int = 64,
               progress: bool | None = False) -> np.ndarray:
        """uint8 images (N, H, W, 3) -> int64 (N, K) token ids. `seed`: a VAE tokenizer's posterior sample."""
        pixels = as_images(images)
        seed, batch_size, _ = common_args(seed, batch_size)
        require(pixels.shape[1:3] == (self.resolution, self.resolution),
                f"images are {pixels.shape[1]}x{pixels.shape[2]} but {self.source} takes "
                f"{self.resolution}x{self.resolution}")

        def step(start: int, n: int, rows: int) -> Arrays:
            x = to_float(nchw(pixels[start:start + n], self.device))  # (B, 3, H, W) in [-1, 1]
            return {"ids": flextok_sampling.encode(self.model, x, self.tokenizer).cpu().numpy()}

        with torch.random.fork_rng(devices=[]):  # the global generator is the VAE's; leave the caller's untouched
            torch.manual_seed(seed)
            batches = run_batches(step, len(pixels), batch_size, "fp32", self.device, "encode", progress)
            return collect(batches, {"ids": np.zeros((0, self.registers), np.int64)})["ids"]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the latents the model tokenizes (VAE latents, or pixels for pixel presets)."""
        c = self.model.config
        return c.in_channels, c.grid[0], c.grid[1]

    def _latents_in(self, latents: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
        """float32 (N, C, H, W) CPU tensor from numpy or torch, checked against `latent_shape`."""
        x = latents.detach().cpu() if isinstance(latents, torch.Tensor) else torch.from_numpy(np.asarray(latents))
        if not (x.is_floating_point() and x.ndim == 4 and tuple(x.shape[1:]) == self.latent_shape and len(x)):
            raise ArgumentValueError(f"{what} must be float (N, {', '.join(map(str, self.latent_shape))}) arrays with "
                                     f"N >= 1, got {x.dtype} {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ArgumentValueError(f"{what} hold NaN or infinity; pass finite values")
        return x.float()

    def encode_latents(self, latents: np.ndarray | torch.Tensor, *, batch_size: int = 64,
                       progress: bool | None = False) -> np.ndarray:
        """float (N, C, H, W) latents (what the VAE's `encode` gives, scaled) -> int64 (N, K) token ids, without the
        VAE: deterministic, and comparable with other implementations fed the same latents."""
        x = self._latents_in(latents, "latents")

        def step(start: int, n: int, rows: int) -> Arrays:
            batch = pad_rows(x[start:start + n], rows).to(self.device)
            return {"ids": flextok_sampling.encode(self.model, batch).cpu().numpy()}

        batches = run_batches(step, len(x), batch_size, "fp32", self.device, "encode", progress)
        return collect(batches, {"ids": np.zeros((0, self.registers), np.int64)})["ids"]

    def _decoder(self, ids: np.ndarray | torch.Tensor, k: Any, seed: int, noise: np.ndarray | torch.Tensor | None,
                 d: DecodeConfig, progress: bool | None = False) -> tuple[int, Callable[[int, int, int], torch.Tensor]]:
        """(N, latents(start, n, rows) -> (rows, C, H, W) float32): token ids to latents, from the given starting
        noise (N, C, H, W) or from image i's own generator seeded by (seed, i); `progress`: a bar over each batch's
        Euler steps too."""
        # no ids: no images, not a (0, 1, 1, 3) array
        tokens = torch.from_numpy(as_ints(ids, "token ids", nonempty=True))
        if tokens.ndim != 2:
            raise ArgumentValueError(f"token ids must be (N, K), got shape {tuple(tokens.shape)}")
        seed = int_arg(seed, "seed", 0)
        given_k = None if k is None else as_ints(k, "k", nonempty=True)
        if given_k is not None and not ((given_k >= 1) & (given_k <= tokens.shape[1])).all():
            raise ArgumentValueError(f"k must lie in 1..{tokens.shape[1]} (the ids given per image), got "
                                     f"{given_k.tolist()}")
        keep = flextok_sampling.prefix_lengths(None if given_k is None else torch.from_numpy(given_k), len(tokens),
                                               tokens.shape[1])  # (N,)
        start_noise = None if noise is None else self._latents_in(noise, "noise")
        require(start_noise is None or len(start_noise) == len(tokens),
                f"got noise for {0 if start_noise is None else len(start_noise)} images and ids for {len(tokens)}; "
                "pass one each")

        def latents(start: int, n: int, rows: int) -> torch.Tensor:
            batch, kb = pad_rows(tokens[start:start + n], rows), pad_rows(keep[start:start + n], rows)
            if start_noise is not None:
                noise_rows = pad_rows(start_noise[start:start + n], rows).to(self.device)
                return flextok_sampling.decode(self.model, batch, d, keep_k=kb, progress=progress,
                                               noise=noise_rows).float()
            return flextok_sampling.decode(self.model, batch, d, keep_k=kb, progress=progress,
                                           generator=image_generators(seed, start, rows)).float()  # (B, C, h, w)

        return len(tokens), latents

    def decode(
        self, ids: np.ndarray | torch.Tensor, k: int | Sequence[int] | np.ndarray | None = None, *, seed: int = 0,
        steps: int | None = None, cfg: float | None = None, guidance: str | None = None, batch_size: int = 64,
        precision: str = "fp32", progress: bool | None = False, noise: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray:
        """(N, n) token ids, the first k of each used (an int, one per image, or None: all n) -> uint8 (N, H, W, 3).
        Image i draws its noise from its own generator seeded by (seed, i), or starts from `noise` (N, C, H, W) (as
        diffusers' `latents=`): the same as `decode_latents` then the VAE's decode. `progress`: bars over the images
        and over each batch's Euler steps, on stderr when it is a terminal (False: none)."""
        count, latents = self._decoder(ids, k, seed, noise, self.settings(steps=steps, cfg=cfg, guidance=guidance),
                                       progress)

        def step(start: int, n: int, rows: int) -> Arrays:
            return {"images": nhwc(to_uint8(self.tokenizer.decode(latents(start, n, rows))))}

        batches = run_batches(step, count, batch_size, precision, self.device, "decode", progress)
        return collect(batches, {"images": np.zeros((0, 1, 1, 3), np.uint8)})["images"]

    def decode_latents(
        self, ids: np.ndarray | torch.Tensor, k: int | Sequence[int] | np.ndarray | None = None, *, seed: int = 0,
        steps: int | None = None, cfg: float | None = None, guidance: str | None = None,
        noise: np.ndarray | torch.Tensor | None = None, batch_size: int = 64, precision: str = "fp32",
        progress: bool | None = False,
    ) -> np.ndarray:
        """`decode` without the VAE: float32 (N, C, H, W) latents, from `noise` (N, C, H, W) when given, so a
        decoding can be compared step for step with another implementation started from the same noise."""
        count, latents = self._decoder(ids, k, seed, noise, self.settings(steps=steps, cfg=cfg, guidance=guidance))

        def step(start: int, n: int, rows: int) -> Arrays:
            return {"latents": latents(start, n, rows).cpu().numpy()}

        batches = run_batches(step, count, batch_size, precision, self.device, "decode", progress)
        return collect(batches, {"latents": np.zeros((0, *self.latent_shape), np.float32)})["latents"]

    def reconstruct(
        self, images: np.ndarray | torch.Tensor, k: int | Sequence[int] | None = None, *, seed: int = 0,
        steps: int | None = None, cfg: float | None = None, guidance: str | None = None, batch_size: int = 64,
        precision: str = "fp32", progress: bool | None = False,
    ) -> np.ndarray | dict[int, np.ndarray]:
        """Encode once, decode from the first k tokens: uint8 (N, H, W, 3) for one k (None: all K), {k: images} for a
        list of k. Image i decodes with the same noise at every k."""
        single = k is None or not hasattr(k, "__len__")
        ks = [k] if single else list(k)
        if not ks:
            raise ArgumentValueError(f"k is empty; pass a prefix length in 1..{self.registers}, "
                                     "a list of them, or None")
        ks = [kk if kk is None else int_arg(kk, "k", 1, self.registers) for kk in ks]
        ids = self.encode(images, seed=seed, batch_size=batch_size, progress=progress)
        out = {kk: self.decode(ids, kk, seed=seed, steps=steps, cfg=cfg, guidance=guidance, batch_size=batch_size,
                               precision=precision, progress=progress) for kk in ks}
        return out[ks[0]] if single else out


# ------------------------------------------------------------------------------------------------ EM, features
class Segmenter(Shareable):
    """Neuron segmentation of an EM volume with a fine-tuned SegMamba (TokenUnify, Chen et al., arXiv 2405.16847).

    `segment(volume)` -> uint32 (Z, Y, X) neuron ids; roi, overlap, batch_size, threshold and fragment_threshold
    default to the export's (`vistok.em.inference.InferenceConfig`)."""

    def __init__(self, model: nn.Module, inference: Any, source: str = "segmenter") -> None:
        self.model, self.defaults, self.source = model.eval(), inference, str(source)

    def __repr__(self) -> str:
        return f"Segmenter({self.source!r}, {self.defaults})"

    def settings(self, **overrides: Any) -> Any:
        """The export's inference settings with the given (non-None) keywords applied."""
        return dataclasses.replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})

    def affinities_and_segment(self, volume: np.ndarray | torch.Tensor,
                               **overrides: Any) -> tuple[np.ndarray, np.ndarray]:
        """(affinities float32 (3, Z, Y, X), uint32 (Z, Y, X) neuron ids from 1)."""
        from vistok.em.inference import segment_volume

        raw = array_arg(volume, "volume (Z, Y, X)", ndim=3)  # empty or NaN volumes: one line, not "41 segments"
        affs, seg = segment_volume(self.model, raw, self.settings(**overrides))
        return affs, seg.astype(np.uint32 if seg.max(initial=0) < 2**32 else np.uint64)

    def segment(self, volume: np.ndarray | torch.Tensor, *, roi: Sequence[int] | None = None,
                overlap: float | None = None, batch_size: int | None = None, threshold: float | None = None,
                fragment_threshold: float | None = None) -> np.ndarray:
        """Raw volume (Z, Y, X), any dtype -> uint32 (Z, Y, X) neuron ids."""
        if roi is not None:
            if not hasattr(roi, "__len__") or isinstance(roi, str) or len(roi) != 3:
                raise ArgumentTypeError(f"roi must be three window sizes (D, H, W), got {roi!r}")
            roi = tuple(int_arg(r, "roi entries", 1) for r in roi)
        overlap = None if overlap is None else float_arg(overlap, "overlap", 0.0, 1.0)
        batch_size = None if batch_size is None else int_arg(batch_size, "batch_size", 1)
        threshold = None if threshold is None else float_arg(threshold, "threshold", 0.0, 1.0)
        fragment_threshold = None if fragment_threshold is None else float_arg(fragment_threshold, "fragment_threshold",
                                                                               0.0, 1.0)
        return self.affinities_and_segment(volume, roi=roi, overlap=overlap,
                                           batch_size=batch_size, threshold=threshold,
                                           fragment_threshold=fragment_threshold)[1]

    def affinities(self, volume: np.ndarray | torch.Tensor, *, roi: Sequence[int] | None = None,
                   overlap: float | None = None, batch_size: int | None = None) -> np.ndarray:
        """Raw volume (Z, Y, X), any dtype -> float32 (3, Z, Y, X) affinities in [0, 1] (z, y, x: each voxel with its
        predecessor on that axis), e.g. to post-process them elsewhere or with several thresholds."""
        from vistok.em.inference import predict_affinities

        raw = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        require(raw.ndim == 3, f"an EM volume is (Z, Y, X), got shape {raw.shape}")
        cfg = self.settings(roi=None if roi is None else tuple(roi), overlap=overlap, batch_size=batch_size)
        require(bool(cfg.roi), "no inference window: pass roi=(D, H, W)")
        return predict_affinities(self.model, raw, cfg.roi, cfg.overlap, cfg.batch_size)

    def segment_affinities(self, affs: np.ndarray | torch.Tensor, *, threshold: float | None = None,
                           fragment_threshold: float | None = None) -> np.ndarray:
        """Affinities (3, Z, Y, X) in [0, 1] -> uint32 (Z, Y, X) neuron ids, by the export's post-processing (the
        official mahotas watershed + waterz unless it says otherwise)."""
        from vistok.em.inference import segment_affinities

        affs = affs.detach().cpu().numpy() if isinstance(affs, torch.Tensor) else np.asarray(affs)
        require(affs.ndim == 4 and affs.shape[0] == 3, f"affinities are (3, Z, Y, X), got shape {affs.shape}")
        seg = segment_affinities(affs.astype(np.float32, copy=False),
                                 self.settings(threshold=threshold, fragment_threshold=fragment_threshold))
        return seg.astype(np.uint32 if seg.max(initial=0) < 2**32 else np.uint64)


class FeatureNet(Shareable):
    """The cifar10-net feature network behind vistok's CPU FID: `features(images)` (N, D) float32 and
    `classify(images)` (N,) int64, from uint8 (N, H, W, 3) images."""

    def __init__(self, model: nn.Module, classes: Sequence[str] | None = None, source: str = "feature network") -> None:
        self.model, self.source = model.eval(), str(source)
        self.classes = list(classes) if classes else [str(i) for i in range(model.config.num_classes)]
        require(len(self.classes) == model.config.num_classes,
                f"{source} names {len(self.classes)} classes but its model has {model.config.num_classes}; "
                "fix 'classes' in its config.json or re-export it")

    def __repr__(self) -> str:
        return f"FeatureNet({self.source!r}, {len(self.classes)} classes)"

    def _run(self, images: np.ndarray | torch.Tensor, head: bool, batch_size: int) -> np.ndarray:
        pixels, device, out = as_images(images), next(self.model.parameters()).device, []
        batch_size = int_arg(batch_size, "batch_size", 1)
        with torch.no_grad():
            for start in range(0, len(pixels), batch_size):
                feats = self.model.features(to_float(nchw(pixels[start:start + batch_size], device)))
                out.append((self.model.head(feats) if head else feats).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """(N, D) float32 pooled features (the FID features of the cifar10-net extractor)."""
        return self._run(images, False, batch_size)

    def classify(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """(N,) int64 predicted classes."""
        return self._run(images, True, batch_size).argmax(axis=1).astype(np.int64)


__all__ = ["FeatureNet", "Generator", "MIN_ROWS", "PairedGenerator", "Segmenter", "Tokenizer", "as_images", "collect",
           "run_batches"]
