"""The samplers' calling convention (a frozen settings object plus the per-call data), their recorded outputs, and
`vistok.seeding`, the one module that turns a seed or per-image generators into draws."""

from __future__ import annotations

import pytest
import torch

from vistok.errors import ArgumentTypeError, VistokError
from vistok.generators.ar import AR, ARConfig
from vistok.generators.sampling import ARSampleConfig, SampleConfig, draw_tokens, sample_ar, sample_entities, sample_xar
from vistok.generators.xar import XAR, XARConfig
from vistok.seeding import image_generators, rand, randn, resolve
from vistok.tokenizers import flextok_sampling as fs
from vistok.tokenizers.flextok import FlexTok, FlexTokConfig
from vistok.tokenizers.flextok_sampling import DecodeConfig

LABELS = torch.tensor([1, 2, 7])


def xar() -> XAR:
    torch.manual_seed(0)
    model = XAR(XARConfig(in_channels=4, grid=(4, 4), entity="cell", entity_size=2, width=32, depth=2, heads=2,
                          num_classes=10, dropout=0.0, attn_dropout=0.0, label_drop=0.0))
    with torch.no_grad():
        model.label_emb.table.weight.normal_(std=1.0)  # labels that matter, so CFG changes the samples
    return model.eval()


def gpt() -> AR:
    torch.manual_seed(0)
    model = AR(ARConfig(vocab_size=50, tokens=6, num_classes=10, width=32, depth=2, heads=2))
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)  # the zero-initialised head would give uniform logits
    return model.eval()


def flextok() -> FlexTok:
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig(in_channels=3, grid=(16, 16), patch=4, registers=8, enc_width=32, enc_depth=2,
                                  dec_width=32, dec_depth=2, head_dim=16, null_cond_p=0.0))
    for p in model.parameters():  # the zero-initialised heads would make any decoder look right
        torch.nn.init.normal_(p, std=0.05)
    return model.eval()


