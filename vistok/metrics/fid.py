"""FID, KID, Inception Score and precision/recall on stock torch-fidelity, with vistok's inputs, extractors and
reference statistics.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017 (FID);
Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (KID); Salimans et al., "Improved Techniques for Training GANs",
NeurIPS 2016 (Inception Score); Kynkaanniemi et al., "Improved Precision and Recall Metric for Assessing Generative
Models", NeurIPS 2019; Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021 (the ADM
reference batches); Obukhov et al., torch-fidelity.

Extractors:
- `inception-v3-compat`: torch-fidelity's standard TF-Inception port. Its weights come from torch-fidelity's download
  cache (`$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth`; downloaded there, digest-checked,
  when VISTOK_DOWNLOAD=1) or from `inception_weights=PATH`. torch-fidelity unpickles that file with
  `weights_only=False`, so vistok checks it first: the published file (known SHA-256) is handed over as it is; any
  other file is read with `weights_only=True` (a file that would run code is refused with one line), must be a plain
  state dict, and torch-fidelity gets a copy re-saved from those tensors (with a warning: its scores are not the
  standard ones).
- `cifar10-net`: vistok's small CIFAR-10 classifier (`vistok.metrics.fid_net`, trained by `train/train_fid_net.py`,
  shipped in `assets/cifar10-net`, read from safetensors), registered with torch-fidelity. Its FID values are not
  comparable to Inception FIDs; use it for CPU runs, CI and relative comparisons.

Inputs (fake or real): an image folder (recursive), an `.npz` of uint8 images (`arr_0` as in ADM's evaluator and
`vistok sample`'s `samples.npz`, or `images`; NHWC or NCHW), a dataset name (`cifar10-train`, ...), or, as the real
side, a statistics `.npz` (`mu`, `sigma`: written by `vistok fid-stats`, or an ADM reference batch such as
`VIRTUAL_imagenet256_labeled.npz`, which holds both `mu`/`sigma` (2048-d Inception pool features) and `arr_0` images).
FID uses the statistics when present; KID and precision/recall need images (`arr_0`). Features are extracted once per
side by torch-fidelity and every metric is computed by torch-fidelity's own functions (Inception Score: the standard 10
splits, fewer below 1,000 images so that each split holds at least 100; precision/recall: k = 3 nearest neighbours),
or, with `adm=True` (`vistok fid --adm`), by ADM's evaluator definitions (`vistok.metrics.adm`: IS over contiguous
5,000-image splits, sFID, its half-precision precision/recall).

One way to read a set of images, whichever side it is on: a folder is read at its own size (its first image's, or
`--resolution`), the same in `fid --real DIR` as in `fid-stats --input DIR` (each extractor then resizes to its own
input size), so a folder and its statistics give the same FID. A `vistok sample` output folder (PNGs, grid.png and
samples.npz) is read from samples.npz: the samples, never the grid.

Sizes: every metric needs at least 2 images per side (refused otherwise); FID and KID on fewer images than feature
dimensions (2048 for Inception) have a rank-deficient covariance / a high-variance kernel estimate and are reported
with a warning (50,000 generated images is the standard for ImageNet FID).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.data.arrays import npz_keys, read_npz
from vistok.data.images import NAMED, ImageFolderDataset, build_image_dataset, load_rgb
from vistok.data.sources import load_npz_images, npz_images
from vistok.errors import VistokError
from vistok.io.atomic import atomic_write
from vistok.io.safeload import load_pickle, sha256_file
from vistok.metrics import adm as adm_metrics
from vistok.progress import is_terminal

EXTRACTORS = ("cifar10-net", "inception-v3-compat")
FID_LAYER = {"cifar10-net": "pool", "inception-v3-compat": "2048"}
ISC_LAYER = {"cifar10-net": "logits", "inception-v3-compat": "logits_unbiased"}
INCEPTION_DIM = 2048
# torch-fidelity's Inception weights (feature_extractor_inceptionv3.URL_INCEPTION_V3): the file name carries the first
# 8 hex digits of its SHA-256, as torch.hub names files; the whole digest and size are those of the published file
# (the same bytes as pytorch-fid's pt_inception-2015-12-05-6726825d.pth).
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_BYTES = 95_628_359
MIN_RESOLUTION = 8
SAMPLES_FILE = "samples.npz"  # what `vistok sample` writes next to its PNGs and grid.png (vistok.api.outputs)

# ----------------------------------------------------------------------------------------------------------- inputs
class Uint8Images(Dataset):
    """What torch-fidelity reads: (3, H, W) uint8 tensors, from an array or one of vistok's datasets."""

    def __init__(self, source: np.ndarray | Dataset, num: int | None = None) -> None:
        check_num(num)
        self.source = source
        n = len(source)
        self.n = n if not num else min(num, n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if isinstance(self.source, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self.source[i]))
        return self.source.uint8(i)


