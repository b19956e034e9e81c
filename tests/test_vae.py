"""VAE adapter (diffusers AutoencoderKL and MAR's KL-16 layout, local weights only) and latent caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vistok.errors import VistokError
from vistok.tokenizers.kl_vae import KLVAE, KLVAEConfig
from vistok.tokenizers.vae import ARCHS, KL_ARCHS, VAE, VAEConfig, _diffusers_config

FIX = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official"




def tiny_vae(**overrides) -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig(**{"arch": "tiny-f4", "random_init": True, **overrides}))


def images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_paper_architectures_have_the_published_sizes() -> None:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        flextok = AutoencoderKL(**_diffusers_config("flextok-c16"))
    assert sum(p.numel() for p in flextok.parameters()) == 83_821_011  # spec: 83.8M (34.3M encoder)
    assert sum(p.numel() for p in flextok.encoder.parameters()) == 34_274_208
    assert set(ARCHS) == {"flextok-c16", "tiny-f4"} and KL_ARCHS == ("kl16",)


def test_released_kl16_has_mar_s_architecture() -> None:
    """MAR's kl16 on the meta device: 66,456,019 parameters and exactly the official 312 names and shapes (the
    fixture sidecar lists them for the released size), attention only at the encoder's 16x16 level and in the
    middles."""
    import json

    with torch.device("meta"):
        vae = KLVAE(KLVAEConfig())
    assert sum(p.numel() for p in vae.parameters()) == 66_456_019
    released = json.loads((FIX / "mar_vae_small.json").read_text())["configuration"]["released_kl16_shapes"]
    assert {k: list(v.shape) for k, v in vae.state_dict().items()} == released
    attn = sorted({k.rsplit(".", 2)[0] for k in released if ".attn" in k})
    assert attn == ["decoder.mid.attn_1", "encoder.down.4.attn.0", "encoder.down.4.attn.1", "encoder.mid.attn_1"]
    assert len(vae.decoder.up[0].block) == 3 and len(vae.encoder.down[0].block) == 2
    assert vae.factor == 16 and vae.latent_channels == 16 and vae.scaling_factor == 0.2325
    assert vae.grid(256, 256) == (16, 16)  # xAR's 16 x 16 x 16 latents
    post = vae.posterior(torch.empty(2, 3, 256, 256, device="meta"))  # shapes only, no compute
    assert post.moments.shape == (2, 32, 16, 16) and post.mean.shape == post.std.shape == (2, 16, 16, 16)
    assert vae.decode_raw(post.mean).shape == (2, 3, 256, 256)
    from vistok import registry

    assert registry.param_count("vae-kl16") == 66_456_019 and registry.param_count("vae-kl16-ch32") == 4_210_291
    with pytest.raises(VistokError, match="multiple of 32"):
        KLVAEConfig(ch=16)


def test_kl16_through_the_adapter_from_every_weights_form(tmp_path: Path) -> None:
    """The kl16 arch of `VAE` reads a vistok export, a .safetensors and MAR's kl16.ckpt alike; latents are the
    posterior scaled by 0.2325, samples are mean + std * eps, decode inverts the scale."""
    from safetensors.torch import load_file

    from vistok.convert import convert

    state = load_file(FIX / "mar_vae_small_state.safetensors")
    torch.save({"model": state}, tmp_path / "kl16.ckpt")
    export = convert("mar-vae", FIX / "mar_vae_small_state.safetensors", tmp_path / "export").path
    x = images(2)  # 32 x 32 -> 2 x 2 latents
    vaes = [VAE(VAEConfig(arch="kl16", weights=str(w), sample=False))
            for w in (export, FIX / "mar_vae_small_state.safetensors", tmp_path / "kl16.ckpt")]
    ref = KLVAE(KLVAEConfig(ch=32)).eval()
    ref.load_state_dict(state)
    with torch.no_grad():
        post = ref.posterior(x)
        expected_img = ref.decode_raw(post.mean)
    for vae in vaes:
        assert vae.factor == 16 and vae.latent_channels == vae.token_channels == 16 and vae.grid(32, 64) == (2, 4)
        mean, std = vae.moments(x)
        torch.testing.assert_close(mean, post.mean * 0.2325)
        torch.testing.assert_close(std, post.std * 0.2325)
        torch.testing.assert_close(vae.encode(x), mean)
        # 4e-5 of the largest value: the spread between float32 execution orders measured on this decoder (threads,
        # float64, the official machine: up to 1.1e-5 of the range) times four (see test_convert's MAR VAE test)
        torch.testing.assert_close(vae.decode(mean), expected_img, rtol=0,
                                   atol=4e-5 * expected_img.abs().max().item())
        assert not any(p.requires_grad for p in vae.parameters())
    sampled = VAE(VAEConfig(arch="kl16", weights=str(export)))
    eps = torch.randn(2, 16, 2, 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(sampled.encode(x, torch.Generator().manual_seed(5)),
                               post.mean * 0.2325 + post.std * 0.2325 * eps)
    with pytest.raises(VistokError, match="ch=32 VAE but vae.ch=128"):
        VAE(VAEConfig(arch="kl16", weights=str(export), ch=128))
    with pytest.raises(VistokError, match="needs local weights"):
        VAE(VAEConfig(arch="kl16"))
    with pytest.raises(VistokError, match="applies to kl16 only"):
        VAEConfig(arch="tiny-f4", ch=32)
    rand = VAE(VAEConfig(arch="kl16", ch=32, random_init=True))
    assert rand.encode(x).shape == (2, 16, 2, 2) and rand.scaling_factor == 0.2325
    # a diffusers AutoencoderKL folder named kl16 (an LDM KL-f16 saved by diffusers) is still built by diffusers
    from diffusers import AutoencoderKL

    n = 5
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                  block_out_channels=(32,) * n, latent_channels=16, layers_per_block=1).save_pretrained(
                      tmp_path / "dif")
    diffusers_vae = VAE(VAEConfig(arch="kl16", weights=str(tmp_path / "dif")))
    assert (diffusers_vae.factor == 16 and diffusers_vae.scaling_factor == 0.2325
            and diffusers_vae.encode(x).shape == (2, 16, 2, 2))


def test_encode_decode_shapes_frozen_and_deterministic_mode() -> None:
    vae = tiny_vae(sample=False)
    assert vae.factor == 4 and vae.latent_channels == 16 and vae.scaling_factor == 1.0
    z = vae.encode(images())
    assert z.shape == (3, 16, 8, 8) and torch.equal(z, vae.encode(images()))
    assert vae.decode(z).shape == (3, 3, 32, 32)
    assert not any(p.requires_grad for p in vae.parameters())
    vae.train()
    assert not vae.training and not vae.vae.training
    sampled = tiny_vae(sample=True)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(sampled.encode(images(), gen()), sampled.encode(images(), gen()))
    mean, std = sampled.moments(images())
    assert (std > 0).all() and not torch.equal(sampled.encode(images(), gen()), mean)
    with pytest.raises(VistokError, match="divisible by 4"):
        vae.encode(torch.zeros(1, 3, 30, 30))


def test_missing_weights_fail_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(VistokError, match="needs local weights"):
        VAE(VAEConfig(arch="flextok-c16"))
    with pytest.raises(VistokError, match="not found"):
        VAE(VAEConfig(arch="tiny-f4", weights=str(tmp_path / "nope.safetensors")))
    with pytest.raises(VistokError, match="no config.json"):
        VAE(VAEConfig(arch="tiny-f4", weights=str(tmp_path)))
    with pytest.raises(VistokError, match="vae.arch"):
        VAEConfig(arch="sd-vae")


def test_diffusers_folder_and_single_file(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = AutoencoderKL(**_diffusers_config("tiny-f4"), scaling_factor=0.5).eval()
    ref.save_pretrained(tmp_path / "folder")
    with torch.no_grad():
        expected = ref.encode(images()).latent_dist.mean * 0.5
    folder = VAE(VAEConfig(arch="tiny-f4", weights=str(tmp_path / "folder"), sample=False))
    assert folder.scaling_factor == 0.5  # read from the folder's config.json
    torch.testing.assert_close(folder.encode(images()), expected)

    save_file(ref.state_dict(), tmp_path / "vae.safetensors")
    with pytest.raises(VistokError, match="scaling factor"):  # a bare file of an arch without a published factor
        VAE(VAEConfig(arch="flextok-c16", weights=str(tmp_path / "vae.safetensors")))
    single = VAE(VAEConfig(arch="tiny-f4", weights=str(tmp_path / "vae.safetensors"), scaling_factor=0.5, sample=False))
    torch.testing.assert_close(single.encode(images()), expected)
    torch.save({"state_dict": {k: v[..., :1] for k, v in ref.state_dict().items()}}, tmp_path / "bad.ckpt")
    with pytest.raises(VistokError):
        VAE(VAEConfig(arch="tiny-f4", weights=str(tmp_path / "bad.ckpt"), scaling_factor=1.0))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VistokError, match="cannot read"):
        VAE(VAEConfig(arch="tiny-f4", weights=str(tmp_path / "corrupt.pt"), scaling_factor=1.0))
