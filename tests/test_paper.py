"""Paper scale at tiny size: the sharded latent cache (`vistok cache-latents`), training on it, the official xAR recipe
configs and LR shape, FlexTok's ImageNet config on the same data path, and a dry run of the whole paper path."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vistok
from vistok import cli
from vistok.config import load_config
from vistok.data.latents import CacheImages, LatentCache, adm_center_crop, latent_loader, plan, shard_name, write_cache
from vistok.engine.optim import EMA, build_scheduler, constant_cosine
from vistok.errors import VistokError
from vistok.generators.xar import PRESETS
from vistok.tokenizers.latent_cache import cache_latents, vae_config
from vistok.tokenizers.vae import VAE

from conftest import check_ok, load_train_script, run

REPO = Path(__file__).resolve().parents[1]
FLEXTOK_SMALL = dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1)  # FlexTok's f8 layout, small
# xAR on 16 x 16 KL-16 latents (the paper's 4 cells of 8 x 8), as small as the mechanism allows
TINY_XAR = ["model.width=32", "model.depth=1", "model.heads=2", "model.num_classes=3", "model.dropout=0",
            "model.attn_dropout=0", "train.warmup_steps=0", "train.device=cpu", "train.precision=fp32",
            "train.num_workers=0", "train.log_every=1", "preview_per_class=0"]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def write_vae(folder: Path, layout: dict, scaling_factor: float = 0.2325, seed: int = 0) -> Path:
    """A random-init diffusers AutoencoderKL folder (16 latent channels) of the given layout."""
    from diffusers import AutoencoderKL

    n = len(layout["block_out_channels"])
    torch.manual_seed(seed)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                  latent_channels=16, norm_num_groups=32, scaling_factor=scaling_factor,
                  **layout).save_pretrained(folder)
    return folder


def write_classes(root: Path, classes=("cat", "dog", "fox"), per_class: int = 3, sizes=((300, 280),),
                  seed: int = 0) -> Path:
    """ImageNet-style class folders of random RGB images, sizes (w, h) cycled over the images."""
    rng = np.random.default_rng(seed)
    n = 0
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[n % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{c}_{i:02d}.png")
            n += 1
    return root


@pytest.fixture(scope="module")
def kl16_vae(tmp_path_factory) -> Path:
    """MAR's KL-16 layout (ch_mult (1, 1, 2, 2, 4), attention at 16x16, 16 latent channels, f16, scale 0.2325) at
    ch 32 with one block per level, random weights: a `kl-vae` export as `vistok convert --from mar-vae` writes."""
    from vistok.config import to_dict
    from vistok.io.exports import write_export as export
    from vistok.tokenizers.kl_vae import KLVAE, KLVAEConfig

    folder = tmp_path_factory.mktemp("vae") / "kl16-small"

    torch.manual_seed(0)
    config = KLVAEConfig(ch=32, num_res_blocks=1)
    return export(folder, "kl-vae", to_dict(config), KLVAE(config).state_dict())


# ------------------------------------------------------------------------------------------------------ the cache
def test_adm_center_crop_follows_adm() -> None:
    """1024 x 768: one box halving (short side >= 2 x 256) to 512 x 384, bicubic to 341 x 256, center crop at x 42."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8))
    expected = np.asarray(image.resize((512, 384), Image.BOX).resize((341, 256), Image.BICUBIC))[:, 42:298]
    assert np.array_equal(adm_center_crop(image, 256), expected)
    square = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert np.array_equal(adm_center_crop(Image.fromarray(square), 64), square)  # already the size: untouched


