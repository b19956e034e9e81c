"""FlexTok (Bachmann et al., arXiv 2502.13967): encoder mask, nested dropout, training loss, sampler, guidance,
presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vistok import flow
from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.modules.repa import DinoV2Teacher, build_teacher
from vistok.tokenizers import flextok_sampling as sampling
from vistok.tokenizers.flextok import FAMILY, PRESETS, FlexTok, FlexTokConfig, register_mask
from vistok.tokenizers.flextok_sampling import APGConfig, DecodeConfig

K = 8


def tiny(**overrides) -> FlexTok:
    """16x16x3 inputs, 4x4 patches (16 of them), 8 registers, width 32, no CFG dropout."""
    cfg = dict(in_channels=3, grid=(16, 16), patch=4, registers=K, enc_width=32, enc_depth=2, dec_width=32, dec_depth=2,
               head_dim=16, null_cond_p=0.0)
    torch.manual_seed(0)
    return FlexTok(FlexTokConfig(**{**cfg, **overrides}))


def randomized(model: FlexTok) -> FlexTok:
    """Every zero-initialised weight (heads, adaLN) made random, so outputs depend on every input."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


# --- encoder ---
def test_encoder_mask_is_exactly_as_specified() -> None:
    n = 16
    model = tiny()
    expected = torch.zeros(n + K, n + K, dtype=torch.bool)
    for q in range(n + K):
        for k in range(n + K):
            if q < n:  # a patch sees every patch and no register
                expected[q, k] = k < n
            else:  # register q - n sees every patch and registers 0..q - n
                expected[q, k] = k < n or k <= q
    assert torch.equal(model.enc_mask, expected)
    assert torch.equal(register_mask(n, K), expected)


def test_encoder_is_causal_over_registers_and_patches_never_see_them() -> None:
    model = randomized(tiny())
    x = images()
    hidden = {}
    model.encoder.blocks[-1].register_forward_hook(lambda mod, inp, out: hidden.__setitem__("h", out))
    z = model.encode(x)
    patches = hidden["h"][:, :16].clone()
    with torch.no_grad():
        model.encoder.registers[5:] += 1.0  # change registers 5..7
    z2 = model.encode(x)
    torch.testing.assert_close(hidden["h"][:, :16], patches, rtol=0, atol=0)  # patches never attend to registers
    torch.testing.assert_close(z2[:, :5], z[:, :5], rtol=0, atol=0)  # earlier registers do not see later ones
    assert (z2[:, 5:] - z[:, 5:]).abs().amax(dim=-1).min() > 0
    x2 = x.clone()
    x2[:, :, -4:, -4:] += 1.0  # one corner patch
    assert (model.encode(x2) - z).abs().amax(dim=-1).min() > 0  # every register sees every patch


def test_encode_gives_ids_and_zero_head_starts_at_code_zero() -> None:
    model = tiny()
    ids = sampling.encode(model, images())
    assert ids.shape == (4, K) and ids.dtype == torch.int64
    zero_code = model.fsq.codes_to_indices(torch.zeros(6))
    assert (ids == zero_code).all()  # zero-initialised head: every token starts at code 0
    ids = sampling.encode(randomized(model), images())
    assert ((ids >= 0) & (ids < 64_000)).all() and ids.unique().numel() > 1


# --- decoder conditioning ---
def test_nested_dropout_keeps_exactly_k_registers_per_sample() -> None:
    model = randomized(tiny())
    codes = model.fsq.indices_to_codes(torch.randint(64_000, (5, K), generator=torch.Generator().manual_seed(0)))
    keep = torch.tensor([1, 2, 4, 8, 3])
    regs = model.decoder.condition(codes, keep)  # (B, K, D)
    full = model.decoder.from_codes(codes) + model.decoder.register_pos
    for i, k in enumerate(keep.tolist()):
        assert torch.equal(regs[i, :k], full[i, :k])
        assert (regs[i, k:] == model.decoder.mask_token).all()
        assert not (regs[i, :k] == model.decoder.mask_token).all(dim=-1).any()
    null = model.decoder.condition(codes, keep, torch.tensor([False, True, False, False, True]))
    assert (null[[1, 4]] == model.decoder.null_token).all() and torch.equal(null[[0, 2, 3]], regs[[0, 2, 3]])


