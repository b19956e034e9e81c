"""TokenUnify's official autoregressive stage (issue 27, item 6): the backbone variant of src/segmamba_ar.py, the
official input perturbations, the next-token target as the official loader forms it, and the named config; plus the
EM data settings and loaders in vistok/em/data.py (issue 28, item 4).

References are written from the official sources, not from vistok's code:
- the loader `dataloader/data_provider_pretraining_autoregress.py`: raster tokens with z slowest, k ~ U{1..K-1},
  tokens [k, K) filled, the next token cut out of the crop the network sees;
- `src/segmamba_ar.py`: MSE(sigmoid(out), clean) + MSE(sigmoid(Preciever(out)), next token);
- dbMiM's `utils/consistency_aug_perturbations.py` (OpenCV Gaussian kernel, clipping, cutout boxes) and
  `config/pretraining_all.yaml` (the ranges).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy import ndimage

from vistok import registry
from vistok.config import load_config
from vistok.convert import convert
from vistok.convert.tokenunify import map_key
from vistok.em import objectives
from vistok.em.backbone import PRESETS as SEG_PRESETS, SegMamba, SegMambaConfig
from vistok.em.data import PerturbedCrops, VolumeDataConfig, pretrain_crops
from vistok.em.objectives import PRESETS, TaskWeights, TokenUnify, TokenUnifyConfig, load_pretrained_backbone
from vistok.em.perturb import PerturbConfig, perturb
from vistok.em.tokens import prefix_lengths
from vistok.em.volumes import EMCrops
from vistok.engine.dist import DistEnv
from vistok.errors import VistokError

from conftest import load_train_script

REPO = Path(__file__).resolve().parents[1]
FIX = REPO.parent / "shared" / "fixtures" / "official"  # the repo's sibling shared/ (as test_convert_tokenunify)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore:vistok Mamba")]
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------------------------
# the named config and the backbone variant
# ---------------------------------------------------------------------------------------------------------------------


def test_official_ar_config_names_the_official_recipe() -> None:
    script = load_train_script("pretrain_tokenunify")
    cfg = load_config(script.Config, REPO / "train/configs/tokenunify_official_ar.yaml", [])
    assert cfg.model == PRESETS["tokenunify-ar-base"]
    bb = cfg.model.backbone  # src/segmamba_ar.py
    assert bb.depths == (3, 3, 3, 3) and bb.kernel_size == (1, 3, 3) and bb.feat_size == (32, 64, 128, 256)
    assert bb.hidden_size == 512 and bb.encoder_z == "anisotropic" and bb.bimamba_type == "v3" and bb.out_chans == 1
    assert bb.stem_kernel == (1, 7, 7) and bb.down_kernel == (1, 2, 2) and not bb.mamba_residual
    assert cfg.model.input_size == (16, 160, 160) and cfg.model.patch_size == (4, 16, 16)
    assert cfg.model.num_tokens == 400 and cfg.model.fill == "noise" and cfg.model.head_channels == 12
    assert cfg.schedule.kind == "constant" and cfg.schedule.weights == (0.0, 1.0, 1.0)  # auto_mode=1
    # the loader: no flips or rotations; p=0.5 of one of noise / blur / cutout with dbMiM's ranges
    assert cfg.data.augment is False
    assert cfg.data.perturb == PerturbConfig(p=0.5, kinds=("noise", "blur", "cutout"), noise_std=(0.01, 0.2),
                                             blur_kernel=(3, 9), blur_sigma=(0.0, 2.0), cutout_boxes=(60, 100),
                                             cutout_depth=(5, 10), cutout_size=(10, 20))
    tc = cfg.train  # run_mamba_mae_AR.sh: blr 1e-3 x (20 x 8) / 256, no warm-up, half-cosine to 0, AMP fp16
    assert tc.batch_size == 160 and math.isclose(tc.lr, 1e-3 * 160 / 256) and tc.warmup_steps == 0
    assert tc.min_lr == 0 and tc.schedule == "cosine" and tc.betas == (0.9, 0.95) and tc.weight_decay == 0.05
    assert tc.precision == "fp16" and tc.decay_rule == "official" and tc.grad_clip == 0 and tc.nonfinite == "skip"
    assert tc.ema_decay == 0  # no EMA: the export holds the trained weights


def official_ar_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict under src/segmamba_ar.py's names: the official SegMamba key list of the fixture (two Mamba layers
    per stage) with the third layer segmamba_ar.py adds, plus the Preciever; shapes of the AR variant at base size."""
    keys = [item["key"] for item in json.loads((FIX / "segmamba_tiny_state_keys.json").read_text())["keys"]]
    third = [k.replace(f"vit.stages.{i}.1.", f"vit.stages.{i}.2.") for k in keys for i in range(4)
             if k.startswith(f"vit.stages.{i}.1.")]
    head = ["preciever.conv1.weight", "preciever.conv1.bias", "preciever.conv2.weight", "preciever.conv2.bias",
            "preciever.conv3.weight", "preciever.conv3.bias", "preciever.mlp.weight", "preciever.mlp.bias"]
    # MONAI's UnetResBlock has a 1^3 `conv3` where its channels change: encoder5 maps 256 -> 512 at base size (the
    # fixture's tiny model keeps 64 -> 64)
    third.append("encoder5.layer.conv3.conv.weight")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TokenUnify(PRESETS["tokenunify-ar-base"]).state_dict().items()}
    official = {k: torch.randn(shapes[map_key(k)], generator=gen) * 0.02 for k in keys + third + head}
    # the Preciever as written in segmamba_ar.py: Conv3d(1,12,3,s2), Conv3d(12,12,3,s2), Conv3d(12,1,3,s2),
    # Linear(2*20*20, 4*16*16)
    assert official["preciever.conv1.weight"].shape == (12, 1, 3, 3, 3)
    assert official["preciever.mlp.weight"].shape == (4 * 16 * 16, 2 * 20 * 20)
    return official