def check_num(num: int | None) -> None:
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 1):
        raise VistokError(f"--num must be a positive number of images, got {num!r}")


def check_resolution(resolution: int | None) -> None:
    if resolution is not None and (not isinstance(resolution, int) or resolution < MIN_RESOLUTION):
        raise VistokError(f"--resolution must be at least {MIN_RESOLUTION} pixels, got {resolution!r}")


def is_stats_file(path: str | Path) -> bool:
    """Whether `path` is an .npz with FID statistics (`mu` and `sigma`); a damaged .npz is a one-line error."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    keys = npz_keys(path, what="FID reference")
    return "mu" in keys and "sigma" in keys


def as_images(source: str | Path, num: int | None = None, resolution: int | None = None,
              data_root: str | None = None) -> Uint8Images:
    """Images from a folder, an `.npz` or a dataset name, as a torch-fidelity input (first `num` of them)."""
    check_num(num)
    check_resolution(resolution)
    path = Path(str(source)).expanduser()
    if str(source) in NAMED:
        return Uint8Images(build_image_dataset(str(source), data_root, resolution or 32), num)
    if path.is_dir() and (path / SAMPLES_FILE).is_file():  # `vistok sample` output: its samples, not grid.png
        return Uint8Images(load_npz_images(path / SAMPLES_FILE), num)
    if path.is_dir():
        if resolution is None:
            first = next((p for p in sorted(path.rglob("*")) if p.is_file() and _readable(p)), None)
            if first is None:
                raise VistokError(f"no readable images found under {path}; check the folder")
            resolution = max(MIN_RESOLUTION, min(_size(first)))
        ds = ImageFolderDataset(path, resolution, verify=True)
        if ds.num_skipped:
            warnings.warn(f"{ds.num_skipped} unreadable file(s) under {path} were skipped", stacklevel=2)
        return Uint8Images(ds, num)
    if path.suffix == ".npz" and path.is_file():
        return Uint8Images(load_npz_images(path), num)
    raise VistokError(
        f"{source} is not an image folder, an .npz of images or a dataset name ({', '.join(NAMED)}); check the path"
    )


def _readable(path: Path) -> bool:
    try:
        load_rgb(path, MIN_RESOLUTION)
        return True
    except Exception:
        return False


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        return img.size


# ------------------------------------------------------------------------------------------------------- extractors
def _register_cifar10_net() -> None:
    from torch_fidelity import register_feature_extractor
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if "cifar10-net" in FEATURE_EXTRACTORS_REGISTRY:
        return

    class Cifar10NetExtractor(FeatureExtractorBase):
        """torch-fidelity wrapper of FidNet: uint8 (B, 3, H, W) -> (pooled features, logits)."""

        def __init__(self, name: str, features_list: list[str],
                     feature_extractor_weights_path: str | None = None, **_: Any):
            super().__init__(name, features_list)
            from vistok.metrics.fid_net import load_fid_net

            self.net = load_fid_net(feature_extractor_weights_path or "cifar10-net")

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("pool", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return "logits" if metric == "isc" else "pool"

        @staticmethod
        def can_be_compiled() -> bool:
            return True

        @staticmethod
        def get_dummy_input_for_compile() -> torch.Tensor:
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = self.net.features(x.float() / 127.5 - 1.0)
            out = {"pool": feats, "logits": self.net.head(feats) * self.net.config.logit_scale}
            return tuple(out[k].float() for k in self.features_list)

    register_feature_extractor("cifar10-net", Cifar10NetExtractor)


def extractor_fingerprint(extractor: str, weights: str | None) -> str:
    """A short hash of the extractor's weights, stored with statistics so stale statistics are caught."""
    if extractor == "cifar10-net":
        from vistok.io.sources import resolve_ckpt

        path = resolve_ckpt(weights or "cifar10-net") / "model.safetensors"
    else:
        path = Path(inception_weights_path(weights))
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def feature_dim(extractor: str, weights: str | None = None) -> int:
    """Dimension of the FID features of an extractor (read from the export's config for cifar10-net; no weights)."""
    if extractor == "inception-v3-compat":
        return INCEPTION_DIM
    from vistok.io.sources import resolve_ckpt

    cfg = resolve_ckpt(weights or "cifar10-net") / "config.json"
    try:
        return int(json.loads(cfg.read_text())["config"]["widths"][-1])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        raise VistokError(f"{cfg} is not a cifar10-net export (no config.widths); pass a folder written by "
                          "train/train_fid_net.py") from None


