"""vistok.em: tokens and the three TokenUnify objectives, the SegMamba backbone, volume IO and crops, affinities,
sliding-window inference, watershed + agglomeration, and VOI / ARAND against scikit-image."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from skimage.metrics import adapted_rand_error, variation_of_information

from vistok.em import tokens
from vistok.em.backbone import PRESETS as SEG_PRESETS, SegMamba, SegMambaConfig
from vistok.em.metrics import arand, evaluate, voi
from vistok.em.objectives import MixSchedule, TaskWeights, TokenUnify, TokenUnifyConfig, load_pretrained_backbone
from vistok.em.segmentation import (
    affinities,
    agglomerate,
    class_balance_weights,
    fragments,
    gaussian_importance,
    segment,
    sliding_window_inference,
    weighted_mse,
    widen_border,
)
from vistok.em.synthetic import synthetic_em_volume
from vistok.em.volumes import EMCrops, augment_inplane, parse_volume_arg, read_volume, write_volume
from vistok.errors import VistokError

GALA = Path(__file__).resolve().parents[2] / "shared" / "data" / "em" / "gala_fib_medulla.h5"
pytestmark = pytest.mark.filterwarnings("ignore:vistok Mamba")  # the expected one-time "which scan path" note
MICRO = SegMambaConfig(feat_size=(4, 8, 8, 16), hidden_size=16, depths=(1, 1, 1, 1), kernel_size=(1, 3, 3), nslices=4)
MICRO_TU = TokenUnifyConfig(backbone=MICRO, input_size=(16, 32, 32), patch_size=(4, 8, 8), head_channels=4)




# ---------------------------------------------------------------------------------------------------------------------
# tokens and objectives
# ---------------------------------------------------------------------------------------------------------------------


def _token_index_volume(grid: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    """(1, 1, *S) whose voxels hold the raster index of their token."""
    idx = torch.arange(math.prod(grid)).reshape(grid)
    for axis, p in enumerate(patch):
        idx = idx.repeat_interleave(p, dim=axis)
    return idx[None, None].float()


@pytest.mark.parametrize("grid,patch", [((2, 3, 2), (4, 16, 16)), ((2, 3, 4), (1, 2, 3)), ((3, 2), (4, 5))])
def test_patchify_is_raster_order_and_inverts(grid: tuple, patch: tuple) -> None:
    vol = _token_index_volume(grid, patch)
    toks = tokens.patchify(vol, patch)  # (1, K, prod(patch))
    assert toks.shape == (1, math.prod(grid), math.prod(patch))
    assert torch.equal(toks[0], torch.arange(math.prod(grid)).float()[:, None].expand_as(toks[0]))
    noise = torch.randn(2, 3, *(g * p for g, p in zip(grid, patch, strict=True)))
    assert torch.equal(tokens.unpatchify(tokens.patchify(noise, patch), grid, patch), noise)
    with pytest.raises(VistokError, match="must divide by the patch size"):
        tokens.patchify(torch.zeros(1, 1, *(g * p + 1 for g, p in zip(grid, patch, strict=True))), patch)


@pytest.mark.parametrize("ratio", [(0.4, 0.4), (0.0, 0.0), (1.0, 1.0), (0.2, 0.8)])
def test_random_mask_hides_exactly_round_ratio_k(ratio: tuple) -> None:
    k, b = 50, 64
    g = torch.Generator().manual_seed(0)
    mask = tokens.random_token_mask(b, k, ratio, g)
    counts = mask.sum(1)
    if ratio[0] == ratio[1]:
        assert (counts == round(ratio[0] * k)).all()
    else:  # per-sample ratio r ~ U(lo, hi): exactly round(r K) for the same draws of r
        r = ratio[0] + (ratio[1] - ratio[0]) * torch.rand(b, generator=torch.Generator().manual_seed(0))
        assert torch.equal(counts, torch.round(r * k).long())
        assert counts.min() >= 10 and counts.max() <= 40 and len(set(counts.tolist())) > 5
    again = tokens.random_token_mask(b, k, ratio, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    with pytest.raises(VistokError):
        tokens.random_token_mask(2, k, (0.6, 0.4))


def test_prefix_lengths_and_mask_exact() -> None:
    lengths = tokens.prefix_lengths(4000, 5, torch.Generator().manual_seed(0))
    assert set(lengths.tolist()) == {1, 2, 3, 4}  # U{1 .. K-1}
    mask = tokens.prefix_mask(torch.tensor([1, 3, 4]), 5)
    assert mask.tolist() == [[False, True, True, True, True], [False, False, False, True, True],
                             [False, False, False, False, True]]
    with pytest.raises(VistokError, match="at least 2 tokens"):
        tokens.prefix_lengths(2, 1)


@pytest.mark.parametrize("fill", ["zero", "noise"])
def test_hide_tokens_touches_exactly_the_hidden_tokens(fill: str) -> None:
    grid, patch = (2, 2, 3), (2, 3, 2)
    vol = _token_index_volume(grid, patch) + 100.0  # every voxel > 99, so hidden ones are recognisable
    mask = torch.tensor([[False, True, False, False, True, True, False, False, False, False, False, True]])
    out = tokens.hide_tokens(vol, mask, patch, fill, torch.Generator().manual_seed(0))
    hidden_voxels = torch.isin(vol - 100.0, torch.tensor([1.0, 4.0, 5.0, 11.0]))
    assert torch.equal(out[~hidden_voxels], vol[~hidden_voxels])
    if fill == "zero":
        assert (out[hidden_voxels] == 0).all()
    else:
        assert (out[hidden_voxels].abs() < 10).all() and out[hidden_voxels].std() > 0.5


def test_next_token_target_is_token_k() -> None:
    grid, patch = (2, 2, 2), (2, 2, 2)
    vol = torch.cat([_token_index_volume(grid, patch), 10 + _token_index_volume(grid, patch)])  # (2, 1, 4, 4, 4)
    target = tokens.next_token_target(vol, torch.tensor([3, 6]), patch)
    assert torch.equal(target, torch.tensor([[3.0] * 8, [16.0] * 8]))


def test_objectives_feed_the_backbone_exactly_masked_inputs(monkeypatch) -> None:
    model = TokenUnify(TokenUnifyConfig(**{**MICRO_TU.__dict__, "fill": "zero", "mask_ratio": (0.25, 0.25)}))
    seen, forward = [], model.backbone.forward
    monkeypatch.setattr(model.backbone, "forward", lambda x: (seen.append(x.detach().clone()), forward(x))[1])
    volume = 0.25 + 0.5 * torch.rand(3, 1, 16, 32, 32)  # no zero voxels
    model(volume, TaskWeights(1.0, 1.0, 1.0), torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the draws: random mask, then prefix lengths
    k = MICRO_TU.num_tokens  # 4 x 4 x 4 = 64
    random_mask = tokens.random_token_mask(3, k, (0.25, 0.25), g)
    prefix = tokens.prefix_lengths(3, k, g)
    clean = tokens.patchify(volume, MICRO_TU.patch_size)  # (B, K, P)
    for x, hidden in zip(seen, [random_mask, tokens.prefix_mask(prefix, k)], strict=True):
        toks = tokens.patchify(x, MICRO_TU.patch_size)
        assert (toks[hidden] == 0).all() and torch.equal(toks[~hidden], clean[~hidden])
    assert (random_mask.sum(1) == 16).all()
    assert [int(row.nonzero()[0]) for row in tokens.prefix_mask(prefix, k)] == prefix.tolist()


def test_mix_schedules() -> None:
    two = MixSchedule("two_stage", (1.0, 1.0, 0.5), switch=0.25)
    assert two.at(0, 100) == TaskWeights(1.0, 0.0, 0.0) and two.at(24, 100) == TaskWeights(1.0, 0.0, 0.0)
    assert two.at(25, 100) == TaskWeights(0.0, 1.0, 0.5) and two.at(99, 100) == TaskWeights(0.0, 1.0, 0.5)
    alt = MixSchedule("alternate", period=10)
    assert [alt.at(s, 100).random for s in (0, 9, 10, 19, 20)] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert MixSchedule("constant", (0.0, 1.0, 0.0)).at(5, 10) == TaskWeights(0.0, 1.0, 0.0)
    with pytest.raises(VistokError):
        MixSchedule(weights=(0.0, 0.0, 0.0))


def test_overfitting_one_batch_cuts_the_pretraining_loss() -> None:
    torch.manual_seed(0)
    model = TokenUnify(MICRO_TU)
    raw, _ = synthetic_em_volume((16, 32, 32), num_cells=8, seed=1)
    batch = torch.from_numpy(raw).float()[None, None] / 255  # (1, 1, 16, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        out = model(batch, TaskWeights(1.0, 1.0, 1.0), torch.Generator().manual_seed(0))  # same masks every step
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.75 * losses[0], losses


@pytest.mark.parametrize("weights", [TaskWeights(1, 0, 0), TaskWeights(0, 1, 0), TaskWeights(0, 0, 1)])
def test_every_parameter_gets_a_gradient_in_every_phase(weights: TaskWeights) -> None:
    """DDP without find_unused_parameters needs every parameter in the graph of every step."""
    model = TokenUnify(MICRO_TU)
    model(torch.rand(1, 1, 16, 32, 32), weights, torch.Generator().manual_seed(0)).loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with pytest.raises(VistokError, match="built for"):
        model(torch.rand(1, 1, 16, 32, 64))


def test_pretrained_backbone_moves_strictly_to_the_segmentation_model() -> None:
    pre = TokenUnify(MICRO_TU)
    seg = SegMamba(SegMambaConfig(**{**MICRO.__dict__, "out_chans": 3}))
    assert load_pretrained_backbone(seg, pre.state_dict()) == ["head.bias", "head.weight"]
    for k, v in seg.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, pre.state_dict()["backbone." + k]), k
    other = SegMamba(SegMambaConfig(**{**MICRO.__dict__, "feat_size": (4, 8, 8, 8), "out_chans": 3}))
    with pytest.raises(VistokError, match="does not match"):
        load_pretrained_backbone(other, pre.state_dict())


def test_isotropic_encoder_sees_every_section_with_the_same_parameter_names() -> None:
    """The official (anisotropic) stem has kernel 1 and stride 2 along z: odd sections never reach the encoder.
    encoder_z="isotropic" gives the stem and downsamplers a z kernel; the parameter names stay the same."""
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 32, 32)
    odd = x.clone()
    odd[:, :, 1::2] = torch.rand_like(odd[:, :, 1::2])  # change only the odd sections
    skips = {}
    for layout in ("anisotropic", "isotropic"):
        enc = SegMamba(SegMambaConfig(**{**MICRO.__dict__, "encoder_z": layout})).encoder.eval()
        with torch.no_grad():
            skips[layout] = [(a - b).abs().max().item() for a, b in zip(enc(x), enc(odd), strict=True)]
    assert skips["anisotropic"] == [0.0, 0.0, 0.0, 0.0]  # the planted blindness of the official layout
    assert min(skips["isotropic"]) > 1e-4
    aniso, iso = (SegMamba(SegMambaConfig(**{**MICRO.__dict__, "encoder_z": z})).state_dict()
                  for z in ("anisotropic", "isotropic"))
    assert list(aniso) == list(iso)
    assert {k for k in aniso if aniso[k].shape != iso[k].shape} == {
        "encoder.downsample.0.weight", "encoder.downsample.1.1.weight", "encoder.downsample.2.1.weight",
        "encoder.downsample.3.1.weight"}
    assert aniso["encoder.downsample.0.weight"].shape[2:] == (1, 7, 7)
    assert iso["encoder.downsample.0.weight"].shape[2:] == (7, 7, 7)
    assert iso["encoder.downsample.1.1.weight"].shape[2:] == (2, 2, 2)
    assert SegMambaConfig().encoder_z == "anisotropic"  # the official layout stays the default
    with pytest.raises(VistokError, match="encoder_z"):
        SegMambaConfig(encoder_z="cubic")


def test_backbone_shapes_presets_and_input_checks() -> None:
    model = SegMamba(SegMambaConfig(**{**MICRO.__dict__, "out_chans": 3}))
    assert model(torch.rand(2, 1, 16, 32, 32)).shape == (2, 3, 16, 32, 32)
    with pytest.raises(VistokError, match="divisible by 16"):
        model(torch.rand(1, 1, 16, 32, 40))
    with pytest.raises(VistokError, match="nslices"):
        SegMambaConfig(nslices=5).check_input((16, 64, 64))  # stage 4 has 1 x 4 x 4 voxels
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in SegMamba(cfg).parameters()) for name, cfg in SEG_PRESETS.items()}
    assert abs(counts["segmamba-base"] / 1e6 - 28.30) < 0.01  # the paper's EMmamba: 28.30M
    assert counts["segmamba-tiny"] < 1_000_000
    assert counts["segmamba-base"] < counts["segmamba-small"] < counts["segmamba-mid"] < counts["segmamba-large"]


# ---------------------------------------------------------------------------------------------------------------------
# volumes
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v.h5:raw/main", "v.h5", "v.hdf5:x", "v.npz:img", "v.npz", "v.npy", "v.tif"])
def test_volume_io_round_trip(tmp_path: Path, name: str) -> None:
    vol = np.random.default_rng(0).integers(0, 255, (4, 5, 6), dtype=np.uint8)
    ref = write_volume(str(tmp_path / name), vol)
    back = read_volume(str(tmp_path / name))
    assert back.dtype == vol.dtype and np.array_equal(back, vol)
    assert np.array_equal(read_volume(ref), vol)


def test_volume_argument_errors(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["train/raw"] = np.zeros((2, 2, 2))
        f["test/raw"] = np.zeros((2, 2, 2))
        f["flat"] = np.zeros((2, 2))
    assert parse_volume_arg("a/b.h5:train/raw").dataset == "train/raw"
    cases = {
        "vol.xyz": "unknown volume format", "vol.h5:": "ends with ':'", "vol.tif:raw": "holds one volume",
        str(tmp_path / "missing.h5"): "does not exist", str(tmp_path / "two.h5"): "holds 3 datasets",
        str(tmp_path / "two.h5:nope"): "has no dataset 'nope'", str(tmp_path / "two.h5:flat"): "3D",
    }
    for arg, message in cases.items():
        with pytest.raises(VistokError, match=message) as err:
            read_volume(arg)
        assert "\n" not in str(err.value)
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(VistokError, match="not a readable HDF5"):
        read_volume(str(tmp_path / "bad.h5"))
    try:
        import zarr  # noqa: F401
    except ImportError:
        (tmp_path / "v.zarr").mkdir()
        with pytest.raises(VistokError, match="pip install zarr"):
            read_volume(str(tmp_path / "v.zarr"))


@pytest.mark.skipif(not GALA.is_file(), reason="shared EM volume not found")
def test_reads_the_real_em_volume() -> None:
    raw = read_volume(f"{GALA}:train/raw")
    ids = read_volume(f"{GALA}:test/neuron_ids")
    assert raw.shape == ids.shape == (50, 100, 200) and raw.dtype == np.uint8
    assert len(np.unique(ids)) - 1 == 132


def test_crops_normalise_pad_augment_and_keep_labels_aligned() -> None:
    labels = np.random.default_rng(0).integers(1, 50, (6, 10, 12)).astype(np.int32)
    raw = (labels * 3 + 7).astype(np.uint8)  # raw is an affine function of labels: alignment is checkable
    data = EMCrops([raw], (8, 16, 16), length=10, labels=[labels], seed=3)  # larger than the volume: reflect pad
    x, y = data[(4, 1)]
    assert x.shape == (1, 8, 16, 16) and y.shape == (8, 16, 16) and x.dtype == torch.float32
    lo, hi = raw.min(), raw.max()
    assert torch.allclose(x[0], (y.float() * 3 + 7 - lo) / (hi - lo))
    assert torch.equal(data[(4, 1)][0], x) and not torch.equal(data[(4, 2)][0], x)
    plain = EMCrops([raw], (4, 8, 8), length=5)
    assert plain[0].shape == (1, 4, 8, 8) and 0.0 <= plain[0].min() and plain[0].max() <= 1.0
    for seed in range(8):  # non-square planes only flip or turn by 180 degrees
        assert augment_inplane([np.zeros((2, 3, 5))], np.random.default_rng(seed))[0].shape == (2, 3, 5)


def _whole_volume_crop(raw, labels, crop, seed, key):
    """Reference: the former whole-volume path (normalise and widen the whole volume, pad, crop, augment)."""
    from vistok.em.volumes import normalize_minmax, random_crop

    index, epoch = key
    rng = np.random.default_rng([seed, epoch, index])
    v = int(rng.integers(len(raw)))
    arrays = random_crop([normalize_minmax(raw[v]), widen_border(labels[v]).astype(np.int64)], crop, rng)
    return augment_inplane(arrays, rng)


@pytest.mark.parametrize("crop", [(4, 16, 16), (8, 40, 12)])  # the second is larger than one volume in y
def test_lazy_crops_from_files_equal_whole_volume_crops(tmp_path: Path, crop: tuple) -> None:
    from vistok.em.volumes import Volume

    raws, labs = zip(*(synthetic_em_volume(shape, num_cells=6, seed=i)
                       for i, shape in enumerate([(10, 36, 30), (12, 30, 34)])), strict=True)
    write_volume(f"{tmp_path}/a.h5:raw", raws[0])
    write_volume(f"{tmp_path}/a.h5:ids", labs[0])
    zarr = pytest.importorskip("zarr")
    for name, arr in (("raw", raws[1]), ("ids", labs[1])):
        z = zarr.open_array(store=str(tmp_path / "b.zarr" / name), mode="w", shape=arr.shape, chunks=(4, 8, 8),
                            dtype=arr.dtype)
        z[...] = arr
    files = EMCrops([Volume(f"{tmp_path}/a.h5:raw"), Volume(f"{tmp_path}/b.zarr:raw")], crop, 20,
                    labels=[Volume(f"{tmp_path}/a.h5:ids"), Volume(f"{tmp_path}/b.zarr:ids")], seed=5,
                    widen_border=True)
    for key in [(i, e) for i in range(12) for e in (0, 1)]:
        x, y = files[key]
        want_x, want_y = _whole_volume_crop(raws, labs, crop, 5, key)
        assert np.array_equal(x[0].numpy(), want_x) and np.array_equal(y.numpy(), want_y), key
    mem = EMCrops(list(raws), crop, 20, labels=list(labs), seed=5, widen_border=True)  # arrays: the same crops
    assert all(torch.equal(mem[k][1], files[k][1]) and torch.equal(mem[k][0], files[k][0]) for k in range(6))


def test_lazy_volume_reads_windows_and_finds_its_intensity_range(tmp_path: Path) -> None:
    from vistok.em.volumes import Volume, intensity_range

    vol = np.random.default_rng(0).integers(10, 200, (1, 12, 20, 24)).astype(np.uint8)  # a leading singleton axis
    vol[0, 5, 6, 7], vol[0, 11, 19, 23] = 3, 250
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = vol
        f["stats"] = vol[0]
        f["stats"].attrs["min"], f["stats"].attrs["max"] = 0, 255
    np.save(tmp_path / "v.npy", vol[0])
    for arg in (f"{tmp_path}/v.h5:raw", f"{tmp_path}/v.npy"):
        lazy = Volume(arg)
        assert lazy.shape == (12, 20, 24) and lazy.dtype == np.uint8
        window = (slice(2, 9), slice(4, 20), slice(0, 5))
        assert np.array_equal(lazy.read(window), vol[0][window]) and np.array_equal(lazy.read(), vol[0])
        assert intensity_range(lazy) == (3.0, 250.0)  # exact: one streaming pass
        lo, hi = intensity_range(lazy, "sample", samples=4, block=(4, 8, 8))
        assert 3 <= lo and hi <= 250 and lo < hi
    assert intensity_range(Volume(f"{tmp_path}/v.h5:stats")) == (0.0, 255.0)  # stored attributes win
    import pickle

    again = pickle.loads(pickle.dumps(Volume(f"{tmp_path}/v.h5:raw")))  # DataLoader workers reopen the file
    assert np.array_equal(again.read(), vol[0])
    with pytest.raises(VistokError, match="'exact' or 'sample'"):
        intensity_range(Volume(f"{tmp_path}/v.npy"), "median")


def test_crops_shard_volumes_over_ranks() -> None:
    vols = [np.full((4, 8, 8), i, np.uint8) for i in range(5)]  # volume i holds the value i
    ranges = [(0.0, 20.0)] * 5
    seen = {}
    for rank in range(2):
        data = EMCrops(vols, (2, 4, 4), 40, seed=0, augment=False, ranges=ranges, rank=rank, world_size=2)
        seen[rank] = {int(round(float(data[i].max()) * 20)) for i in range(40)}
    assert seen == {0: {0, 2, 4}, 1: {1, 3}}
    one = EMCrops(vols, (2, 4, 4), 40, seed=0, augment=False, ranges=ranges, rank=1, world_size=8)
    assert {int(round(float(one[i].max()) * 20)) for i in range(40)} == {0, 1, 2, 3, 4}  # fewer volumes than ranks


def test_crops_of_a_volume_larger_than_the_memory_budget_stay_bounded(tmp_path: Path) -> None:
    """A chunked zarr volume 8x a 2 MiB budget: crops read only their chunks; peak Python/numpy memory (tracemalloc)
    stays within the budget, while reading the volume whole would not."""
    import tracemalloc

    from vistok.em.volumes import Volume

    zarr = pytest.importorskip("zarr")
    shape, budget = (64, 512, 512), 2 << 20  # 16 MiB of uint8
    z = zarr.open_array(store=str(tmp_path / "big.zarr" / "raw"), mode="w", shape=shape, chunks=(16, 64, 64),
                        dtype=np.uint8)
    rng = np.random.default_rng(0)
    for i in range(0, shape[0], 16):
        z[i:i + 16] = rng.integers(0, 256, (16, *shape[1:]), dtype=np.uint8)
    z.attrs["min"], z.attrs["max"] = 0, 255  # stored statistics: no scan needed
    vol = Volume(f"{tmp_path}/big.zarr:/raw")  # a leading '/' stays inside the store
    assert vol.shape == shape and vol.stored_range == (0.0, 255.0)
    tracemalloc.start()
    try:
        data = EMCrops([vol], (16, 32, 32), 20, seed=0)
        sums = [(tuple(c.shape), float(c.sum())) for c in (data[i] for i in range(20))]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < budget, peak
    assert shape[0] * shape[1] * shape[2] >= 8 * budget  # the volume alone is 8x the budget (32x as float32)
    assert {shp for shp, _ in sums} == {(1, 16, 32, 32)} and len({v for _, v in sums}) == 20


# ---------------------------------------------------------------------------------------------------------------------
# segmentation
# ---------------------------------------------------------------------------------------------------------------------


def test_affinities_on_a_hand_made_volume() -> None:
    labels = torch.tensor([[[1, 1, 2],
                            [1, 0, 2]],
                           [[1, 3, 2],
                            [0, 0, 2]]])  # (z=2, y=2, x=3)
    aff = affinities(labels)
    assert aff.shape == (3, 2, 2, 3)
    assert aff[0].tolist() == [[[0, 0, 0], [0, 0, 0]], [[1, 0, 1], [0, 0, 1]]]  # z: same label as z-1
    assert aff[1].tolist() == [[[0, 0, 0], [1, 0, 1]], [[0, 0, 0], [0, 0, 1]]]  # y: same label as y-1
    assert aff[2].tolist() == [[[0, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]]  # x: same label as x-1
    assert torch.equal(affinities(labels[None])[0], aff)  # leading batch axes


def test_widen_border_only_cuts_between_two_positive_ids() -> None:
    """The official seg_widen_border: zero a voxel when its in-plane 3x3 window holds two different positive ids;
    background (0) takes no part, so cells that touch only background keep every voxel."""
    touching_background_only = np.array([[[1, 1, 0, 2],
                                          [1, 1, 0, 2],
                                          [0, 0, 0, 0],
                                          [3, 3, 3, 3]]])  # (z=1, y=4, x=4): ids 1, 2, 3 never share a window
    assert np.array_equal(widen_border(touching_background_only), touching_background_only)
    two_cells = np.array([[[1, 1, 1, 2, 2],
                           [1, 1, 1, 2, 2],
                           [0, 0, 0, 0, 0]]])  # ids 1 | 2 meet between x=2 and x=3
    assert widen_border(two_cells).tolist() == [[[1, 1, 0, 0, 2],
                                                 [1, 1, 0, 0, 2],
                                                 [0, 0, 0, 0, 0]]]
    diagonal = np.array([[[5, 0, 0],
                          [0, 0, 0],
                          [0, 0, 7]]])  # 5 and 7 two voxels apart diagonally: no 3x3 window holds both
    assert np.array_equal(widen_border(diagonal), diagonal)
    corner = np.array([[[5, 0],
                        [0, 7]]])  # diagonal neighbours share every window: both go
    assert widen_border(corner).tolist() == [[[0, 0], [0, 0]]]
    slices = np.stack([two_cells[0], np.where(two_cells[0] > 0, 9, 0)])  # (z=2): slice 1 holds one id only
    out = widen_border(slices)  # in-plane only: slice 0's cut does not reach slice 1
    assert out[0].tolist() == widen_border(two_cells)[0].tolist() and np.array_equal(out[1], slices[1])
    assert out.dtype == slices.dtype
    wide = widen_border(np.array([[[1] * 4 + [2] * 4]]), radius=2)  # a 5x5 window cuts two voxels on each side
    assert wide.tolist() == [[[1, 1, 0, 0, 0, 0, 2, 2]]]
    with pytest.raises(VistokError, match="radius"):
        widen_border(two_cells, radius=0)


@pytest.mark.skipif(not GALA.exists(), reason="real EM volume not available")
def test_widen_border_on_the_real_volume_matches_the_brute_force_rule() -> None:
    with h5py.File(GALA, "r") as f:
        ids = f["train/neuron_ids"][:4, :40, :60]
    padded = np.pad(ids, ((0, 0), (1, 1), (1, 1)), mode="edge")
    want = ids.copy()
    for z, y, x in zip(*np.nonzero(ids), strict=True):  # the thesis' sentence, voxel by voxel
        window = padded[z, y:y + 3, x:x + 3]
        if len(np.unique(window[window > 0])) > 1:
            want[z, y, x] = 0
    got = widen_border(ids)
    assert np.array_equal(got, want)
    assert (got == 0).mean() > (ids == 0).mean()  # some boundaries were cut, and only the rule's


def test_class_balance_weights_and_weighted_mse() -> None:
    target = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 1, 1, 4)  # positive fraction 0.75: zeros are the minority
    w = class_balance_weights(target)
    assert torch.allclose(w.flatten(), torch.tensor([1.0, 1.0, 1.0, 3.0]))
    pred = torch.tensor([0.5, 1.0, 1.0, 0.5]).view(1, 1, 1, 1, 4)
    assert torch.isclose(weighted_mse(pred, target), torch.tensor((0.25 + 3 * 0.25) / 4))
    rare = torch.zeros(1, 1, 1, 1, 100)
    rare[..., 0] = 1  # fraction 0.01 clips to 0.05: positives get 19
    assert torch.isclose(class_balance_weights(rare)[..., 0], torch.tensor(19.0)).all()


@pytest.mark.parametrize("size,roi", [((20, 37, 29), (8, 16, 16)), ((6, 10, 12), (8, 16, 16)), ((16, 16), (16, 16))])
def test_sliding_window_reassembles_a_pointwise_model(size: tuple, roi: tuple) -> None:
    vol = torch.rand(2, 1, *size)
    out = sliding_window_inference(lambda x: torch.cat([x, 2 * x], 1), vol, roi, overlap=0.25, batch_size=3)
    assert out.shape == (2, 2, *size)
    torch.testing.assert_close(out, torch.cat([vol, 2 * vol], 1))
    w = gaussian_importance((8, 16))
    assert w.max() == 1.0 and w[3:5, 7:9].min() > 0.9 and w[0, 0] < 0.2


def test_sliding_window_blends_a_window_dependent_model_by_gaussian_weights() -> None:
    """f(window) = window + its mean: each window predicts something else for a shared voxel, so the blend is visible.
    Checked against a hand-computed Gaussian-weighted average over the windows [0,6), [3,9), [4,10) along x."""
    vol = torch.arange(40, dtype=torch.float32).reshape(1, 1, 4, 10) ** 1.5
    out = sliding_window_inference(lambda x: x + x.mean(dim=(2, 3), keepdim=True), vol, (4, 6), overlap=0.5,
                                   batch_size=2)

    def gauss(r: int) -> np.ndarray:  # exp(-d^2 / (2 (r/8)^2)) around the window's centre
        d = np.arange(r) - (r - 1) / 2
        return np.exp(-0.5 * (d / (0.125 * r)) ** 2)

    g = np.outer(gauss(4), gauss(6))
    g = np.maximum(g / g.max(), 1e-3)
    v = vol[0, 0].double().numpy()
    num, den = np.zeros((4, 10)), np.zeros((4, 10))
    for x0 in (0, 3, 4):
        win = v[:, x0:x0 + 6]
        num[:, x0:x0 + 6] += g * (win + win.mean())
        den[:, x0:x0 + 6] += g
    np.testing.assert_allclose(out[0, 0].double().numpy(), num / den, rtol=1e-5)
    plain = np.zeros((4, 10))  # plain averaging of the windows: what a weights bug would give
    for x0 in (0, 3, 4):
        win = v[:, x0:x0 + 6]
        plain[:, x0:x0 + 6] += win + win.mean()
    plain /= np.bincount(np.concatenate([np.arange(x0, x0 + 6) for x0 in (0, 3, 4)]), minlength=10)
    assert np.abs(out[0, 0].double().numpy() - plain).max() > 1.0


def _stream_reference(raw: np.ndarray, predict, roi, score: str = "median", threshold: float = 0.5) -> np.ndarray:
    from vistok.em.volumes import normalize_minmax

    affs = sliding_window_inference(predict, torch.from_numpy(normalize_minmax(raw))[None, None], roi, 0.25, 3)
    return segment(affs[0].numpy(), threshold, 0.5, True, score)


def _blurry_affinities(x: torch.Tensor) -> torch.Tensor:
    """A window-dependent stand-in for a network: 3 'affinities' from the raw intensity and the window's mean."""
    smooth = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([smooth, x, 0.5 * (x + smooth)], 1).clamp(0, 1) * 0.8 + 0.2 * x.mean()


