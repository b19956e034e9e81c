"""Self-contained, shareable exports: one loader (a source resolved once), exports that carry every file they need
(a latent model's VAE inside, relative paths only: moved anywhere they load the same), `save` / `push_to_hub` on
every loaded object (tested offline: the hub is a local folder laid out as huggingface_hub's cache), hf:// pinned."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vistok
from vistok.api import FeatureNet, Generator, PairedGenerator, Segmenter, Tokenizer
from vistok.config import to_dict
from vistok.errors import VistokError
from vistok.io import exports, sources
from vistok.io.exports import ABSOLUTE, FAMILIES, write_export


def strings(tree) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in strings(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in strings(v)]
    return [tree] if isinstance(tree, str) else []


def config_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("config.json"))


def assert_relative_only(folder: Path) -> None:
    """No config.json of the export (nor of anything inside it) names an absolute path."""
    for path in config_files(folder):
        found = [s for s in strings(json.loads(path.read_text())) if ABSOLUTE.match(s)]
        assert not found, (path, found)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# ------------------------------------------------------------------------------------------------------ one loader
def test_the_family_table_names_each_modules_own_family() -> None:
    for name, (module, config_cls, model_cls) in FAMILIES.items():
        mod = importlib.import_module(module)
        assert mod.FAMILY == (name, getattr(mod, config_cls), getattr(mod, model_cls)), name


def test_loading_a_paired_export_resolves_its_source_once(monkeypatch) -> None:
    calls = []
    real = sources.resolve

    def counting(source):
        calls.append(str(source))
        return real(source)

    monkeypatch.setattr(sources, "resolve", counting)
    gen = vistok.load("cifar10-flextok-gpt-tiny")  # a GPT export with its FlexTok (and that one's grid) inside
    assert isinstance(gen, PairedGenerator) and calls == ["cifar10-flextok-gpt-tiny"]
    calls.clear()
    vistok.api.load_paired("cifar10-flextok-xar-tiny")
    assert calls == ["cifar10-flextok-xar-tiny"]


# ---------------------------------------------------------------------------------------- self-contained exports
def tiny_vae(folder: Path) -> Path:
    """A random tiny-f4 diffusers VAE folder (16 latent channels, f4), as a user's VAE weights."""
    from diffusers import AutoencoderKL

    from vistok.tokenizers.vae import _diffusers_config

    torch.manual_seed(3)
    AutoencoderKL(**_diffusers_config("tiny-f4"), scaling_factor=0.5).save_pretrained(folder)
    return folder


def test_a_latent_export_carries_its_vae_and_loads_after_a_move(tmp_path) -> None:
    from vistok.generators.xar import PRESETS, XAR

    vae = tiny_vae(tmp_path / "my-vae")  # absolute, outside the export: where training found it
    cfg = replace(PRESETS["xar-test"], in_channels=16, grid=(8, 8))  # 32 px images -> 16 x 8 x 8 latents
    torch.manual_seed(0)
    model = XAR(cfg)
    spec = {"family": "vae", "config": {"arch": "tiny-f4", "weights": str(vae), "sample": False}}
    out = write_export(tmp_path / "run" / "export", "xar", to_dict(cfg), model.state_dict(), tokenizer=spec,
                       classes=[str(i) for i in range(10)], resolution=32, sample={"steps": 2},
                       source=str(tmp_path / "data"))
    meta = json.loads((out / "config.json").read_text())
    assert meta["tokenizer"]["path"] == "tokenizer" and "weights" not in meta["tokenizer"]["config"]
    assert (out / "tokenizer" / "diffusion_pytorch_model.safetensors").is_file() and meta["source"] == "data"
    assert_relative_only(out)
    before = vistok.load(out).sample([1, 2], steps=2, seed=0)
    assert before.shape == (2, 32, 32, 3)

    moved = tmp_path / "elsewhere" / "deeper"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    shutil.rmtree(vae)  # nothing outside the folder is needed any more
    after = vistok.load(moved).sample([1, 2], steps=2, seed=0)
    np.testing.assert_array_equal(after, before)