def test_training_forward_masks_the_drawn_suffix() -> None:
    model = randomized(tiny(nested_dropout="pow2"))
    seen = {}
    model.decoder.register_forward_hook(lambda mod, args, out: seen.__setitem__("regs", args[2]))
    keep = torch.tensor([1, 2, 4, 8])
    model(images(), keep_k=keep)
    masked = (seen["regs"] == model.decoder.mask_token).all(dim=-1)  # (B, K)
    assert masked.sum(dim=1).tolist() == [K - 1, K - 2, K - 4, 0]
    assert not masked[torch.arange(K) < keep[:, None]].any()


def test_decoder_ignores_codes_after_k() -> None:
    model = randomized(tiny()).eval()
    codes = model.fsq.indices_to_codes(torch.randint(64_000, (2, K), generator=torch.Generator().manual_seed(0)))
    other = codes.clone()
    other[:, 3:] = model.fsq.indices_to_codes(torch.tensor(17))
    x_t, t, keep = images(2), torch.tensor([0.3, 0.7]), torch.tensor([3, 3])
    v, _ = model.decode(x_t, t, codes, keep)
    v2, _ = model.decode(x_t, t, other, keep)
    torch.testing.assert_close(v, v2, rtol=0, atol=0)
    v3, _ = model.decode(x_t, t, other, torch.tensor([8, 8]))
    assert (v3 - v).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["pow2", "uniform", "off"])
def test_keep_k_distributions(mode: str) -> None:
    model = tiny(nested_dropout=mode)
    k = model.draw_keep_k(4000, torch.Generator().manual_seed(0))
    expected = {"pow2": {1, 2, 4, 8}, "uniform": set(range(1, K + 1)), "off": {K}}[mode]
    assert set(k.tolist()) == expected
    if mode == "pow2":  # uniform over the four powers of two
        counts = torch.bincount(k)[[1, 2, 4, 8]].float() / 4000
        assert (counts - 0.25).abs().max() < 0.03
    assert set(tiny(registers=6, nested_dropout="pow2").draw_keep_k(2000).tolist()) == {1, 2, 4, 6}


# --- training loss ---
def test_loss_reaches_every_parameter_within_four_steps() -> None:
    model = tiny(null_cond_p=0.5)
    with torch.no_grad():  # the zero-initialised encoder head puts every token at code 0, where from_codes' weight
        model.encoder.head.weight.normal_()  # gets no gradient (it is multiplied by the codes) until codes move
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # zero-initialised heads and gates open the path step by step: velocity head, adaLN gates, codes, encoder head
    for _ in range(4):
        opt.zero_grad()
        out = model(images(8))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.repa.item() == 0.0
        out.loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_predictor_loss_is_var_noise_plus_var_x() -> None:
    model = tiny()  # zero-initialised velocity head: v = 0, loss = E (noise - x0)^2
    x0 = images(64)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    loss = model(x0, noise=noise).loss
    torch.testing.assert_close(loss, ((noise - x0) ** 2).mean(), rtol=1e-6, atol=1e-6)


def test_repa_loss_with_a_cpu_teacher() -> None:
    teacher = build_teacher("conv", dim=24)
    model = tiny(repa_dim=24, repa_hidden=48, repa_layer=1, repa_weight=0.5)
    x0 = images()
    feats = teacher(x0)  # (B, 24, 4, 4): the decoder's 4x4 patch grid
    assert feats.shape == (4, 24, 4, 4) and not feats.requires_grad and not teacher.training
    out = model(x0, teacher_feats=feats)
    assert -1.0 <= out.repa.item() <= 1.0
    torch.testing.assert_close(out.loss, out.flow + 0.5 * out.repa)
    out.loss.backward()
    assert model.repa_proj[0].weight.grad.abs().sum() > 0
    assert model.decoder.blocks[1].ada.weight.grad.abs().sum() > 0  # block repa_layer gets REPA's gradient
    with pytest.raises(VistokError, match="teacher_feats"):
        model(x0)
    model(x0, teacher_feats=torch.nn.functional.interpolate(feats, size=(8, 8)))  # other grids are resized


