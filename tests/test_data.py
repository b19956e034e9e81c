"""Data: named datasets, image folders (modes, sizes, corrupt files), errors, and the deterministic distributed
loader."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.data import build_image_dataset, build_loader, resolve_data_root, subset, to_float, to_uint8
from vistok.data.images import CIFAR10_CLASSES, ImageDataConfig, ImageFolderDataset, load_rgb, mixed_dataset
from vistok.data.loader import Augmented, StepBatchSampler
from vistok.data.procedural import DeadLeaves
from vistok.errors import VistokError

# ---------------------------------------------------------------- named datasets


@pytest.fixture(scope="module")
def cifar_train(data_root):
    return build_image_dataset("cifar10-train", str(data_root))


@pytest.fixture(scope="module")
def cifar_test(data_root):
    return build_image_dataset("cifar10-test")  # root from VISTOK_DATA


def check_range(ds, indices) -> torch.Tensor:
    images = torch.stack([ds[int(i)][0] for i in indices])
    assert images.dtype == torch.float32
    assert images.shape == (len(indices), 3, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() < -0.9 and images.max() > 0.9  # the whole range is used, not e.g. [0, 1]
    return images


@pytest.mark.parametrize("split, size", [("train", 50_000), ("test", 10_000)])
def test_cifar10_sizes_shapes_labels(request, split, size):
    ds = request.getfixturevalue(f"cifar_{split}")
    assert len(ds) == size
    assert ds.images.shape == (size, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.classes == CIFAR10_CLASSES
    labels = np.asarray([ds[i][1] for i in range(0, size, 7)])
    assert set(labels.tolist()) == set(range(10))
    assert np.bincount(ds.labels, minlength=10).tolist() == [size // 10] * 10
    assert np.all(np.diff(ds.labels) >= 0)  # stored sorted by file name, so by class
    image, label = ds[size - 1]
    assert image.shape == (3, 32, 32) and label == 9
    check_range(ds, np.linspace(0, size - 1, 64).astype(int))
    assert ds.images.std() > 40  # real photographs, not a constant


def test_cifar10_images_match_the_tarball(cifar_test, data_root):
    """Image i of the test split is the i-th test JPEG in name order, decoded exactly."""
    names, picked = [], {}
    with tarfile.open(data_root / "cifar10-jpeg.tar.gz", mode="r|gz") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if m.isfile() and len(parts) == 3 and parts[0] == "test":
                names.append(m.name)
                if len(picked) < 3:
                    picked[m.name] = tar.extractfile(m).read()
    names.sort()
    assert len(names) == 10_000
    for name, blob in picked.items():
        i = names.index(name)
        expected = np.array(Image.open(io.BytesIO(blob)).convert("RGB"))
        np.testing.assert_array_equal(cifar_test.images[i], expected)
        assert cifar_test.labels[i] == CIFAR10_CLASSES.index(Path(name).parts[1])
        expected_float = torch.from_numpy(expected).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(cifar_test[i][0], expected_float)


def test_subset_is_evenly_spaced(cifar_train):
    small = subset(cifar_train, 256)
    assert len(small) == 256
    labels = np.bincount([small[i][1] for i in range(256)], minlength=10)
    assert labels.min() >= 25 and labels.max() <= 26  # evenly spaced over a class-sorted set: balanced
    assert subset(cifar_train, 0) is cifar_train and subset(cifar_train, 10**6) is cifar_train


def test_mnist():
    ds = build_image_dataset("mnist")
    assert len(ds) == 5000
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    torch.testing.assert_close(image[0], image[1])  # grey replicated to RGB
    assert set(ds.labels.tolist()) == set(range(10))
    assert image.min() == -1.0 and image.max() > 0.5  # black background, bright digit
    small = build_image_dataset("mnist", resolution=28)
    assert small[0][0].shape == (3, 28, 28)


def test_to_float_to_uint8():
    u = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(1, 3, 16, 16)
    f = to_float(u)
    assert f.min() == -1.0 and f.max() == 1.0
    assert torch.equal(to_uint8(f), u)
    assert to_uint8(torch.tensor([-5.0, 5.0])).tolist() == [0, 255]


# ---------------------------------------------------------------- errors


def test_missing_data_root(monkeypatch, tmp_path):
    with pytest.raises(VistokError) as err:
        build_image_dataset("cifar10-train", "/nonexistent/vistok-data")
    msg = str(err.value)
    assert "/nonexistent/vistok-data" in msg and "does not exist" in msg and "\n" not in msg
    monkeypatch.delenv("VISTOK_DATA", raising=False)
    with pytest.raises(VistokError, match="no data root.*VISTOK_DATA"):
        build_image_dataset("cifar10-test")
    monkeypatch.setenv("VISTOK_DATA", str(tmp_path / "nope"))
    with pytest.raises(VistokError, match="does not exist"):
        resolve_data_root(None)


def test_data_root_without_cifar(monkeypatch, tmp_path):
    """A root that exists but holds no CIFAR-10 (and no download allowed) is a one-line error, not a traceback."""
    monkeypatch.setenv("VISTOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VISTOK_DOWNLOAD", raising=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VistokError, match="CIFAR-10 not found") as err:
        build_image_dataset("cifar10-test", tmp_path / "empty")
    assert "\n" not in str(err.value)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(VistokError) as err:
        build_image_dataset("imagenet-1k")
    msg = str(err.value)
    assert "imagenet-1k" in msg and "cifar10-train" in msg and "mnist" in msg
    with pytest.raises(VistokError, match="unknown dataset"):
        build_image_dataset(str(tmp_path / "no_such_folder"))


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    with pytest.raises(VistokError, match="no images"):
        build_image_dataset(str(tmp_path))


# ---------------------------------------------------------------- image folders


def test_image_folder_basics(image_folder):
    ds = build_image_dataset(str(image_folder))
    assert isinstance(ds, ImageFolderDataset)
    assert len(ds) == 32 and ds.classes == ("cats", "dogs")
    assert [ds[i][1] for i in range(32)] == [0] * 16 + [1] * 16
    image, _ = ds[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    expected = np.array(Image.open(image_folder / "cats" / "003.png"))
    torch.testing.assert_close(image, to_float(torch.from_numpy(expected).permute(2, 0, 1)))


def test_image_folder_recursive_labels_from_first_level(tmp_path):
    rng = np.random.default_rng(1)

    def put(rel: str) -> None:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)

    for rel in ("b/x.png", "b/deep/er/y.jpg", "a/z.PNG", "a/more/w.bmp", "c/v.webp"):
        put(rel)
    (tmp_path / "a" / "readme.txt").write_text("skip me")
    ds = ImageFolderDataset(tmp_path, 32)
    assert ds.classes == ("a", "b", "c")
    got = {p.relative_to(tmp_path).as_posix(): ds.labels[i] for i, p in enumerate(ds.files)}
    assert got == {"a/more/w.bmp": 0, "a/z.PNG": 0, "b/deep/er/y.jpg": 1, "b/x.png": 1, "c/v.webp": 2}


def test_flat_folder_labels_are_zero(tmp_path):
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    ds = build_image_dataset(str(tmp_path))
    assert ds.classes == () and [ds[i][1] for i in range(3)] == [0, 0, 0]


def test_modes_and_sizes_become_rgb_at_resolution(tmp_path):
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    rgba = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the colour must survive conversion anyway
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)).save(tmp_path / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (100, 30, 3), dtype=np.uint8)).save(tmp_path / "tall.png")
    Image.fromarray(rng.integers(0, 256, (10, 7, 3), dtype=np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (33, 33), dtype=np.uint8), mode="L").convert("P").save(
        tmp_path / "palette.gif")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).convert("CMYK").save(tmp_path / "cmyk.tiff")
    for resolution in (32, 16):
        ds = ImageFolderDataset(tmp_path, resolution)
        assert len(ds) == 7
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no skipped files, no read-only-array warnings
            for i in range(len(ds)):
                image, label = ds[i]
                assert image.shape == (3, resolution, resolution), ds.files[i]
                assert image.min() >= -1 and image.max() <= 1 and label == 0
        assert ds.num_skipped == 0
    ds = ImageFolderDataset(tmp_path, 32)
    names = [p.name for p in ds.files]
    gray = ds.uint8(names.index("gray.png"))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.equal(ds.uint8(names.index("rgba.png")), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))


def test_center_crop_of_non_square_images(tmp_path):
    # 96 x 32: left third red, middle green, right blue -> the centre crop at 32 is pure green (no resize needed)
    strip = np.zeros((32, 96, 3), dtype=np.uint8)
    strip[:, :32, 0] = strip[:, 32:64, 1] = strip[:, 64:, 2] = 255
    Image.fromarray(strip).save(tmp_path / "strip.png")
    out = load_rgb(tmp_path / "strip.png", 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out.flags.writeable  # torch.from_numpy warns on read-only arrays
    assert (out[..., 1] == 255).all() and (out[..., 0] == 0).all() and (out[..., 2] == 0).all()
    # 64 wide x 128 tall, middle half white: shorter side 64 -> 32, so the crop keeps rows 32..96 of the original
    tall = np.zeros((128, 64, 3), dtype=np.uint8)
    tall[32:96] = 255
    Image.fromarray(tall).save(tmp_path / "tall.png")
    out = load_rgb(tmp_path / "tall.png", 32).astype(int)
    assert out.shape == (32, 32, 3)
    assert out[2:30].min() >= 250  # all white away from the (resampled) edges
    assert out.mean() > 240


def write_corrupt_files(folder: Path) -> list[Path]:
    garbage = folder / "cats" / "zzz_garbage.jpg"  # last of its class: the next file is a dog
    garbage.write_bytes(b"this is not a jpeg" * 10)
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good, format="JPEG")
    truncated = folder / "dogs" / "000a_truncated.jpg"
    truncated.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    return [garbage, truncated]


def test_corrupt_files_dropped_by_drop_unreadable(image_folder):
    bad = write_corrupt_files(image_folder)
    ds = ImageFolderDataset(image_folder, 32)
    assert len(ds) == 34
    with pytest.warns(UserWarning) as record:
        dropped = ds.drop_unreadable()
    messages = [str(w.message) for w in record if "skipping unreadable image" in str(w.message)]
    assert len(messages) == 2
    assert any(bad[0].name in m for m in messages) and any(bad[1].name in m for m in messages)
    assert dropped == 2 and ds.num_skipped == 2 and len(ds) == 32
    assert not set(bad) & set(ds.files)
    assert [ds[i][1] for i in range(32)] == [0] * 16 + [1] * 16
    with pytest.warns(UserWarning) as record:
        verified = ImageFolderDataset(image_folder, 32, verify=True)
    assert sum(bad[0].name in str(w.message) or bad[1].name in str(w.message) for w in record) == 2
    assert len(verified) == 32 and verified.num_skipped == 2


def test_corrupt_files_replaced_on_read(image_folder):
    bad = write_corrupt_files(image_folder)
    ds = build_image_dataset(str(image_folder))
    assert len(ds) == 34
    i_bad = ds.files.index(bad[0])
    i_trunc = ds.files.index(bad[1])
    with pytest.warns(UserWarning) as record:
        items = [ds[i] for i in range(len(ds))]
    assert sum("zzz_garbage.jpg" in str(w.message) for w in record) == 1
    assert sum("000a_truncated.jpg" in str(w.message) for w in record) == 1
    assert ds.num_skipped == 2
    assert all(img.shape == (3, 32, 32) and torch.isfinite(img).all() for img, _ in items)
    # the replacement is the next readable file, with that file's own label (here a dog replaces a broken cat)
    assert torch.equal(items[i_bad][0], items[i_bad + 1][0]) and items[i_bad][1] == items[i_bad + 1][1] == 1
    assert torch.equal(items[i_trunc][0], items[i_trunc + 1][0]) and items[i_trunc][1] == 1
    # known-bad files are not decoded or counted again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = ds[i_bad]
    assert torch.equal(again[0], items[i_bad][0]) and ds.num_skipped == 2


def test_corrupt_file_does_not_break_the_loader(image_folder):
    write_corrupt_files(image_folder)
    ds = build_image_dataset(str(image_folder))
    loader = iter(build_loader(ds, 8, seed=0, hflip=True, crop_pad=2))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        batches = [next(loader) for _ in range(10)]  # more than two epochs of 34 // 8 = 4 steps
    assert all(x.shape == (8, 3, 32, 32) for x, _ in batches)


def test_all_files_corrupt(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    ds = ImageFolderDataset(tmp_path, 32)
    with pytest.warns(UserWarning), pytest.raises(VistokError, match="no readable image"):
        ds[0]


# ---------------------------------------------------------------- loader


def take(sampler: StepBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("world", [2, 4])
def test_rank_batches_union_equals_single_process_batch(world):
    n, global_batch, steps = 50, 8, 20  # 6 steps per epoch: crosses three epoch boundaries
    single = take(StepBatchSampler(n, global_batch, seed=3), steps)
    ranks = [take(StepBatchSampler(n, global_batch, rank=r, world_size=world, seed=3), steps) for r in range(world)]
    for s in range(steps):
        assert all(len(ranks[r][s]) == global_batch // world for r in range(world))
        union = sorted(pair for r in range(world) for pair in ranks[r][s])
        assert union == sorted(single[s])
        assert len(set(single[s])) == global_batch
    epoch0 = [i for b in single[:6] for i, e in b]
    assert len(set(epoch0)) == 48 and {e for b in single[:6] for _, e in b} == {0}  # no repeats within an epoch
    assert {e for _, e in single[6]} == {1}
    assert [i for i, _ in single[6]] != [i for i, _ in single[0]]  # a new permutation per epoch


def test_sampler_without_shuffle_and_seeds():
    plain = take(StepBatchSampler(20, 4, shuffle=False), 6)
    assert [i for i, _ in plain[0]] == [0, 1, 2, 3] and [i for i, _ in plain[5]] == [0, 1, 2, 3]
    assert take(StepBatchSampler(20, 4, seed=1), 5) == take(StepBatchSampler(20, 4, seed=1), 5)
    assert take(StepBatchSampler(20, 4, seed=1), 5) != take(StepBatchSampler(20, 4, seed=2), 5)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("start", [0, 1, 5, 6, 13])
def test_resume_yields_the_uninterrupted_batches(world, start):
    for rank in range(world):
        full = take(StepBatchSampler(50, 8, rank=rank, world_size=world, seed=7), 20)
        resumed = take(StepBatchSampler(50, 8, rank=rank, world_size=world, seed=7, start_step=start), 20 - start)
        assert resumed == full[start:]


def test_sampler_errors():
    with pytest.raises(VistokError, match="divide"):
        StepBatchSampler(100, 10, world_size=3)
    with pytest.raises(VistokError, match="fewer than one global batch"):
        StepBatchSampler(5, 8)


def test_augmentations_deterministic_per_seed_epoch_index(shared_image_folder):
    ds = build_image_dataset(str(shared_image_folder))
    aug = Augmented(ds, seed=5, hflip=True, crop_pad=4)
    a = torch.stack([aug[(i, 2)][0] for i in range(32)])
    b = torch.stack([Augmented(ds, seed=5, hflip=True, crop_pad=4)[(i, 2)][0] for i in range(32)])
    assert torch.equal(a, b)
    other_epoch = torch.stack([aug[(i, 3)][0] for i in range(32)])
    other_seed = torch.stack([Augmented(ds, seed=6, hflip=True, crop_pad=4)[(i, 2)][0] for i in range(32)])
    plain = torch.stack([ds[i][0] for i in range(32)])
    assert not torch.equal(a, other_epoch) and not torch.equal(a, other_seed) and not torch.equal(a, plain)
    # the draws do not depend on what else was drawn before (no shared generator)
    assert torch.equal(aug[(9, 2)][0], a[9])
    flips = Augmented(ds, seed=5, hflip=True)
    outs = [flips[(i, 0)][0] for i in range(32)]
    flipped = sum(torch.equal(o, ds[i][0].flip(-1)) for i, o in enumerate(outs))
    kept = sum(torch.equal(o, ds[i][0]) for i, o in enumerate(outs))
    assert flipped + kept == 32 and 4 <= flipped <= 28
    assert torch.equal(Augmented(ds)[(3, 1)][0], ds[3][0])  # no augmentation asked: the image itself


def test_grayscale_augmentation_leaves_the_other_draws_alone(shared_image_folder):
    """gray_p converts that share of visits to the channel mean; its draw comes after the crop and flip draws, so
    a run without it (every run before it existed) sees the same crops and flips as before."""
    ds = build_image_dataset(str(shared_image_folder))
    plain, gray = (Augmented(ds, seed=5, hflip=True, crop_pad=4),
                   Augmented(ds, seed=5, hflip=True, crop_pad=4, gray_p=0.5))
    converted = 0
    for i in range(40):
        a, b = plain[(i, 1)][0], gray[(i, 1)][0]
        if torch.equal(a, b):
            continue
        converted += 1
        assert torch.allclose(b, a.mean(0, keepdim=True).expand_as(a)) and torch.equal(b[0], b[2])
    assert 8 <= converted <= 32  # about half of 40 (and the colour images are not gray already)
    always = Augmented(ds, gray_p=1.0)[(3, 0)][0]
    assert torch.allclose(always, ds[3][0].mean(0, keepdim=True).expand(3, -1, -1))


def test_dead_leaves_are_a_deterministic_varied_image_set():
    a, b = DeadLeaves(40, 32, seed=1), DeadLeaves(40, 32, seed=1)
    imgs = torch.stack([a.uint8(i) for i in range(40)])  # (40, 3, 32, 32)
    assert imgs.dtype == torch.uint8 and imgs.shape == (40, 3, 32, 32)
    assert torch.equal(imgs[7], b.uint8(7)) and not torch.equal(imgs[7], DeadLeaves(40, 32, seed=2).uint8(7))
    assert len({bytes(x.numpy()) for x in imgs}) == 40
    gray = (imgs[:, 0] == imgs[:, 1]).all(dim=(1, 2)) & (imgs[:, 1] == imgs[:, 2]).all(dim=(1, 2))
    assert 3 <= int(gray.sum()) <= 25  # 30% grayscale
    assert (imgs.float().std(dim=(1, 2, 3)) > 10).all()  # occluding leaves, never a flat image
    x, label = a[0]
    assert label == -1 and x.dtype == torch.float32 and torch.equal(x, imgs[0].float() / 127.5 - 1)
    with pytest.raises(IndexError):
        a.uint8(40)


def test_mixed_dataset_holds_the_asked_share_of_procedural_images(shared_image_folder):
    ds = build_image_dataset(str(shared_image_folder))
    assert mixed_dataset(ImageDataConfig(), ds) is ds
    mixed = mixed_dataset(ImageDataConfig(mix="dead-leaves", mix_frac=0.25), ds, seed=3)
    extra = len(mixed) - len(ds)
    assert extra == round(len(ds) / 3) and torch.equal(mixed[0][0], ds[0][0])
    assert mixed[len(ds)][1] == -1 and torch.equal(mixed[len(ds)][0], DeadLeaves(extra, 32, seed=3)[0][0])
    labels = torch.cat([lab for _, (_, lab) in zip(range(8), build_loader(mixed, 8, seed=0), strict=False)])
    assert 0 < (labels == -1).float().mean() < 0.6  # mixed into the batches, not appended after an epoch


@pytest.mark.parametrize("kwargs, message", [
    (dict(mix="leaves"), "data.mix='leaves' is not a procedural source; use one of dead-leaves"),
    (dict(mix="dead-leaves", mix_frac=1.0), "data.mix_frac=1.0 must be between 0 and 1"),
    (dict(gray_p=1.5), "data.gray_p=1.5 must be a probability"),
])
def test_image_data_config_refuses_impossible_mixes(kwargs, message):
    with pytest.raises(VistokError, match=message):
        ImageDataConfig(**kwargs)


def test_loader_same_batches_for_any_world_size_and_workers(shared_image_folder):
    ds = build_image_dataset(str(shared_image_folder))
    kw = dict(seed=4, hflip=True, crop_pad=4)
    single = iter(build_loader(ds, 8, **kw))
    ranks = [iter(build_loader(ds, 8, rank=r, world_size=2, **kw)) for r in range(2)]
    workers = iter(build_loader(ds, 8, num_workers=2, **kw))
    for _step in range(6):  # one epoch is 4 steps
        x, y = next(single)
        (x0, y0), (x1, y1) = next(ranks[0]), next(ranks[1])
        # rank r holds positions r, r + 2, ... of the global batch
        torch.testing.assert_close(torch.stack([x0, x1], 1).flatten(0, 1), x, rtol=0, atol=0)
        assert torch.equal(torch.stack([y0, y1], 1).flatten(), y)
        xw, yw = next(workers)
        assert torch.equal(xw, x) and torch.equal(yw, y)
    resumed = iter(build_loader(ds, 8, start_step=5, **kw))
    fresh = iter(build_loader(ds, 8, **kw))
    for _ in range(5):
        next(fresh)
    for _ in range(3):
        assert torch.equal(next(resumed)[0], next(fresh)[0])


# ---------------------------------------------------------------- high bit depth, bombs, damaged .npz


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (and a 32-bit integer TIFF holding 16-bit values) maps 0..65535 onto 0..255 proportionally, in
    every reader (folder dataset at its own size): 65535 -> 255, 32768 -> 128, 257 -> 1."""
    values = np.random.default_rng(0).integers(0, 65536, (32, 32), dtype=np.uint16)
    values[0, :4] = [0, 257, 32768, 65535]
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode in ("I;16", "I")
    Image.fromarray(values.astype(np.int32), mode="I").save(tmp_path / "deep32.tif")
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert expected[0, :4].tolist() == [0, 1, 128, 255]
    ds = ImageFolderDataset(tmp_path, 32)
    for i in range(len(ds)):
        image = ds.uint8(i).numpy()
        assert (image == expected[None]).all(), ds.files[i]
    assert (expected == 255).mean() < 0.01  # PIL's own conversion made 99.6% of such pixels 255