def test_a_released_ar_checkpoint_converts_into_the_ar_preset_and_fine_tunes(tmp_path: Path) -> None:
    official = official_ar_state(torch.Generator().manual_seed(0))
    assert sum(k.startswith("vit.stages.0.") and k.endswith(".norm.weight") for k in official) == 3
    save_file(official, tmp_path / "tokenunify_ar.safetensors")
    done = convert("tokenunify", tmp_path / "tokenunify_ar.safetensors", tmp_path / "tu")
    assert done.summary.startswith("TokenUnify (preset tokenunify-ar-base):")
    model, meta = registry.load_model(done.path)  # builds from config.json and loads strictly
    assert isinstance(model, TokenUnify) and model.config == PRESETS["tokenunify-ar-base"]
    state = model.state_dict()
    assert len(state) == len(official)
    assert torch.equal(state["backbone.encoder.stages.2.2.mamba.A_s_log"], official["vit.stages.2.2.mamba.A_s_log"])
    assert torch.equal(state["next_head.proj.weight"], official["preciever.mlp.weight"])
    # fine-tuning from it: the 3-channel AR backbone preset takes every weight but the output head
    seg = SegMamba(SEG_PRESETS["segmamba-ar-base"])
    assert load_pretrained_backbone(seg, state) == ["head.bias", "head.weight"]
    assert torch.equal(seg.state_dict()["dec_out.conv1.weight"], official["decoder1.layer.conv1.conv.weight"])


# ---------------------------------------------------------------------------------------------------------------------
# input perturbations
# ---------------------------------------------------------------------------------------------------------------------