def test_cache_round_trip_and_flips(tmp_path, kl16_vae) -> None:
    """Stored moments are the VAE's own moments of the ADM-cropped image and of its mirror image."""
    folder = write_classes(tmp_path / "images", per_class=2, sizes=((80, 64), (64, 96)))
    report = cache_latents(str(kl16_vae), folder, tmp_path / "cache", resolution=64, flip=True, shard_size=4,
                           batch_size=3, num_workers=0, dtype="float32", device="cpu", progress=False)
    assert report.written == [0, 1] and report.images == 6
    cache = LatentCache(tmp_path / "cache", sample=False)
    assert len(cache) == 6 and cache.classes == ["cat", "dog", "fox"] and cache.latent_shape == (16, 4, 4)
    assert (tmp_path / "cache" / "files.txt").read_text().split() == [
        f"{c}/{c}_{i:02d}.png" for c in ("cat", "dog", "fox") for i in range(2)]
    vae = VAE(vae_config(str(kl16_vae)))
    assert cache.scale == vae.scaling_factor == 0.2325
    for i, path in enumerate(sorted(folder.rglob("*.png"))):
        with Image.open(path) as im:
            x = torch.from_numpy(adm_center_crop(im, 64)).permute(2, 0, 1)[None].float() / 127.5 - 1
        for flipped, pixels in ((False, x), (True, x.flip(-1))):
            mean, std = vae.moments(pixels)  # scaled by the VAE
            got_mean, got_std, label = cache.moments(i, flipped)
            assert label == i // 2
            torch.testing.assert_close(got_mean * cache.scale, mean[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got_std * cache.scale, std[0], rtol=1e-5, atol=1e-7)
        assert not torch.allclose(cache.moments(i, True)[0], cache.moments(i, False)[0])  # the flip is its own image
    # fp16 (the default) keeps the same moments to fp16 precision
    cache_latents(str(kl16_vae), folder, tmp_path / "half", resolution=64, flip=True, shard_size=4, num_workers=0,
                  device="cpu", progress=False)
    half = LatentCache(tmp_path / "half", sample=False)
    torch.testing.assert_close(half.moments(5, True)[0], cache.moments(5, True)[0], rtol=2e-3, atol=1e-3)


def test_rerun_skips_finished_shards_and_refuses_another_cache(tmp_path, kl16_vae, capsys) -> None:
    folder = write_classes(tmp_path / "images", per_class=2, sizes=((32, 32),))
    out = tmp_path / "cache"
    kw = dict(resolution=32, shard_size=2, num_workers=0, device="cpu", progress=False)
    assert cache_latents(str(kl16_vae), folder, out, **kw).written == [0, 1, 2]
    mtimes = {k: (out / shard_name(k)).stat().st_mtime_ns for k in range(3)}
    before = load_file(out / shard_name(1))
    (out / shard_name(1)).unlink()  # a job stopped before shard 1 was written
    with pytest.raises(VistokError, match="incomplete: 1 of 3 shards missing"):
        LatentCache(out)
    report = cache_latents(str(kl16_vae), folder, out, **kw)
    assert report.written == [1] and report.skipped == [0, 2] and report.images == 2  # only shard 1 encoded
    assert all((out / shard_name(k)).stat().st_mtime_ns == mtimes[k] for k in (0, 2))
    assert all(torch.equal(before[k], v) for k, v in load_file(out / shard_name(1)).items())
    assert cache_latents(str(kl16_vae), folder, out, **kw).written == []  # nothing left to do
    with pytest.raises(VistokError, match="holds another cache .*flip"):
        cache_latents(str(kl16_vae), folder, out, **{**kw, "flip": True})
    # the CLI: one line per process, and one-line errors
    assert cli.main(["cache-latents", "--vae", str(kl16_vae), "--input", str(folder), "--out", str(out),
                     "--resolution", "32", "--shard-size", "2", "--workers", "0", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == f"rank 0/1: encoded 0 images into 0 shards, 3 already finished -> {out}"
    not_a_vae = tmp_path / "not-a-vae"  # a folder beside --out (one that held --out would be refused as its input)
    not_a_vae.mkdir()
    for argv, fragment in ((["--vae", "vae-tiny-f4"], "random weights"), (["--vae", "vae-kl16"], "vistok convert"),
                           (["--vae", str(not_a_vae)], "neither a VAE preset"),
                           (["--vae", str(tmp_path / "missing.ckpt")], "neither a VAE preset"),
                           (["--vae", str(kl16_vae), "--resolution", "40"], "must divide by the VAE's factor 16")):
        assert cli.main(["cache-latents", "--input", str(folder), "--out", str(tmp_path / "x"), "--device", "cpu",
                         *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, err
    (folder / "dog" / "dog_00.png").write_bytes(b"not a png")  # read by a loader worker: still one line, named
    assert cli.main(["cache-latents", "--vae", str(kl16_vae), "--input", str(folder), "--out", str(tmp_path / "y"),
                     "--resolution", "32", "--shard-size", "2", "--workers", "1", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read image" in err and "dog_00.png" in err, err
    assert [p.name for p in sorted((tmp_path / "y").glob("shard-*"))] == ["shard-00000.safetensors"]  # cats kept


@pytest.fixture(scope="module")
def paper_images(tmp_path_factory) -> Path:
    """The paper path's ImageNet-style folder: 3 classes of 3 images, landscape and portrait (ADM crops them)."""
    return write_classes(tmp_path_factory.mktemp("paper") / "imagenet" / "train", per_class=3,
                         sizes=((80, 64), (64, 96)))


@pytest.fixture(scope="module")
def two_rank_cache(tmp_path_factory, paper_images, kl16_vae):
    """`torchrun --nproc_per_node=2 -m vistok cache-latents` of that folder at 64 x 64 with flips, 5 shards of 2 images
    (the README's step 2 at tiny size): the subject of the test below, and the cache the dry run trains on."""
    out = tmp_path_factory.mktemp("two_rank_cache") / "cache"
    args = ["--vae", str(kl16_vae), "--input", str(paper_images), "--resolution", "64", "--shard-size", "2", "--flip",
            "--workers", "0", "--device", "cpu"]
    return run(*torchrun("-m", "vistok", "cache-latents", *args, "--out", str(out))), out


def test_two_ranks_cover_every_image_once(tmp_path, kl16_vae, paper_images, two_rank_cache) -> None:
    """torchrun with 2 processes: rank r writes shards r, r + 2, ...; together they equal a one-process cache."""
    proc, out = two_rank_cache
    check_ok(proc)
    lines = sorted(ln for ln in proc.stdout.splitlines() if ln.startswith("rank"))
    assert lines == [f"rank 0/2: encoded 5 images into 3 shards, 0 already finished -> {out}",
                     f"rank 1/2: encoded 4 images into 2 shards, 0 already finished -> {out}"]
    cache_latents(str(kl16_vae), paper_images, tmp_path / "one", resolution=64, flip=True, shard_size=2,
                  num_workers=0, device="cpu", progress=False)
    two, one = LatentCache(out, sample=False), LatentCache(tmp_path / "one", sample=False)
    assert two.manifest == {**one.manifest}
    firsts = []
    for k in range(5):
        a, b = load_file(out / shard_name(k)), load_file(tmp_path / "one" / shard_name(k))
        assert a.keys() == b.keys() == {"mean", "std", "mean_flip", "std_flip", "label"}
        assert all(torch.equal(a[key], b[key]) for key in a)
        from safetensors import safe_open

        with safe_open(str(out / shard_name(k)), "pt") as f:
            firsts += range(int(f.metadata()["first"]), int(f.metadata()["first"]) + len(a["label"]))
    assert firsts == list(range(9))  # every image exactly once, in order
    assert [two.moments(i)[2] for i in range(9)] == [i // 3 for i in range(9)]


# --------------------------------------------------------------------------------------------- training on it
def test_training_batch_is_a_fresh_posterior_sample(tmp_path) -> None:
    """scale * (mean + std * eps) from the moments of the image or of its flip, eps fresh at every visit."""
    folder = write_classes(tmp_path / "images", classes=("a", "b"), per_class=2, sizes=((8, 8),))
    images = CacheImages(folder, 8)
    # known moments per image: mean = image index + 0.25 (flip: minus), std = 0.5 (flip: 2); 1 x 2 x 2 latents
    calls = []

    def moments(x: torch.Tensor):
        n = len(x) // 2
        calls.append(n)
        idx = torch.arange(sum(calls) - n, sum(calls)).float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
        mean = torch.cat([idx + 0.25, -(idx + 0.25)])
        return mean, torch.cat([torch.full_like(idx, 0.5), torch.full_like(idx, 2.0)])

    manifest = plan(images, shard_size=3, flip=True, latent_shape=(1, 2, 2), dtype="float32", scaling_factor=0.5,
                    tokenizer={"family": "test"})
    write_cache(tmp_path / "cache", images, moments, manifest, batch_size=4, num_workers=0, progress=False)
    cache = LatentCache(tmp_path / "cache", seed=7)
    epochs = 4000
    draws = [cache.draw(3, e) for e in range(epochs)]
    latents = torch.stack([d[0] for d in draws])  # (E, 1, 2, 2)
    flipped = torch.tensor([d[2] for d in draws])
    assert abs(flipped.float().mean() - 0.5) < 4 * 0.5 / math.sqrt(epochs)  # the flip half of the time
    for f, mean, std in ((False, 3.25, 0.5), (True, -3.25, 2.0)):
        x = latents[flipped == f]
        assert abs(x.mean() - 0.5 * mean) < 4 * 0.5 * std / math.sqrt(x.numel())  # scale * mean
        assert abs(x.std() / (0.5 * std) - 1) < 0.05  # scale * std
    # exactly scale * (mean + std * eps), eps drawn after the flip from the (seed, epoch, index) generator
    g = cache.generator(3, 11)
    flip = bool(torch.rand((), generator=g) < 0.5)
    eps = torch.randn((1, 2, 2), generator=g)
    m, s = (-3.25, 2.0) if flip else (3.25, 0.5)
    assert torch.equal(cache[(3, 11)][0], 0.5 * (torch.full((1, 2, 2), m) + s * eps))
    assert torch.equal(cache[(3, 11)][0], cache[(3, 11)][0]) and not torch.equal(cache[(3, 11)][0], cache[(3, 12)][0])
    assert cache[(2, 0)][1] == 1 and cache[(1, 0)][1] == 0  # labels from the class folders
    # the loader hands out those draws, rank-sharded like the image loader
    (x0, y0), = [next(iter(latent_loader(cache, 4, r, 2, seed=7))) for r in (0,)]
    order = torch.randperm(4, generator=torch.Generator().manual_seed(7 * 1_000_003))
    assert torch.equal(x0, torch.stack([cache[(int(i), 0)][0] for i in order[0::2]]))
    with_worker = next(iter(latent_loader(cache, 4, 0, 2, seed=7, num_workers=1)))  # open shards are not pickled
    assert torch.equal(with_worker[0], x0) and torch.equal(with_worker[1], y0)


def test_constant_cosine_schedule_values() -> None:
    """Warmup, constant, cosine to min_lr over the last quarter, against the official epoch formula (util/lr_sched.py:
    lr * e / 100 below epoch 100; lr to epoch 600; min + (lr - min) (1 + cos(pi (e - 600) / 200)) / 2 after)."""
    lr, min_lr, per_epoch = 4e-4, 1e-5, 625
    total, warmup = 800 * per_epoch, 100 * per_epoch

    def official(e: float) -> float:
        if e < 100:
            return lr * e / 100
        if e < 600:
            return lr
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (e - 600) / 200))

    for step in (0, 1, 31250, 62499, 62500, 200000, 374999, 375000, 375001, 437500, 480000, 499999, 500000):
        got = lr * constant_cosine(step, warmup, total, 0.75, min_lr / lr)
        assert got == pytest.approx(official(step / per_epoch), rel=1e-12, abs=1e-15), step
    assert constant_cosine(437500, warmup, total, 0.75, 0.025) == pytest.approx((1 + 0.025) / 2)  # mid-tail
    # as a scheduler on a short run: hand values for total 8, warmup 2, decay from step 6, min 0.1 x lr
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, "constant-cosine", 2, 8, min_lr=0.2, decay_start=0.75)
    seen = []
    for _ in range(9):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.1, 0.2])
    with pytest.raises(VistokError, match="decay_start"):
        build_scheduler(opt, "constant-cosine", 7, 8, decay_start=0.75)
    with pytest.raises(VistokError, match="min_lr"):
        build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), "constant-cosine", 0, 8, 1e-2)


def test_ema_without_warmup_uses_the_full_decay_from_the_first_step() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, 0.9999, warmup=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.current_decay() == 0.9999
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.9999 * 1.0 + 0.0001 * 3.0))
    assert EMA(model, 0.9999).current_decay() == pytest.approx(0.1)  # the ramp the official recipe does not use


