"""Generators on FlexTok tokens (FlexTok, arXiv 2502.13967, §4): the GPT over ids and xAR over FSQ codes in prefix
groups. KV-cached GPT sampling equals recomputation; top-k/top-p/temperature stay in the vocabulary; CFG scale 1 is
the conditional model; stopping early gives the beginning of a longer run; FSQ snapping is exact, xAR snaps every
finished group before it joins the context (the cache holds the snapped codes), and the CFG schedules treat group 0 as
documented; both generators overfit one batch and produce decodable images at every k; exports carry their FlexTok
(`vistok sample --ckpt` alone); the training scripts run on a token file written by `vistok encode`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vistok
from vistok import cli, flow, registry
from vistok.api import PairedGenerator, export_paired, load_paired
from vistok.config import to_dict
from vistok.errors import VistokError
from vistok.generators.ar import AR, PRESETS as AR_PRESETS, ARConfig
from vistok.generators.entities import Partition
from vistok.generators.flextok_codes import FlexTokCodes, check_k, check_pairing, ids_to_grid, sample_ids, valid_ks
from vistok.generators.sampling import (
    ARSampleConfig,
    SampleConfig,
    draw_tokens,
    filter_logits,
    guided_logits,
    sample_ar,
    sample_entities,
)
from vistok.generators.xar import PRESETS as XAR_PRESETS, XAR
from vistok.io.exports import write_export
from vistok.modules.fsq import FSQ
from vistok.seeding import image_generators
from vistok.tokenizers.flextok import PRESETS as FLEXTOK_PRESETS, FlexTok
from vistok.tokenizers.pixel import PixelConfig

from conftest import check_ok, script_main

REPO = Path(__file__).resolve().parents[1]
K = 8  # flextok-test's registers
FAST = SampleConfig(steps=2, cfg=2.0)


def gpt(**overrides) -> AR:
    torch.manual_seed(0)
    model = AR(dataclasses.replace(AR_PRESETS["gpt-test"], **overrides))
    with torch.no_grad():  # a zero logit head samples uniformly; random weights give peaked, input-dependent logits
        last = model.head if model.config.embedding == "table" else model.head[-1]
        last.weight.normal_(std=0.5)
        model.label_emb.table.weight.normal_(std=1.0)
    return model.eval()


def xar() -> XAR:
    torch.manual_seed(0)
    model = XAR(XAR_PRESETS["xar-flextok-test"])
    with torch.no_grad():
        model.label_emb.table.weight.normal_(std=1.0)
    return model.eval()


@pytest.fixture(scope="module")
def flextok_export(tmp_path_factory) -> Path:
    """A random flextok-test (8 registers, FSQ [8,8,8,5,5,5]) on 32x32 pixels, exported; its zero-initialised heads
    made random so decoded images depend on the tokens."""
    torch.manual_seed(0)
    model = FlexTok(FLEXTOK_PRESETS["flextok-test"])
    state = {k: torch.randn_like(v) * 0.3 if v.abs().max() == 0 else v for k, v in model.state_dict().items()}
    return write_export(tmp_path_factory.mktemp("flextok") / "export", "flextok", to_dict(model.config), state,
                        tokenizer={"family": "pixel", "config": to_dict(PixelConfig(patch=1, scale=2.0))},
                        resolution=32, sample={"steps": 2, "cfg": 1.0, "guidance": "cfg"})


@pytest.fixture(scope="module")
def exports(flextok_export, tmp_path_factory) -> dict[str, Path]:
    """Random-weight GPT and xAR exports on that FlexTok, written by export_paired."""
    root = tmp_path_factory.mktemp("paired")
    classes = [f"c{i}" for i in range(10)]
    return {
        "gpt": export_paired(root / "gpt", "ar", to_dict(gpt().config), gpt().state_dict(), flextok_export,
                             classes=classes, sample=to_dict(ARSampleConfig(cfg=2.0, top_k=100))),
        "xar": export_paired(root / "xar", "xar", to_dict(xar().config), xar().state_dict(), flextok_export,
                             code_scale=1.6, classes=classes, sample=to_dict(FAST)),
    }


# ---------------------------------------------------------------------------------------------- prefix entities
def test_prefix_partition_groups_end_on_the_ladder() -> None:
    part = Partition("prefix", (1, 16))
    assert part.lengths == (1, 1, 2, 4, 8) and part.offsets[1:] == (1, 2, 4, 8, 16)
    assert Partition("prefix", (1, 12)).offsets[1:] == (1, 2, 4, 8, 12)  # K last, as FlexTok's k ladder
    x = torch.randn(2, 6, 1, 16)
    seq = part.split(x)
    assert torch.equal(seq, x[:, :, 0].transpose(1, 2)) and torch.equal(part.merge(seq), x)  # token order kept
    assert part.positions().tolist() == [[0.0, float(i)] for i in range(16)]
    assert part.mask().sum(1).tolist() == [1, 2, 4, 4, 8, 8, 8, 8] + [16] * 8  # block-causal over the groups
    with pytest.raises(VistokError, match="grid"):
        Partition("prefix", (2, 8))
    model = xar()
    assert model.partition.offsets[1:] == (1, 2, 4, 8) and valid_ks(model) == [1, 2, 4, 8]
    assert torch.isfinite(model.train()(torch.randn(3, 6, 1, K), torch.tensor([0, 1, 2])))


# ------------------------------------------------------------------------------------------------- GPT sampling
@pytest.mark.parametrize("embedding", ["table", "code"])
def test_gpt_kv_cache_equals_full_recompute(embedding) -> None:
    model, labels = gpt(embedding=embedding, depth=2, heads=2), torch.tensor([0, 3, 7])  # each layer its own slot
    for kw in (dict(temperature=0.0), dict(temperature=0.0, cfg=3.0), dict(temperature=1.0, top_k=50, cfg=2.0)):
        cached = sample_ar(model, labels, ARSampleConfig(**kw), seed=5)
        full = sample_ar(model, labels, ARSampleConfig(**kw), seed=5, full_recompute=True)
        assert cached.shape == (3, K) and torch.equal(cached, full), kw
    # the cached forward's logits are the full forward's, position by position
    ids = sample_ar(model, labels, ARSampleConfig(temperature=0.0))
    full = model.logits(model.embed(labels, ids[:, :-1]))  # (3, K, V)
    cache = model.new_cache()
    steps = [model.logits(model.label_emb(labels)[:, None], 0, cache, store=True)]
    steps += [model.logits(model.token_embedding(ids[:, n - 1:n]), n, cache, store=True) for n in range(1, K)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert torch.equal(full.argmax(-1), ids)  # greedy: each id is the argmax given the ones before


def test_sampled_ids_stay_in_the_vocabulary() -> None:
    model, labels = gpt(), torch.arange(6) % 10
    vocab = model.config.vocab_size
    for kw in (dict(temperature=1.5), dict(top_k=5), dict(top_p=0.5),
               dict(temperature=0.7, top_k=20, top_p=0.9, cfg=4.0)):
        ids = sample_ar(model, labels, ARSampleConfig(**kw), seed=1)
        assert ids.dtype == torch.int64 and ids.shape == (6, K) and ((ids >= 0) & (ids < vocab)).all(), kw
    greedy = sample_ar(model, labels, ARSampleConfig(temperature=0.0))
    assert torch.equal(sample_ar(model, labels, ARSampleConfig(top_k=1), seed=9), greedy)  # top-1 is greedy
    assert torch.equal(sample_ar(model, labels, ARSampleConfig(top_p=1e-6), seed=9), greedy)  # so is the least nucleus
    assert not torch.equal(sample_ar(model, labels, ARSampleConfig(temperature=2.0), seed=9), greedy)


def test_top_k_and_top_p_filters() -> None:
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    keep = lambda **kw: torch.isfinite(filter_logits(logits, **kw))[0].tolist()  # noqa: E731
    assert keep(top_k=2) == [False, True, False, True]
    assert keep(top_p=0.5) == [False, True, False, False]  # 0.5 alone reaches 0.5
    assert keep(top_p=0.7) == [False, True, False, True]  # 0.5 + 0.3
    assert keep(top_p=0.9) == [False, True, True, True]
    assert keep(top_k=3, top_p=1.0) == [False, True, True, True]
    # inverse-CDF draws follow the filtered distribution
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([draw_tokens(logits.expand(1000, 4), ARSampleConfig(top_p=0.7), gen) for _ in range(4)])
    counts = torch.bincount(draws, minlength=4).float() / len(draws)
    assert counts[0] == 0 and counts[2] == 0 and abs(counts[1] - 0.625) < 0.03  # 0.5 / 0.8
    with pytest.raises(VistokError):
        filter_logits(logits, top_p=0.0)


def test_gpt_cfg_scale_one_equals_conditional_logits() -> None:
    model, labels = gpt(), torch.tensor([1, 4])
    both = torch.cat([labels, torch.full_like(labels, model.null_class)])
    ids = torch.randint(0, model.config.vocab_size, (4, 3))
    logits = model.logits(model.embed(both, ids))[:, -1]  # (4, V): [cond; null]
    torch.testing.assert_close(guided_logits(logits, 1.0), logits[:2], rtol=0, atol=1e-5)
    assert (guided_logits(logits, 3.0) - logits[:2]).abs().max() > 1e-2
    greedy = lambda cfg: sample_ar(model, labels, ARSampleConfig(cfg=cfg, temperature=0.0))  # noqa: E731
    assert torch.equal(greedy(1.0 + 1e-12), greedy(1.0))
    assert not torch.equal(greedy(8.0), greedy(1.0))


def test_stopping_early_is_the_beginning_of_a_longer_run() -> None:
    labels = torch.tensor([2, 5, 9])
    model = gpt()
    long = sample_ar(model, labels, ARSampleConfig(cfg=2.0), generator=image_generators(3, 0, 3))
    for k in (1, 4):
        short = sample_ar(model, labels, ARSampleConfig(cfg=2.0), tokens=k, generator=image_generators(3, 0, 3))
        assert torch.equal(short, long[:, :k])
    model = xar()
    settings = SampleConfig(steps=2, cfg=2.0)
    full = sample_entities(model, labels, settings, generator=image_generators(3, 0, 3))  # (3, 8, 6)
    two = sample_entities(model, labels, settings, entities=2, generator=image_generators(3, 0, 3))  # k = 2
    assert full.shape == (3, K, 6) and two.shape == (3, 2, 6)
    torch.testing.assert_close(two, full[:, :2], rtol=0, atol=1e-6)
    with pytest.raises(VistokError):
        sample_entities(model, labels, SampleConfig(), entities=5)


# ------------------------------------------------------------------------------------------------------ snapping
def test_fsq_snap_is_exact() -> None:
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    ids = torch.randint(0, fsq.codebook_size, (500,))
    codes = fsq.indices_to_codes(ids)  # (500, 6)
    assert torch.equal(fsq.snap(codes), codes) and torch.equal(fsq.codes_to_indices(fsq.snap(codes)), ids)
    step = 1.0 / fsq._half_width()  # grid spacing per channel: 0.25 (L = 8), 0.5 (L = 5)
    nudged = codes + (torch.rand_like(codes) - 0.5) * 0.98 * step  # less than half a step away
    assert torch.equal(fsq.snap(nudged), codes) and torch.equal(fsq.codes_to_indices(fsq.snap(nudged)), ids)
    assert torch.equal(fsq.snap(torch.full((6,), -7.0)), torch.full((6,), -1.0))  # outside the grid: the extremes
    # FlexTokCodes: xAR's scaled 1 x K grid -> snapped ids, and back
    codes_side = FlexTokCodes(FlexTok(FLEXTOK_PRESETS["flextok-test"]), torch.nn.Identity(), code_scale=1.7)
    ids = torch.randint(0, fsq.codebook_size, (3, K))
    grid = ids_to_grid(ids, fsq, 1.7)  # (3, 6, 1, K)
    assert grid.shape == (3, 6, 1, K) and torch.equal(codes_side.ids_to_grid(ids), grid)
    seq = Partition("prefix", (1, K)).split(grid)  # (3, K, 6)
    assert torch.equal(codes_side.to_ids(seq + 0.05 * torch.randn_like(seq).clamp(-1, 1)), ids)


def random_codes(code_scale: float = 1.6) -> FlexTokCodes:
    """The tokenizer side of a random flextok-test (FSQ [8,8,8,5,5,5]) at a code scale of 1.6, as in `exports`."""
    return FlexTokCodes(FlexTok(FLEXTOK_PRESETS["flextok-test"]), torch.nn.Identity(), code_scale=code_scale)


def deep_xar() -> XAR:
    """xar-flextok-test with depth 2 (4 blocks): later layers' cached keys depend on the context's earlier layers."""
    torch.manual_seed(0)
    model = XAR(dataclasses.replace(XAR_PRESETS["xar-flextok-test"], depth=2))
    with torch.no_grad():
        model.label_emb.table.weight.normal_(std=1.0)
    return model.eval()


def lattice_gap(codes: FlexTokCodes, seq: torch.Tensor) -> torch.Tensor:
    """|seq - its re-encoding| per value, in grid steps of each channel (0 on the lattice)."""
    fsq = codes.flextok.fsq
    return ((seq - codes.ids_to_grid(codes.to_ids(seq))[:, :, 0].transpose(1, 2)).abs() / codes.code_scale
            * fsq._half_width())


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_snapped_xar_codes_lie_exactly_on_the_fsq_lattice(cfg) -> None:
    """Every generated code, in every group, is the scaled FSQ code of its own id, bit for bit: ids -> training
    input (`ids_to_grid`) gives back the very same tensor."""
    codes, labels = random_codes(), torch.tensor([0, 4, 7])
    seq = sample_entities(deep_xar(), labels, SampleConfig(steps=3, cfg=cfg), generator=image_generators(1, 0, 3),
                          snap=codes.snap)  # (3, K, 6)
    again = Partition("prefix", (1, K)).split(codes.ids_to_grid(codes.to_ids(seq)))  # ids -> scaled codes
    assert torch.equal(seq, again)
    assert torch.equal(codes.snap(seq), seq)  # snapping is idempotent
    ids = sample_ids(deep_xar(), codes, labels, K, SampleConfig(steps=3, cfg=cfg), image_generators(1, 0, 3))
    assert torch.equal(ids, codes.to_ids(seq))  # the sampler for FlexTok codes snaps by default


def test_without_the_snap_hook_codes_are_off_the_lattice() -> None:
    """The planted bug the test above must catch: with no hook, a random model's codes sit a good fraction of a grid
    step off the lattice, and since later groups are then conditioned on other inputs, their ids change too."""
    codes, labels, gens = random_codes(), torch.tensor([0, 4, 7]), lambda: image_generators(1, 0, 3)  # noqa: E731
    raw = sample_entities(deep_xar(), labels, SampleConfig(steps=3, cfg=2.0), generator=gens())
    gap = lattice_gap(codes, raw)
    assert gap.mean() > 0.1 and (gap > 0.01).float().mean() > 0.8, gap.mean()
    snapped = sample_ids(deep_xar(), codes, labels, K, SampleConfig(steps=3, cfg=2.0), gens())
    late = sample_ids(deep_xar(), codes, labels, K, SampleConfig(steps=3, cfg=2.0), gens(), snap=False)  # output only
    assert torch.equal(late, codes.to_ids(raw))
    assert torch.equal(snapped[:, 0], late[:, 0])  # group 0 has no context: the same draw either way
    assert (snapped[:, 2:] != late[:, 2:]).float().mean() > 0.3  # later groups see other context (here 8 of 18)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_snapped_context_is_what_the_kv_cache_holds(cfg) -> None:
    """With snapping, the KV-cached sampler (context stored once) equals full recomputation (context re-fed from the
    finished entities at every step), so the cache holds the snapped codes, in both guidance branches."""
    codes, labels = random_codes(), torch.tensor([0, 4, 7])
    settings = SampleConfig(steps=3, cfg=cfg)
    cached = sample_entities(deep_xar(), labels, settings, generator=image_generators(2, 0, 3), snap=codes.snap)
    full = sample_entities(deep_xar(), labels, settings, generator=image_generators(2, 0, 3), full_recompute=True,
                           snap=codes.snap)
    assert torch.equal(cached, full), (cached - full).abs().max()
    assert lattice_gap(codes, cached).max() == 0


def test_cfg_schedules_on_prefix_groups() -> None:
    """Group 0 (FlexTok's most semantic token) under each schedule: linear leaves it unguided (the conditional model),
    constant and linear-guided guide it, the latter at 1 + (w - 1) / E, which a constant run at that scale
    reproduces."""
    codes, labels = random_codes(), torch.tensor([1, 6])
    run = lambda cfg, sched: sample_entities(deep_xar(), labels, SampleConfig(steps=3, cfg=cfg, cfg_schedule=sched),  # noqa: E731
                                             entities=1, generator=image_generators(5, 0, 2))[:, :1]
    plain = run(1.0, "linear")
    torch.testing.assert_close(run(3.0, "linear"), plain, rtol=0, atol=1e-5)  # guided batch vs plain: rounding only
    assert (run(3.0, "constant") - plain).abs().max() > 1e-3
    E = deep_xar().partition.num_entities  # 4 groups over 8 registers
    torch.testing.assert_close(run(3.0, "linear-guided"), run(1.0 + 2.0 / E, "constant"), rtol=0, atol=1e-5)
    assert (run(3.0, "linear-guided") - plain).abs().max() > 1e-3
    with pytest.raises(VistokError, match="unknown CFG schedule 'cosine'"):
        sample_entities(deep_xar(), labels, SampleConfig(steps=2, cfg=2.0, cfg_schedule="cosine"), entities=1,
                        snap=codes.snap)
    with pytest.raises(VistokError, match="unknown CFG schedule 'cosine'; use one of linear, constant, linear-guided"):
        SampleConfig(cfg_schedule="cosine")
    with pytest.raises(VistokError, match="unknown sampling method 'heun'"):
        SampleConfig(method="heun")


def test_api_and_cli_take_every_cfg_schedule(exports, tmp_path, capsys) -> None:
    gen = vistok.load(exports["xar"])
    images = {s: gen.sample([2, 5], tokens=2, seed=0, cfg=3.0, cfg_schedule=s) for s in ("linear", "linear-guided")}
    assert images["linear"].shape == (2, 32, 32, 3) and not np.array_equal(images["linear"], images["linear-guided"])
    with pytest.raises(VistokError, match="unknown CFG schedule 'ramp'") as err:
        gen.sample([2], cfg_schedule="ramp")
    assert "\n" not in str(err.value)
    out = tmp_path / "grid.png"
    assert cli.main(["sample", "--ckpt", str(exports["xar"]), "--num", "2", "--tokens", "2", "--out", str(out),
                     "--cfg-schedule", "linear-guided"]) == 0 and out.is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        cli.main(["sample", "--ckpt", str(exports["xar"]), "--out", str(out), "--cfg-schedule", "ramp"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "invalid choice: 'ramp'" in err[0], err
    assert cli.CFG_SCHEDULES == flow.CFG_SCHEDULES


# ------------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("embedding", ["table", "code"])
def test_gpt_overfits_one_batch(embedding) -> None:
    torch.manual_seed(0)
    model = AR(dataclasses.replace(AR_PRESETS["gpt-test"], embedding=embedding)).train()
    ids, labels = torch.randint(0, 64_000, (8, K)), torch.arange(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60 if embedding == "table" else 120):  # an MLP over codes memorises random ids more slowly
        loss = model(ids, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - np.log(64_000)) < 1e-3  # the zero head starts uniform
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def test_xar_on_flextok_codes_overfits_one_batch() -> None:
    """Fixed codes, noise and noise levels (see test_xar.test_overfitting_one_batch for why)."""
    torch.manual_seed(0)
    model = XAR(XAR_PRESETS["xar-flextok-test"]).train()
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    tokens = ids_to_grid(torch.randint(0, fsq.codebook_size, (8, K)), fsq, 1.6)  # (8, 6, 1, K)
    labels, t, noise = torch.arange(8), torch.rand(8, 4) * 0.8 + 0.1, torch.randn(8, K, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = model(tokens, labels, t=t, noise=noise).item()
    for _ in range(100):
        loss = model(tokens, labels, t=t, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 5, (first, loss.item())


# ------------------------------------------------------------------------------------------------- export, CLI
@pytest.mark.parametrize("kind", ["gpt", "xar"])
def test_every_k_on_the_ladder_decodes_to_images(exports, kind) -> None:
    model, codes, meta = load_paired(exports[kind])
    assert isinstance(model, AR if kind == "gpt" else XAR) and codes.registers == K
    assert meta["tokenizer"]["family"] == "flextok" and (exports[kind] / "tokenizer" / "model.safetensors").is_file()
    labels = torch.tensor([0, 3, 9])
    sampling = ARSampleConfig(cfg=2.0) if kind == "gpt" else FAST
    prev_images, prev_ids = None, None
    for k in (1, 2, 4, 8):
        parts = list(PairedGenerator(model, codes, sampling).batches(labels, tokens=k, seed=1, batch_size=2))
        images, ids = (np.concatenate([arrays[key] for _, arrays in parts]) for key in ("images", "ids"))
        assert images.shape == (3, 32, 32, 3) and images.dtype == np.uint8
        assert ids.shape == (3, k) and ids.dtype == np.int32 and ((ids >= 0) & (ids < 64_000)).all()
        if prev_ids is not None:
            assert np.array_equal(ids[:, :prev_ids.shape[1]], prev_ids)  # the k run starts with the shorter run
            assert not np.array_equal(images, prev_images)  # more tokens, other images
        prev_images, prev_ids = images, ids
    if kind == "xar":
        assert codes.code_scale == 1.6
        with pytest.raises(VistokError, match="1, 2, 4, 8"):
            check_k(model, 3)
    else:
        assert check_k(model, 3) == 3 and valid_ks(model) == list(range(1, 9))
        with pytest.raises(VistokError, match="1..8"):
            check_k(model, 9)


def test_pairing_is_checked() -> None:
    flextok = FLEXTOK_PRESETS["flextok-test"]
    check_pairing(AR_PRESETS["gpt-test"], flextok)
    check_pairing(XAR_PRESETS["xar-flextok-test"], flextok)
    with pytest.raises(VistokError, match="model.tokens=8"):
        check_pairing(AR_PRESETS["gpt-tiny"], flextok)
    with pytest.raises(VistokError, match="model.entity=prefix"):
        check_pairing(XAR_PRESETS["xar-test"], flextok)
    with pytest.raises(VistokError, match="model.vocab_size=1000"):
        check_pairing(ARConfig(tokens=8), dataclasses.replace(flextok, levels=(8, 5, 5, 5)))


@pytest.mark.parametrize("kind", ["gpt", "xar"])
def test_cli_sample_tokens_same_seed_same_images(exports, kind, tmp_path, capsys) -> None:
    base = ["sample", "--ckpt", str(exports[kind]), "--tokens", "2", "--num", "5", "--seed", "4", "--device", "cpu",
            "--quiet", "--decode-steps", "2"]
    assert cli.main([*base, "--out", str(tmp_path / "a"), "--batch-size", "2"]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--batch-size", "5"]) == 0
    with np.load(tmp_path / "a" / "samples.npz") as a, np.load(tmp_path / "b" / "samples.npz") as b:
        assert a["arr_0"].shape == (5, 32, 32, 3) and a["arr_0"].dtype == np.uint8
        assert np.array_equal(a["arr_0"], b["arr_0"]) and a["labels"].tolist() == [0, 1, 2, 3, 4]
    with np.load(tmp_path / "a" / "tokens.npz") as z:  # `vistok encode`'s format: `vistok decode` reads it
        assert z["ids"].shape == (5, 2) and z["k"].tolist() == [2] * 5
    assert "k=2 of 8 FlexTok tokens" in capsys.readouterr().out
    assert cli.main([*base[:-2], "--out", str(tmp_path / "grid.png")]) == 0 and (tmp_path / "grid.png").is_file()


def test_cli_sample_flags_that_do_not_apply_are_one_line_errors(exports, tmp_path, capsys) -> None:
    pixel = write_export(tmp_path / "pixel_xar", "xar", to_dict(XAR_PRESETS["xar-test"]),
                         XAR(XAR_PRESETS["xar-test"]).state_dict(),
                         tokenizer={"family": "pixel", "config": to_dict(PixelConfig(patch=4, scale=2.0))})
    out = str(tmp_path / "out")
    cases = [
        ([str(pixel), "--tokens", "2"], "--tokens does not apply"),
        ([str(exports["xar"]), "--tokens", "3"], "use one of 1, 2, 4, 8"),
        ([str(exports["gpt"]), "--tokens", "9"], "use one of 1..8"),
        ([str(exports["gpt"]), "--steps", "5"], "--steps does not apply"),
        ([str(exports["xar"]), "--temperature", "0.5", "--top-p", "0.9"], "--temperature, --top-p do not apply"),
        ([str(exports["gpt"]), "--top-p", "1.5"], "top-p must lie in (0, 1]"),
    ]
    for args, fragment in cases:
        capsys.readouterr()
        assert cli.main(["sample", "--ckpt", *args, "--num", "1", "--out", out]) == 1, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], (args, err)
    with pytest.raises(VistokError, match="load_paired"):
        from vistok.api import load_generator

        load_generator(exports["xar"])


def test_models_lists_the_new_presets() -> None:
    table = registry.presets()
    assert table["gpt-tiny"].family == "ar" and table["xar-flextok-tiny"].family == "xar"
    assert registry.param_count("gpt-tiny") == 431_232 and registry.param_count("xar-flextok-tiny") == 718_790
    assert registry.param_count("gpt-d30") == 1_575_277_440  # 1.33B of it in the 30 blocks, as the paper's AR


# ------------------------------------------------------------------------------------------------ training scripts
@pytest.fixture(scope="module")
def token_file(flextok_export, shared_image_folder, tmp_path_factory) -> Path:
    """`vistok encode` of 2 classes x 16 images with the test FlexTok: ids (32, 8) int32, k, labels."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.npz"
    assert cli.main(["encode", "--ckpt", str(flextok_export), "--input", str(shared_image_folder), "--out", str(path),
                     "--device", "cpu"]) == 0
    with np.load(path) as z:
        assert z["ids"].shape == (32, K) and z["labels"].tolist() == [0] * 16 + [1] * 16 and (z["k"] == K).all()
    return path


COMMON = ["train.batch_size=8", "train.total_steps=3", "train.warmup_steps=0", "train.num_workers=0",
          "train.device=cpu", "train.log_every=1", "preview_per_class=1", "data.classes=[]", "model.num_classes=2"]
SCRIPTS = {
    "gpt": ("train_flextok_gpt", "train/configs/flextok_gpt_cifar10_tiny.yaml",
            ["model.tokens=8", "model.width=32", "model.depth=1", "model.heads=1"]),
    "xar": ("train_flextok_xar", "train/configs/flextok_xar_cifar10_tiny.yaml",
            ["model.grid=[1,8]", "model.width=32", "model.depth=1", "model.heads=2", "sample.steps=2"]),
}


@pytest.mark.parametrize("kind", ["gpt", "xar"])
def test_training_script_on_a_token_file(kind, token_file, flextok_export, tmp_path, capsys) -> None:
    script, config, model_args = SCRIPTS[kind]
    args = ["--config", str(REPO / config), f"train.run_dir={tmp_path}", f"tokenizer.ckpt={flextok_export}",
            f"data.tokens={token_file}", *COMMON, *model_args]
    check_ok(script_main(script, *args))
    out = tmp_path / "export"
    meta = json.loads((out / "config.json").read_text())
    assert meta["family"] == ("ar" if kind == "gpt" else "xar") and meta["step"] == 3 and meta["classes"] == ["0", "1"]
    assert meta["tokenizer"]["family"] == "flextok" and (out / "tokenizer" / "config.json").is_file()
    assert (out / "preview.png").is_file() and [json.loads(x)["step"] for x in
                                                 (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    if kind == "xar":  # measured from the file: 1 / std of its codes
        assert 1.0 < meta["tokenizer"]["code_scale"] < 4.0
    assert cli.main(["sample", "--ckpt", str(out), "--tokens", "2", "--num", "2", "--out", str(tmp_path / "s"),
                     "--decode-steps", "2", "--quiet", "--device", "cpu"]) == 0
    if kind == "gpt":  # a missing token file names the command that writes it
        proc = script_main(script, *args, f"train.run_dir={tmp_path / 'missing'}", "data.tokens=/no/such.npz")
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and "vistok encode --ckpt" in lines[0], proc.stderr
