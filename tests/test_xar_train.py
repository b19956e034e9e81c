"""xAR end to end: train/train_xar.py runs a few steps (subprocess) and exports; `vistok sample` on that export writes
PNGs, a grid and an npz; the same seed gives the same images at any batch size; user mistakes are one-line errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
from vistok import cli
from vistok.api import load_generator
from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.viz import class_grid

from conftest import check_ok, script_main, vistok as vistok_cli

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.width=32", "model.depth=1", "model.heads=2", "model.num_classes=2", "train.batch_size=8",
        "train.total_steps=4", "train.warmup_steps=0", "train.num_workers=0", "train.device=cpu", "train.log_every=1",
        "preview_per_class=2", "sample.steps=2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster than two and never fights a busy machine for cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def export(tmp_path_factory, shared_image_folder) -> Path:
    """A 4-step run of the real script on 2 classes x 16 images, exported."""
    run_dir = tmp_path_factory.mktemp("xar_run")
    check_ok(script_main("train_xar", "--config", str(REPO / "train/configs/xar_cifar10_tiny.yaml"),
                         f"train.run_dir={run_dir}", f"data.name={shared_image_folder}", *TINY))  # in this process
    return run_dir / "export"


def test_training_exports_model_and_tokenizer(export):
    meta = json.loads((export / "config.json").read_text())
    assert meta["family"] == "xar" and meta["step"] == 4 and meta["classes"] == ["cats", "dogs"]
    assert meta["tokenizer"] == {"family": "pixel", "config": {"patch": 4, "channels": 3, "scale": 2.0}}
    assert meta["sample"]["steps"] == 2 and meta["config"]["width"] == 32
    rows = [json.loads(ln) for ln in (export.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in rows)
    model, tokenizer, _ = load_generator(export)  # the folder alone rebuilds both
    assert not model.training and model.config.grid == (8, 8) and model.config.num_classes == 2
    assert tokenizer.decode(torch.zeros(1, 48, 8, 8)).shape == (1, 3, 32, 32)
    assert Image.open(export / "preview.png").size == (2 * 34 + 2, 2 * 34 + 2)  # one row per class


def test_sample_writes_pngs_grid_npz_and_repeats_at_any_batch_size(export, tmp_path):
    common = ["sample", "--ckpt", str(export), "--num", "10", "--seed", "7", "--quiet"]  # in this process
    vistok_cli(*common, "--out", str(tmp_path / "a"), "--batch-size", "10", check=True)
    vistok_cli(*common, "--out", str(tmp_path / "b"), "--batch-size", "3", "--steps", "2", check=True)  # export's
    assert sorted(p.name for p in (tmp_path / "a").glob("0*.png")) == [f"{i:06d}.png" for i in range(10)]
    with np.load(tmp_path / "a" / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        images, labels = a["arr_0"], a["labels"]
        assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8 and labels.tolist() == [0, 1] * 5
        assert np.array_equal(images, b["arr_0"])  # same seed, same images, whatever the batch size
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "000003.png")), images[3])
    assert Image.open(tmp_path / "a" / "grid.png").size == (5 * 34 + 2, 2 * 34 + 2)  # one row per class
    # a .png --out writes the grid alone; another seed gives other images (in-process: no second start-up)
    assert cli.main(["sample", "--ckpt", str(export), "--num", "6", "--seed", "8", "--labels", "dogs",
                     "--out", str(tmp_path / "g.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "g.png").size == (3 * 34 + 2, 2 * 34 + 2)  # one class: a square-ish grid
    assert not (tmp_path / "samples.npz").exists()


def test_user_mistakes_are_one_line_errors(export, tmp_path, capsys):
    proc = vistok_cli("sample", "--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "neither an exported folder" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
    assert cli.main(["sample", "--ckpt", str(export), "--out", str(tmp_path / "o"), "--labels", "cats,7"]) == 1
    assert "label '7'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", "--ckpt", str(export), "--out", str(tmp_path / "o"), "--batch-size", "0"])
    assert exit_info.value.code == 2
    gen = vistok.load(export)
    assert gen.labels(num=5).tolist() == [0, 1, 0, 1, 0] and gen.labels(["dogs", 0], 3).tolist() == [1, 0, 1]
    labels = np.array([0, 1, 0, 1])
    assert class_grid(np.zeros((4, 4, 4, 3), np.uint8), labels).shape == (2 * 6 + 2, 2 * 6 + 2, 3)


def test_script_rejects_a_model_that_does_not_fit_the_tokens():
    spec = importlib.util.spec_from_file_location("vistok_test_train_xar", REPO / "train" / "train_xar.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(script)
    cfg = from_dict(script.Config, {"model": {"grid": [4, 4], "entity_size": 2}})
    tokenizer = script.PixelTokenizer(cfg.tokenizer)
    channels, grid_hw = tokenizer.token_channels, tokenizer.grid(32, 32)
    with pytest.raises(VistokError, match=r"model.grid=\[8,8\]"):
        script.check_pairing(cfg, channels, grid_hw, 10, "the tokenizer")
    with pytest.raises(VistokError, match="model.num_classes=12"):
        script.check_pairing(from_dict(script.Config, {}), channels, grid_hw, 12, "the tokenizer")