def inception_weights_path(explicit: str | None) -> str:
    """The Inception weights to use: an explicit path, else torch-fidelity's download cache (downloaded there with its
    digest checked when VISTOK_DOWNLOAD=1); a clear error if neither. The file is checked by `safe_inception_weights`
    before torch-fidelity reads it."""
    if explicit:
        if not Path(explicit).is_file():
            raise VistokError(f"--inception-weights {explicit} does not exist; pass the path of {INCEPTION_FILE}")
        return explicit
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not cached.is_file() and _downloads_allowed():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(INCEPTION_URL, str(cached), hash_prefix=INCEPTION_SHA256, progress=False)
        except (OSError, RuntimeError) as err:
            raise VistokError(f"downloading {INCEPTION_URL} failed ({str(err).splitlines()[0][:120]}); "
                              "pass --inception-weights PATH") from None
    if cached.is_file():
        return str(cached)
    raise VistokError(
        f"Inception weights not found: pass --inception-weights PATH, or place {INCEPTION_FILE} in {cached.parent} "
        "(or set VISTOK_DOWNLOAD=1 where there is internet); or use --extractor cifar10-net"
    )


def _downloads_allowed() -> bool:
    import os

    return os.environ.get("VISTOK_DOWNLOAD", "0") == "1"


_VERIFIED: dict[tuple[str, int, int], bool] = {}


def is_standard_inception(path: str | Path) -> bool:
    """Whether `path` holds exactly torch-fidelity's published Inception weights (size, then SHA-256; memoised)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = stat.st_size == INCEPTION_BYTES and sha256_file(path) == INCEPTION_SHA256
    return _VERIFIED[key]


@contextlib.contextmanager
def safe_inception_weights(path: str | Path) -> Iterator[str]:
    """A path torch-fidelity may unpickle (`weights_only=False`) without running code from the user's file.

    The published file goes through unchanged. Any other file is loaded with `weights_only=True` (code is refused
    with one line), must be a state dict of tensors, and is re-saved from those tensors into a private temporary
    folder for the duration of the block."""
    path = Path(path)
    if is_standard_inception(path):
        yield str(path)
        return
    state = load_pickle(path, what="Inception weights")
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v)
                                                            for k, v in state.items()):
        raise VistokError(f"Inception weights {path} are not a state dict of tensors; pass {INCEPTION_FILE}")
    warnings.warn(f"{path} is not torch-fidelity's published Inception file (SHA-256 differs): its scores are not "
                  "comparable with published FIDs", stacklevel=3)
    with tempfile.TemporaryDirectory(prefix="vistok-inception-") as tmp:
        copy = Path(tmp) / "inception.pth"
        torch.save({k: v.contiguous() for k, v in state.items()}, copy)  # plain tensors only: safe to unpickle
        yield str(copy)


def extractor_kwargs(extractor: str, weights: str | None) -> dict[str, Any]:
    """torch-fidelity's extractor arguments; Inception weights are NOT yet checked here (see `feature_extractor`)."""
    if extractor not in EXTRACTORS:
        raise VistokError(f"unknown extractor {extractor!r}; use one of {', '.join(EXTRACTORS)}")
    if extractor == "cifar10-net":
        _register_cifar10_net()
        return {"feature_extractor": "cifar10-net", "feature_extractor_weights_path": weights}
    return {"feature_extractor": extractor, "feature_extractor_weights_path": inception_weights_path(weights)}


@contextlib.contextmanager
def feature_extractor(extractor: str, weights: str | None, layers: list[str]) -> Iterator[Any]:
    """torch-fidelity's feature extractor for `layers`, its weights file checked first (see the module docstring)."""
    from torch_fidelity.utils import create_feature_extractor

    kw = extractor_kwargs(extractor, weights)
    name, path = kw["feature_extractor"], kw["feature_extractor_weights_path"]
    cuda = torch.cuda.is_available()
    with contextlib.ExitStack() as stack:
        if extractor == "inception-v3-compat":
            path = stack.enter_context(safe_inception_weights(path))
        try:
            fe = create_feature_extractor(name, sorted(set(layers)), cuda=cuda, verbose=False,
                                          feature_extractor_weights_path=path)
        except (ValueError, RuntimeError, KeyError) as err:  # e.g. a state dict of the wrong network
            raise VistokError(f"cannot build the {extractor} extractor from {path}: "
                              f"{str(err).splitlines()[0][:200]}") from None
        yield fe