@pytest.mark.parametrize("out,score", [("seg.h5:pred/ids", "median"), ("seg.zarr:/ids", "median"),
                                       ("seg.npy", "median"), ("seg.npz", "mean")])
def test_streamed_segmentation_equals_the_in_memory_path(tmp_path: Path, out: str, score: str) -> None:
    from vistok.em.streaming import segment_streaming
    from vistok.em.volumes import Volume

    if out.startswith("seg.zarr"):
        pytest.importorskip("zarr")
    raw, _ = synthetic_em_volume((40, 48, 56), num_cells=12, seed=4)
    write_volume(f"{tmp_path}/raw.h5:raw", raw)
    ref = parse_volume_arg(f"{tmp_path}/{out}")
    n = segment_streaming(_blurry_affinities, Volume(f"{tmp_path}/raw.h5:raw"), ref, (16, 32, 32), 0.25, 3,
                          score=score)
    got = read_volume(f"{tmp_path}/{out.replace(':/', ':')}")
    want = _stream_reference(raw, _blurry_affinities, (16, 32, 32), score)
    assert np.array_equal(got, want) and n == len(np.unique(want)) > 5
    assert not any(p.name.startswith(".em-segment-") for p in tmp_path.iterdir())  # scratch removed


def test_streamed_segmentation_memory_stays_bounded(tmp_path: Path) -> None:
    """em-segment's streaming path on chunked zarr volumes of columns of cells: peak numpy memory (tracemalloc) stays
    under a 4 MiB budget while the in-memory path would hold 3x that at once (float32 raw and affinities, int64
    fragments), and a 4x deeper volume adds only a fraction of its extra affinity bytes: the region graph (one set of
    fragments per section) is what grows, never a volume-sized array."""
    import tracemalloc

    from vistok.em.streaming import segment_streaming
    from vistok.em.volumes import Volume

    zarr = pytest.importorskip("zarr")
    plane = np.full((32, 32), 200, np.uint8)
    plane[:2], plane[:, :2], plane[16:18], plane[:, 16:18] = 0, 0, 0, 0  # 2-voxel membranes: 4 cells per section
    budget, peaks = 4 << 20, {}

    def predict(x: torch.Tensor) -> torch.Tensor:  # bright = connected, smoothed in-plane
        s = torch.nn.functional.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
        return s.expand(-1, 3, -1, -1, -1)

    for depth in (32, 128, 512):  # the first run only warms up imports and caches
        z = zarr.open_array(store=str(tmp_path / f"v{depth}.zarr" / "raw"), mode="w", shape=(depth, 32, 32),
                            chunks=(16, 32, 32), dtype=np.uint8)
        z[...] = np.broadcast_to(plane, (depth, 32, 32))
        z.attrs["min"], z.attrs["max"] = 0, 255
        vol = Volume(f"{tmp_path}/v{depth}.zarr:raw")
        tracemalloc.start()
        try:
            n = segment_streaming(predict, vol, parse_volume_arg(f"{tmp_path}/s{depth}.zarr:ids"), (16, 32, 32),
                                  0.25, 2)
            peaks[depth] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        seg = read_volume(f"{tmp_path}/s{depth}.zarr:ids")
        assert seg.shape == (depth, 32, 32) and n == 4 and len(np.unique(seg[:, 8, 8])) == 1  # columns rejoined
    affinity_bytes, in_memory_bytes = 3 * 4 * 32 * 32, (4 + 12 + 8) * 32 * 32  # float32 raw + affinities, int64 ids
    assert 512 * in_memory_bytes >= 3 * budget  # what the in-memory path holds at once
    assert peaks[512] < budget, peaks
    assert peaks[512] - peaks[128] < 0.35 * (512 - 128) * affinity_bytes, peaks


