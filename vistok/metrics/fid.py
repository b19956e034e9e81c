"""FID (and KID) on stock torch-fidelity, with vistok's inputs, extractors and reference statistics.

Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017 (FID);
Binkowski et al., "Demystifying MMD GANs", ICLR 2018 (KID); Obukhov et al., torch-fidelity.

Extractors:
- `inception-v3-compat`: torch-fidelity's standard TF-Inception port. Its weights come from torch-fidelity's download
  cache (`$TORCH_HOME/hub/checkpoints/`) where a user has internet, or from `inception_weights=PATH`.
- `cifar10-net`: vistok's small CIFAR-10 classifier (`vistok.metrics.fid_net`, trained by `train/train_fid_net.py`,
  shipped in `assets/cifar10-net`), registered with torch-fidelity. Its FID values are not comparable to Inception
  FIDs; use it for CPU runs, CI and relative comparisons.

Inputs (fake or real): an image folder (recursive), an `.npz` of uint8 images (`arr_0` as in ADM's evaluator, or
`images`; NHWC or NCHW), a dataset name (`cifar10-train`, ...), or, as the real side, a statistics `.npz` (`mu`,
`sigma`, written by `vistok fid-stats`). Upstream torch-fidelity has no `fid_statistics_file`; statistics are handed to
it through its own cache (`<cache_root>/<name>-<extractor>-stat-fid-<layer>.pt`), in a private temporary folder.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vistok.data.images import NAMED, ImageFolderDataset, build_image_dataset, load_rgb
from vistok.data.sources import load_npz_images
from vistok.errors import VistokError
from vistok.progress import is_terminal

EXTRACTORS = ("cifar10-net", "inception-v3-compat")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
FID_LAYER = {"cifar10-net": "pool", "inception-v3-compat": "2048"}


# ----------------------------------------------------------------------------------------------------------- inputs
class Uint8Images(Dataset):
    """What torch-fidelity reads: (3, H, W) uint8 tensors, from an array or one of vistok's datasets."""

    def __init__(self, source: np.ndarray | Dataset, num: int | None = None) -> None:
        self.source = source
        n = len(source)
        self.n = n if not num else min(num, n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if isinstance(self.source, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(self.source[i]))
        return self.source.uint8(i)


def is_stats_file(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path) as z:
        return "mu" in z.files and "sigma" in z.files


def as_images(source: str | Path, num: int | None = None, resolution: int | None = None,
              data_root: str | None = None) -> Uint8Images:
    """Images from a folder, an `.npz` or a dataset name, as a torch-fidelity input (first `num` of them)."""
    path = Path(str(source)).expanduser()
    if str(source) in NAMED:
        return Uint8Images(build_image_dataset(str(source), data_root, resolution or 32), num)
    if path.is_dir():
        if resolution is None:
            first = next((p for p in sorted(path.rglob("*")) if p.is_file() and _readable(p)), None)
            if first is None:
                raise VistokError(f"no readable images found under {path}; check the folder")
            resolution = min(_size(first))
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
        load_rgb(path, 8)
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

        def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **_: Any):
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
        from vistok.assets import resolve_ckpt

        path = resolve_ckpt(weights or "cifar10-net") / "model.safetensors"
    else:
        path = Path(inception_weights_path(weights))
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def inception_weights_path(explicit: str | None) -> str:
    """The Inception weights to use: an explicit path, else torch-fidelity's download cache; a clear error if neither."""
    if explicit:
        if not Path(explicit).is_file():
            raise VistokError(f"--inception-weights {explicit} does not exist; pass the path of {INCEPTION_FILE}")
        return explicit
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return str(cached)
    raise VistokError(
        f"Inception weights not found: pass --inception-weights PATH, or place {INCEPTION_FILE} in {cached.parent} "
        "(torch-fidelity downloads it there where there is internet); or use --extractor cifar10-net"
    )


def extractor_kwargs(extractor: str, weights: str | None) -> dict[str, Any]:
    if extractor not in EXTRACTORS:
        raise VistokError(f"unknown extractor {extractor!r}; use one of {', '.join(EXTRACTORS)}")
    if extractor == "cifar10-net":
        _register_cifar10_net()
        return {"feature_extractor": "cifar10-net", "feature_extractor_weights_path": weights}
    return {"feature_extractor": extractor, "feature_extractor_weights_path": inception_weights_path(weights)}


def _fidelity(**kwargs: Any) -> dict[str, float]:
    import torch_fidelity

    base = {"cuda": torch.cuda.is_available(), "verbose": False, "save_cpu_ram": True, "batch_size": 64}
    try:
        return torch_fidelity.calculate_metrics(**{**base, **kwargs})
    except (ValueError, RuntimeError) as err:
        raise VistokError(f"torch-fidelity failed: {str(err).splitlines()[0]}") from None