def features(images: Uint8Images, fe: Any, batch_size: int = 64, progress: bool = False) -> dict[str, torch.Tensor]:
    """{layer: (N, D) float features} of a set of images, through torch-fidelity (`progress`: its progress bar on
    stderr, when that is a terminal)."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    return get_featuresdict_from_dataset(images, fe, batch_size, torch.cuda.is_available(), True,
                                         progress and is_terminal())


# ------------------------------------------------------------------------------------------------------- statistics
def compute_statistics(images: Uint8Images, extractor: str = "cifar10-net", weights: str | None = None,
                       batch_size: int = 64, progress: bool = False) -> dict[str, np.ndarray]:
    """FID statistics {mu (float32), sigma (float64)} of a set of images, through torch-fidelity's own code
    (`progress`: its progress bar on stderr, when that is a terminal)."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics

    notes = check_count(len(images), "images", extractor, weights, warn=False)
    with feature_extractor(extractor, weights, [FID_LAYER[extractor]]) as fe:  # weights checked first
        for note in notes:
            warnings.warn(note, stacklevel=2)
        feats = features(images, fe, batch_size, progress)
    return fid_featuresdict_to_statistics(feats, FID_LAYER[extractor])


def check_count(n: int, what: str, extractor: str, weights: str | None, warn: bool = True) -> list[str]:
    """Refuse fewer than 2 images; warn (and return the warning) when there are fewer than feature dimensions."""
    if n < 2:
        raise VistokError(f"FID needs at least 2 {what}, got {n}; pass more images (or a larger --num)")
    dim = feature_dim(extractor, weights)
    if n >= dim:
        return []
    text = (f"{n} {what} < {dim} {extractor} feature dimensions: FID/KID are unreliable (rank-deficient covariance); "
            f"use at least {dim}")
    if warn:
        warnings.warn(text, stacklevel=3)
    return [text]


def check_output(path: str | Path, suffix: str = ".npz", what: str = "--out") -> Path:
    """Fail before any work when a statistics file cannot be written there (see `vistok.data.outputs`)."""
    from vistok.data.outputs import check_output_file

    return check_output_file(path, suffix, what)