def test_watershed_and_agglomeration_recover_neurons() -> None:
    _, labels = synthetic_em_volume((12, 48, 48), num_cells=12, seed=2)
    aff = affinities(torch.from_numpy(labels)).numpy()
    frags = fragments(aff)
    assert len(np.unique(frags)) > 12  # per-slice fragments over-segment in 3D
    seg = agglomerate(frags, aff, threshold=0.5)
    scores = evaluate(seg, labels)
    assert scores.voi < 0.3 and scores.arand < 0.05, scores
    assert evaluate(frags, labels).voi_split > 1.0
    assert np.array_equal(segment(aff), seg)


def test_agglomeration_merges_by_boundary_affinity() -> None:
    frags = np.zeros((1, 1, 6), np.int64)
    frags[..., :2], frags[..., 2:4], frags[..., 4:] = 1, 2, 3
    aff = np.zeros((3, 1, 1, 6), np.float32)
    aff[2, 0, 0, 2], aff[2, 0, 0, 4] = 0.9, 0.2  # 1|2 strongly connected, 2|3 weakly
    seg = agglomerate(frags, aff, threshold=0.5)
    assert seg[0, 0].tolist() == [1, 1, 1, 1, 2, 2]
    assert len(np.unique(agglomerate(frags, aff, threshold=0.1))) == 1


