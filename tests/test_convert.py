"""`vistok convert`: official checkpoints -> vistok exports, checked against the official code's outputs.

Everything comes from `../shared/fixtures/official/` (weights drawn by the official constructors, outputs computed by
the official code; see its README): the converted xAR reproduces the official velocity prediction, the converted
Mamba layer the official output, every SegMamba key maps one-to-one onto vistok's model with strict loading, and a
pickle that names code is refused before anything is run or written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch
from einops import rearrange
from safetensors.torch import load_file, save_file

from vistok import registry
from vistok.cli import main
from vistok.convert import convert, xar as xar_convert
from vistok.convert.common import build_meta, check_against
from vistok.em.backbone import GSC, SegMamba, SegMambaConfig
from vistok.errors import VistokError

from conftest import vistok as vistok_cli

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"
pytestmark = pytest.mark.filterwarnings("ignore:vistok Mamba")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def xar_io() -> dict[str, torch.Tensor]:
    return load_file(FIX / "xar_tiny_io.safetensors")


@pytest.fixture(scope="module")
def official_ckpt() -> dict:
    """The official training container, read independently of the converter (torch's own safe loader)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(FIX / "xar_tiny_checkpoint.pth", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------------------
# xAR
# ---------------------------------------------------------------------------------------------------------------------


def test_xar_state_dict_reproduces_the_official_velocity(tmp_path: Path, xar_io) -> None:
    done = convert("xar", FIX / "xar_tiny_state.safetensors", tmp_path / "xar")
    model, meta = registry.load_model(done.path)
    c = model.config
    assert (c.width, c.depth, c.heads, c.num_classes, c.in_channels, tuple(c.grid), c.entity, c.entity_size) == (
        64, 2, 4, 1000, 16, (16, 16), "cell", 8)
    assert c.time_floor and meta["converted_from"]["preset"] == "custom" and "tokenizer" not in meta
    with torch.no_grad():
        pred = model.predict(xar_io["x_t"], xar_io["y"], xar_io["t"])  # tokens in the official cell-major order
        # the whole training forward from image-layout latents: token order, per-cell t, target and MSE
        loss = model(xar_io["x"], xar_io["y"], xar_io["t"], xar_io["noise"].reshape(2, 256, 16))
        cond = model.condition(xar_io["y"], xar_io["t"])  # (B, cells, D)
    # the official condition rows are cell-major (row c * B + b): class embedding + embedding of floor(t * 1000)
    assert rel_err(cond, rearrange(xar_io["cond"], "(c b) d -> b c d", b=2)) < 1e-6
    assert torch.equal(torch.floor(xar_io["t"] * 1000).long(), xar_io["t_index"])
    assert rel_err(pred, xar_io["pred"]) < 1e-5
    assert abs(loss.item() - xar_io["loss"].item()) < 1e-5 * xar_io["loss"].item()
    # the time floor is what makes it match: continuous t*1000 misses the official output by far more
    cont = convert("xar", FIX / "xar_tiny_state.safetensors", tmp_path / "cont", time_floor=False)
    continuous, _ = registry.load_model(cont.path)
    with torch.no_grad():
        assert rel_err(continuous.predict(xar_io["x_t"], xar_io["y"], xar_io["t"]), xar_io["pred"]) > 1e-4


def test_xar_container_ema_by_default_model_on_request(tmp_path: Path, xar_io, official_ckpt) -> None:
    ema = convert("xar", FIX / "xar_tiny_checkpoint.pth", tmp_path / "ema")
    raw = convert("xar", FIX / "xar_tiny_checkpoint.pth", tmp_path / "raw", weights="model")
    ema_w, raw_w = load_file(ema.path / "model.safetensors"), load_file(raw.path / "model.safetensors")
    official_ema, official_raw = official_ckpt["model_ema"], official_ckpt["model"]
    # the EMA export holds exactly the container's EMA tensors, the model export its raw ones (they differ)
    assert torch.equal(ema_w["label_emb.table.weight"], official_ema["class_emb.weight"])
    assert torch.equal(ema_w["blocks_out.1.mlp.fc2.weight"], official_ema["decoder_blocks.1.mlp.fc2.weight"])
    assert torch.equal(ema_w["pos_in"], official_ema["encoder_pos_embed_learned"][0])
    assert torch.equal(raw_w["blocks_in.0.ada.1.weight"], official_raw["encoder_blocks.0.ada_lin.1.weight"])
    assert 1e-4 < max((ema_w[k] - raw_w[k]).abs().max().item() for k in ema_w) < 1e-3  # one step at 0.9999
    meta = json.loads((ema.path / "config.json").read_text())
    assert meta["converted_from"]["weights"] == "ema" and meta["converted_from"]["epoch"] == 100
    assert meta["converted_from"]["args"]["model"] == "xar_tiny"
    # the fixture's outputs were computed with the raw weights: the model export reproduces them
    model, _ = registry.load_model(raw.path)
    with torch.no_grad():
        assert rel_err(model.predict(xar_io["x_t"], xar_io["y"], xar_io["t"]), xar_io["pred"]) < 1e-5
    assert "EMA weights" in ema.summary and "raw" in raw.summary
    # a bare state dict pickled by torch.save (the released .pth form), with its VAE given as a checkpoint file
    torch.save(official_raw, tmp_path / "xar_base.pth")
    bare = convert("xar", tmp_path / "xar_base.pth", tmp_path / "bare", vae=FIX / "mar_vae_small_state.safetensors")
    assert load_file(bare.path / "model.safetensors").keys() == raw_w.keys()
    assert all(torch.equal(load_file(bare.path / "model.safetensors")[k], v) for k, v in raw_w.items())
    vae, vae_meta = registry.load_model(bare.path / "tokenizer")
    assert vae_meta["family"] == "kl-vae" and vae.config.ch == 32


def _official_names_at(width: int, depth: int, heads: int) -> dict[str, torch.Tensor]:
    """Meta tensors named and shaped like an official xAR state dict at another size, built from the fixture's key
    list (width 64, hidden 170, 2+2 blocks, 4 RoPE frequencies) by substituting the sizes."""
    spec = json.loads((FIX / "xar_tiny.json").read_text())["files"]["xar_tiny_state.safetensors"]["tensors"]
    sizes = {64: width, 170: width * 8 // 3, 384: 6 * width, 192: 3 * width, 4: width // heads // 4, 16: width // heads}
    out = {}
    for key, info in spec.items():
        shape = list(info["shape"])
        if key.endswith("rope.freqs_cos") or key.endswith("rope.freqs_sin"):
            shape = [256, width // heads]
        elif key.endswith("rope.freqs"):
            shape = [width // heads // 4]
        elif key not in ("mask",) and not key.startswith(("z_proj.weight", "pred.")):
            shape = [sizes.get(s, s) if s not in (1001, 256, 1) else s for s in shape]
        elif key == "z_proj.weight":
            shape = [width, 16]
        elif key == "pred.weight":
            shape = [16, width]
        blocks = re.match(r"^(encoder|decoder)_blocks\.0\.(.+)$", key)
        if blocks:
            for i in range(depth):
                out[f"{blocks[1]}_blocks.{i}.{blocks[2]}"] = torch.empty(shape, device="meta")
        elif not re.match(r"^(encoder|decoder)_blocks\.1\.", key):
            out[key] = torch.empty(shape, device="meta")
    return out


def test_xar_presets_inferred_from_shapes_at_released_sizes() -> None:
    released = json.loads((FIX / "xar_tiny.json").read_text())["configuration"]["released_sizes_meta_device"]
    for official_name, preset in (("xar_base", "xar-b"), ("xar_large", "xar-l"), ("xar_huge", "xar-h")):
        r = released[official_name]
        official = _official_names_at(r["width"], r["encoder_depth"], r["heads"])
        assert len(official) == r["n_state_keys"]
        for rope in [k for k in official if "rope" in k]:  # a released file without RoPE buffers: heads by width
            official.pop(rope)
        cfg, name = xar_convert.infer_config(official, {}, None, True, "ckpt")
        assert name == preset and cfg.heads == r["heads"] and cfg.time_floor
        state = {xar_convert.map_key(k): v.squeeze(0) if "pos_embed" in k else v for k, v in official.items()
                 if xar_convert.map_key(k) is not None}
        model = build_meta("xar", cfg)
        check_against(model, state, "ckpt")
        assert sum(p.numel() for p in model.parameters()) == r["n_params"]  # official count on the meta device
    assert xar_convert.SAMPLING["xar-b"] == {"steps": 40, "cfg": 2.7}


def test_xar_layout_checks_fail_with_one_line(tmp_path: Path) -> None:
    state = load_file(FIX / "xar_tiny_state.safetensors")
    wrong = dict(state, **{"encoder_blocks.0.attn.rope.freqs_cos":
                           state["encoder_blocks.0.attn.rope.freqs_cos"].flip(0)})
    save_file(wrong, tmp_path / "wrong_rope.safetensors")
    with pytest.raises(VistokError, match="RoPE"):
        convert("xar", tmp_path / "wrong_rope.safetensors", tmp_path / "out")
    extra = dict(state, **{"encoder_blocks.0.attn.q_norm.weight": torch.ones(16)})
    save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(VistokError, match="unknown xAR key"):
        convert("xar", tmp_path / "extra.safetensors", tmp_path / "out")
    with pytest.raises(VistokError, match="is it an xAR checkpoint"):
        convert("xar", FIX / "mamba_layer_state.safetensors", tmp_path / "out")
    with pytest.raises(VistokError, match="--prefix does not apply to --from xar"):
        convert("xar", FIX / "xar_tiny_state.safetensors", tmp_path / "out", prefix="x.")
    from vistok.tokenizers.kl_vae import KLVAE, KLVAEConfig

    save_file(KLVAE(KLVAEConfig(ch=32, embed_dim=8)).state_dict(), tmp_path / "vae8.safetensors")
    with pytest.raises(VistokError, match="8-channel latents but the generator expects 16"):
        convert("xar", FIX / "xar_tiny_state.safetensors", tmp_path / "out", vae=tmp_path / "vae8.safetensors")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# MAR KL-16 VAE
# ---------------------------------------------------------------------------------------------------------------------


def test_mar_vae_reproduces_the_official_moments_and_decode(tmp_path: Path) -> None:
    io = load_file(FIX / "mar_vae_small_io.safetensors")
    done = convert("mar-vae", FIX / "mar_vae_small_state.safetensors", tmp_path / "vae")
    vae, meta = registry.load_model(done.path)
    assert meta["family"] == "kl-vae" and vae.config.ch == 32 and vae.config.ch_mult == (1, 1, 2, 2, 4)
    assert vae.config.attn_resolutions == (16,) and vae.config.decoder_attn_resolutions == ()
    with torch.no_grad():
        post = vae.posterior(io["image"])
        decoded = vae.decode_raw(io["mean"])
        encoder_out = vae.encoder(io["image"])
    # The official float32 outputs carry ~1e-5 of float32 noise themselves (the fixture's own float64 re-run moves
    # `decoded` by 3.6e-5 of 3.27), so compare norm-wise at 1e-5 and element-wise at 2e-5 of the largest value.
    for name, ours in (("encoder_out", encoder_out), ("moments", post.moments), ("mean", post.mean),
                       ("logvar", post.logvar), ("std", post.std), ("decoded", decoded)):
        ref = io[name]
        assert ((ours - ref).norm() / ref.norm()).item() < 1e-5, name
        assert rel_err(ours, ref) < 2e-5, name
    # the tokenizer interface: latents scaled by 0.2325, decode undoes the scale
    mean, std = vae.moments(io["image"])
    torch.testing.assert_close(mean, post.mean * 0.2325)
    torch.testing.assert_close(std, post.std * 0.2325)
    # Tolerance from the spread between float32 execution orders, not from one machine: on this decoder the official
    # output, ours with 1 or 2 threads and a float64 run differ by up to 3.5e-5 of a largest value of 3.27 (1.1e-5 of
    # the range), and the 0.2325 scale round trip adds 1.8e-5 (`python benchmarks/tolerance_spread.py` prints them).
    # Another CPU's vector width reorders sums the same way, so allow 4x that: 4e-5 of the largest value.
    torch.testing.assert_close(vae.decode(io["mean"] * 0.2325), decoded, rtol=0, atol=4e-5 * decoded.abs().max().item())


def test_mar_vae_checkpoint_container_and_loss_entries(tmp_path: Path) -> None:
    state = load_file(FIX / "mar_vae_small_state.safetensors")
    torch.save({"model": dict(state, **{"loss.discriminator.weight": torch.zeros(3)})}, tmp_path / "kl16.ckpt")
    done = convert("mar-vae", tmp_path / "kl16.ckpt", tmp_path / "vae")  # torch.load(...)["model"], loss.* dropped
    out = load_file(done.path / "model.safetensors")
    assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)
    del state["encoder.mid.attn_1.q.weight"]
    save_file(state, tmp_path / "missing.safetensors")
    with pytest.raises(VistokError, match="missing"):
        convert("mar-vae", tmp_path / "missing.safetensors", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Mamba, SegMamba
# ---------------------------------------------------------------------------------------------------------------------


def test_mamba_layer_reproduces_the_official_output(tmp_path: Path) -> None:
    io = load_file(FIX / "mamba_layer_io.safetensors")
    done = convert("mamba", FIX / "mamba_layer_state.safetensors", tmp_path / "mamba")
    layer, meta = registry.load_model(done.path)
    assert (layer.d_model, layer.d_inner, layer.d_state, layer.dt_rank, layer.bimamba_type) == (32, 64, 16, 2, "none")
    with torch.no_grad():
        assert rel_err(layer(io["input"]), io["output"]) < 1e-5
    # a file with several layers: one is picked by --prefix, none silently
    state = load_file(FIX / "mamba_layer_state.safetensors")
    other = {k: v + 0.5 for k, v in state.items()}
    stacked = {**{f"backbone.layers.0.mixer.{k}": v for k, v in state.items()},
               **{f"backbone.layers.1.mixer.{k}": v for k, v in other.items()}, "lm_head.weight": torch.zeros(2, 32)}
    torch.save(stacked, tmp_path / "lm.pth")
    with pytest.raises(VistokError, match="holds 2 Mamba layers; pick one with --prefix"):
        convert("mamba", tmp_path / "lm.pth", tmp_path / "lm")
    picked = convert("mamba", tmp_path / "lm.pth", tmp_path / "lm", prefix="backbone.layers.1.mixer.")
    assert torch.equal(load_file(picked.path / "model.safetensors")["A_log"], other["A_log"])


def _segmamba_fixture_state() -> dict[str, torch.Tensor]:
    """A state dict with the official SegMamba's 290 keys and shapes; every tensor distinct (seeded)."""
    spec = json.loads((FIX / "segmamba_tiny_state_keys.json").read_text())["keys"]
    gen = torch.Generator().manual_seed(0)
    return {item["key"]: torch.randn(item["shape"], generator=gen) for item in spec}


def test_segmamba_keys_map_one_to_one_with_strict_loading(tmp_path: Path) -> None:
    official = _segmamba_fixture_state()
    assert len(official) == 290
    save_file(official, tmp_path / "segmamba.safetensors")
    done = convert("segmamba", tmp_path / "segmamba.safetensors", tmp_path / "seg")
    expected_cfg = SegMambaConfig(in_chans=1, out_chans=3, depths=(2, 2, 2, 2), feat_size=(8, 16, 32, 64),
                                  hidden_size=64, kernel_size=(1, 5, 5), bimamba_type="v3", nslices=5)
    model = SegMamba(expected_cfg)
    assert sum(p.numel() for p in model.parameters()) == 1_378_995  # the official constructor's count
    converted = load_file(done.path / "model.safetensors")
    model.load_state_dict(converted, strict=True)  # every vistok key present, nothing left over
    loaded, meta = registry.load_model(done.path)
    assert loaded.config == expected_cfg
    # a bijection: 290 distinct tensors in, the same 290 out, each under exactly one vistok name with its shape
    by_value = {}
    for name, tensor in converted.items():
        matches = [k for k, v in official.items() if v.shape == tensor.shape and torch.equal(v, tensor)]
        assert len(matches) == 1, name
        by_value[matches[0]] = name
    assert len(by_value) == len(official) == len(model.state_dict())
    hand_checked = {  # official -> vistok, written from the two source files independently of the converter
        "vit.downsample_layers.0.0.weight": "encoder.downsample.0.weight",
        "vit.downsample_layers.2.1.bias": "encoder.downsample.2.1.bias",
        "vit.stages.3.1.mamba.A_s_log": "encoder.stages.3.1.mamba.A_s_log",
        "vit.stages.0.0.mamba.dt_proj_b.bias": "encoder.stages.0.0.mamba.dt_proj_b.bias",
        "vit.stages.1.0.norm.weight": "encoder.stages.1.0.norm.weight",
        "vit.gscs.1.proj2.weight": "encoder.gscs.1.conv3.1.0.weight",
        "vit.gscs.2.proj3.bias": "encoder.gscs.2.conv1.0.bias",
        "vit.gscs.0.proj4.weight": "encoder.gscs.0.mix.0.weight",
        "vit.mlps.3.fc2.weight": "encoder.mlps.3.2.weight",
        "encoder1.layer.conv3.conv.weight": "enc_input.proj.weight",
        "encoder5.layer.conv2.conv.weight": "enc_skips.3.conv2.weight",
        "decoder5.transp_conv.conv.weight": "decoders.0.up.weight",
        "decoder2.conv_block.conv3.conv.weight": "decoders.3.block.proj.weight",
        "decoder1.layer.conv1.conv.weight": "dec_out.conv1.weight",
        "out.conv.conv.bias": "head.bias",
    }
    for k, v in hand_checked.items():
        assert by_value[k] == v, k


def test_tri_directional_mamba_layer_from_a_segmamba_file(tmp_path: Path) -> None:
    """One v3 layer (`_b` and `_s` parameter sets) taken out of the SegMamba key list with --prefix."""
    save_file(_segmamba_fixture_state(), tmp_path / "segmamba.safetensors")
    with pytest.raises(VistokError, match="holds 8 Mamba layers"):
        convert("mamba", tmp_path / "segmamba.safetensors", tmp_path / "layer")
    done = convert("mamba", tmp_path / "segmamba.safetensors", tmp_path / "layer", prefix="vit.stages.2.1.mamba.")
    layer, _ = registry.load_model(done.path)
    assert (layer.d_model, layer.d_inner, layer.dt_rank, layer.bimamba_type, layer.nslices) == (32, 64, 2, "v3", 5)
    official = load_file(tmp_path / "segmamba.safetensors")
    assert torch.equal(layer.x_proj_s.weight, official["vit.stages.2.1.mamba.x_proj_s.weight"])
    assert torch.equal(layer.A_b_log, official["vit.stages.2.1.mamba.A_b_log"])
    with torch.no_grad():
        assert layer(torch.randn(1, 10, 32)).shape == (1, 10, 32)


def test_segmamba_gsc_matches_the_official_computation() -> None:
    """The four GSC convolutions land where the official forward uses them: an independent re-statement of the
    official GSC (proj, proj2: 3^3 branch; proj3: 1^3 branch; proj4 on their sum; each conv -> InstanceNorm -> ReLU;
    plus the input) on official-named weights equals vistok's GSC on the converted ones."""
    from vistok.convert.segmamba import map_key

    torch.manual_seed(0)
    official = {f"vit.gscs.0.{p}.{t}": torch.randn((8, 8, *(3,) * 3) if p in ("proj", "proj2") else (8, 8, 1, 1, 1))
                if t == "weight" else torch.randn(8)
                for p in ("proj", "proj2", "proj3", "proj4") for t in ("weight", "bias")}
    x = torch.randn(1, 8, 4, 6, 6)

    def cna(h: torch.Tensor, p: str) -> torch.Tensor:
        w, b = official[f"vit.gscs.0.{p}.weight"], official[f"vit.gscs.0.{p}.bias"]
        return torch.relu(torch.nn.functional.instance_norm(
            torch.nn.functional.conv3d(h, w, b, padding=w.shape[-1] // 2)))

    reference = cna(cna(cna(x, "proj"), "proj2") + cna(x, "proj3"), "proj4") + x
    gsc = GSC(8)
    gsc.load_state_dict({map_key(k)[len("encoder.gscs.0."):]: v for k, v in official.items()}, strict=True)
    torch.testing.assert_close(gsc(x), reference)


# ---------------------------------------------------------------------------------------------------------------------
# safety, errors, CLI
# ---------------------------------------------------------------------------------------------------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["xar", "mar-vae", "mamba", "segmamba", "tokenunify"])
def test_a_pickle_that_names_code_is_refused_and_nothing_runs(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Evil(marker)}, tmp_path / "evil.pth")
    with pytest.raises(VistokError, match=r"refusing to load .*evil\.pth: it names .*system"):
        convert(kind, tmp_path / "evil.pth", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    rc = main(["convert", "--from", kind, "--input", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "out")])
    assert rc == 1 and not marker.exists() and not (tmp_path / "out").exists()


def test_cli_convert_then_sample_a_256px_xar_on_its_vae(tmp_path: Path, capsys) -> None:
    vae, gen = tmp_path / "vae", tmp_path / "xar"
    assert main(["convert", "--from", "mar-vae", "--input", str(FIX / "mar_vae_small_state.safetensors"),
                 "--out", str(vae)]) == 0
    assert main(["convert", "--from", "xar", "--input", str(FIX / "xar_tiny_checkpoint.pth"), "--out", str(gen)]) == 0
    assert main(["sample", "--ckpt", str(gen), "--num", "1", "--steps", "1", "--out", str(tmp_path / "a.png")]) == 1
    assert "--vae" in capsys.readouterr().err  # no tokenizer: the error says how to attach one
    assert main(["convert", "--from", "xar", "--input", str(FIX / "xar_tiny_checkpoint.pth"), "--out", str(gen),
                 "--vae", str(vae), "--weights", "model"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"wrote {gen}: xAR") and "raw" in lines[0]
    meta = json.loads((gen / "config.json").read_text())
    assert meta["tokenizer"] == {"family": "vae", "config": {"arch": "kl16"}, "path": "tokenizer", "source": vae.name}
    assert meta["resolution"] == 256 and meta["config"]["time_floor"] is True
    assert (gen / "tokenizer" / "model.safetensors").read_bytes() == (vae / "model.safetensors").read_bytes()
    out = tmp_path / "samples"
    assert main(["sample", "--ckpt", str(gen), "--num", "2", "--steps", "2", "--seed", "3", "--out", str(out)]) == 0
    import numpy as np

    images = np.load(out / "samples.npz")["arr_0"]
    assert images.shape == (2, 256, 256, 3) and images.dtype == np.uint8 and images.std() > 0
    import vistok  # the Python API loads the same export, tokenizer included, and gives the same images

    labels = np.load(out / "samples.npz")["labels"].tolist()
    assert np.array_equal(vistok.load(gen).sample(labels=labels, seed=3, steps=2), images)


def test_convert_help_and_unknown_kind() -> None:
    proc = vistok_cli("convert", "--help")  # in-process: a fresh interpreter's imports are test_help.py's subject
    assert proc.returncode == 0 and proc.stdout.startswith("usage:")
    for flag in ("--from", "--input", "--out", "--weights", "--time", "--vae", "--prefix", "--nslices"):
        assert flag in proc.stdout
    with pytest.raises(VistokError, match="unknown checkpoint kind"):
        convert("dit", FIX / "xar_tiny_state.safetensors", "/nonexistent")