def test_no_absolute_path_is_written(tmp_path) -> None:
    with pytest.raises(VistokError, match="config.repa_weights = '/data/x.pt' is an absolute path"):
        write_export(tmp_path / "a", "fid_net", {"repa_weights": "/data/x.pt"}, {"w": torch.zeros(1)})
    assert not (tmp_path / "a").exists()
    out = write_export(tmp_path / "b", "fid_net", {}, {"w": torch.zeros(1)}, init_from="/runs/pre/export",
                       tokenizer={"family": "pixel", "config": {}, "source": "C:\\vae\\kl16"}, classes=["/a", "b"])
    meta = json.loads((out / "config.json").read_text())
    assert meta["init_from"] == "export" and meta["tokenizer"]["source"] == "kl16"  # provenance keeps the name
    assert meta["classes"] == ["/a", "b"]  # class names are names, however they look
    with pytest.raises(VistokError, match="tokenizer's weights .*gone"):
        write_export(tmp_path / "c", "xar", {}, {"w": torch.zeros(1)},
                     tokenizer={"family": "vae", "config": {"weights": str(tmp_path / "missing")}})


# ------------------------------------------------------------------------------------------ save and push_to_hub
def outputs(obj) -> list:
    """What each kind computes, cheaply: images, features, or (for the FlexTok pieces) the weights that decide it."""
    if isinstance(obj, PairedGenerator):
        return [obj.model.state_dict(), obj.codes.flextok.state_dict()]
    if isinstance(obj, Generator):
        return [obj.sample([1, 4], steps=2, seed=0)]
    if isinstance(obj, FeatureNet):
        return [obj.features(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))]
    if isinstance(obj, Tokenizer):
        return [obj.model.state_dict(), obj.tokenizer.state_dict()]
    return [obj.model.state_dict()]


def assert_same(a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        if isinstance(x, dict):
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        else:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name, kind", [("cifar10-xar-tiny", Generator), ("cifar10-flextok-gpt-tiny", PairedGenerator),
                                        ("cifar10-flextok-tiny", Tokenizer), ("em-segmamba-tiny-scratch", Segmenter),
                                        ("cifar10-net", FeatureNet)])
def test_save_then_load_gives_the_same_outputs(tmp_path, name, kind) -> None:
    obj = vistok.load(name)
    assert type(obj) is kind
    saved = obj.save(tmp_path / "mine")
    moved = tmp_path / "moved"
    shutil.move(str(saved), str(moved))  # a saved export is self-contained too
    assert_relative_only(moved)
    back = vistok.load(moved)
    assert type(back) is kind and same_state(back.model, obj.model)
    assert_same(outputs(back), outputs(obj))


def test_save_writes_the_weights_as_they_are_now(tmp_path) -> None:
    shutil.copytree(sources.resolve_ckpt("cifar10-net"), tmp_path / "net")  # a copy: a refused save never nears assets/
    net = vistok.load(tmp_path / "net")
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    before = net.features(images)
    with torch.no_grad():
        next(net.model.parameters()).mul_(0.5)  # a fine-tune in memory
    changed = net.features(images)
    assert not np.array_equal(changed, before)
    np.testing.assert_array_equal(vistok.load(net.save(tmp_path / "tuned")).features(images), changed)
    with pytest.raises(VistokError, match="out_dir .* is the .*export it was loaded from"):
        net.save(net.export.folder)
    with pytest.raises(VistokError, match="vistok.load"):
        FeatureNet(net.model).save(tmp_path / "bare")