def _agglomerate_dense(frags: np.ndarray, affs: np.ndarray, threshold: float, score: str,
                       bins: int = 256) -> np.ndarray:
    """Reference: the former dense implementation (one pairs x bins histogram array), merged exactly the same way."""
    import heapq

    from skimage.segmentation import relabel_sequential

    frags, _, _ = relabel_sequential(frags.astype(np.int64))
    pairs, values = [], []
    for i in range(3):
        hi, lo = [slice(None)] * 3, [slice(None)] * 3
        hi[i], lo[i] = slice(1, None), slice(None, -1)
        a, b = frags[tuple(lo)].ravel(), frags[tuple(hi)].ravel()
        keep = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a, b)[keep], np.maximum(a, b)[keep]], 1))
        values.append(affs[i][tuple(hi)].ravel()[keep].astype(np.float64))
    pairs, values = np.concatenate(pairs), np.concatenate(values)
    parent = np.arange(int(frags.max()) + 1)
    n = len(parent)
    keys, inverse = np.unique(pairs[:, 0] * n + pairs[:, 1], return_inverse=True)
    uniq, inverse = np.stack([keys // n, keys % n], 1), inverse.ravel()
    if score == "mean":
        stats = np.stack([np.bincount(inverse, values, len(uniq)), np.bincount(inverse, minlength=len(uniq))], 1)
    else:
        bb = np.clip((values * bins).astype(np.int64), 0, bins - 1)
        stats = np.bincount(inverse * bins + bb, minlength=len(uniq) * bins).reshape(len(uniq), bins).astype(float)

    def value(st):
        return st[0] / st[1] if score == "mean" else (int(np.searchsorted(np.cumsum(st), 0.5 * st.sum())) + 0.5) / bins

    adj, heap = {}, []
    for (u, v), st in zip(uniq.tolist(), stats, strict=True):
        adj.setdefault(u, {})[v] = st
        adj.setdefault(v, {})[u] = st
        heapq.heappush(heap, (-value(st), u, v))
    while heap:
        neg, u, v = heapq.heappop(heap)
        if -neg <= threshold:
            break
        if parent[u] != u or parent[v] != v or v not in adj.get(u, {}) or value(adj[u][v]) != -neg:
            continue
        if len(adj[u]) < len(adj[v]):
            u, v = v, u
        parent[v] = u
        del adj[u][v]
        for m, st in adj.pop(v).items():
            if m == u:
                continue
            del adj[m][v]
            merged = adj[u][m] + st if m in adj[u] else st
            adj[u][m] = adj[m][u] = merged
            heapq.heappush(heap, (-value(merged), min(u, m), max(u, m)))
    while not np.array_equal(parent[parent], parent):
        parent = parent[parent]
    return relabel_sequential(parent[frags])[0]


@pytest.mark.parametrize("score", ["median", "mean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_agglomeration_equals_the_dense_histograms(score: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _, labels = synthetic_em_volume((8, 40, 40), num_cells=10, seed=seed)
    clean = affinities(torch.from_numpy(labels)).numpy()
    aff = np.clip(clean + rng.normal(0, 0.3, clean.shape), 0, 1).astype(np.float32)  # noisy: many mixed histograms
    frags = fragments(aff)
    assert len(np.unique(frags)) > 50
    for threshold in (0.3, 0.5, 0.7):
        got, want = agglomerate(frags, aff, threshold, score), _agglomerate_dense(frags, aff, threshold, score)
        assert np.array_equal(got, want), threshold
    assert len(np.unique(agglomerate(frags, aff, 0.3, score))) < len(np.unique(frags))  # it did merge


# ---------------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voi_and_arand_agree_with_scikit_image(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 6, (6, 20, 20))  # label 0 (ignored) in the ground truth
    seg = np.where(rng.random(gt.shape) < 0.7, gt + 10, rng.integers(0, 4, gt.shape))  # label 0 in seg too
    split, merge = voi(seg, gt)
    sk_split, sk_merge = variation_of_information(gt, seg, ignore_labels=(0,))
    assert np.isclose(split, sk_split, atol=1e-12) and np.isclose(merge, sk_merge, atol=1e-12)
    assert np.isclose(arand(seg, gt), adapted_rand_error(gt, seg)[0], atol=1e-12)
    assert split > 0.1 and merge > 0.1


def test_metrics_are_zero_for_a_perfect_segmentation() -> None:
    gt = np.random.default_rng(0).integers(0, 5, (4, 8, 8))
    relabelled = np.where(gt > 0, 100 - gt, 7)  # different ids, and the ignored voxels labelled arbitrarily
    assert evaluate(relabelled, gt) == (0.0, 0.0, 0.0, 0.0)
    merged = np.where(gt > 0, 1, 0)
    scores = evaluate(merged, gt)
    assert scores.voi_split == 0.0 and scores.voi_merge > 1.0 and scores.arand > 0.5
    with pytest.raises(VistokError, match="differ in shape"):
        evaluate(gt[:2], gt)


def test_zarr_round_trip(tmp_path) -> None:
    pytest.importorskip("zarr")
    vol = np.random.default_rng(0).integers(0, 255, size=(4, 5, 6), dtype=np.uint8)
    write_volume(f"{tmp_path / 'v.zarr'}:raw", vol)
    back = read_volume(f"{tmp_path / 'v.zarr'}:raw")
    assert back.dtype == np.uint8 and np.array_equal(back, vol)


def test_em_segment_shows_a_bar_of_windows_only_on_a_terminal(tmp_path: Path, monkeypatch, capsys) -> None:
    from vistok import progress
    from vistok.em.inference import InferenceConfig, load_segmenter, segment_to_file
    from vistok.em.volumes import Volume

    raw, _ = synthetic_em_volume((16, 48, 48), num_cells=6, seed=1)
    write_volume(f"{tmp_path}/raw.h5:raw", raw)
    model, meta = load_segmenter("em-segmamba-tiny-scratch")
    cfg = InferenceConfig(**{**(meta.get("inference") or {}), "roi": (16, 32, 32), "overlap": 0.25, "batch_size": 2})
    segment_to_file(model, Volume(f"{tmp_path}/raw.h5:raw"), parse_volume_arg(f"{tmp_path}/a.h5"), cfg)
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    segment_to_file(model, Volume(f"{tmp_path}/raw.h5:raw"), parse_volume_arg(f"{tmp_path}/b.h5"), cfg)
    shown = capsys.readouterr().err
    # a bar over the 1 x 2 x 2 windows of (16, 32, 32) in (16, 48, 48); its total is drawn at once ("0/4 ["), while
    # the last count is drawn only if tqdm refreshes after the final window (a timing matter: not asserted)
    assert "em-segment" in shown and "0/4 [" in shown
    segment_to_file(model, Volume(f"{tmp_path}/raw.h5:raw"), parse_volume_arg(f"{tmp_path}/c.h5"), cfg, progress=False)
    assert capsys.readouterr().err == ""
    assert np.array_equal(read_volume(f"{tmp_path}/a.h5"), read_volume(f"{tmp_path}/b.h5"))
