"""FlexTok end to end: train/train_flextok.py runs a few steps (its main, in this process), exports and
resumes (the latent-cache + REPA path is in tests/test_paper.py); `vistok encode` -> `vistok decode` round-trips token
ids (int32, in range, k per image honoured); `vistok reconstruct` writes per-k reconstructions, a grid and JSON
metrics; user mistakes are one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
from vistok import cli
from vistok.api import load_flextok
from vistok.api.jobs import prefix_list as parse_ks
from vistok.config import from_dict
from vistok.data.sources import load_images
from vistok.errors import VistokError
from vistok.io.exports import write_export
from vistok.metrics.recon import image_metrics
from vistok.tokenizers.flextok_sampling import k_ladder
from vistok.viz import recon_grid

from conftest import CliResult, check_ok, load_train_script, script_main, vistok as vistok_cli

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "train/configs/flextok_cifar10_tiny.yaml")
# flextok-test sized: 8 registers, width 32, one block each side, on 32 CIFAR-10 images
TINY = ["model.registers=8", "model.enc_width=32", "model.dec_width=32", "model.enc_depth=1", "model.dec_depth=1",
        "model.head_dim=16", "data.limit=32", "train.batch_size=8", "train.total_steps=3", "train.warmup_steps=0",
        "train.num_workers=0", "train.device=cpu", "train.log_every=1", "preview_images=2", "sample.steps=2"]


def one_line_error(proc: CliResult, code: int = 1) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def script():
    """train/train_flextok.py imported as a module (its Config and helpers), without running main."""
    return load_train_script("train_flextok")


def train_flextok(*argv: str) -> CliResult:
    return script_main("train_flextok", "--config", CONFIG, *argv)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root) -> Path:
    """A 3-step run of the real script and config, exported."""
    path = tmp_path_factory.mktemp("flextok_run")
    check_ok(train_flextok(f"train.run_dir={path}", *TINY))
    return path


@pytest.fixture(scope="module")
def random_export(run_dir, tmp_path_factory) -> Path:
    """The trained export with its zero-initialised weights (heads, adaLN) made random: 3 steps leave them near
    zero, and decoded images would barely depend on the tokens."""
    model, _, meta = load_flextok(run_dir / "export")
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(v.shape, generator=gen) * 0.3 if v.abs().max() < 0.01 else v
             for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("random") / "export"
    return write_export(out, meta.pop("family"), meta.pop("config"), state, **meta)


def test_training_exports_model_tokenizer_and_preview(run_dir):
    export = run_dir / "export"
    meta = json.loads((export / "config.json").read_text())
    assert meta["family"] == "flextok" and meta["step"] == 3 and meta["resolution"] == 32
    assert meta["tokenizer"] == {"family": "pixel", "config": {"patch": 1, "channels": 3, "scale": 2.0}}
    assert meta["config"]["registers"] == 8 and meta["config"]["repa_dim"] == 0 and meta["nested_dropout"] == "pow2"
    assert meta["sample"] == {"steps": 2, "cfg": 1.0, "guidance": "cfg"}
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) and r["loss"] == r["flow"]
                                                          for r in rows)
    model, tokenizer, _ = load_flextok(export)  # the folder alone rebuilds both
    assert not model.training and model.repa_proj is None and model.config.grid == (32, 32)
    assert tokenizer.decode(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    assert Image.open(export / "preview.png").size == (5 * 34 + 2, 2 * 34 + 2)  # input + k = 1, 2, 4, 8; 2 rows


def test_rerun_resumes_and_trains_on(run_dir, tmp_path):
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed, ignore=shutil.ignore_patterns("export"))
    proc = train_flextok(f"train.run_dir={resumed}", *TINY, "train.total_steps=5", "preview_images=0")
    check_ok(proc)
    assert "resuming" in proc.stderr and "train.total_steps" in proc.stderr
    rows = [json.loads(ln) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[:3] == [
        json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert json.loads((resumed / "export" / "config.json").read_text())["step"] == 5
    assert not (resumed / "export" / "preview.png").exists()


def test_training_on_a_procedural_mix_records_it_in_the_export(run_dir, tmp_path):
    """data.mix adds dead-leaves images (half the set here): they are in the training set (the preview's evenly
    spaced rows reach them) and change the batches; data.gray_p alone changes them too; the export says what
    widened its data."""
    from vistok.data.procedural import DeadLeaves

    losses = {}
    for name, extra in {"mix": ["data.mix=dead-leaves", "data.mix_frac=0.5"], "gray": ["data.gray_p=0.5"]}.items():
        out = tmp_path / name
        check_ok(train_flextok(f"train.run_dir={out}", *TINY, "train.total_steps=1", *extra))
        losses[name] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    meta = json.loads((tmp_path / "mix" / "export" / "config.json").read_text())
    assert (meta["data_mix"] == {"mix": "dead-leaves", "mix_frac": 0.5, "gray_p": 0.0}
            and meta["data"] == "cifar10-train")
    assert json.loads((tmp_path / "gray" / "export" / "config.json").read_text())["data_mix"]["gray_p"] == 0.5
    assert json.loads((run_dir / "export" / "config.json").read_text())["data_mix"] is None
    preview = np.asarray(Image.open(tmp_path / "mix" / "export" / "preview.png"))  # rows: images 0 and 32 of 64
    leaf = DeadLeaves(32, 32, seed=0).uint8(0).permute(1, 2, 0).numpy()
    assert np.array_equal(preview[36:68, 2:34], leaf)  # second row's input: the first dead-leaves image
    plain = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert losses["mix"] != plain and losses["gray"] != plain and losses["mix"] != losses["gray"]


def test_init_from_an_export_starts_from_its_weights(run_dir, tmp_path):
    """A fine-tune starts from the export's weights: with the learning rate at 0 one step changes nothing, so its
    export is the init export bit for bit (a from-scratch start would differ everywhere); the export names its init."""
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    check_ok(train_flextok(f"train.run_dir={out}", *TINY, "train.total_steps=1", "train.lr=0", "preview_images=0",
                           f"init_from={run_dir / 'export'}", "model.nested_dropout=uniform"))
    init, tuned = (load_file(d / "export" / "model.safetensors") for d in (run_dir, out))
    assert init.keys() == tuned.keys() and all(torch.equal(init[k], tuned[k]) for k in init)
    meta = json.loads((out / "export" / "config.json").read_text())
    assert meta["init_from"] == "export" and meta["nested_dropout"] == "uniform"  # no absolute path in an export


def test_init_from_another_architecture_is_one_line_before_any_work(run_dir, tmp_path):
    proc = train_flextok(f"train.run_dir={tmp_path / 'r'}", *TINY, f"init_from={run_dir / 'export'}",
                         "model.dec_width=64")
    assert "has another architecture (model.dec_width=32); set those model keys to match it" in one_line_error(proc)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("stem, config", [("train_xar", "xar_cifar10_tiny.yaml"), ("train_fid_net", "fid_net.yaml")])
def test_class_conditional_trainers_refuse_unlabelled_mixes(stem, config, tmp_path):
    proc = script_main(stem, "--config", str(REPO / "train/configs" / config), f"train.run_dir={tmp_path / 'r'}",
                       "data.mix=dead-leaves", "train.device=cpu")
    assert "data.mix=dead-leaves adds unlabelled images" in one_line_error(proc)
    assert not (tmp_path / "r").exists()  # refused before the run folder or the data were touched


def test_encode_decode_via_the_cli(random_export, data_root, tmp_path, capsys):
    tokens = tmp_path / "tokens.npz"
    assert cli.main(["encode", "--ckpt", str(random_export), "--input", "cifar10-test", "--num", "6",
                     "--tokens", "1,2,8", "--out", str(tokens)]) == 0
    with np.load(tokens) as z:
        ids, k, labels = z["ids"], z["k"], z["labels"]
    assert ids.dtype == np.int32 and ids.shape == (6, 8) and ((ids >= 0) & (ids < 64_000)).all()
    assert k.dtype == np.int32 and k.tolist() == [1, 2, 8, 1, 2, 8] and labels.shape == (6,)
    assert (ids[np.arange(8) >= k[:, None]] == 0).all()  # nothing past each image's k is kept
    images, _ = load_images("cifar10-test", 32, 6)
    full = vistok.load(random_export).encode(images)
    assert np.array_equal(ids[k == 8], full[k == 8]) and np.array_equal(ids[:, 0], full[:, 0])

    assert cli.main(["decode", "--ckpt", str(random_export), "--tokens", str(tokens), "--out", str(tmp_path / "dec"),
                     "--steps", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "dec").glob("0*.png")) == [f"{i:06d}.png" for i in range(6)]
    with np.load(tmp_path / "dec" / "samples.npz") as z:
        decoded = z["arr_0"]
        assert decoded.shape == (6, 32, 32, 3) and decoded.dtype == np.uint8 and z["labels"].tolist() == labels.tolist()
    # k per image is honoured: ids past k change nothing, while decoding all 8 tokens of the same ids differs
    noisy = np.where(np.arange(8) >= k[:, None], np.random.default_rng(0).integers(0, 64_000, ids.shape), ids)
    np.savez(tmp_path / "noisy.npz", ids=noisy.astype(np.int32), k=k)
    np.savez(tmp_path / "all.npz", ids=noisy.astype(np.int32))  # no k: every image uses all 8
    for name in ("noisy", "all"):
        assert cli.main(["decode", "--ckpt", str(random_export), "--tokens", str(tmp_path / f"{name}.npz"),
                         "--out", str(tmp_path / name), "--steps", "2"]) == 0
    with np.load(tmp_path / "noisy" / "samples.npz") as a, np.load(tmp_path / "all" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], decoded)
        differs = [not np.array_equal(b["arr_0"][i], decoded[i]) for i in range(6)]
        assert differs == [True, True, False, True, True, False]
    assert "6 images" in capsys.readouterr().out


def test_reconstruct_writes_images_grid_and_metrics_per_k(run_dir, random_export, data_root, tmp_path):
    out, report = tmp_path / "rec", tmp_path / "report" / "metrics.json"
    assert cli.main(["reconstruct", "--ckpt", str(run_dir / "export"), "--input", "cifar10-test", "--num", "4",
                     "--tokens", "1,2,8", "--steps", "2", "--out", str(out), "--json", str(report), "--no-fid"]) == 0
    result = json.loads(report.read_text())
    assert result == json.loads((out / "metrics.json").read_text())
    assert result["num"] == 4 and result["tokens"] == [1, 2, 8] and result["steps"] == 2 and result["fid_real"] is None
    assert sorted(result["metrics"]) == ["1", "2", "8"]
    for m in result["metrics"].values():
        assert (set(m) == {"mse", "psnr", "ssim"} and 0 < m["mse"] < 1 and np.isfinite(m["psnr"])
                and -1 <= m["ssim"] <= 1)
    for k in (1, 2, 8):
        assert len(list((out / f"k{k:03d}").glob("*.png"))) == 4
        with np.load(out / f"k{k:03d}.npz") as z:
            assert z["arr_0"].shape == (4, 32, 32, 3)
    assert Image.open(out / "grid.png").size == (4 * 34 + 2, 4 * 34 + 2)  # input + 3 k; 4 rows
    # the library call agrees with the command and is repeatable (same seed, same noise per image)
    images, _ = load_images("cifar10-test", 32, 4)
    again = vistok.load(run_dir / "export").reconstruct(images, [1, 2, 8], steps=2, cfg=1.0, seed=0)
    assert {str(k): image_metrics(images, v) for k, v in again.items()} == result["metrics"]
    for k in (1, 2, 8):
        with np.load(out / f"k{k:03d}.npz") as z:
            assert np.array_equal(z["arr_0"], again[k])  # bit-identical to the command's images


def test_reconstruct_fid_with_an_extractor_export(random_export, tmp_path):
    """FID without the shipped cifar10-net: a random cifar10-net-test export as the extractor and the inputs' own
    images as the reference, so the inputs' FID (the floor) is 0."""
    from vistok.metrics.fid_net import PRESETS as FID_PRESETS, FidNet

    cfg = FID_PRESETS["cifar10-net-test"]
    torch.manual_seed(0)
    net = write_export(tmp_path / "net", "fid_net", dataclasses.asdict(cfg), FidNet(cfg).state_dict())
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "inputs.npz", images=images)
    assert cli.main(["reconstruct", "--ckpt", str(random_export), "--input", str(tmp_path / "inputs.npz"),
                     "--tokens", "2,8", "--steps", "1", "--out", str(tmp_path / "rec"), "--fid-real",
                     str(tmp_path / "inputs.npz"), "--extractor-weights", str(net)]) == 0
    result = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert abs(result["fid_inputs"]) < 1e-3 and all(m["fid"] > 1e-3 for m in result["metrics"].values())


