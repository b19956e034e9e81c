"""`vistok convert --from flextok` and the public latent space of a Tokenizer, checked against apple/ml-flextok.

Every reference comes from `../shared/fixtures/official/flextok_tiny_*` (random weights drawn by the official
constructors under the released module names, outputs computed by the official code; see its README): the converted
model gives the official token ids, decoder velocities (conditional and null) and whole detokenizations (no guidance,
CFG 3.0, APG 3.0; prefix lengths 16/8/4/1 in one batch; the fixture's noise). A released hub folder is built from the
fixture (its Hydra config.json + model.safetensors, with a tiny diffusers VAE under `vae.vae.*`) and loaded through
`vistok convert`, `vistok.load(folder)` and `vistok.load("hf://...")` from a local Hugging Face cache, offline.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vistok
from vistok.api.exports import export_paired, load_flextok
from vistok.cli import main
from vistok.convert import convert
from vistok.errors import VistokError
from vistok.tokenizers import flextok_official, flextok_sampling

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"
if not FIX.is_dir() and os.environ.get("VISTOK_DATA"):  # a checkout elsewhere: the fixtures beside the shared data
    FIX = Path(os.environ["VISTOK_DATA"]).resolve().parent / "fixtures" / "official"
STATE, IO = FIX / "flextok_tiny_state.safetensors", FIX / "flextok_tiny_io.safetensors"
TOL = 1e-5


def rel_err(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    a = torch.as_tensor(a)
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(IO))


@pytest.fixture(scope="module")
def bare_export(tmp_path_factory) -> Path:
    """The fixture's bare state dict converted; the weights cannot say the head dim (32 in the fixture)."""
    out = tmp_path_factory.mktemp("ft") / "export"
    convert("flextok", STATE, out, head_dim=32)
    return out


def hub_tree(levels=(8, 8, 8, 5, 5, 5), max_timestep=1.0, scaling=0.7) -> dict:
    """The parts of a released hub config.json the converter reads (Hydra `_target_` tree)."""
    mod = "flextok.model."
    return {
        "encoder": {"_target_": mod + "utils.wrappers.SequentialModuleDictWrapper", "module_dict": {
            "enc_patch_emb": {"_target_": mod + "preprocessors.patching.PatchEmbedder", "channels_in": 16,
                              "patch_sizes": [2, 2]},
            "enc_seq_packer": {"mask_mode": "causal_last"},
            "enc_transformer": {"_target_": mod + "trunks.transformers.FlexTransformer", "dim": 64, "depth": 2,
                                "head_dim": 32}}},
        "decoder": {"_target_": mod + "utils.wrappers.SequentialModuleDictWrapper", "module_dict": {
            "dec_registers_posemb_module": {"posemb_type": "learnable_sum"},
            "dec_nested_dropout": {"size_sampling_mode": "uniform"},
            "dec_latent_dropout": {"_target_": mod + "preprocessors.nullcond.LearnedNullCond", "dropout_prob": 0.1,
                                   "replace_with_single_token": False},
            "dec_seq_packer": {"mask_mode": "full"},
            "dec_time_embedder": {"max_timestep": max_timestep},
            "dec_transformer": {"head_dim": 32}}},
        "regularizer": {"_target_": "flextok.regularizers.quantize_fsq.FSQ", "levels": list(levels)},
        "vae": {"_target_": "flextok.vae_wrapper.StableDiffusionVAE", "latent_channels": 16, "scaling_factor": scaling,
                "sample_posterior": True},
    }


def tiny_vae():
    """A random diffusers AutoencoderKL (f2, 16 latent channels): 16 px images <-> the fixture's 16 x 8 x 8 latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 32), latent_channels=16, layers_per_block=1, norm_num_groups=32,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2).eval()


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A folder laid out as a released hub repository: config.json (Hydra tree) + model.safetensors with vae.vae.*."""
    folder = tmp_path_factory.mktemp("hub") / "flextok_tiny"
    folder.mkdir()
    vae = tiny_vae()
    state = {**load_file(str(STATE)), **{f"vae.vae.{k}": v.contiguous() for k, v in vae.state_dict().items()}}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hub_tree()))
    return folder, vae


