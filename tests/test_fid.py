"""FID evaluator: self-FID, the real < blurred < noise ordering with the shipped cifar10-net and statistics, input
kinds (folder, npz NHWC/NCHW, dataset, statistics), KID on small sets, the Inception path offline, bad inputs; ADM's
evaluator definitions (`--adm`) against hand and brute-force computations; one way to read a reference folder; a
`vistok sample` folder scored without its grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistok.demo import degraded_sets
from vistok.errors import VistokError
from vistok.io.sources import shipped_models
from vistok.metrics import fid


@pytest.fixture(scope="module")
def test_images(data_root) -> np.ndarray:
    """1,000 CIFAR-10 test images spread over all classes, (N, 3, 32, 32) uint8."""
    ds = fid.as_images("cifar10-test")
    idx = range(0, len(ds), 10)
    return np.stack([ds[i].numpy() for i in idx])


@pytest.fixture(scope="module")
def npz_sets(tmp_path_factory, test_images) -> dict:
    """Every other test image (500, above cifar10-net's 256 feature dimensions: a full-rank covariance), blurred and
    replaced by noise (FID 30, 280, 806 against cifar10-train; the ordering at 1,000 images, 15, 265, 802, is the
    demo's: test_readme.py::test_the_demo_prints_what_the_readme_shows), at half the feature extraction."""
    root = tmp_path_factory.mktemp("fidsets")
    out = {}
    for name, arr in degraded_sets(test_images[::2]).items():
        out[name] = root / f"{name}.npz"
        np.savez(out[name], images=arr)
    return out


def test_shipped_extractor_and_statistics_exist():
    assert "cifar10-net" in shipped_models()
    for split in ("cifar10-train", "cifar10-test"):
        assert fid.shipped_statistics(split, "cifar10-net") is not None


def test_self_fid_is_zero(npz_sets):
    same = fid.calculate(npz_sets["real"], npz_sets["real"])
    assert same["num_fake"] == same["num_real"] == 500
    assert abs(same["fid"]) < 1e-3


def test_statistics_file_equals_images(tmp_path, npz_sets):
    sets = {}
    for name in ("real", "blurred"):  # 300 of each (above the 256 feature dimensions): four feature passes here
        with np.load(npz_sets[name]) as z:
            np.savez(sets.setdefault(name, tmp_path / f"{name}.npz"), images=z["images"][:300])
    stats = fid.compute_statistics(fid.as_images(sets["real"]))
    path = tmp_path / "ref.npz"
    fid.save_statistics(stats, path, extractor="cifar10-net",
                        fingerprint=fid.extractor_fingerprint("cifar10-net", None))
    via_stats = fid.calculate(sets["blurred"], path)["fid"]
    via_images = fid.calculate(sets["blurred"], sets["real"])["fid"]
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
    with pytest.raises(VistokError, match="KID, precision/recall and --adm need real images"):
        fid.calculate(small, fid.shipped_statistics("cifar10-train", "cifar10-net"), kid=True)


def test_inception_offline(tmp_path, monkeypatch, npz_sets, inception_weights):
    """inception-v3-compat runs from a local weights file, and names the fix when no weights are there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(VistokError, match="--inception-weights"):
        fid.calculate(npz_sets["real"], npz_sets["real"], extractor="inception-v3-compat", num=8)
    weights = inception_weights
    small = tmp_path / "a.npz"
    with np.load(npz_sets["real"]) as z:  # 4 images: Inception at 299 x 299 costs about 0.3 s per image
        np.savez(small, images=z["images"][:4])
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


# --------------------------------------------------------------------------------------------- hardening, standard FID
class _Payload:
    """Unpickling this creates `marker`: the stand-in for a weights file that runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted(path, marker):
    import torch

    torch.save({"Conv2d_1a_3x3.conv.weight": _Payload(marker)}, path)
    return path


def test_crafted_inception_weights_never_run(tmp_path, monkeypatch, npz_sets):
    """In every weights position (explicit path, torch hub cache) a pickle that would run code is refused with one line
    before torch-fidelity (which unpickles with weights_only=False) sees it; the same file does run code when loaded
    unsafely, so the test would notice a regression."""
    import torch

    marker = tmp_path / "ran"
    small = tmp_path / "a.npz"
    with np.load(npz_sets["real"]) as z:
        np.savez(small, images=z["images"][:4])
    crafted = _crafted(tmp_path / "evil.pth", marker)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / fid.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    _crafted(cached, marker)
    calls = [lambda: fid.calculate(small, small, extractor="inception-v3-compat", weights=str(crafted)),
             lambda: fid.calculate(small, small, extractor="inception-v3-compat"),
             lambda: fid.compute_statistics(fid.as_images(small), "inception-v3-compat")]
    for call in calls:
        with pytest.raises(VistokError, match=r"it names [\w.]*open, which could run code") as err:
            call()
        assert "\n" not in str(err.value) and not marker.exists()
    torch.load(crafted, weights_only=False)  # the payload is live
    assert marker.exists()


def test_cifar10_net_weights_are_safetensors_only(tmp_path):
    """The cifar10-net extractor reads its export through safetensors: a pickle in its place is one line, runs
    nothing."""
    import shutil

    from vistok.io.sources import resolve_ckpt

    marker = tmp_path / "ran"
    folder = tmp_path / "net"
    shutil.copytree(resolve_ckpt("cifar10-net"), folder)
    _crafted(folder / "model.safetensors", marker)
    small = tmp_path / "a.npz"
    np.savez(small, images=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(VistokError, match="not a safetensors weights file"):
        fid.calculate(small, small, weights=str(folder))
    assert not marker.exists()


def test_inception_file_digest_decides_pass_through_or_safe_copy(tmp_path, monkeypatch):
    import torch

    from vistok.io.safeload import sha256_file

    path = tmp_path / "w.pth"
    state = {"fc.weight": torch.randn(3, 2), "fc.bias": torch.randn(3)}
    torch.save(state, path)
    with pytest.warns(UserWarning, match="not torch-fidelity's published Inception file"):
        with fid.safe_inception_weights(path) as usable:
            assert usable != str(path)
            copy = torch.load(usable, weights_only=True)
            assert copy.keys() == state.keys() and all(torch.equal(copy[k], state[k]) for k in state)
    assert not Path(usable).exists()  # the copy lives only for the block
    monkeypatch.setattr(fid, "INCEPTION_SHA256", sha256_file(path))  # as if it were the published file
    monkeypatch.setattr(fid, "INCEPTION_BYTES", path.stat().st_size)
    monkeypatch.setattr(fid, "_VERIFIED", {})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fid.safe_inception_weights(path) as usable:
            assert usable == str(path)
    torch.save([torch.zeros(1)], path)  # not a state dict
    monkeypatch.setattr(fid, "_VERIFIED", {})
    with pytest.raises(VistokError, match="not a state dict of tensors"):
        with fid.safe_inception_weights(path):
            pass


def test_published_digest_matches_the_file_name():
    """torch.hub names files with the first 8 hex digits of their SHA-256: the stored digest must agree."""
    assert fid.INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0] == fid.INCEPTION_SHA256[:8]
    import torch_fidelity.feature_extractor_inceptionv3 as fe_inception

    assert fe_inception.URL_INCEPTION_V3 == fid.INCEPTION_URL


def _adm_batch(path, images_nchw, stats, extra=True):
    """An ADM-style reference batch: arr_0 NHWC uint8 images, mu/sigma in float64 (and spatial statistics)."""
    arrays = {"arr_0": images_nchw.transpose(0, 2, 3, 1), "mu": stats["mu"].astype(np.float64),
              "sigma": stats["sigma"].astype(np.float64)}
    if extra:
        arrays.update(mu_s=np.zeros(7), sigma_s=np.eye(7))
    np.savez(path, **arrays)
    return path


def test_adm_reference_batch_statistics_and_images(tmp_path, test_images):
    """--real REF.npz with mu/sigma and arr_0: FID from the statistics equals FID from the images; KID and
    precision/recall use arr_0 and equal those against the same images as an .npz."""
    real = test_images[:300]
    np.savez(tmp_path / "real.npz", images=real)
    ref = _adm_batch(tmp_path / "ref.npz", real, fid.compute_statistics(fid.as_images(tmp_path / "real.npz")))
    fake = tmp_path / "fake.npz"
    np.savez(fake, arr_0=degraded_sets(real)["blurred"].transpose(0, 2, 3, 1))  # samples.npz layout
    via_ref = fid.calculate(fake, ref, kid=True, prc=True)
    via_images = fid.calculate(fake, tmp_path / "real.npz", kid=True, prc=True)
    assert via_ref["real_stats"] == str(ref) and via_ref["num_real"] == 300
    assert via_ref["fid"] == pytest.approx(via_images["fid"], rel=1e-6)
    for key in ("kid", "precision", "recall"):
        assert via_ref[key] == pytest.approx(via_images[key], rel=1e-9, abs=1e-12), key
    stats_only = tmp_path / "stats_only.npz"
    np.savez(stats_only, mu=np.zeros(256), sigma=np.eye(256))
    with pytest.raises(VistokError, match="need real images.*holds only statistics"):
        fid.calculate(fake, stats_only, prc=True)
    inception_sized = tmp_path / "adm.npz"
    np.savez(inception_sized, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(VistokError, match="2048-d statistics but cifar10-net features are 256-d.*inception-v3-compat"):
        fid.calculate(fake, inception_sized)
    np.savez(tmp_path / "nan.npz", mu=np.full(256, np.nan), sigma=np.eye(256))
    with pytest.raises(VistokError, match="non-finite"):
        fid.calculate(fake, tmp_path / "nan.npz")


def test_isc_and_prc_against_hand_values(tmp_path, test_images, npz_sets):
    """Precision and recall of a set against itself are 1; the Inception Score (one split below 200 images) equals
    exp(E_x KL(p(y|x) || p(y))) computed here from the extractor's logits."""
    import torch

    from vistok.registry import load_model

    imgs = test_images[:150]
    np.savez(tmp_path / "a.npz", images=imgs)
    res = fid.calculate(tmp_path / "a.npz", tmp_path / "a.npz", isc=True, prc=True)
    assert res["precision"] == res["recall"] == 1.0 and abs(res["fid"]) < 1e-3
    net, _ = load_model("cifar10-net")
    with torch.no_grad():
        logits = net(torch.from_numpy(imgs).double().div(127.5).sub(1.0).float()).double()
    p = logits.softmax(1)
    expected = torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean()).item()
    assert res["isc"] == pytest.approx(expected, rel=1e-4) and res["isc_std"] == 0.0
    noise = fid.calculate(npz_sets["noise"], tmp_path / "a.npz", prc=True, num=150)
    assert noise["precision"] < 0.5


def test_counts_refused_or_warned(tmp_path, npz_sets):
    small = tmp_path / "s.npz"
    with np.load(npz_sets["real"]) as z:
        np.savez(small, images=z["images"][:5])
    with pytest.raises(VistokError, match="FID needs at least 2 fake images, got 1"):
        fid.calculate(small, small, num=1)
    for bad in (0, -5):
        with pytest.raises(VistokError, match="--num must be a positive number"):
            fid.calculate(small, small, num=bad)
    with pytest.raises(VistokError, match="--resolution must be at least"):
        fid.calculate(small, small, resolution=0)
    with pytest.warns(UserWarning, match="5 fake images < 256 cifar10-net feature dimensions"):
        res = fid.calculate(small, small, kid=True)
    assert len(res["warnings"]) == 2 and np.isfinite(res["kid"])


@pytest.mark.parametrize("damage", ["truncated", "crc", "random"])
def test_damaged_npz_is_one_line_in_every_position(tmp_path, damage):
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    data = good.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "crc":
        data = data[:200] + bytes(b ^ 0x55 for b in data[200:2000]) + data[2000:]
    else:
        data = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(data)
    for fake, real in ((bad, good), (good, bad)):
        with pytest.raises(VistokError, match=r"cannot read .*bad\.npz: "
                                              r"(damaged or not an \.npz archive|not an \.npz archive)") as err:
            fid.calculate(fake, real)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ ADM's evaluator definitions
def test_adm_inception_score_is_contiguous_unshuffled_splits():
    """IS over contiguous splits of `split_size` rows in input order (the last one shorter), mean over splits, against
    a float64 hand computation; a shuffled split gives another value."""
    import torch

    from vistok.metrics import adm

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(11, 5)) * 3
    logits[:4, 0] += 8  # the first split is confident in one class: a low score there, unlike a shuffled split

    def score(block):
        p = np.exp(block - block.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0, keepdims=True))), 1)))

    hand = [score(logits[0:4]), score(logits[4:8]), score(logits[8:11])]
    mean, std = adm.inception_score(torch.from_numpy(logits), split_size=4)
    assert mean == pytest.approx(np.mean(hand), rel=1e-12) and std == pytest.approx(np.std(hand), rel=1e-12)
    shuffled = logits[rng.permutation(11)]
    assert adm.inception_score(shuffled, split_size=4)[0] != pytest.approx(mean, rel=1e-3)
    assert adm.inception_score(logits)[0] == pytest.approx(score(logits), rel=1e-12)  # < 5,000 rows: one split
    assert adm.IS_SPLIT_SIZE * 10 == 50_000  # the paper-scale protocol: 10 splits


def brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision and recall by the k-NN definition, in float64 with full distance matrices."""
    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    r_real = np.sort(sq(real, real), axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(sq(fake, fake), axis=1)[:, k]
    d = sq(real, fake)  # (N1, N2)
    precision = np.mean((d <= r_real[:, None]).any(axis=0))
    recall = np.mean((d <= r_fake[None, :]).any(axis=1))
    return precision, recall


@pytest.mark.parametrize("scale", [1, 100])  # 100: squared norms overflow float16, the float32 path runs
def test_adm_precision_recall_equal_a_brute_force_knn(scale):
    """Integer features (exact in float16 below overflow, in float32 above): the block-wise half-precision computation
    equals a float64 brute force, whatever the block size."""
    import torch

    from vistok.metrics import adm

    rng = np.random.default_rng(1)
    real = rng.integers(0, 6, size=(40, 4)).astype(np.float64) * scale
    fake = (np.concatenate([rng.integers(0, 3, size=(20, 4)), rng.integers(6, 9, size=(13, 4))]).astype(np.float64)
            * scale)
    want = brute_force_pr(real, fake)
    assert 0 < want[0] < 1 and 0 < want[1] < 1  # neither trivially 0 nor 1
    for batch in (adm.PR_BATCH, 7):
        got = adm.precision_recall(torch.from_numpy(real), torch.from_numpy(fake), batch=batch)
        assert got == pytest.approx(want, abs=0), batch
    d = adm.pairwise_sq_distances(torch.from_numpy(real).float(), torch.from_numpy(fake).float())
    assert torch.isfinite(d).all() and d.max() > (65504 if scale == 100 else 0)  # float32 past float16's range


def test_adm_distances_are_half_precision_values():
    """Non-integer features: every distance is a float16 value (the evaluator's half block), close to float64."""
    import torch

    from vistok.metrics import adm

    g = torch.Generator().manual_seed(0)
    u, v = torch.rand(20, 64, generator=g), torch.rand(15, 64, generator=g)
    d = adm.pairwise_sq_distances(u, v)
    assert torch.equal(d.half().float(), d)
    exact = torch.cdist(u.double(), v.double()) ** 2
    torch.testing.assert_close(d.double(), exact, rtol=5e-3, atol=5e-3)
    assert not torch.equal(d.double(), exact)


def test_adm_spatial_features_are_mixed_6_conv_first_7_channels_nhwc(inception_weights):
    """inception-v3-compat's spatial layer is the 17x17 mixed_6/conv (Mixed_6d.branch1x1): 7 x 17 x 17 = 2023 values,
    flattened (h, w, c) as TensorFlow does."""
    import torch

    from vistok.metrics import adm

    weights = inception_weights
    with fid.feature_extractor("inception-v3-compat", str(weights), ["2048"]) as fe:
        direct = []
        fe.Mixed_6d.branch1x1.register_forward_hook(lambda m, a, out: direct.append(out.detach().clone()))
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64), dtype=np.uint8))
        with adm.spatial_features(fe, "inception-v3-compat") as spatial, torch.no_grad():
            fe(images)
    (flat,), (full,) = spatial, direct
    assert full.shape == (2, 192, 17, 17) and flat.shape == (2, 2023)
    assert flat[1, 3] == full[1, 3, 0, 0] and flat[1, 7] == full[1, 0, 0, 1] and flat[0, 7 * 17 + 2] == full[0, 2, 1, 0]