# ----------------------------------------------------------------------------------------------- recipe configs
script = load_train_script


def train_xar_module():
    return script("train_xar")


@pytest.mark.parametrize("size,steps,cfg", [("b", 40, 2.7), ("l", 50, 2.3), ("h", 50, 2.2)])
def test_paper_configs_hold_the_official_recipe(size, steps, cfg) -> None:
    c = load_config(train_xar_module().Config, REPO / f"train/configs/xar_{size}_in256.yaml")
    t = c.train
    assert (t.betas, t.weight_decay, t.grad_clip, t.batch_size, t.lr, t.min_lr) == (
        (0.9, 0.96), 0.02, 1.0, 2048, 4e-4, 1e-5)
    assert (t.schedule, t.decay_start, t.warmup_steps / t.total_steps) == ("constant-cosine", 0.75, 100 / 800)
    assert (t.ema_decay, t.ema_warmup) == (0.9999, False)
    assert t.decay_rule == "official"  # the official add_weight_decay: class and position tables decayed
    assert c.model == replace(PRESETS[f"xar-{size}"], time_floor=True)  # the preset, with the official floor(t * 1000)
    assert (c.model.dropout, c.model.attn_dropout, c.model.label_drop) == (0.1, 0.1, 0.1)
    assert (c.sample.steps, c.sample.cfg, c.sample.cfg_schedule, c.sample.method) == (steps, cfg, "linear", "sde")
    assert c.data.latents


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, two_rank_cache) -> tuple:
    """The README's step 3 at tiny size: xar_b_in256.yaml with a tiny model (4 x 4 latents, 4 entities of 2 x 2) for 3
    steps on the 2-rank cache, under torchrun with 2 processes; read by the two tests below."""
    cache = two_rank_cache[1]
    run_dir = tmp_path_factory.mktemp("paper_run") / "run"
    proc = run(*torchrun("train/train_xar.py", "--config", "train/configs/xar_b_in256.yaml", *TINY_XAR,
                         f"data.latents={cache}", f"train.run_dir={run_dir}", "train.batch_size=4",
                         "train.total_steps=3", "model.grid=[4,4]", "model.entity_size=2"))
    return proc, run_dir, cache


