"""`vistok convert --from tokenunify`: TokenUnify's pretraining model (official `src/segmamba_ar.py`: the SegMamba
layout plus the `preciever.*` next-token head) into a vistok `tokenunify` export, on a random state dict of the
official layout (the SegMamba fixture's 290 keys with a 1-channel reconstruction head, plus the head's 8 tensors),
wrapped as the official scripts save it (`model`/`optimizer`/`epoch`/`args`, DDP's `module.` prefix)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vistok import registry
from vistok.cli import main
from vistok.convert import convert
from vistok.em.backbone import SegMamba, SegMambaConfig
from vistok.em.objectives import TokenUnify, load_pretrained_backbone
from vistok.errors import VistokError

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"


def official_state(crop: tuple[int, int, int] = (16, 160, 160), patch: tuple[int, int, int] = (4, 16, 16),
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct random tensors under the official names and shapes; the head sized for `crop` and `patch`."""
    gen = torch.Generator().manual_seed(seed)
    spec = json.loads((FIX / "segmamba_tiny_state_keys.json").read_text())["keys"]
    shapes = {item["key"]: list(item["shape"]) for item in spec}
    shapes["out.conv.conv.weight"][0] = shapes["out.conv.conv.bias"][0] = 1  # pretraining reconstructs 1 channel
    reduced = math.prod(math.ceil(s / 8) for s in crop)
    shapes.update({  # official Preciever: Conv3d(1,12,3,2,1), Conv3d(12,12,3,2,1), Conv3d(12,1,3,2,1), Linear
        "preciever.conv1.weight": [12, 1, 3, 3, 3], "preciever.conv1.bias": [12],
        "preciever.conv2.weight": [12, 12, 3, 3, 3], "preciever.conv2.bias": [12],
        "preciever.conv3.weight": [1, 12, 3, 3, 3], "preciever.conv3.bias": [1],
        "preciever.mlp.weight": [math.prod(patch), reduced], "preciever.mlp.bias": [math.prod(patch)],
    })
    return {k: torch.randn(s, generator=gen) * 0.1 for k, s in shapes.items()}


def official_head(state: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """The official Preciever's forward, written from its source: three stride-2 convs (ReLU after the first two),
    flatten, Linear; (B, 1, D, H, W) -> (B, prod(patch))."""
    x = logits
    for i in (1, 2, 3):
        x = F.conv3d(x, state[f"preciever.conv{i}.weight"], state[f"preciever.conv{i}.bias"], stride=2, padding=1)
        x = torch.relu(x) if i < 3 else x
    return F.linear(x.flatten(1), state["preciever.mlp.weight"], state["preciever.mlp.bias"])


def test_a_pretraining_container_converts_one_to_one_and_the_head_computes_as_the_official(tmp_path: Path) -> None:
    official = official_state()
    container = {"model": {f"module.{k}": v for k, v in official.items()},
                 "optimizer": {"state": {}, "param_groups": []},
                 "epoch": 3, "args": argparse.Namespace(auto_mode=1, fill_nose=1)}
    torch.save(container, tmp_path / "checkpoint.pth")
    done = convert("tokenunify", tmp_path / "checkpoint.pth", tmp_path / "tu")
    assert "next-token head for (16, 160, 160) crops of (4, 16, 16) tokens" in done.summary

    model, meta = registry.load_model(done.path)
    assert isinstance(model, TokenUnify) and meta["family"] == "tokenunify"
    cfg = model.config
    assert cfg.input_size == (16, 160, 160) and cfg.patch_size == (4, 16, 16) and cfg.head_channels == 12
    assert cfg.backbone == SegMambaConfig(in_chans=1, out_chans=1, depths=(2, 2, 2, 2), feat_size=(8, 16, 32, 64),
                                          hidden_size=64, kernel_size=(1, 5, 5), bimamba_type="v3", nslices=5)
    # a bijection: each official tensor under exactly one vistok name
    converted = load_file(done.path / "model.safetensors")
    assert len(converted) == len(official) == len(model.state_dict()) == 298
    by_value = {}
    for name, tensor in converted.items():
        matches = [k for k, v in official.items() if v.shape == tensor.shape and torch.equal(v, tensor)]
        assert len(matches) == 1, name
        by_value[matches[0]] = name
    hand_checked = {  # official -> vistok, read off the two source files
        "preciever.conv1.weight": "next_head.convs.0.weight", "preciever.conv2.bias": "next_head.convs.2.bias",
        "preciever.conv3.weight": "next_head.convs.4.weight", "preciever.mlp.weight": "next_head.proj.weight",
        "vit.gscs.1.proj2.weight": "backbone.encoder.gscs.1.conv3.1.0.weight",
        "out.conv.conv.weight": "backbone.head.weight",
    }
    for k, v in hand_checked.items():
        assert by_value[k] == v, k

    logits = torch.randn(2, 1, 16, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.next_head(logits)
    torch.testing.assert_close(ours, official_head(official, logits), rtol=1e-5, atol=1e-5)

    # fine-tuning starts from the export's backbone: every encoder/decoder weight lands, only the 3-channel head is new
    seg = SegMamba(SegMambaConfig(**{**cfg.backbone.__dict__, "out_chans": 3}))
    fresh = load_pretrained_backbone(seg, converted)
    assert fresh == ["head.bias", "head.weight"]
    assert torch.equal(seg.state_dict()["encoder.gscs.1.conv3.1.0.weight"], official["vit.gscs.1.proj2.weight"])


def test_other_crops_need_their_sizes_and_wrong_files_fail_in_one_line(tmp_path: Path, capsys) -> None:
    small = official_state(crop=(16, 64, 64))
    save_file(small, tmp_path / "small.safetensors")
    with pytest.raises(VistokError, match=r"maps 128 -> 1024 features.*--input-size Z,Y,X"):
        convert("tokenunify", tmp_path / "small.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    rc = main(["convert", "--from", "tokenunify", "--input", str(tmp_path / "small.safetensors"), "--out",
               str(tmp_path / "out"), "--input-size", "16,64,64", "--nslices", "4"])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    model, _ = registry.load_model(tmp_path / "out")
    assert model.config.input_size == (16, 64, 64) and model.config.backbone.nslices == 4

    # the random-token stage alone (no head) belongs to --from segmamba
    save_file({k: v for k, v in small.items() if not k.startswith("preciever.")}, tmp_path / "stage1.safetensors")
    with pytest.raises(VistokError, match="no next-token head.*--from segmamba"):
        convert("tokenunify", tmp_path / "stage1.safetensors", tmp_path / "out2")
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "--from", "tokenunify", "--input", "x.pth", "--out", "y", "--patch-size", "4,16"])
    assert exit_.value.code == 2 and "three positive sizes" in capsys.readouterr().err