def test_fid_adm_on_cpu_with_cifar10_net(tmp_path, test_images, capsys):
    """`fid --adm`: IS (contiguous splits) of the fake side's logits, sFID 0 against itself, precision/recall 1 against
    itself and those of the brute force against another set; the ADM reference batch's mu_s/sigma_s are used."""
    import json

    import torch

    from vistok import cli
    from vistok.metrics import adm
    from vistok.registry import load_model

    imgs = test_images[:120]
    np.savez(tmp_path / "a.npz", images=imgs)
    same = fid.calculate(tmp_path / "a.npz", tmp_path / "a.npz", adm=True)
    assert same["definitions"] == "adm" and same["precision"] == same["recall"] == 1.0
    assert abs(same["sfid"]) < 1e-3 and abs(same["fid"]) < 1e-3
    net, _ = load_model("cifar10-net")
    with torch.no_grad():
        x = torch.from_numpy(imgs).float() / 127.5 - 1.0
        logits = net(x)
        feats = net.features(x)
    assert same["isc"] == pytest.approx(adm.inception_score(logits)[0], rel=1e-4)

    first_blurred = degraded_sets(test_images[:100])["blurred"]  # the first 100 of a.npz's images, blurred
    np.savez(tmp_path / "b.npz", arr_0=first_blurred.transpose(0, 2, 3, 1))
    assert cli.main(["fid", "--fake", str(tmp_path / "b.npz"), "--real", str(tmp_path / "a.npz"), "--adm", "--json",
                     "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sfid"] > 1.0 and res["fid"] > 1.0
    with torch.no_grad():
        blurred = torch.from_numpy(np.load(tmp_path / "b.npz")["arr_0"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        feats_b = net.features(blurred)
    p, r = brute_force_pr(feats.double().numpy(), feats_b.double().numpy())
    assert abs(res["precision"] - p) <= 2 / 100 and abs(res["recall"] - r) <= 2 / 120  # half-precision rounding only

    # an ADM-style reference batch: its own mu_s/sigma_s decide sFID (here shifted: sFID grows by |shift|^2)
    ref = fid.compute_statistics(fid.as_images(tmp_path / "a.npz"))
    with fid.feature_extractor("cifar10-net", None, ["pool"]) as fe, adm.spatial_features(fe, "cifar10-net") as sp:
        fid.features(fid.as_images(tmp_path / "a.npz"), fe)
    s = adm.statistics(torch.cat(sp))
    batch = tmp_path / "ref.npz"
    np.savez(batch, arr_0=imgs.transpose(0, 2, 3, 1), mu=ref["mu"], sigma=ref["sigma"], mu_s=s["mu"] + 0.5,
             sigma_s=s["sigma"])
    shifted = fid.calculate(tmp_path / "a.npz", batch, adm=True)
    assert shifted["sfid"] == pytest.approx(0.25 * len(s["mu"]), rel=1e-3)
    with pytest.raises(VistokError, match="--adm needs more than 3 fake images"):
        fid.calculate(tmp_path / "a.npz", tmp_path / "a.npz", adm=True, num=3)


# ------------------------------------------------------------------------------------ one reference path, samples
def test_fid_real_folder_equals_its_fid_stats(tmp_path, test_images, capsys):
    """`fid --real DIR` reads DIR as `fid-stats --input DIR` does (its own size), not resized to the fake side's size:
    the folder and its statistics give the same FID, with fakes at another resolution."""
    from vistok import cli

    real = tmp_path / "real"
    real.mkdir()
    for i, im in enumerate(test_images[300:420]):  # 48x48 PNGs of 32x32 images
        Image.fromarray(im.transpose(1, 2, 0)).resize((48, 48), Image.BICUBIC).save(real / f"{i:04d}.png")
    np.savez(tmp_path / "fake.npz", images=test_images[:100])  # 32x32
    stats = tmp_path / "real_stats.npz"
    assert cli.main(["fid-stats", "--input", str(real), "--out", str(stats), "--quiet"]) == 0
    via_folder = fid.calculate(tmp_path / "fake.npz", real)["fid"]
    via_stats = fid.calculate(tmp_path / "fake.npz", stats)["fid"]
    assert via_folder == pytest.approx(via_stats, rel=1e-9, abs=1e-9)
    direct = fid.compute_statistics(fid.as_images(real))
    with np.load(stats) as z:
        np.testing.assert_array_equal(z["mu"], direct["mu"])
        np.testing.assert_array_equal(z["sigma"], direct["sigma"])


def test_fake_sample_folder_scores_samples_not_the_grid(tmp_path, test_images):
    """A `vistok sample` output folder (PNGs, grid.png, samples.npz): 40 samples count as 40, and score as the same
    images in an .npz."""
    from vistok.api.outputs import save_samples

    imgs = test_images[:40].transpose(0, 2, 3, 1)
    written = save_samples(tmp_path / "samples", np.ascontiguousarray(imgs), np.arange(40) % 10)
    assert (tmp_path / "samples" / "grid.png") in written
    np.savez(tmp_path / "same.npz", arr_0=imgs)
    res = fid.calculate(tmp_path / "samples", "cifar10-test")
    assert res["num_fake"] == 40
    assert res["fid"] == pytest.approx(fid.calculate(tmp_path / "same.npz", "cifar10-test")["fid"], rel=1e-9)
