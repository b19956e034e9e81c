"""FID evaluator: self-FID, the real < blurred < noise ordering with the shipped cifar10-net and statistics, input
kinds (folder, npz NHWC/NCHW, dataset, statistics), KID on small sets, the Inception path offline, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vistok.demo import degraded_sets
from vistok.errors import VistokError
from vistok.metrics import fid
from vistok.registry import shipped_models


@pytest.fixture(scope="module")
def test_images(data_root) -> np.ndarray:
    """1,000 CIFAR-10 test images spread over all classes, (N, 3, 32, 32) uint8."""
    ds = fid.as_images("cifar10-test")
    idx = range(0, len(ds), 10)
    return np.stack([ds[i].numpy() for i in idx])


@pytest.fixture(scope="module")
def npz_sets(tmp_path_factory, test_images) -> dict:
    root = tmp_path_factory.mktemp("fidsets")
    out = {}
    for name, arr in degraded_sets(test_images).items():
        out[name] = root / f"{name}.npz"
        np.savez(out[name], images=arr)
    return out


def test_shipped_extractor_and_statistics_exist():
    assert "cifar10-net" in shipped_models()
    for split in ("cifar10-train", "cifar10-test"):
        assert fid.shipped_statistics(split, "cifar10-net") is not None


def test_self_fid_is_zero(npz_sets):
    same = fid.calculate(npz_sets["real"], npz_sets["real"])
    assert same["num_fake"] == same["num_real"] == 1000
    assert abs(same["fid"]) < 1e-3


def test_fid_orders_real_blurred_noise(npz_sets):
    """CIFAR-10 test vs the shipped cifar10-train statistics: far lower than blurred, which is lower than noise."""
    scores = {k: fid.calculate(p, "cifar10-train")["fid"] for k, p in npz_sets.items()}
    assert scores["real"] * 3 < scores["blurred"] < scores["noise"], scores


def test_statistics_file_equals_images(tmp_path, npz_sets):
    stats = fid.compute_statistics(fid.as_images(npz_sets["real"]))
    path = tmp_path / "ref.npz"
    fid.save_statistics(stats, path, extractor="cifar10-net", fingerprint=fid.extractor_fingerprint("cifar10-net", None))
    via_stats = fid.calculate(npz_sets["blurred"], path)["fid"]
    via_images = fid.calculate(npz_sets["blurred"], npz_sets["real"])["fid"]
    assert via_stats == pytest.approx(via_images, rel=1e-6, abs=1e-6)


def test_stale_statistics_are_refused(tmp_path, npz_sets):
    stats = fid.compute_statistics(fid.as_images(npz_sets["real"], num=64))
    path = tmp_path / "stale.npz"
    fid.save_statistics(stats, path, extractor="cifar10-net", fingerprint="0" * 16)
    with pytest.raises(VistokError, match="other cifar10-net weights"):
        fid.calculate(npz_sets["real"], path)


def test_input_kinds_agree(tmp_path, test_images):
    """A folder of PNGs, an NHWC npz (ADM's arr_0) and an NCHW npz of the same images give the same FID."""
    imgs = test_images[:200]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, im in enumerate(imgs):
        Image.fromarray(im.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
    np.savez(tmp_path / "nhwc.npz", arr_0=imgs.transpose(0, 2, 3, 1))
    np.savez(tmp_path / "nchw.npz", images=imgs)
    ref = tmp_path / "nchw.npz"
    values = [fid.calculate(src, "cifar10-test", num=200)["fid"] for src in (folder, tmp_path / "nhwc.npz", ref)]
    assert values[0] == pytest.approx(values[1], abs=1e-6) and values[1] == pytest.approx(values[2], abs=1e-6)


def test_kid_on_small_sets(npz_sets, tmp_path):
    small = tmp_path / "small.npz"
    with np.load(npz_sets["noise"]) as z:
        np.savez(small, images=z["images"][:50])
    res = fid.calculate(small, npz_sets["real"], kid=True)
    assert res["kid"] > 0 and np.isfinite(res["kid_std"])
    with pytest.raises(VistokError, match="KID needs real images"):
        fid.calculate(small, fid.shipped_statistics("cifar10-train", "cifar10-net"), kid=True)


def test_inception_offline(tmp_path, monkeypatch, npz_sets):
    """inception-v3-compat runs from a local weights file, and names the fix when no weights are there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(VistokError, match="--inception-weights"):
        fid.calculate(npz_sets["real"], npz_sets["real"], extractor="inception-v3-compat", num=8)
    weights = fid.write_random_inception_weights(tmp_path / "inception.pth")
    small = tmp_path / "a.npz"
    with np.load(npz_sets["real"]) as z:
        np.savez(small, images=z["images"][:24])
    res = fid.calculate(small, small, extractor="inception-v3-compat", weights=str(weights))
    assert abs(res["fid"]) < 1e-2


def test_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VistokError, match="no readable images"):
        fid.calculate(tmp_path / "empty", "cifar10-test")
    with pytest.raises(VistokError, match="not an image folder"):
        fid.calculate(tmp_path / "missing", "cifar10-test")
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 32, 32, 3), dtype=np.float32))
    with pytest.raises(VistokError, match="must be uint8"):
        fid.calculate(tmp_path / "bad.npz", "cifar10-test")
    with pytest.raises(VistokError, match="unknown extractor"):
        fid.calculate(tmp_path / "bad.npz", "cifar10-test", extractor="vgg")