def test_paper_config_trains_on_a_latent_cache_and_samples_decode(tmp_path, kl16_vae, paper_run, capsys) -> None:
    """xar_b_in256.yaml with a tiny model (the dry run's training run): trains on the cache, exports the cache's VAE and
    xAR-B's sampling defaults, and `vistok sample` decodes through that VAE unless flags override the defaults."""
    proc, run_dir, cache = paper_run
    check_ok(proc)
    meta = json.loads((run_dir / "export" / "config.json").read_text())
    assert meta["tokenizer"] == {"family": "vae", "config": meta["tokenizer"]["config"], "path": "tokenizer",
                                 "source": kl16_vae.name}  # the cache's VAE copied into the export, no absolute path
    assert "weights" not in meta["tokenizer"]["config"]
    assert (run_dir / "export" / "tokenizer" / "model.safetensors").is_file()
    assert meta["sample"]["steps"] == 40 and meta["sample"]["cfg"] == 2.7 and meta["classes"] == ["cat", "dog", "fox"]
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["lr"] == pytest.approx(4e-4)  # no warmup: constant
    generator = vistok.load(run_dir / "export")
    assert (generator.defaults.steps, generator.defaults.cfg) == (40, 2.7)
    assert generator.settings(steps=2).cfg == 2.7 and generator.settings(cfg=1.5).cfg == 1.5
    assert cli.main(["sample", "--ckpt", str(run_dir / "export"), "--num", "3", "--steps", "2", "--out",
                     str(tmp_path / "samples"), "--quiet", "--device", "cpu"]) == 0
    assert "steps 2, cfg 2.7, cfg_schedule linear" in capsys.readouterr().out  # the export's cfg, the flag's steps
    with np.load(tmp_path / "samples" / "samples.npz") as z:
        assert z["arr_0"].shape == (3, 64, 64, 3) and z["arr_0"].dtype == np.uint8  # decoded by the 16x VAE
    # a model that does not fit the cache is one line before any work
    mod = train_xar_module()
    cfg = load_config(mod.Config, REPO / "train/configs/xar_b_in256.yaml", [f"data.latents={cache}"])
    with pytest.raises(VistokError, match=r"16-channel 4x4 token grids.*model.grid=\[4,4\]"):
        mod.check_pairing(cfg, 16, LatentCache(cache).latent_shape[1:], 3, "the cache")