def test_metrics_ladder_and_grid_helpers():
    images = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8).numpy()
    same = image_metrics(images, images)
    assert same["mse"] == 0 and same["psnr"] == pytest.approx(100) and same["ssim"] == pytest.approx(1)
    worse = image_metrics(images, np.clip(images.astype(int) + 40, 0, 255).astype(np.uint8))
    assert 0 < worse["mse"] < 0.03 and worse["psnr"] < 100 and worse["ssim"] < 1
    assert k_ladder(16) == [1, 2, 4, 8, 16] and k_ladder(6) == [1, 2, 4, 6] and k_ladder(1) == [1]
    assert parse_ks(None, 8) == [1, 2, 4, 8] and parse_ks("3,8", 8) == [3, 8]
    for bad in ("0,2", "9", "a"):
        with pytest.raises(VistokError, match="--tokens"):
            parse_ks(bad, 8)
    grid = recon_grid(images, {4: images, 1: images}, rows=2)
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3) and (grid[2:34, 2:34] == images[0]).all()


def test_user_mistakes_are_one_line_errors(random_export, tmp_path, capsys):
    line = one_line_error(vistok_cli("reconstruct", "--ckpt", str(tmp_path / "missing"), "--input", "cifar10-test",
                                     "--out", str(tmp_path / "o"), "--no-fid"))
    assert "neither an exported folder" in line and not (tmp_path / "o").exists()
    ckpt = ["--ckpt", str(random_export)]
    np.savez(tmp_path / "float.npz", ids=np.zeros((2, 4), np.float32))
    np.savez(tmp_path / "big.npz", ids=np.full((2, 4), 64_000, np.int32))
    np.savez(tmp_path / "badk.npz", ids=np.zeros((2, 4), np.int32), k=np.array([1, 5]))
    np.savez(tmp_path / "small.npz", images=np.zeros((2, 16, 16, 3), np.uint8))
    (tmp_path / "plain").mkdir()
    cases = [
        (["encode", *ckpt, "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t.npz")], "is not a dataset"),
        (["encode", *ckpt, "--input", str(tmp_path / "small.npz"), "--out", str(tmp_path / "t.npz")], "16x16 images"),
        (["encode", *ckpt, "--input", str(tmp_path / "small.npz"), "--out", str(tmp_path / "t.txt")],
         "must end in .npz"),
        (["encode", *ckpt, "--input", str(tmp_path / "small.npz"), "--out", str(tmp_path / "t.npz"), "--tokens", "9"],
         "1..8"),
        (["decode", *ckpt, "--tokens", str(tmp_path / "none.npz"), "--out", str(tmp_path / "d")], "does not exist"),
        (["decode", *ckpt, "--tokens", str(tmp_path / "float.npz"), "--out", str(tmp_path / "d")], "integer 'ids'"),
        (["decode", *ckpt, "--tokens", str(tmp_path / "big.npz"), "--out", str(tmp_path / "d")], "0..63999"),
        (["decode", *ckpt, "--tokens", str(tmp_path / "badk.npz"), "--out", str(tmp_path / "d")], "1..4"),
        (["reconstruct", *ckpt, "--input", str(tmp_path / "small.npz"), "--out", str(tmp_path / "r"),
          "--tokens", "1,2", "--no-fid", "--steps", "1", "--cfg", "-1"], "guidance scale"),
        (["reconstruct", "--ckpt", str(tmp_path / "plain"), "--input", "x", "--out", str(tmp_path / "r")],
         "not an exported"),  # (an --out inside --ckpt would be refused first)
    ]
    for argv, fragment in cases:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err, (argv, err)
    mod = script()  # the training script checks that model, tokenizer and teacher fit before any work
    cfg = from_dict(mod.Config, {"model": {"in_channels": 4}})
    with pytest.raises(VistokError, match="model.in_channels=3"):
        mod.check_pairing(cfg, mod.build_image_tokenizer(cfg), 0)
    with pytest.raises(VistokError, match="model.repa_dim=16"):
        mod.check_pairing(from_dict(mod.Config, {"model": {"repa_dim": 8}}), mod.build_image_tokenizer(cfg), 16)
    bad = [({"model": {"repa_dim": 8}}, "repa.teacher=conv model.repa_dim=64"),
           ({"repa": {"teacher": "conv"}}, "set both"),
           ({"data": {"latents": "cache"}}, "data.latents needs tokenizer=vae"),
           ({"data": {"latents": "cache", "limit": 8}, "tokenizer": "vae"}, "data.limit does not apply")]
    for values, fragment in bad:
        with pytest.raises(VistokError, match=fragment):
            mod.check_config(from_dict(mod.Config, values))
    proc = train_flextok("model.nested_dropout=sometimes")
    assert "nested_dropout" in one_line_error(proc)