# ------------------------------------------------------------------------------------ the official fixture
def test_converted_fixture_gives_the_official_ids_and_velocities(bare_export, io) -> None:
    model, _, meta = load_flextok(bare_export)
    c = model.config
    assert (c.in_channels, c.grid, c.patch, c.registers, c.levels) == (16, (8, 8), 2, 16, (8, 8, 8, 5, 5, 5))
    assert (c.enc_width, c.enc_depth, c.dec_width, c.dec_depth, c.head_dim) == (64, 2, 64, 2, 32)
    assert c.official_numerics and c.max_timestep == 1.0 and c.nested_dropout == "uniform" and c.repa_dim == 0
    assert meta["tokenizer"]["family"] == "latents"
    ids = flextok_sampling.encode(model, io["latents"])
    assert torch.equal(ids, io["token_ids"])
    with torch.no_grad():
        assert rel_err(model.encode(io["latents"]), io["encoder_register_latents"]) < TOL
        assert torch.equal(model.quantize(model.encode(io["latents"])).codes, io["quants"])
        codes = flextok_sampling.ids_to_codes(model, io["token_ids"])  # the official padding of truncated ids: id 0
        for null, name in ((None, "decoder_velocity_cond"),
                           (torch.ones(4, dtype=torch.bool), "decoder_velocity_uncond")):
            v, _ = model.decode(io["decoder_x_t"], io["decoder_t"], codes, io["keep_k"], null)
            assert rel_err(v, io[name]) < TOL, name