def test_dinov2_teacher_needs_local_weights(tmp_path) -> None:
    import timm

    with pytest.raises(VistokError, match="DINOv2 weights not found"):
        DinoV2Teacher(tmp_path / "missing.pth")
    with pytest.raises(VistokError, match="unknown REPA teacher"):
        build_teacher("clip")
    # the official checkpoint layout: 518 px positions (37 x 37 + cls) and a mask token, resized and dropped on load
    state = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).state_dict()
    torch.save({**state, "mask_token": torch.zeros(1, 384)}, tmp_path / "dinov2_vits14.pth")
    teacher = build_teacher("dinov2", str(tmp_path / "dinov2_vits14.pth"), arch="vit_small_patch14_dinov2")
    feats = teacher(images(1))
    assert feats.shape == (1, 384, 16, 16) and teacher.dim == 384 and not teacher.training
    with pytest.raises(VistokError, match="does not hold"):
        DinoV2Teacher(tmp_path / "dinov2_vits14.pth", arch="vit_base_patch14_dinov2")


def test_fid_net_teacher_from_an_export(tmp_path) -> None:
    from vistok.io.exports import write_export as export
    from vistok.metrics.fid_net import PRESETS as FID_PRESETS, FidNet, load_fid_net

    cfg = FID_PRESETS["cifar10-net-test"]
    export(tmp_path / "net", "fid_net", dataclasses.asdict(cfg), FidNet(cfg).state_dict())
    with pytest.raises(VistokError, match="needs its loaded cifar10-net"):
        build_teacher("fid-net", str(tmp_path / "net"))
    teacher = build_teacher("fid-net", net=load_fid_net(str(tmp_path / "net")))
    assert teacher(images(2)).shape == (2, cfg.widths[2], 8, 8)  # 16 px inputs are resized to 32: an 8x8 map
    assert not any(p.requires_grad for p in teacher.parameters())


def test_overfitting_one_batch_cuts_the_loss_tenfold() -> None:
    """t, noise, k = K and no null conditioning are fixed, so the target noise - x0 is a fixed function of the
    inputs the network sees and the loss can fall towards zero; with t and noise redrawn every step, a few hundred
    steps only reach the flow loss's (much higher) conditional-variance floor. Measured: 16-17x after 200 Adam
    steps at lr 3e-3 for seeds 0-3, from 1.5 to about 0.09."""
    model = tiny(enc_depth=1)
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.nn.functional.avg_pool2d(torch.randn(4, 3, 32, 32, generator=gen), 2) * 2).clamp(-1, 1)
    fixed = dict(t=torch.rand(4, generator=gen) * 0.8 + 0.1, noise=torch.randn(4, 3, 16, 16, generator=gen),
                 keep_k=torch.full((4,), K), null=torch.zeros(4, dtype=torch.bool))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = model(x0, **fixed).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