def test_flextok_in1k_config_runs_on_a_latent_cache(tmp_path) -> None:
    """flextok_d18_d18_in1k.yaml on the same data path for 2 steps: a tiny model, a small f8 VAE cache with flips,
    REPA to the conv teacher on the cached images (mirrored with the flip's latents)."""
    vae = write_vae(tmp_path / "vae", FLEXTOK_SMALL, scaling_factor=0.5)
    folder = write_classes(tmp_path / "images", per_class=2, sizes=((64, 64),))
    cache_latents(str(vae), folder, tmp_path / "cache", resolution=64, flip=True, shard_size=4, num_workers=0,
                  device="cpu", progress=False)
    run_dir = tmp_path / "run"
    from test_faults import Forked  # the script in a process of its own, forked from this one: imports done already

    proc = Forked([str(REPO / "train/train_flextok.py"), "--config", "train/configs/flextok_d18_d18_in1k.yaml",
                   f"train.run_dir={run_dir}", f"data.latents={tmp_path / 'cache'}", f"data.name={folder}",
                   "data.resolution=64", "model.registers=8", "model.enc_width=32", "model.dec_width=32",
                   "model.enc_depth=1", "model.dec_depth=1", "model.head_dim=16", "model.grid=[8,8]",
                   "train.batch_size=4", "train.total_steps=2", "train.warmup_steps=0", "train.device=cpu",
                   "train.precision=fp32", "train.parallel=ddp", "train.num_workers=0", "train.log_every=1",
                   "repa.teacher=conv", "repa.conv_dim=16", "model.repa_dim=16", "model.repa_hidden=32",
                   "model.repa_layer=0", "preview_images=2", "sample.steps=2"], tmp_path / "train_flextok").wait()
    check_ok(proc)
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) and -1 <= r["repa"] <= 1 for r in rows)
    meta = json.loads((run_dir / "export" / "config.json").read_text())
    assert meta["tokenizer"]["family"] == "vae" and meta["tokenizer"]["path"] == "tokenizer"  # the VAE copied inside
    assert "weights" not in meta["tokenizer"]["config"] and (run_dir / "export" / "tokenizer" / "config.json").is_file()
    assert (run_dir / "export" / "preview.png").is_file()
    tok = vistok.load(run_dir / "export")  # FlexTok on the cache's VAE: encode pixels, decode tokens to pixels
    assert tok.decode(tok.encode(np.zeros((2, 64, 64, 3), np.uint8)), 2, steps=1).shape == (2, 64, 64, 3)
    other = write_classes(tmp_path / "other", classes=("x",), per_class=6, sizes=((64, 64),))
    mod = script("train_flextok")
    cfg = load_config(mod.Config, REPO / "train/configs/flextok_d18_d18_in1k.yaml",
                      [f"data.latents={tmp_path / 'cache'}", f"data.name={other}", "data.resolution=64"])
    with pytest.raises(VistokError, match="does not hold the images of the cache"):
        mod.latent_dataset(cfg, with_images=True)
    with pytest.raises(VistokError, match="data.limit does not apply"):
        mod.check_config(load_config(mod.Config, REPO / "train/configs/flextok_d18_d18_in1k.yaml", ["data.limit=4"]))