def test_push_to_hub_then_load_from_the_hub_offline(tmp_path, monkeypatch) -> None:
    """push_to_hub through HfApi, whose upload here lands in a local folder laid out as huggingface_hub's cache;
    vistok.load("hf://...") then reads it offline, pinned to the pushed commit."""
    import huggingface_hub
    from huggingface_hub import constants

    cache, created = tmp_path / "hub", []

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        commit = hashlib.sha1(repr(sorted(p.name for p in Path(folder_path).rglob("*"))).encode()).hexdigest()
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder_path, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return SimpleNamespace(oid=commit)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: created.append(repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    gen = vistok.load("cifar10-xar-tiny")
    pinned = gen.push_to_hub("vistok-test/pushed")
    commit = (cache / "models--vistok-test--pushed" / "refs" / "main").read_text()
    assert created == ["vistok-test/pushed"] and pinned == f"hf://vistok-test/pushed@{commit}"
    back = vistok.load("hf://vistok-test/pushed")
    assert back.source == pinned  # the revision ("main") resolved to its commit: what outputs record
    assert_same(outputs(back), outputs(gen))
    assert vistok.load(pinned).source == pinned
    with pytest.raises(VistokError, match="org/name"):
        gen.push_to_hub("vistok-test/pushed@v1")


def test_open_export_reads_a_folder_once(tmp_path, monkeypatch) -> None:
    reads = []
    real = exports.read_config
    monkeypatch.setattr(exports, "read_config", lambda folder: reads.append(folder) or real(folder))
    model, meta = exports.load_model("cifar10-net")
    assert len(reads) == 1 and meta["family"] == "fid_net" and not model.training
    with pytest.raises(VistokError, match="holds a 'fid_net' model, not 'xar'"):
        exports.load_model("cifar10-net", family="xar")


def test_samples_record_the_pinned_hub_commit(tmp_path, monkeypatch) -> None:
    """`vistok sample --ckpt hf://org/repo` records hf://org/repo@COMMIT in samples.npz: a moved branch cannot
    silently change what the samples say they came from."""
    from huggingface_hub import constants

    from vistok import cli

    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hub" / "models--vistok-test--xar"
    shutil.copytree(sources.resolve_ckpt("cifar10-xar-tiny"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli.main(["sample", "--ckpt", "hf://vistok-test/xar", "--num", "2", "--steps", "1", "--out",
                     str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    with np.load(tmp_path / "out" / "samples.npz") as z:
        assert str(z["source"]) == f"hf://vistok-test/xar@{commit}" and z["arr_0"].shape == (2, 32, 32, 3)


def test_demo_records_the_pinned_sources_of_its_models(tmp_path, monkeypatch) -> None:
    """demo.json names the models behind its numbers, a hub model with the commit it resolved to."""
    from huggingface_hub import constants

    from vistok import demo

    commit = "0123456789abcdef0123456789abcdef01234567"
    for name in ("xar", "flextok"):
        repo = tmp_path / "hub" / f"models--vistok-test--{name}"
        shutil.copytree(sources.resolve_ckpt(f"cifar10-{name}-tiny"), repo / "snapshots" / commit)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(demo, "XAR_MODEL", "hf://vistok-test/xar")
    monkeypatch.setattr(demo, "FLEXTOK_MODEL", "hf://vistok-test/flextok")
    monkeypatch.setattr(demo.fid, "calculate", lambda *a, **k: {"fid": 1.0})  # the FID itself is tested elsewhere
    found: dict = {}
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    demo.flextok_step(tmp_path, images, rows=2, sources=found)
    assert found == {"flextok": f"hf://vistok-test/flextok@{commit}"}
    assert demo.xar_step(tmp_path, 2)["source"] == f"hf://vistok-test/xar@{commit}"


def test_em_training_records_the_pinned_hub_commit_of_init_from(tmp_path, monkeypatch) -> None:
    """`init_from=hf://org/repo` in the EM scripts: the log, eval.json and the export record hf://org/repo@COMMIT (what
    `load_init` returns), and the weights are the snapshot's."""
    from huggingface_hub import constants

    from vistok.em.objectives import PRESETS, TokenUnify

    from conftest import load_train_script

    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = tmp_path / "hub"
    seg_src = sources.resolve_ckpt("em-segmamba-tiny-scratch")
    shutil.copytree(seg_src, hub / "models--lab--seg" / "snapshots" / commit)
    torch.manual_seed(0)
    pre = TokenUnify(PRESETS["tokenunify-tiny"])
    write_export(hub / "models--lab--pre" / "snapshots" / commit, "tokenunify", to_dict(pre.config), pre.state_dict())
    for repo in ("seg", "pre"):
        (hub / f"models--lab--{repo}" / "refs").mkdir()
        (hub / f"models--lab--{repo}" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    seg_meta, seg_state = exports.read_export(seg_src)
    model = exports.build("segmamba", seg_meta["config"])
    fresh, pinned = load_train_script("finetune_em_seg").load_init(model, "hf://lab/seg")
    assert pinned == f"hf://lab/seg@{commit}" and fresh == []
    assert all(torch.equal(v, seg_state[k]) for k, v in model.state_dict().items())
    started = TokenUnify(PRESETS["tokenunify-tiny"])
    found = load_train_script("pretrain_tokenunify").load_init(started, "hf://lab/pre")
    assert found.source == f"hf://lab/pre@{commit}" and found.meta["family"] == "tokenunify"
    assert all(torch.equal(v, pre.state_dict()[k]) for k, v in started.state_dict().items())