# --- sampling ---
def test_mixed_k_batch_equals_per_image_decoding() -> None:
    model = randomized(tiny())
    ids = sampling.encode(model, images())
    keep = [1, 2, 4, 8]
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    for kwargs in (dict(), dict(cfg=3.0), dict(cfg=3.0, guidance="apg")):
        batched = sampling.decode(model, ids, DecodeConfig(steps=3, **kwargs), keep_k=keep, noise=noise)
        for i in range(4):
            alone = sampling.decode(model, ids[i : i + 1], DecodeConfig(steps=3, **kwargs), keep_k=keep[i],
                                    noise=noise[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(4)]  # per-image generators: the same noise alone
    batched = sampling.decode(model, ids, DecodeConfig(steps=2), keep_k=keep, generator=gens)
    alone = sampling.decode(model, ids[2:3], DecodeConfig(steps=2), keep_k=keep[2],
                            generator=[torch.Generator().manual_seed(12)])
    torch.testing.assert_close(batched[2:3], alone, rtol=1e-5, atol=1e-5)


def test_truncated_ids_are_padded_and_masked() -> None:
    model = randomized(tiny())
    ids = sampling.encode(model, images(2))
    noise = torch.randn(2, 3, 16, 16)
    short = sampling.decode(model, ids[:, :3], DecodeConfig(steps=2), noise=noise)  # keep_k defaults to the 3 ids given
    full = sampling.decode(model, ids, DecodeConfig(steps=2), keep_k=3, noise=noise)
    torch.testing.assert_close(short, full, rtol=0, atol=0)
    with pytest.raises(VistokError, match="1..3"):
        sampling.decode(model, ids[:, :3], DecodeConfig(steps=2), keep_k=4)
    with pytest.raises(VistokError, match="token ids"):
        sampling.decode(model, ids.float())
    with pytest.raises(VistokError, match="0..63999"):
        sampling.decode(model, ids + 64_000)


def test_cfg_scale_one_equals_the_conditional_prediction() -> None:
    model = randomized(tiny()).eval()
    codes = model.fsq.indices_to_codes(sampling.encode(model, images(3)))
    keep = torch.tensor([1, 4, 8])
    x = torch.randn(3, 3, 16, 16)
    cond = model.decoder.condition(codes, keep)
    null = model.decoder.condition(codes, keep, torch.ones(3, dtype=torch.bool))
    both = torch.cat([cond, null])
    v_cond, _ = sampling.guided_velocity(model, x, 0.6, cond, 1.0, "cfg", APGConfig(), None)  # no null pass
    for guidance in ("cfg", "apg"):  # a schedule that is 1 everywhere runs both branches and guides with scale 1
        v_one, _ = sampling.guided_velocity(model, x, 0.6, both, lambda t: 1.0, guidance, APGConfig(), None)
        torch.testing.assert_close(v_one, v_cond, rtol=1e-5, atol=1e-5)
    v_three, _ = sampling.guided_velocity(model, x, 0.6, both, 3.0, "cfg", APGConfig(), None)
    assert (v_three - v_cond).abs().max() > 1e-3  # the unconditional branch really differs
    noise = torch.randn(3, 3, 16, 16)
    ids = model.fsq.codes_to_indices(codes)
    one = sampling.decode(model, ids, DecodeConfig(steps=3), keep_k=keep, noise=noise, schedule=lambda t: 1.0)
    torch.testing.assert_close(one, sampling.decode(model, ids, DecodeConfig(steps=3), keep_k=keep, noise=noise),
                               rtol=1e-5, atol=1e-5)


def test_apg_reduces_to_cfg_without_momentum_clipping_or_projection() -> None:
    """APG with momentum 0, no norm clipping (threshold 0) and eta 1 (the parallel part kept) is exactly CFG."""
    gen = torch.Generator().manual_seed(0)
    v_c, v_u = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    for scale in (1.0, 2.5, 7.5):
        guided, _ = flow.apg(v_c, v_u, scale, momentum=0.0, norm_threshold=0.0, eta=1.0)
        torch.testing.assert_close(guided, flow.guide(v_c, v_u, scale), rtol=1e-5, atol=1e-5)
    model = randomized(tiny())
    ids, noise = sampling.encode(model, images(2)), torch.randn(2, 3, 16, 16)
    cfg = sampling.decode(model, ids, DecodeConfig(steps=3, cfg=4.0), keep_k=[2, 8], noise=noise)
    apg = sampling.decode(model, ids, DecodeConfig(steps=3, cfg=4.0, guidance="apg"), keep_k=[2, 8],
                          apg=APGConfig(0.0, 0.0, 1.0), noise=noise)
    torch.testing.assert_close(apg, cfg, rtol=1e-5, atol=1e-5)
    default = sampling.decode(model, ids, DecodeConfig(steps=3, cfg=4.0, guidance="apg"), keep_k=[2, 8], noise=noise)
    assert (default - cfg).abs().max() > 1e-4


def test_apg_defaults_project_clip_and_carry_momentum() -> None:
    gen = torch.Generator().manual_seed(1)
    v_c, v_u = torch.randn(3, 3, 8, 8, generator=gen), torch.randn(3, 3, 8, 8, generator=gen) * 5
    guided, running = flow.apg(v_c, v_u, 3.0)  # eta 0: the update is orthogonal to v_cond, per sample
    update = (guided - v_c) / 2.0
    assert ((update * v_c).sum(dim=(1, 2, 3)).abs() < 1e-3).all()
    assert (update.flatten(1).norm(dim=1) <= 2.5 + 1e-4).all()  # clipped to the norm threshold
    torch.testing.assert_close(running, v_c - v_u)
    _, running2 = flow.apg(v_c, v_u, 3.0, running)
    torch.testing.assert_close(running2, 0.5 * (v_c - v_u))  # diff - 0.5 * previous running average


def test_same_seed_same_decode_and_callable_scale() -> None:
    model = randomized(tiny())
    ids = sampling.encode(model, images(2))
    a = sampling.decode(model, ids, DecodeConfig(steps=2), schedule=lambda t: 1.0 + 2.0 * t, seed=7)
    b = sampling.decode(model, ids, DecodeConfig(steps=2), schedule=lambda t: 1.0 + 2.0 * t, seed=7)
    assert torch.equal(a, b) and a.shape == (2, 3, 16, 16)
    recon = sampling.reconstruct(model, images(2), DecodeConfig(steps=2), keep_k=[1, 8], seed=7)
    assert recon.shape == (2, 3, 16, 16) and torch.isfinite(recon).all()


# --- config, presets ---
def test_config_validation_and_dict_round_trip() -> None:
    with pytest.raises(VistokError, match="head_dim"):
        FlexTokConfig(enc_width=100)
    with pytest.raises(VistokError, match="nested_dropout"):
        FlexTokConfig(nested_dropout="exp")
    with pytest.raises(VistokError, match="grid"):
        FlexTokConfig(grid=(31, 32))
    with pytest.raises(VistokError, match="levels"):
        FlexTokConfig(levels=(8, 1))
    cfg = PRESETS["flextok-tiny"]
    assert from_dict(FlexTokConfig, dataclasses.asdict(cfg)) == cfg
    assert FAMILY == ("flextok", FlexTokConfig, FlexTok)
    with pytest.raises(VistokError, match="FlexTok expects"):
        tiny()(torch.zeros(2, 3, 32, 32))


# blocks without adaLN (the paper's count), adaLN modulation (x2: patches and registers), REPA projector, total
PAPER_COUNTS = {
    "flextok-d12-d12": (169_869_312, 85_045_248, 7_869_440, 265_306_950),
    "flextok-d18-d18": (573_308_928, 286_903_296, 8_655_872, 873_979_590),
    "flextok-d18-d28": (1_365_538_816, 1_079_586_816, 9_966_592, 2_466_274_758),
}
SPEC = {  # FlexTok spec table: paper-style count, and the count with adaLN x2 plus the 83.8M VAE
    "flextok-d12-d12": (170e6, 339e6),
    "flextok-d18-d18": (573e6, 944e6),
    "flextok-d18-d28": (1.37e9, 2.53e9),
}


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_paper_preset_parameter_counts_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = FlexTok(PRESETS[name])
    count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    ada = count(b.ada for b in model.decoder.blocks)
    blocks = count([*model.encoder.blocks, *model.decoder.blocks]) - ada
    total = count([model])
    assert (blocks, ada, count([model.repa_proj]), total) == PAPER_COUNTS[name]
    paper, with_vae = SPEC[name]
    assert abs(blocks - paper) / paper < 0.005
    assert abs(total - count([model.repa_proj]) + 83.8e6 - with_vae) / with_vae < 0.011


def test_meta_model_materialises() -> None:
    with torch.device("meta"):
        model = FlexTok(PRESETS["flextok-test"])
    model.to_empty(device="cpu")
    model.reset_parameters()
    ids = sampling.encode(model, torch.zeros(1, 3, 32, 32))
    assert torch.isfinite(sampling.decode(model, ids, DecodeConfig(steps=1), keep_k=2, seed=0)).all()