def cv2_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV getGaussianKernel for a positive sigma: exp(-(i - (size-1)/2)^2 / (2 sigma^2)), summing to 1."""
    i = np.arange(size) - (size - 1) / 2
    k = np.exp(-i * i / (2 * sigma * sigma))
    return k / k.sum()


def reference_blur(volume: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """cv2.GaussianBlur on each z section (default border reflect-101 = scipy's 'mirror'), then clipped to [0, 1]."""
    k = cv2_kernel(size, sigma)
    out = ndimage.convolve1d(volume.astype(np.float64), k, axis=1, mode="mirror")
    return np.clip(ndimage.convolve1d(out, k, axis=2, mode="mirror"), 0, 1)


def test_each_perturbation_has_the_official_statistics_and_half_the_crops_are_untouched() -> None:
    rng_vol = np.random.default_rng(0)
    volume = (0.4 + 0.2 * rng_vol.random((16, 32, 32))).astype(np.float32)  # texture in [0.4, 0.6]
    cfg = PerturbConfig(p=0.5)
    n = 1200
    seen: dict[str, list[dict]] = {"": [], "noise": [], "blur": [], "cutout": []}
    for i in range(n):
        out, what = perturb(volume, cfg, np.random.default_rng([3, i]))
        assert out.shape == volume.shape and out.dtype == volume.dtype
        seen[what.kind].append(what.params)
        if what.kind == "":
            assert np.array_equal(out, volume)
        elif what.kind == "noise":  # x + N(0, std^2), clipped: every voxel moves; the residual has the drawn std
            std = what.params["std"]
            assert 0.01 <= std <= 0.2 and out.min() >= 0 and out.max() <= 1 and np.all(out != volume)
            inside = (out > 0) & (out < 1)
            resid = (out - volume)[inside]
            assert abs(resid.mean()) < 0.1 * std and abs(resid.std() / std - 1) < 0.15
        elif what.kind == "blur":  # exactly OpenCV's per-section blur with the drawn kernel and sigma, nothing else
            size, sigma = what.params["kernel"], what.params["sigma"]
            assert size in (3, 5, 7, 9) and 0 <= sigma <= 2
            np.testing.assert_allclose(out, reference_blur(volume, size, sigma), atol=2e-6)
        else:  # cutout: the union of the drawn boxes is 0, every other voxel untouched
            p = what.params
            assert 60 <= len(p["boxes"]) <= 100 and 5 <= p["depth"] <= 10 and 10 <= p["size"] <= 20
            mask = np.ones(volume.shape, bool)
            for z, y, x in p["boxes"]:
                assert 0 <= z <= 16 - p["depth"] and 0 <= y <= 32 - p["size"] and 0 <= x <= 32 - p["size"]
                mask[z:z + p["depth"], y:y + p["size"], x:x + p["size"]] = False
            assert np.array_equal(out, np.where(mask, volume, 0))
    untouched = len(seen[""]) / n
    assert abs(untouched - 0.5) < 0.06  # p = 0.5 (binomial sd 0.014)
    touched = n - len(seen[""])
    for kind in ("noise", "blur", "cutout"):  # one perturbation, drawn uniformly from the three
        assert abs(len(seen[kind]) / touched - 1 / 3) < 0.07, kind
    stds = [p["std"] for p in seen["noise"]]
    assert abs(np.mean(stds) - 0.105) < 0.015 and min(stds) < 0.03 and max(stds) > 0.18  # U(0.01, 0.2)
    sizes = [p["kernel"] for p in seen["blur"]]
    assert set(sizes) == {3, 5, 7, 9} and all(abs(sizes.count(s) / len(sizes) - 0.25) < 0.1 for s in (3, 5, 7, 9))
    assert abs(np.mean([p["sigma"] for p in seen["blur"]]) - 1.0) < 0.15  # U(0, 2)
    counts = [len(p["boxes"]) for p in seen["cutout"]]
    assert abs(np.mean(counts) - 80) < 3 and {p["depth"] for p in seen["cutout"]} == set(range(5, 11))


def test_perturbation_settings_are_checked_and_p_zero_is_off() -> None:
    volume = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    for i in range(50):
        out, what = perturb(volume, PerturbConfig(), np.random.default_rng(i))  # the default p=0: off
        assert what.kind == "" and out is volume
    for bad in ({"p": 1.5}, {"kinds": ("noise", "elastic")}, {"kinds": ()}, {"noise_std": (0.2, 0.01)}):
        with pytest.raises(VistokError, match="data.perturb"):
            PerturbConfig(**bad)


def test_perturbed_crops_give_the_clean_crop_and_its_perturbed_copy_deterministically() -> None:
    volume = np.random.default_rng(1).integers(0, 255, (20, 40, 40)).astype(np.uint8)
    data = VolumeDataConfig(samples_per_epoch=64, augment=False, perturb=PerturbConfig(p=1.0, kinds=("cutout",)))
    crops = pretrain_crops(data, [volume], [(0.0, 255.0)], (16, 32, 32), seed=5, env=CPU)
    assert isinstance(crops, PerturbedCrops) and len(crops) == 64
    plain = EMCrops([volume], (16, 32, 32), 64, seed=5, augment=False, ranges=[(0.0, 255.0)])
    seen, clean = crops[(3, 2)]
    assert seen.shape == clean.shape == (1, 16, 32, 32) and seen.dtype == torch.float32
    assert torch.equal(clean, plain[(3, 2)])  # the clean crop is the crop itself
    assert (seen == 0).float().mean() > 0.1 and torch.equal(seen[seen != 0], clean[seen != 0])  # boxes cut out
    again, _ = crops[(3, 2)]
    other, _ = crops[(3, 3)]
    assert torch.equal(seen, again) and not torch.equal(seen, other)  # a function of (seed, epoch, index)
    off = pretrain_crops(replace(data, perturb=PerturbConfig()), [volume], [(0.0, 255.0)], (16, 32, 32), 5, CPU)
    a, b = off[(3, 2)]
    assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# the next-token target and the stage-2 loss
# ---------------------------------------------------------------------------------------------------------------------

MICRO = SegMambaConfig(out_chans=1, feat_size=(4, 8, 8, 16), hidden_size=16, depths=(1, 1, 1, 1),
                       kernel_size=(1, 3, 3), nslices=4, encoder_z="isotropic")


def hand_token(volume: torch.Tensor, k: int, patch: tuple[int, int, int]) -> torch.Tensor:
    """Token k of (C, D, H, W) in the official raster order ('(h p1) (w p2) (d p3) -> (h w d) ...' over (z, y, x):
    z slowest, x fastest), cut out with plain slicing."""
    _, d, h, w = volume.shape
    gy, gx = h // patch[1], w // patch[2]
    kz, rest = divmod(k, gy * gx)
    ky, kx = divmod(rest, gx)
    return volume[:, kz * patch[0]:(kz + 1) * patch[0], ky * patch[1]:(ky + 1) * patch[1],
                  kx * patch[2]:(kx + 1) * patch[2]]


def hand_volume(shape: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    """(1, D, H, W) whose every token holds its own values: 0.1 + 0.8 * token / K plus a small in-token ramp."""
    d, h, w = shape
    z, y, x = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    gy, gx = h // patch[1], w // patch[2]
    token = ((z // patch[0]) * gy + y // patch[1]) * gx + x // patch[2]
    ramp = ((z % patch[0]) * 100 + (y % patch[1]) * 10 + x % patch[2]).float() / 1e4
    return (0.1 + 0.8 * token.float() / (token.max() + 1) + ramp)[None]


@pytest.mark.parametrize("fill", ["zero", "noise"])
def test_next_token_target_and_stage_two_loss_are_formed_as_the_official_code(fill: str) -> None:
    torch.manual_seed(0)
    cfg = TokenUnifyConfig(backbone=MICRO, input_size=(16, 32, 32), patch_size=(4, 8, 8), head_channels=4, fill=fill)
    model = TokenUnify(cfg).eval()
    num = cfg.num_tokens  # 4 x 4 x 4 = 64
    clean = torch.stack([hand_volume((16, 32, 32), (4, 8, 8))] * 3)  # (3, 1, 16, 32, 32)
    perturbed = clean.clone()
    perturbed[1] = (clean[1] * 0.5 + 0.25)  # sample 1 as the loader hands it after a perturbation; 0 and 2 untouched
    record = {}
    model.backbone.register_forward_hook(lambda m, args, out: record.update(net_in=args[0], logits=out))
    model.next_head.register_forward_hook(lambda m, args, out: record.update(head=out))
    out = model(clean, TaskWeights(0.0, 1.0, 1.0), torch.Generator().manual_seed(4), inputs=perturbed)

    net_in, logits = record["net_in"], record["logits"]
    targets = []
    for b in range(3):
        seen = perturbed[b]
        same = [torch.equal(hand_token(net_in[b], t, (4, 8, 8)), hand_token(seen, t, (4, 8, 8))) for t in range(num)]
        k = same.index(False)  # the first hidden token: tokens [0, k) are the input's, [k, K) filled
        assert 1 <= k <= num - 1 and all(same[:k]) and not any(same[k:])
        hidden = torch.cat([hand_token(net_in[b], t, (4, 8, 8)).flatten() for t in range(k, num)])
        if fill == "zero":
            assert torch.all(hidden == 0)
        else:  # N(0, 1)
            assert abs(float(hidden.mean())) < 0.2 and abs(float(hidden.std()) - 1) < 0.2
        targets.append(hand_token(seen, k, (4, 8, 8)).flatten())  # the official next token: token k of the input crop
        if b != 1:
            assert torch.equal(targets[-1], hand_token(clean[b], k, (4, 8, 8)).flatten())  # untouched: the clean token
    l_all = F.mse_loss(torch.sigmoid(logits), clean)  # next-all: the clean crop, every voxel
    l_next = F.mse_loss(torch.sigmoid(record["head"]), torch.stack(targets))
    torch.testing.assert_close(out.next_all, l_all)
    torch.testing.assert_close(out.next, l_next)
    torch.testing.assert_close(out.loss, l_all + l_next)  # auto_mode=1: 1:1
    assert out.random == 0


def test_prefix_length_is_uniform_over_one_to_k_minus_one() -> None:
    ks = prefix_lengths(40000, 400, torch.Generator().manual_seed(0))  # np.random.randint(1, 400) per sample
    counts = torch.bincount(ks, minlength=400)
    assert counts[0] == 0 and int(ks.min()) == 1 and int(ks.max()) == 399
    assert float(counts[1:].float().std() / counts[1:].float().mean()) < 0.15  # ~100 per value, Poisson sd 10


# ---------------------------------------------------------------------------------------------------------------------
# the training script: the data side hands (input, clean) to the model
# ---------------------------------------------------------------------------------------------------------------------


def test_pretraining_script_feeds_the_perturbed_crop_to_the_network_and_the_clean_one_as_target(
        tmp_path, monkeypatch) -> None:
    volume = np.random.default_rng(2).integers(0, 255, (16, 40, 48)).astype(np.uint8)
    np.save(tmp_path / "v.npy", volume)
    calls = []
    forward = objectives.TokenUnify.forward

    def spy(self, volume, weights, generator=None, inputs=None):
        calls.append((volume.detach().clone(), inputs.detach().clone()))
        return forward(self, volume, weights, generator, inputs)

    monkeypatch.setattr(objectives.TokenUnify, "forward", spy)
    args = [f"train.run_dir={tmp_path / 'run'}", "train.total_steps=2", "train.batch_size=2", "train.warmup_steps=0",
            "train.num_workers=0", "train.device=cpu", "train.log_every=1", f"data.volumes=[{tmp_path / 'v.npy'}]",
            "data.samples_per_epoch=4", "data.perturb.p=1.0", "data.perturb.kinds=[cutout]", "schedule.kind=constant",
            "schedule.weights=[0,1,1]", "eval_crops=0", "model.input_size=[16,32,32]", "model.patch_size=[4,8,8]",
            "model.head_channels=4", "model.backbone.feat_size=[4,8,8,16]", "model.backbone.hidden_size=16"]
    monkeypatch.setattr(sys, "argv", ["pretrain_tokenunify.py", *args])
    load_train_script("pretrain_tokenunify").main()
    assert len(calls) == 2
    for clean, seen in calls:
        assert clean.shape == seen.shape == (2, 1, 16, 32, 32)
        assert (clean == 0).float().mean() < 0.01  # the target: the clean crop (0 only at the volume's minimum)
        zero = seen == 0
        assert zero.float().mean() > 0.1 and torch.equal(seen[~zero], clean[~zero])  # the input: cut out