def test_decompression_bomb_is_skipped_once_not_replaced(tmp_path, monkeypatch):
    """A bomb (over twice PIL's pixel limit, refused from its header) is dropped from a folder: evaluation reads the
    other images once each, never a neighbour twice in its place."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # a 100x100 image is then a bomb; 32x32 ones are fine
    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(originals):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "1b.png")  # sorts between 1.png and 2.png
    from vistok.data.sources import load_images
    from vistok.metrics import fid

    with pytest.warns(UserWarning, match="1b.png: DecompressionBombError"):
        images, _ = load_images(tmp_path, 32)  # what encode / reconstruct read
    assert images.shape[0] == 3
    for got, want in zip(images, originals, strict=True):
        assert np.array_equal(got, want)
    with pytest.warns(UserWarning):
        ds = fid.as_images(tmp_path)
    assert len(ds) == 3 and [p.name for p in ds.source.files] == ["0.png", "1.png", "2.png"]


def _damaged(tmp_path, kind: str) -> Path:
    good = tmp_path / "good.npz"
    np.savez(good, ids=np.arange(4000, dtype=np.int32).reshape(100, 40))
    data = good.read_bytes()
    path = tmp_path / f"{kind}.npz"
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "crc":
        path.write_bytes(data[:200] + bytes(b ^ 0x55 for b in data[200:2000]) + data[2000:])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "npy":
        np.save(path.with_suffix(""), np.zeros(3))
        path.with_suffix(".npy").rename(path)
    elif kind == "objects":
        np.savez(path, ids=np.array([{"a": 1}], dtype=object))
    return path


@pytest.mark.parametrize("kind", ["truncated", "crc", "random", "npy", "objects"])
def test_damaged_npz_is_one_line(tmp_path, kind):
    from vistok.data.arrays import read_npz
    from vistok.data.tokens import read_token_file

    path = _damaged(tmp_path, kind)
    for call in (lambda: read_npz(path), lambda: read_token_file(path)):
        with pytest.raises(VistokError, match=f"cannot read .*{kind}.npz|is a single .npy array") as err:
            call()
        assert "\n" not in str(err.value)
    assert read_npz(tmp_path / "good.npz", ("ids", "missing"))["ids"].shape == (100, 40)


def test_damaged_decode_cache_is_rebuilt(tmp_path, monkeypatch):
    from vistok.data import images as data_images

    monkeypatch.setenv("VISTOK_CACHE", str(tmp_path))
    built = []

    def build():
        built.append(1)
        return np.zeros((2, 32, 32, 3), np.uint8), np.arange(2)

    data_images._cached("k", build)
    (tmp_path / "k.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.warns(UserWarning, match="rebuilding the damaged decode cache"):
        images, labels = data_images._cached("k", build)
    assert len(built) == 2 and images.shape == (2, 32, 32, 3)
    assert data_images._cached("k", build)[1].tolist() == [0, 1] and len(built) == 2
    assert not list(tmp_path.glob(".k.npz.*"))  # written atomically, no temp left