# ------------------------------------------------------------------------------------------------- the dry run
def test_paper_path_dry_run(tmp_path, two_rank_cache, paper_run, paper_images, capsys,
                            inception_weights) -> None:
    """The README's "Paper scale" path at tiny size: 3 classes of 9 images cropped to 64 x 64; `cache-latents` under
    torchrun with 2 processes with a KL-16 layout VAE (ch 32); the xAR-B recipe config with a tiny model for 3 steps
    under torchrun with 2 processes (both in fixtures above); sampling under torchrun with 2 processes, several
    batches per rank (the same files and images as the command in one process, and as the API); FID with
    inception-v3-compat (random weights, offline) against `vistok fid-stats` of the folder, with the Inception Score
    (its warnings about the unpublished weights and the few images are expected)."""
    proc, cache = two_rank_cache
    check_ok(proc)
    folder = paper_images
    assert LatentCache(cache).latent_shape == (16, 4, 4)  # complete: every shard present
    proc, run_dir, _ = paper_run
    check_ok(proc)
    assert json.loads((run_dir / "export" / "config.json").read_text())["step"] == 3
    samples, one_process = tmp_path / "samples", tmp_path / "one"
    common = ["sample", "--ckpt", str(run_dir / "export"), "--samples", "6", "--batch-size", "2", "--steps", "2",
              "--seed", "0", "--device", "cpu", "--quiet"]  # 3 images per rank, in batches of 2
    proc = run(*torchrun("-m", "vistok", *common, "--out", str(samples)))
    check_ok(proc)
    assert "2 processes" in proc.stdout and proc.stdout.count("6 images") == 1  # rank 0 reports, once
    assert cli.main([*common, "--out", str(one_process)]) == 0  # the same command as one process (this one)
    with np.load(samples / "samples.npz") as z, np.load(one_process / "samples.npz") as o:
        assert z["arr_0"].shape == (6, 64, 64, 3) and z["labels"].tolist() == [0, 1, 2, 0, 1, 2]
        assert sorted(z.files) == sorted(o.files) == ["arr_0", "labels", "source"]
        assert str(z["source"]) == str(o["source"]) == str(run_dir / "export")  # the model that made them
        assert np.array_equal(z["arr_0"], o["arr_0"]) and np.array_equal(z["labels"], o["labels"])
        two_ranks = z["arr_0"]
    assert sorted(p.name for p in samples.iterdir()) == sorted(p.name for p in one_process.iterdir())
    one = vistok.load(run_dir / "export").sample(num=6, seed=0, steps=2)  # the API: the same per-image seeds
    assert np.array_equal(one, two_ranks)
    weights = inception_weights
    flags = ["--extractor", "inception-v3-compat", "--inception-weights", str(weights)]
    assert cli.main(["fid-stats", "--input", str(folder), "--out", str(tmp_path / "ref.npz"), *flags]) == 0
    capsys.readouterr()
    assert cli.main(["fid", "--fake", str(samples / "samples.npz"), "--real", str(tmp_path / "ref.npz"), "--isc",
                     "--json", *flags]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_fake"] == 6 and math.isfinite(result["fid"]) and result["fid"] >= 0 and result["isc"] >= 1