def summary(x: torch.Tensor) -> list[float]:
    """Six values spread over the flattened output, then the sum of magnitudes."""
    flat = x.flatten()
    return [*flat[:: len(flat) // 6][:6].tolist(), x.abs().sum().item()]


# Recorded with the samplers before they took settings objects (main at 7e123ca, loose keyword arguments), one thread;
# the refactor was checked bit for bit on 28 outputs, these keep a few. Floats: rtol 1e-4 is far above the float32
# spread between CPUs (BLAS kernels, ~1e-6 relative here) and far below any change of settings, seed or stream.
GOLDEN_XAR_SDE = [0.95055, -1.31129, -2.10006, 0.4463, -2.14503, 0.78747, 297.5082]
GOLDEN_XAR_ODE = [2.74055, -5.79576, 3.3694, -2.97879, -5.55122, 5.41433, 478.9156]
GOLDEN_DECODE = [1.74333, 1.03847, 1.38865, -0.16125, -1.39751, -0.46854, 1888.9703]
GOLDEN_GPT = [[28, 21, 28, 48, 45, 45], [8, 39, 26, 22, 38, 43], [22, 22, 22, 47, 26, 26]]


def test_samplers_reproduce_their_recorded_outputs() -> None:
    torch.set_num_threads(1)
    sde = sample_xar(xar(), LABELS, SampleConfig(steps=3, cfg=2.0), generator=image_generators(0, 0, 3))
    ode = sample_xar(xar(), LABELS, SampleConfig(steps=2, cfg=3.0, cfg_schedule="constant", method="ode"), seed=5)
    ids = sample_ar(gpt(), LABELS, ARSampleConfig(cfg=2.0, temperature=0.8, top_k=20, top_p=0.95),
                    generator=image_generators(0, 0, 3))
    tokens = torch.randint(0, 64000, (3, 8), generator=torch.Generator().manual_seed(0))
    latents = fs.decode(flextok(), tokens, DecodeConfig(steps=3, cfg=3.0, guidance="apg"), keep_k=[1, 4, 8],
                        generator=image_generators(0, 0, 3))
    assert sde.shape == ode.shape == (3, 4, 4, 4) and latents.shape == (3, 3, 16, 16)
    for got, want in ((sde, GOLDEN_XAR_SDE), (ode, GOLDEN_XAR_ODE), (latents, GOLDEN_DECODE)):
        torch.testing.assert_close(torch.tensor(summary(got)), torch.tensor(want), rtol=1e-4, atol=1e-4)
    assert ids.tolist() == GOLDEN_GPT  # discrete draws: exact


def test_a_sampler_given_loose_settings_says_which_object_it_takes() -> None:
    """The old calling convention (steps and cfg as positional numbers) fails in one line naming the settings class,
    instead of running with a number where a config belongs."""
    cases = [
        (lambda: sample_xar(xar(), LABELS, 50), r"sample_entities: the settings must be one SampleConfig, e\.g\. "
                                                 r"SampleConfig\(cfg=2\.0\); got int 50"),
        (lambda: sample_entities(xar(), LABELS, ARSampleConfig()), "the settings must be one SampleConfig"),
        (lambda: sample_ar(gpt(), LABELS, 2.0), "sample_ar: the settings must be one ARSampleConfig"),
        (lambda: fs.decode(flextok(), torch.zeros(1, 8, dtype=torch.long), 4),
         "decode: the settings must be one DecodeConfig"),
    ]
    for call, message in cases:
        with pytest.raises(ArgumentTypeError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_settings_reach_the_sampler() -> None:
    """Every field of the settings objects changes the output (a sampler that ignored one would still run)."""
    gens = lambda: image_generators(3, 0, 3)  # noqa: E731
    base = SampleConfig(steps=2, cfg=2.0, cfg_schedule="constant")
    ref = sample_xar(xar(), LABELS, base, generator=gens())
    for change in (dict(steps=3), dict(cfg=3.0), dict(cfg_schedule="linear"), dict(method="ode")):
        other = sample_xar(xar(), LABELS, SampleConfig(**{**base.__dict__, **change}), generator=gens())
        assert (other - ref).abs().max() > 1e-3, change
    base_ar = ARSampleConfig(cfg=2.0, temperature=1.0)
    ref_ids = sample_ar(gpt(), LABELS, base_ar, generator=gens())
    for change in (dict(cfg=6.0), dict(temperature=0.0), dict(top_k=1), dict(top_p=0.01)):
        assert not torch.equal(sample_ar(gpt(), LABELS, ARSampleConfig(**{**base_ar.__dict__, **change}),
                                         generator=gens()), ref_ids), change
    tokens, model = torch.randint(0, 64000, (3, 8), generator=torch.Generator().manual_seed(1)), flextok()
    base_dec = DecodeConfig(steps=2, cfg=3.0)
    ref_lat = fs.decode(model, tokens, base_dec, generator=gens())
    for change in (dict(steps=3), dict(cfg=1.0), dict(guidance="apg")):
        other = fs.decode(model, tokens, DecodeConfig(**{**base_dec.__dict__, **change}), generator=gens())
        assert (other - ref_lat).abs().max() > 1e-4, change


# ------------------------------------------------------------------------------------------------- vistok.seeding
def test_resolve_turns_a_seed_into_one_generator_and_checks_per_image_lists() -> None:
    assert resolve(None, None, 3) is None  # torch's global RNG
    g = torch.Generator().manual_seed(4)
    assert resolve(g, 9, 3) is g  # a given generator wins over the seed
    seeded = resolve(None, 9, 3)
    assert torch.equal(torch.randn(5, generator=seeded), torch.randn(5, generator=torch.Generator().manual_seed(9)))
    gens = image_generators(0, 0, 3)
    assert resolve(gens, None, 3) is gens
    with pytest.raises(VistokError, match="got 2 generators for 3 images; pass one per image"):
        resolve(gens[:2], None, 3)
    with pytest.raises(VistokError, match="got 2 generators for 3 images"):  # through a sampler too
        sample_xar(xar(), LABELS, SampleConfig(steps=1), generator=gens[:2])


def test_per_image_draws_come_from_each_image_generator_alone() -> None:
    """Row i of `randn`/`rand` with a list is what generator i gives on its own, so an image's noise does not depend on
    the batch it shares; one generator gives the whole batch from one stream."""
    rows = randn((3, 2, 4), image_generators(7, 0, 3), torch.device("cpu"))  # (3, 2, 4)
    for i, g in enumerate(image_generators(7, 0, 3)):
        assert torch.equal(rows[i], torch.randn(2, 4, generator=g))
    assert torch.equal(randn((2, 2, 4), image_generators(7, 1, 2), torch.device("cpu")), rows[1:])  # a later batch
    one = randn((3, 2), torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(one, torch.randn(3, 2, generator=torch.Generator().manual_seed(1)))
    u = rand(3, image_generators(7, 0, 3))
    assert u.dtype == torch.float64 and ((u >= 0) & (u < 1)).all()
    alone = [torch.rand((), generator=g, dtype=torch.float64) for g in image_generators(7, 0, 3)]
    assert torch.equal(u, torch.stack(alone))
    # the GPT's draw for an image is the same alone and in a batch (inverse CDF of that image's uniform)
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    batch = draw_tokens(logits, ARSampleConfig(temperature=0.9), image_generators(1, 0, 3))
    alone = torch.cat([draw_tokens(logits[i:i + 1], ARSampleConfig(temperature=0.9), image_generators(1, i, 1))
                       for i in range(3)])
    assert torch.equal(batch, alone)