# ------------------------------------------------------------------------------------------------------- statistics
def compute_statistics(images: Uint8Images, extractor: str = "cifar10-net", weights: str | None = None,
                       batch_size: int = 64, progress: bool = False) -> dict[str, np.ndarray]:
    """FID statistics {mu (float32), sigma (float64)} of a set of images, through torch-fidelity's own code
    (`progress`: its progress bar on stderr, when that is a terminal)."""
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    kw = extractor_kwargs(extractor, weights)
    cuda = torch.cuda.is_available()
    fe = create_feature_extractor(kw.pop("feature_extractor"), [FID_LAYER[extractor]], cuda=cuda, verbose=False, **kw)
    feats = get_featuresdict_from_dataset(images, fe, batch_size, cuda, True, progress and is_terminal())
    return fid_featuresdict_to_statistics(feats, FID_LAYER[extractor])


def save_statistics(stats: dict[str, np.ndarray], path: str | Path, **meta: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=stats["mu"].astype(np.float32), sigma=stats["sigma"].astype(np.float64),
             **{k: np.array(v) for k, v in meta.items()})


def load_statistics(path: str | Path) -> dict[str, Any]:
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out["mu"], out["sigma"] = out["mu"].astype(np.float32), out["sigma"].astype(np.float64)
    return out


def shipped_statistics(name: str, extractor: str) -> Path | None:
    """assets/fid_stats/<dataset>-<extractor>.npz, if shipped."""
    from vistok.assets import assets_dir

    path = assets_dir() / "fid_stats" / f"{name}-{extractor}.npz"
    return path if path.is_file() else None


# --------------------------------------------------------------------------------------------------------------- FID
def calculate(fake: str | Path, real: str | Path, extractor: str = "cifar10-net", kid: bool = False,
              num: int | None = None, weights: str | None = None, batch_size: int = 64,
              data_root: str | None = None, resolution: int | None = None, progress: bool = False) -> dict[str, Any]:
    """FID (and KID) of `fake` against `real`; see the module docstring for what each may be. `progress`:
    torch-fidelity's progress bars on stderr, when that is a terminal."""
    kw = extractor_kwargs(extractor, weights)
    kw["verbose"] = progress and is_terminal()
    fake_images = as_images(fake, num, resolution, data_root)
    stats_path = Path(str(real)) if is_stats_file(real) else None
    if stats_path is None and str(real) in NAMED and not kid and weights is None:
        stats_path = shipped_statistics(str(real), extractor)
    out: dict[str, Any] = {"extractor": extractor, "fake": str(fake), "real": str(real), "num_fake": len(fake_images)}
    if stats_path is not None:
        if kid:
            raise VistokError("KID needs real images, not statistics; pass an image folder, .npz or dataset as --real")
        stats = load_statistics(stats_path)
        if "extractor" in stats and str(stats["extractor"]) != extractor:
            raise VistokError(f"{stats_path} holds {stats['extractor']} statistics, not {extractor}; use matching --extractor")
        if "fingerprint" in stats and str(stats["fingerprint"]) != extractor_fingerprint(extractor, weights):
            raise VistokError(
                f"{stats_path} was computed with other {extractor} weights; recompute it with `vistok fid-stats`"
            )
        out["real_stats"] = str(stats_path)
        name = "vistok-ref-" + hashlib.sha1(stats["mu"].tobytes() + stats["sigma"].tobytes()).hexdigest()[:16]
        with tempfile.TemporaryDirectory() as cache_root:
            torch.save({"mu": stats["mu"], "sigma": stats["sigma"]},
                       Path(cache_root) / f"{name}-{extractor}-stat-fid-{FID_LAYER[extractor]}.pt")
            # input2 is never read: its statistics are found in the cache under input2_cache_name
            res = _fidelity(input1=fake_images, input2=fake_images, input2_cache_name=name, cache_root=cache_root,
                            fid=True, batch_size=batch_size, **kw)
    else:
        real_images = as_images(real, None, resolution or _resolution_of(fake_images), data_root)
        out["num_real"] = len(real_images)
        extra = {"kid": True, "kid_subset_size": min(1000, len(fake_images), len(real_images))} if kid else {}
        res = _fidelity(input1=fake_images, input2=real_images, cache=False, fid=True, batch_size=batch_size, **extra, **kw)
    out["fid"] = res["frechet_inception_distance"]
    if kid:
        out["kid"], out["kid_std"] = res["kernel_inception_distance_mean"], res["kernel_inception_distance_std"]
    return out


def _resolution_of(images: Uint8Images) -> int:
    return int(images[0].shape[-1])


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
