"""Shared fixtures: the shared data root, a persistent decode cache, and a small generated image folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# a data root the user set is honoured (the README's "point VISTOK_DATA at yours"); else the repo's sibling shared/data
USER_DATA_ROOT = os.environ.get("VISTOK_DATA") or None
DATA_ROOT = Path(USER_DATA_ROOT).expanduser().resolve() if USER_DATA_ROOT else REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("VISTOK_TEST_CACHE", Path.home() / ".cache" / "vistok-test"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data folder with CIFAR-10 ($VISTOK_DATA when set, else the repo's sibling shared/data), exported as
    VISTOK_DATA for this process and subprocesses."""
    if not ((DATA_ROOT / "cifar10-jpeg.tar.gz").is_file() or (DATA_ROOT / "cifar-10-batches-py").is_dir()):
        where = "VISTOK_DATA" if USER_DATA_ROOT else "the repo's sibling shared/data"
        pytest.fail(f"CIFAR-10 not found: expected {DATA_ROOT}/cifar10-jpeg.tar.gz or cifar-10-batches-py/ ({where})")
    os.environ["VISTOK_DATA"] = str(DATA_ROOT)
    return DATA_ROOT


@pytest.fixture(scope="session", autouse=True)
def vistok_env() -> None:
    """A persistent decode cache, so repeated test runs decode CIFAR-10 once; no downloads leak in; VISTOK_DATA is the
    user's when set, else the shared data folder."""
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ["VISTOK_CACHE"] = str(CACHE)
    os.environ.pop("VISTOK_DOWNLOAD", None)
    if DATA_ROOT.is_dir():
        os.environ["VISTOK_DATA"] = str(DATA_ROOT)


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cats", "dogs"), per_class: int = 16, seed: int = 0) -> Path:
    """`per_class` random 32x32 RGB PNGs in each class sub-folder of `root`, the same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """tmp_path/images/{cats,dogs}/000..015.png: 2 classes x 16 random 32x32 PNGs (fixed seed)."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def shared_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same folder, written once per session (for read-only use by several tests)."""
    return write_image_folder(tmp_path_factory.mktemp("shared") / "images")


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


def load_train_script(stem: str):
    """train/STEM.py imported as a module (its Config dataclass, checks and main), without running main."""
    import importlib.util

    name = f"vistok_test_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "train" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def fid_net_script():
    """train/train_fid_net.py imported as a module (its Config dataclass), without running main."""
    return load_train_script("train_fid_net")


@pytest.fixture(autouse=True)
def one_thread():
    """Every test's models are tiny: they run fastest on one thread, and far faster than on two on a busy two-core
    machine (two OpenMP threads then wait on each other at every op). Subprocesses set OMP_NUM_THREADS themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
