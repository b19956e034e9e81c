"""The Python API (`vistok.load`): keywords, labels and batching, hf:// sources from an offline cache and progress
bars (sampling under torchrun equals one process: test_paper.py's dry run; the import graph: test_layering.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vistok
from vistok.api import FeatureNet, Segmenter
from vistok.errors import VistokError
from vistok.io.sources import parse_hf, shipped_models

REPO = Path(__file__).resolve().parents[1]


# (the README's Python examples, and the CLI writing the same bits as they do, are tested in test_readme.py)
def test_generator_keywords_labels_and_batching() -> None:
    gen = vistok.load("cifar10-xar-tiny")
    assert gen.settings().steps == 50 and gen.settings(steps=3, cfg=1.0).cfg == 1.0  # export defaults, overrides
    assert gen.labels(["cat", 7, "9"], 5).tolist() == [3, 7, 9, 3, 7] and gen.labels(num=12).tolist()[-2:] == [0, 1]
    with pytest.raises(VistokError, match="label 'lion'"):
        gen.labels(["lion"])
    with pytest.raises(VistokError, match="tokens does not apply"):
        list(gen.batches([1], tokens=4))
    few = dict(steps=3, seed=4)
    whole = gen.sample(num=5, batch_size=5, **few)
    assert np.array_equal(gen.sample(num=5, batch_size=2, **few), whole)  # any batch size
    parts = dict(gen.batches(gen.labels(num=5)[3:], first_index=3, **few))  # a rank's share: images 3 and 4
    assert np.array_equal(parts[0]["images"], whole[3:])
    assert not np.array_equal(gen.sample(num=5, steps=3, seed=5)[0], whole[0])
    gpt = vistok.load("cifar10-flextok-gpt-tiny")
    with pytest.raises(VistokError, match="steps does not apply"):
        gpt.sample([0], steps=3)
    fast = dict(tokens=1, decode_steps=1, seed=2)
    whole = gpt.sample(num=3, **fast)
    assert whole.shape == (3, 32, 32, 3) and not np.array_equal(whole[0], whole[1])
    (_, share), = gpt.batches(gpt.labels(num=3)[1:], first_index=1, **fast)  # images 1, 2 as a second rank makes them
    assert np.array_equal(share["images"], whole[1:]) and share["ids"].shape == (2, 1)
    assert list(gen.batches([], steps=1)) == []  # an empty share


def test_segmenter_and_feature_net() -> None:
    seg = vistok.load("em-segmamba-tiny-scratch")
    assert isinstance(seg, Segmenter) and seg.settings(overlap=0.5).overlap == 0.5 and seg.defaults.overlap == 0.25
    with pytest.raises(VistokError, match=r"\(Z, Y, X\)"):
        seg.segment(np.zeros((4, 4)))
    net = vistok.load("cifar10-net")
    assert isinstance(net, FeatureNet)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    feats = net.features(images)
    assert feats.shape == (3, 256) and feats.dtype == np.float32 and net.classify(images).shape == (3,)
    with pytest.raises(VistokError, match="uint8"):
        net.features(images.astype(np.float32))
    with pytest.raises(VistokError, match="neither an exported folder"):
        vistok.load("no-such-model")


# --------------------------------------------------------------------------------------------- hf:// offline cache
def make_hub_cache(cache: Path, repo: str, commit: str, source: Path, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay out `source` as huggingface_hub's cache holds a downloaded snapshot of `repo` at `commit`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (folder / "refs").mkdir(parents=True)
    for ref in refs:
        (folder / "refs" / ref).write_text(commit)
    return snapshot


def test_hf_sources_load_offline_from_the_local_cache(tmp_path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    make_hub_cache(tmp_path / "hub", "vistok-test/xar-tiny", commit, shipped_models()["cifar10-xar-tiny"],
                   ("main", "v1"))
    script = f"""
import json, vistok
from vistok.errors import VistokError
out = {{}}
for src in ["hf://vistok-test/xar-tiny", "hf://vistok-test/xar-tiny@v1", "hf://vistok-test/xar-tiny@{commit}"]:
    gen = vistok.load(src)
    out[src] = [type(gen).__name__, gen.sample([3], steps=2, seed=0).tolist()]
for src in ["hf://vistok-test/missing", "hf://vistok-test/xar-tiny@v9"]:
    try:
        vistok.load(src)
    except VistokError as err:
        out[src] = str(err)
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home"),
           "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    local = vistok.load("cifar10-xar-tiny").sample([3], steps=2, seed=0).tolist()
    for src in ("hf://vistok-test/xar-tiny", "hf://vistok-test/xar-tiny@v1", f"hf://vistok-test/xar-tiny@{commit}"):
        assert out[src] == ["Generator", local], src
    assert "not in the local Hugging Face cache" in out["hf://vistok-test/missing"]
    assert "\n" not in out["hf://vistok-test/xar-tiny@v9"] and "xar-tiny@v9" in out["hf://vistok-test/xar-tiny@v9"]
    assert parse_hf("hf://org/repo/sub/dir@rev") == ("org/repo", "rev", "sub/dir")
    for bad in ("hf://org", "hf://org/repo@"):
        with pytest.raises(VistokError, match="hf://org/repo"):
            parse_hf(bad)


# -------------------------------------------------------------------------------------------- distributed sampling
def test_sample_writer_streams_shards_into_one_npz(tmp_path) -> None:
    from vistok.api.outputs import SampleWriter

    rng = np.random.default_rng(0)
    images, ids, labels = (rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8), rng.integers(0, 99, (7, 2)),
                           np.arange(7) % 2)
    writer = SampleWriter(tmp_path / "out")
    for start in (4, 0, 2):  # any order, as ranks finish
        stop = {0: 2, 2: 4, 4: 7}[start]
        writer.add(start, {"images": images[start:stop], "ids": ids[start:stop].astype(np.int32)})
    written = writer.finish(labels)
    with np.load(tmp_path / "out" / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], images) and np.array_equal(z["labels"], labels)
    from vistok.data.tokens import read_token_file

    tokens = read_token_file(tmp_path / "out" / "tokens.npz")
    assert np.array_equal(tokens["ids"], ids) and tokens["k"].tolist() == [2] * 7
    assert [p.name for p in written] == ["grid.png", "samples.npz", "tokens.npz"]
    assert not (tmp_path / "out" / ".shards").exists() and len(list((tmp_path / "out").glob("0*.png"))) == 7


# -------------------------------------------------------------------------------------------------------- progress
def test_progress_bars_only_on_a_terminal_and_not_when_quiet(monkeypatch, capsys) -> None:
    from vistok import progress

    def count(enabled) -> str:
        with progress.progress(total=3, desc="work", enabled=enabled) as bar:
            bar.update(3)
        return capsys.readouterr().err

    assert count(True) == ""  # pytest's stderr is not a terminal
    monkeypatch.setattr(progress, "is_terminal", lambda: True)
    shown = count(True)
    assert "work" in shown and "/3" in shown and count(False) == ""
    gen = vistok.load("cifar10-xar-tiny")
    gen.sample([1, 2], steps=1, progress=True)
    assert "sample" in capsys.readouterr().err
    gen.sample([1, 2], steps=1)
    assert capsys.readouterr().err == ""