def save_statistics(stats: dict[str, np.ndarray], path: str | Path, **meta: Any) -> None:
    """Write statistics (and `meta`) to an .npz atomically: a crash leaves the old file or the new one."""
    arrays = {"mu": stats["mu"].astype(np.float32), "sigma": stats["sigma"].astype(np.float64),
              **{k: np.array(v) for k, v in meta.items()}}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_statistics(path: str | Path) -> dict[str, Any]:
    """A statistics .npz (vistok's or an ADM reference batch) without its images, checked: finite (D,) `mu` and
    (D, D) `sigma`."""
    path = Path(path)
    out = read_npz(path, ("mu", "sigma", "mu_s", "sigma_s", "extractor", "fingerprint", "source", "num"),
                   what="FID statistics")
    if "mu" not in out or "sigma" not in out:
        raise VistokError(f"{path} holds no FID statistics ('mu' and 'sigma'); write them with `vistok fid-stats`")
    mu, sigma = out["mu"], out["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise VistokError(f"{path}: 'mu' must be a float (D,) vector and 'sigma' a float (D, D) matrix, got "
                          f"{mu.dtype} {mu.shape} and {sigma.dtype} {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise VistokError(f"{path} holds non-finite statistics; recompute them with `vistok fid-stats`")
    out["mu"], out["sigma"] = mu.astype(np.float32), sigma.astype(np.float64)
    return out


def shipped_statistics(name: str, extractor: str) -> Path | None:
    """assets/fid_stats/<dataset>-<extractor>.npz, if shipped."""
    from vistok.io.sources import assets_dir

    path = assets_dir() / "fid_stats" / f"{name}-{extractor}.npz"
    return path if path.is_file() else None


# ---------------------------------------------------------------------------------------------------------- metrics
def calculate(fake: str | Path, real: str | Path, extractor: str = "cifar10-net", kid: bool = False,
              num: int | None = None, weights: str | None = None, batch_size: int = 64,
              data_root: str | None = None, resolution: int | None = None, isc: bool = False,
              prc: bool = False, progress: bool = False, adm: bool = False) -> dict[str, Any]:
    """FID of `fake` against `real` (and KID, Inception Score of `fake`, precision/recall when asked); see the module
    docstring for what each may be. Every check that needs no features runs before any features are extracted.
    `adm`: also IS, sFID, precision and recall, all by ADM's evaluator definitions (`vistok.metrics.adm`; needs real
    images). `progress`: torch-fidelity's progress bars on stderr, when that is a terminal."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric

    check_num(num)
    check_resolution(resolution)
    if batch_size < 1:
        raise VistokError(f"--batch-size must be at least 1, got {batch_size}")
    extractor_kwargs(extractor, weights)  # unknown extractor, missing weights: before reading any images
    fake_images = as_images(fake, num, resolution, data_root)
    out: dict[str, Any] = {"extractor": extractor, "fake": str(fake), "real": str(real), "num_fake": len(fake_images)}
    notes = check_count(len(fake_images), "fake images", extractor, weights, warn=False)

    if adm and len(fake_images) <= adm_metrics.PR_K:
        raise VistokError(f"--adm needs more than {adm_metrics.PR_K} fake images (its precision/recall use "
                          f"{adm_metrics.PR_K} nearest neighbours), got {len(fake_images)}")
    stats, real_images = _reference(real, extractor, weights, kid or prc or adm, data_root, resolution)
    if stats is not None:
        out["real_stats"] = str(real)
        dim = feature_dim(extractor, weights)
        if len(stats["mu"]) != dim:
            raise VistokError(f"{real} holds {len(stats['mu'])}-d statistics but {extractor} features are {dim}-d; "
                              f"use the extractor the statistics were computed with"
                              + (" (ADM reference batches: --extractor inception-v3-compat)"
                                 if len(stats["mu"]) == INCEPTION_DIM else ""))
    if real_images is not None:
        out["num_real"] = len(real_images)
        if adm and len(real_images) <= adm_metrics.PR_K:
            raise VistokError(f"--adm needs more than {adm_metrics.PR_K} real images, got {len(real_images)}")
        notes += check_count(len(real_images), "real images", extractor, weights, warn=False)

    layers = [FID_LAYER[extractor]] + ([ISC_LAYER[extractor]] if isc or adm else [])
    kw = {"verbose": False, "save_cpu_ram": True}
    with feature_extractor(extractor, weights, layers) as fe:  # its weights checked: the last check that can fail
        for note in notes:  # warnings only now, so that an error stays one line
            warnings.warn(note, stacklevel=2)
        with adm_metrics.spatial_features(fe, extractor) if adm else contextlib.nullcontext([]) as spatial:
            feats_fake = features(fake_images, fe, batch_size, progress)
            spatial_fake = torch.cat(spatial) if adm else None
            spatial.clear()
            feats_real = features(real_images, fe, batch_size, progress) if real_images is not None else None
            spatial_real = torch.cat(spatial) if adm else None
    layer = FID_LAYER[extractor]
    stats_fake = fid_featuresdict_to_statistics(feats_fake, layer)
    stats_real = stats if stats is not None else fid_featuresdict_to_statistics(feats_real, layer)
    out["fid"] = fid_statistics_to_metric(stats_fake, {"mu": stats_real["mu"].astype(stats_fake["mu"].dtype),
                                                       "sigma": stats_real["sigma"].astype(np.float64)},
                                          False)["frechet_inception_distance"]
    if kid:
        subset = min(1000, len(fake_images), len(real_images))
        res = kid_featuresdict_to_metric(feats_fake, feats_real, layer, kid_subset_size=subset, **kw)
        out["kid"], out["kid_std"] = res["kernel_inception_distance_mean"], res["kernel_inception_distance_std"]
    if isc:
        splits = min(10, max(1, len(fake_images) // 100))  # the standard 10 splits, each of at least 100 images
        res = isc_featuresdict_to_metric(feats_fake, ISC_LAYER[extractor], isc_splits=splits, **kw)
        out["isc"], out["isc_std"] = res["inception_score_mean"], res["inception_score_std"]
    if prc:
        neighborhood = min(3, len(real_images) - 1, len(fake_images) - 1)
        res = prc_featuresdict_to_metric(feats_fake, feats_real, layer, prc_neighborhood=neighborhood, **kw)
        out["precision"], out["recall"], out["f_score"] = res["precision"], res["recall"], res["f_score"]
    if adm:
        out.update(_adm(feats_fake, feats_real, spatial_fake, spatial_real, stats, extractor))
    if notes:
        out["warnings"] = notes
    return out


def _adm(feats_fake: dict, feats_real: dict, spatial_fake: torch.Tensor, spatial_real: torch.Tensor,
         stats: dict[str, Any] | None, extractor: str) -> dict[str, Any]:
    """IS, sFID, precision and recall by ADM's evaluator definitions (its reference batch's `mu_s`/`sigma_s` when the
    real side holds them, as the evaluator reads them)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    isc, isc_std = adm_metrics.inception_score(feats_fake[ISC_LAYER[extractor]])
    s_fake = adm_metrics.statistics(spatial_fake)
    s_real = {"mu": stats["mu_s"], "sigma": stats["sigma_s"]} if stats is not None and "mu_s" in stats \
        else adm_metrics.statistics(spatial_real)
    if s_real["mu"].shape != s_fake["mu"].shape:
        raise VistokError(f"the reference's spatial statistics are {s_real['mu'].shape[0]}-d but {extractor}'s are "
                          f"{s_fake['mu'].shape[0]}-d; use the extractor the reference was computed with")
    sfid = fid_statistics_to_metric({"mu": s_fake["mu"].astype(np.float64), "sigma": s_fake["sigma"]},
                                    {"mu": np.asarray(s_real["mu"], np.float64),
                                     "sigma": np.asarray(s_real["sigma"], np.float64)},
                                    False)["frechet_inception_distance"]
    precision, recall = adm_metrics.precision_recall(feats_real[FID_LAYER[extractor]], feats_fake[FID_LAYER[extractor]])
    return {"definitions": "adm", "isc": isc, "isc_std": isc_std, "sfid": sfid, "precision": precision,
            "recall": recall}