def test_decode_latents_reproduces_the_official_detokenizations(bare_export, io) -> None:
    tok = vistok.load(bare_export)
    assert type(tok).__name__ == "Tokenizer" and tok.latent_shape == (16, 8, 8)
    assert np.array_equal(tok.encode_latents(io["latents"].numpy()), io["token_ids"].numpy())
    assert io["keep_k"].tolist() == [16, 8, 4, 1]  # every prefix length in one batch
    for cfg, guidance, name in ((1.0, "cfg", "detok_cfg1"), (3.0, "cfg", "detok_cfg3"), (3.0, "apg", "detok_apg3")):
        out = tok.decode_latents(io["token_ids"], io["keep_k"], steps=6, cfg=cfg, guidance=guidance,
                                 noise=io["detok_noise"])
        assert out.dtype == np.float32 and out.shape == (4, 16, 8, 8)
        assert rel_err(out, io[name]) < TOL, name
    # the prefix really selects: k=1 for every image is not the fixture's mixed batch
    other = tok.decode_latents(io["token_ids"], 1, steps=6, cfg=1.0, noise=io["detok_noise"])
    assert rel_err(other, io["detok_cfg1"]) > 1e-3
    with pytest.raises(VistokError, match="no VAE"):  # a latents-only export refuses images, with the way out
        tok.encode(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(VistokError, match=r"latents must be float \(N, 16, 8, 8\)"):
        tok.encode_latents(np.zeros((2, 16, 4, 4), np.float32))
    with pytest.raises(VistokError, match="noise must be float"):
        tok.decode_latents(io["token_ids"], noise=np.zeros((4, 3, 8, 8), np.float32))


def test_the_official_numerics_matter(bare_export, io) -> None:
    """Planted bug: the same weights with vistok's own numerics (1 / sqrt(head_dim) logits, eps 1e-6) miss the
    official velocity by far more than the tolerance, so the fixture pins `official_numerics`."""
    from dataclasses import replace

    from vistok.tokenizers.flextok import FlexTok

    model, _, _ = load_flextok(bare_export)
    other = FlexTok(replace(model.config, official_numerics=False)).eval()
    other.load_state_dict(model.state_dict())
    codes = flextok_sampling.ids_to_codes(model, io["token_ids"])
    with torch.no_grad():
        v, _ = other.decode(io["decoder_x_t"], io["decoder_t"], codes, io["keep_k"])
    assert rel_err(v, io["decoder_velocity_cond"]) > 100 * TOL


# ------------------------------------------------------------------------------------ the released hub layout
def test_hub_folder_converts_with_its_vae_and_decodes_from_given_noise(hub_folder, tmp_path, io, capsys) -> None:
    folder, vae = hub_folder
    out = tmp_path / "converted"
    assert main(["convert", "--from", "flextok", "--input", str(folder), "--out", str(out)]) == 0
    assert "VAE in tokenizer/" in capsys.readouterr().out
    meta = json.loads((out / "config.json").read_text())
    assert meta["tokenizer"]["path"] == "tokenizer" and meta["tokenizer"]["config"]["scaling_factor"] == 0.7
    assert meta["resolution"] == 16 and meta["sample"] == {"steps": 20, "cfg": 7.5, "guidance": "apg"}
    assert (out / "tokenizer" / "diffusion_pytorch_model.safetensors").is_file()  # inside the export: it can move
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    tok = vistok.load(moved)
    assert np.array_equal(tok.encode_latents(io["latents"]), io["token_ids"].numpy())
    # the VAE in tokenizer/ is the checkpoint's: the same weights decode the same latents
    lat = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae.decode(lat / 0.7).sample
        assert torch.allclose(tok.tokenizer.decode(lat), ref, atol=1e-5)
    noise = torch.randn(3, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    ids = io["token_ids"][:3]
    images = tok.decode(ids, [16, 4, 1], steps=3, cfg=3.0, guidance="apg", noise=noise)
    assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 3)
    assert np.array_equal(images, tok.decode(ids, [16, 4, 1], steps=3, cfg=3.0, guidance="apg", noise=noise, seed=9))
    latents = tok.decode_latents(ids, [16, 4, 1], steps=3, cfg=3.0, guidance="apg", noise=noise)
    with torch.no_grad():
        through_vae = ((vae.decode(torch.from_numpy(latents) / 0.7).sample.clamp(-1, 1) + 1) * 127.5)
    assert np.abs(images.astype(np.float64) - through_vae.permute(0, 2, 3, 1).numpy()).max() <= 1.0
    seeded = tok.decode(ids, [16, 4, 1], steps=3, cfg=3.0, guidance="apg", seed=0)
    assert not np.array_equal(seeded, images)  # noise= is used, not the seed's draw
    # a generator export on these tokens carries the converted tokenizer with its VAE folder
    paired = export_paired(tmp_path / "paired", "ar", {}, {"w": torch.zeros(1)}, moved)
    shutil.rmtree(moved)
    _, vae_again, _ = load_flextok(paired / "tokenizer")
    with torch.no_grad():
        assert torch.allclose(vae_again.decode(lat), ref, atol=1e-5)


def test_official_folder_loads_directly_and_from_an_offline_hf_cache(hub_folder, tmp_path, monkeypatch, io) -> None:
    import huggingface_hub.constants as hf_constants

    folder, _ = hub_folder
    monkeypatch.setenv("VISTOK_CACHE", str(tmp_path / "cache"))
    tok = vistok.load(folder)  # a local folder in the released layout: converted into the cache on first use
    assert np.array_equal(tok.encode_latents(io["latents"]), io["token_ids"].numpy())
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--EPFL-VILAB--flextok_d18_d28_dfn"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir()
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    calls = []
    real = flextok_official.export
    monkeypatch.setattr(flextok_official, "export", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(2):
        tok = vistok.load("hf://EPFL-VILAB/flextok_d18_d28_dfn")
        assert np.array_equal(tok.encode_latents(io["latents"]), io["token_ids"].numpy())
    assert len(calls) == 1  # converted once, then read from the cache
    assert len(list((tmp_path / "cache" / "flextok").iterdir())) == 2  # the local folder and the hub snapshot


# ------------------------------------------------------------------------------------ options and errors
def test_options_fill_what_the_weights_do_not_hold_and_conflicts_are_refused(tmp_path, hub_folder, capsys) -> None:
    out = tmp_path / "opts"
    assert main(["convert", "--from", "flextok", "--input", str(STATE), "--out", str(out), "--head-dim", "32",
                 "--max-timestep", "1000", "--nested-dropout", "pow2", "--fsq-levels", "8,8,8,5,5,5"]) == 0
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["max_timestep"] == 1000.0 and cfg["nested_dropout"] == "pow2" and cfg["levels"] == [8, 8, 8, 5, 5, 5]
    model, _, _ = load_flextok(out)
    assert math.isclose(model.decoder.time_emb.scale, 1.0)  # t in [0, 1] times 1000 / max_timestep
    folder, _ = hub_folder
    cases = [
        (["--input", str(STATE), "--fsq-levels", "8,8,8,5,5"], "FSQ levels"),  # 5 levels for 6 encoder outputs
        (["--input", str(folder), "--max-timestep", "1000"], "config.json sets max_timestep=1.0"),
        (["--input", str(FIX / "xar_tiny_state.safetensors")], "no encoder.module_dict.enc_patch_emb"),
        (["--input", str(STATE), "--weights", "ema"], "--weights does not apply to --from flextok"),
    ]
    for args, message in cases:
        assert main(["convert", "--from", "flextok", "--out", str(tmp_path / "bad"), *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("vistok convert: error: ") and message in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "bad").exists()


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_every_attention_path_takes_the_official_logit_scale() -> None:
    """Official FlexTok scales logits by 8 / head_dim (muP); each path of `attend` must use a given scale, not
    1 / sqrt(head_dim) (which it equals only at head dim 64)."""
    from vistok.modules import attention
    from vistok.modules.attention import BlockCausal, attend, flex_block_mask

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 16, generator=g) for _ in range(3))
    scale = 8.0 / 16
    ref = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1) @ v
    dense = torch.ones(6, 6, dtype=torch.bool)
    outs = {
        "none": attend(q, k, v, None, scale=scale),
        "bool mask": attend(q, k, v, dense, scale=scale),
        "block causal, one entity": attend(q, k, v, BlockCausal((6,)), scale=scale),
        "keys major": attention._keys_major(q, k, v, scale),
        "flex": attend(q, k, v, flex_block_mask(lambda b, h, i, j: i >= 0, 6, 6, "cpu"), scale=scale),
    }
    for name, out in outs.items():
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6, msg=name)
    torch.manual_seed(0)  # the written-out product (CPU dropout path) with p -> 0 keeps every probability
    out = attention._sdpa(q.requires_grad_(), k, v, 1e-9, scale)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    # the default scale differs at head dim 16
    assert not torch.allclose(attend(q.detach(), k, v, None), ref, atol=1e-3)


