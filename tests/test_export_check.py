"""Exports are untrusted input: paths stay inside the export, absurd sizes are refused before any allocation, a weights
file that does not match its config is named before it is read, and a damaged or pickled weights file is one line."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from vistok import registry
from vistok.api import exports as paired
from vistok.errors import VistokError
from vistok.io.checks import MAX_CONFIG_INT, inside_export
from vistok.io.sources import resolve_ckpt


def _copy(name: str, dst: Path) -> Path:
    shutil.copytree(resolve_ckpt(name), dst)
    return dst


def _edit(folder: Path, edit) -> None:
    meta = json.loads((folder / "config.json").read_text())
    edit(meta)
    (folder / "config.json").write_text(json.dumps(meta))


def test_absurd_sizes_are_refused_before_allocation(tmp_path):
    net = _copy("cifar10-xar-tiny", tmp_path / "xar")
    registry.load_model(net)  # the untouched copy loads
    _edit(net, lambda m: m["config"].update(width=10**9))
    with pytest.raises(VistokError, match=r"config\.width = 1000000000 is absurdly large"):
        registry.load_model(net)
    # below the integer bound but far beyond the weights file: stopped by the meta-device budget, in well under a second
    _edit(net, lambda m: m["config"].update(width=MAX_CONFIG_INT // 2))
    start = time.perf_counter()
    with pytest.raises(VistokError, match="describes a model with more than .* parameters"):
        registry.load_model(net)
    _edit(net, lambda m: m["config"].update(width=64, depth=1_000_000))  # a million blocks: the module budget
    with pytest.raises(VistokError, match="more than .* (modules|parameters)"):
        registry.load_model(net)
    assert time.perf_counter() - start < 5


def test_mismatched_weights_named_before_reading(tmp_path, monkeypatch):
    net = _copy("cifar10-net", tmp_path / "net")
    _edit(net, lambda m: m["config"].update(num_classes=12))
    from vistok.io import exports

    monkeypatch.setattr(exports, "load_file", lambda *a, **k: pytest.fail("weights read before the check"))
    with pytest.raises(VistokError, match=r"size mismatch for head\.weight: file \[10, 256\], config \[12, 256\]"):
        registry.load_model(net)


def test_damaged_or_pickled_weights_and_config_are_one_line(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    net = _copy("cifar10-net", tmp_path / "net")
    torch.save({"head.weight": Payload()}, net / "model.safetensors")
    with pytest.raises(VistokError, match="not a safetensors weights file") as err:
        registry.load_model(net)
    assert "\n" not in str(err.value) and not marker.exists()
    (net / "config.json").write_text("{not json")
    with pytest.raises(VistokError, match="cannot read .*config.json"):
        registry.load_model(net)


def test_tokenizer_path_stays_inside_the_export(tmp_path):
    gen = _copy("cifar10-flextok-gpt-tiny", tmp_path / "gen")
    outside = _copy("cifar10-flextok-tiny", tmp_path / "elsewhere")
    paired.load_paired(gen)  # the untouched copy loads
    for bad in ("../elsewhere", str(outside), "tokenizer/../../elsewhere", "C:\\elsewhere"):
        _edit(gen, lambda m, bad=bad: m["tokenizer"].update(path=bad))
        with pytest.raises(VistokError, match="must be a relative path inside the export"):
            paired.load_paired(gen)
    os.symlink(outside, gen / "link")
    _edit(gen, lambda m: m["tokenizer"].update(path="link"))
    with pytest.raises(VistokError, match="leads outside the export"):
        paired.load_paired(gen)
    assert inside_export(gen, "tokenizer", "tokenizer.path") == gen / "tokenizer"


def test_segmenter_exports_are_checked_before_allocation(tmp_path, monkeypatch):
    from vistok.em.inference import load_segmenter
    from vistok.io import exports

    seg = _copy("em-segmamba-tiny-scratch", tmp_path / "seg")
    load_segmenter(seg)  # the untouched copy loads
    monkeypatch.setattr(exports, "load_file", lambda *a, **k: pytest.fail("weights read before the check"))
    _edit(seg, lambda m: m["config"].update(hidden_size=10**9))
    with pytest.raises(VistokError, match=r"config\.hidden_size = 1000000000 is absurdly large"):
        load_segmenter(seg)
    _edit(seg, lambda m: m["config"].update(hidden_size=64, feat_size=[8, 16, 32, 128]))
    with pytest.raises(VistokError, match="does not match the model: size mismatch"):
        load_segmenter(seg)