def _reference(real: str | Path, extractor: str, weights: str | None, need_images: bool, data_root: str | None,
               resolution: int | None) -> tuple[dict[str, Any] | None, Uint8Images | None]:
    """(statistics or None, images or None) of the real side; statistics are used for FID whenever they exist.
    Images are read by `as_images` with the user's `resolution` (None: a folder's own size), exactly as `vistok
    fid-stats` reads them, never resized to the fake side's size: a folder and its statistics give one FID."""
    stats_path = Path(str(real)).expanduser() if is_stats_file(real) else None
    if stats_path is None and str(real) in NAMED and not need_images and weights is None:
        stats_path = shipped_statistics(str(real), extractor)
    if stats_path is None:
        return None, as_images(real, None, resolution, data_root)
    stats = load_statistics(stats_path)
    if "extractor" in stats and str(stats["extractor"]) != extractor:
        raise VistokError(f"{stats_path} holds {stats['extractor']} statistics, not {extractor}; "
                          "use matching --extractor")
    if "fingerprint" in stats and str(stats["fingerprint"]) != extractor_fingerprint(extractor, weights):
        raise VistokError(f"{stats_path} was computed with other {extractor} weights; "
                          "recompute it with `vistok fid-stats`")
    images = None
    if need_images:
        if str(real) in NAMED:
            images = as_images(real, None, resolution, data_root)
        else:
            arrays = read_npz(stats_path, ("arr_0", "images"), what="FID reference")
            if not arrays:
                raise VistokError(f"KID, precision/recall and --adm need real images, and {stats_path} holds only "
                                  "statistics; pass an image folder, "
                                  "an .npz of images or a reference batch with 'arr_0'")
            images = Uint8Images(npz_images(arrays, stats_path))
    return stats, images


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """A randomly initialised (Kaiming) inception-v3-compat state dict, for tests and benchmarks only.

    Its FIDs mean nothing, but it exercises the whole Inception code path offline and runs at the real speed.
    """
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe_inception

    torch.manual_seed(seed)
    cls = fe_inception.FeatureExtractorInceptionV3
    with mock.patch.object(fe_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(cls, "load_state_dict", lambda self, *a, **k: None):
        net = cls("inception-v3-compat", ["2048"], verbose=False)
    for name, p in net.named_parameters():
        if name.endswith("conv.weight"):
            torch.nn.init.kaiming_normal_(p)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path