def test_a_shipped_pixel_tokenizer_has_the_same_public_latent_space() -> None:
    """Any tokenizer, not only converted ones: on the shipped CPU model (pixels are its grid) encode_latents of the
    image grid gives encode's ids, and decode(noise=N) is decode_latents(noise=N) through its tokenizer's decode."""
    from vistok.data.images import to_float, to_uint8

    tok = vistok.load("cifar10-flextok-tiny")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    grid = tok.tokenizer.encode(to_float(torch.from_numpy(images).permute(0, 3, 1, 2)))  # (3, C, H, W)
    assert tuple(grid.shape[1:]) == tok.latent_shape
    ids = tok.encode(images)
    assert np.array_equal(tok.encode_latents(grid), ids)
    noise = torch.randn(3, *tok.latent_shape, generator=torch.Generator().manual_seed(3))
    latents = tok.decode_latents(ids, [1, 4, 16], steps=2, cfg=2.0, noise=noise)
    pixels = tok.decode(ids, [1, 4, 16], steps=2, cfg=2.0, noise=noise)
    expect = to_uint8(tok.tokenizer.decode(torch.from_numpy(latents))).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(pixels, expect)
    assert np.array_equal(pixels, tok.decode(ids, [1, 4, 16], steps=2, cfg=2.0, noise=noise.numpy(), seed=5))
