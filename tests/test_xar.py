"""xAR (Ren et al., arXiv 2502.20388): the training forward (Noisy Context Learning), the cached sampler, CFG,
presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vistok import flow
from vistok.config import from_dict
from vistok.errors import VistokError
from vistok.generators.entities import Partition
from vistok.generators.sampling import SampleConfig, sample_xar
from vistok.generators.xar import FAMILY, PRESETS, XAR, XARConfig
from vistok.modules.attention import rope_tables
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer


def tiny(**overrides) -> XAR:
    """4x4 grid of 4-channel tokens, 2x2 cells (4 entities x 4 tokens, the paper's 2x2 cell layout), no dropout."""
    cfg = dict(in_channels=4, grid=(4, 4), entity="cell", entity_size=2, width=64, depth=1, heads=4, num_classes=10,
               dropout=0.0, attn_dropout=0.0, label_drop=0.0)
    torch.manual_seed(0)
    return XAR(XARConfig(**{**cfg, **overrides}))


def loud_labels(model: XAR) -> XAR:
    """Label embeddings large enough that conditional and unconditional branches clearly differ."""
    with torch.no_grad():
        model.label_emb.table.weight.normal_(std=1.0)
    return model


def test_loss_is_finite_and_reaches_every_part() -> None:
    model = tiny()
    loss = model(torch.randn(3, 4, 4, 4), torch.tensor([1, 2, 3]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name != "label_emb.table.weight":  # unused class rows get no gradient
            assert p.grad.abs().sum() > 0, name


def test_zero_predictor_loss_is_var_eps_plus_var_x() -> None:
    model = tiny()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    torch.manual_seed(1)
    loss = model(torch.randn(256, 4, 4, 4), torch.randint(0, 10, (256,)))
    assert abs(loss.item() - 2.0) < 0.05  # E|eps - x|^2 = Var(eps) + Var(x) for unit-variance tokens


def test_each_entity_gets_its_own_t() -> None:
    model = tiny()
    seen = {}
    model.time_emb.register_forward_hook(lambda m, args, out: seen.__setitem__("t", args[0].detach().clone()))
    model.in_proj.register_forward_hook(lambda m, args, out: seen.__setitem__("x_t", args[0].detach().clone()))
    tokens, labels = torch.randn(512, 4, 4, 4), torch.randint(0, 10, (512,))

    torch.manual_seed(5)
    model(tokens, labels)
    t = seen["t"]
    assert t.shape == (512, 4)  # one noise level per (image, entity), fed to the time embedding
    assert all(len(set(row.tolist())) == 4 for row in t)  # different levels inside every image
    logit = torch.logit(t)
    assert abs(logit.mean().item()) < 0.1 and abs(logit.std().item() - 1.0) < 0.1  # logit-normal(0, 1)
    assert abs(torch.corrcoef(logit.T)[0, 1:].abs().max().item()) < 0.15  # entities drawn independently
    torch.manual_seed(5)
    torch.testing.assert_close(model.draw_t(512), t)

    # each token is noised with its own entity's t (given t and noise, the network input is predictable)
    t = torch.rand(2, 4)
    noise = torch.randn(2, 16, 4)
    x = tokens[:2]
    model(x, labels[:2], t=t, noise=noise)
    seq = model.partition.split(x)  # (2, 16, 4)
    expected = torch.cat([flow.interpolate(seq[:, 4 * e:4 * e + 4], noise[:, 4 * e:4 * e + 4], t[:, e, None, None])
                          for e in range(4)], dim=1)
    torch.testing.assert_close(seen["x_t"], expected)
    torch.testing.assert_close(seen["t"], t)


def test_attention_is_block_causal_over_entities() -> None:
    model = tiny().eval()
    x, labels, t = torch.randn(2, 16, 4), torch.tensor([3, 7]), torch.rand(2, 4)
    base = model.predict(x, labels, t)  # (2, 16, 4)

    later = x.clone()
    later[:, 8:12] += 1.0  # change entity 2
    out = model.predict(later, labels, t)
    torch.testing.assert_close(out[:, :8], base[:, :8], rtol=0, atol=1e-6)  # entities 0, 1 cannot see it
    assert (out[:, 8:] - base[:, 8:]).abs().amax(dim=(0, 2)).min() > 1e-4  # every token of entities 2, 3 can

    inside = x.clone()
    inside[:, 7] += 1.0  # last token of entity 1: its first token sees it (full attention inside an entity)
    assert (model.predict(inside, labels, t)[:, 4] - base[:, 4]).abs().max() > 1e-4

    t2 = t.clone()
    t2[:, 2] = 0.9  # a noise level conditions its own entity and, through attention, later ones only
    out = model.predict(x, labels, t2)
    torch.testing.assert_close(out[:, :8], base[:, :8], rtol=0, atol=1e-6)
    assert (out[:, 8:12] - base[:, 8:12]).abs().max() > 1e-4


def test_clean_context_is_teacher_forcing() -> None:
    """context="clean": noisy entity n sees clean entities < n and itself only, exactly as the sampler feeds it."""
    model = tiny().eval()
    x, labels, t = torch.randn(2, 16, 4), torch.tensor([1, 4]), torch.rand(2, 4)
    x_t = flow.interpolate(x, torch.randn_like(x), t[:, model.groups, None])
    v = model.teacher_forced(x, x_t, labels, t)  # (2, 16, 4)
    for e in range(4):
        lo, hi = 4 * e, 4 * e + 4
        prefix_t = torch.cat([torch.zeros(2, e), t[:, e:e + 1]], dim=1)
        ref = model.predict(torch.cat([x[:, :lo], x_t[:, lo:hi]], dim=1), labels, prefix_t)[:, lo:hi]
        torch.testing.assert_close(v[:, lo:hi], ref, rtol=0, atol=1e-5)
    other = x_t.clone()
    other[:, :4] += 1.0  # the noisy copy of entity 0 is invisible to entity 1
    torch.testing.assert_close(model.teacher_forced(x, other, labels, t)[:, 4:], v[:, 4:], rtol=0, atol=1e-6)
    loss = tiny().train()(torch.randn(2, 4, 4, 4), labels, context="clean")
    assert torch.isfinite(loss)


def test_rope_and_positions_follow_entity_order() -> None:
    model = tiny(entity="subsample", entity_size=2)
    cos, sin = rope_tables(Partition("subsample", (4, 4), 2).positions(), 16)
    assert torch.equal(model.rope_cos, cos) and torch.equal(model.rope_sin, sin)
    assert model.pos_in.shape == model.pos_mid.shape == (16, 64)
    scale = tiny(entity="scale", entity_size=3)
    assert scale.pos_in.shape == (21, 64) and scale.mask.shape == (21, 21)  # 1 + 4 + 16 tokens


ENTITIES = [("cell", 2, 2.0, "ode"), ("cell", 2, 1.0, "ode"), ("token", 1, 3.0, "ode"), ("subsample", 2, 2.0, "ode"),
            ("scale", 3, 2.0, "ode"), ("image", 1, 2.0, "ode"), ("cell", 2, 2.0, "sde")]


@pytest.mark.parametrize("entity,size,cfg,method", ENTITIES, ids=[f"{e}{s}-cfg{c}-{m}" for e, s, c, m in ENTITIES])
def test_kv_cache_equals_full_recompute(entity: str, size: int, cfg: float, method: str) -> None:
    model = loud_labels(tiny(entity=entity, entity_size=size, depth=2))  # 4 layers, 4 heads: each its own cache slot
    labels = torch.tensor([0, 5, 9])
    settings = SampleConfig(steps=3, cfg=cfg, method=method)
    cached = sample_xar(model, labels, settings, seed=3)
    full = sample_xar(model, labels, settings, seed=3, full_recompute=True)
    assert cached.shape == (3, 4, 4, 4)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def test_cfg_one_equals_conditional_model() -> None:
    model = loud_labels(tiny())
    labels = torch.tensor([2, 8])
    # a scale a hair above 1 runs the doubled batch with the null branch; 1.0 itself runs the conditional branch alone
    guided = sample_xar(model, labels, SampleConfig(steps=4, cfg=1.0 + 1e-12), seed=0)
    plain = sample_xar(model, labels, SampleConfig(steps=4, cfg=1.0), seed=0)
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-5)
    guided = sample_xar(model, labels, SampleConfig(steps=4, cfg=3.0, cfg_schedule="constant"), seed=0)
    assert (guided - plain).abs().max() > 1e-3


def test_linear_schedule_leaves_the_first_entity_unguided() -> None:
    model = loud_labels(tiny())
    part, labels = model.partition, torch.tensor([1, 6])
    run = lambda cfg, sched: part.split(  # noqa: E731
        sample_xar(model, labels, SampleConfig(steps=4, cfg=cfg, cfg_schedule=sched), seed=11))
    weak, strong = run(1.0, "linear"), run(4.0, "linear")
    torch.testing.assert_close(strong[:, :4], weak[:, :4], rtol=0, atol=1e-6)  # entity 0: scale 1 either way
    assert (strong[:, 12:] - weak[:, 12:]).abs().max() > 1e-3  # the last entity is guided
    assert (run(4.0, "constant")[:, :4] - weak[:, :4]).abs().max() > 1e-3  # constant guides entity 0 too


def test_an_unguided_first_entity_skips_the_null_branch_but_the_cache_still_gets_it() -> None:
    """Linear CFG: entity 0 (scale 1, no context) runs the conditional rows alone, bit-equal to the unguided
    sampler; its store and every later entity run both branches. Constant CFG runs both from the start."""
    model = loud_labels(tiny(depth=2))
    part, labels, calls = model.partition, torch.tensor([1, 6]), []
    predict = model.predict

    def counting(x, labels_in, t, first=0, cache=None, store=False):
        calls.append((first, x.shape[0], store))
        return predict(x, labels_in, t, first=first, cache=cache, store=store)

    model.predict = counting
    strong = part.split(sample_xar(model, labels, SampleConfig(steps=4, cfg=4.0, cfg_schedule="linear"), seed=11))
    flow_rows = [(first, rows) for first, rows, store in calls if not store]
    assert flow_rows[:4] == [(0, 2)] * 4  # entity 0: 4 flow steps on B rows
    assert all(rows == 4 for _, rows in flow_rows[4:]) and len(flow_rows) == 4 * part.num_entities
    assert [(first, rows) for first, rows, store in calls if store] == [(e, 4) for e in range(part.num_entities - 1)]
    weak = part.split(sample_xar(model, labels, SampleConfig(steps=4, cfg=1.0), seed=11))
    assert torch.equal(strong[:, :4], weak[:, :4])
    calls.clear()
    sample_xar(model, labels, SampleConfig(steps=4, cfg=4.0, cfg_schedule="constant"), seed=11)
    assert all(rows == 4 for _, rows, _ in calls)


def test_same_seed_same_samples() -> None:
    model = tiny().train()
    labels = torch.tensor([1, 2, 3])
    a = sample_xar(model, labels, SampleConfig(steps=3, cfg=2.0), seed=42)
    b = sample_xar(model, labels, SampleConfig(steps=3, cfg=2.0), generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    assert (sample_xar(model, labels, SampleConfig(steps=3, cfg=2.0), seed=43) - a).abs().max() > 1e-3
    assert model.training  # sampling ran in eval mode and restored the mode


def test_overfitting_one_batch() -> None:
    """With fixed data, noise and noise levels the flow loss is a plain regression the model can memorise. (With fresh
    eps and t every step the loss has an irreducible floor, E Var[eps - x | x_t] > 0, and cannot drop 10x.)"""
    model = tiny(width=64, depth=1).train()
    torch.manual_seed(0)
    tokens, labels = torch.randn(8, 4, 4, 4), torch.randint(0, 10, (8,))
    t, noise = torch.rand(8, 4) * 0.8 + 0.1, torch.randn(8, 16, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = model(tokens, labels, t=t, noise=noise).item()
    for _ in range(60):
        loss = model(tokens, labels, t=t, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())


def test_label_dropout_only_in_training() -> None:
    model = tiny(label_drop=0.5)
    seen = []
    model.label_emb.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    labels = torch.zeros(2000, dtype=torch.long)
    model.train()(torch.randn(2000, 4, 4, 4), labels)
    dropped = (seen[-1] == model.null_class).float().mean().item()
    assert model.null_class == 10 and abs(dropped - 0.5) < 0.05
    model.eval()(torch.randn(4, 4, 4, 4), labels[:4])
    assert (seen[-1] == 0).all()


def test_bf16_autocast_forward() -> None:
    model = tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 4, 4, 4), torch.tensor([0, 1]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


PAPER_COUNTS = {"xar-b": 172_638_224, "xar-l": 608_397_968, "xar-h": 1_186_024_096}


def test_paper_presets_parameter_counts_on_meta() -> None:
    for name, expected in PAPER_COUNTS.items():
        with torch.device("meta"):
            model = XAR(PRESETS[name])
        count = sum(p.numel() for p in model.parameters())
        assert count == expected, (name, count)
        assert next(model.parameters()).is_meta
    assert abs(PAPER_COUNTS["xar-b"] / 172e6 - 1) < 0.01 and abs(PAPER_COUNTS["xar-l"] / 608e6 - 1) < 0.01
    with torch.device("meta"):  # the meta -> to_empty -> reset_parameters route rebuilds the derived buffers
        model = XAR(PRESETS["xar-test"])
    model.to_empty(device="cpu")
    model.reset_parameters()
    ref = XAR(PRESETS["xar-test"])
    for name, buf in ref.named_buffers():
        assert torch.equal(getattr(model, name), buf), name
    assert PRESETS["xar-b"].partition.lengths == (64, 64, 64, 64)  # the paper default: 8x8 cells of 16x16 latents
    assert FAMILY == ("xar", XARConfig, XAR)


def test_tiny_preset_on_pixel_tokens() -> None:
    tok = PixelTokenizer(PixelConfig(patch=4))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = tok.encode(images)
    assert tokens.shape == (2, 48, 8, 8) and torch.equal(tok.decode(tokens), images)
    scaled = PixelTokenizer(PixelConfig(patch=4, scale=2.0))
    assert torch.equal(scaled.decode(scaled.encode(images)), images)
    model = XAR(PRESETS["xar-test"])
    assert torch.isfinite(model(tokens, torch.tensor([0, 9])))
    out = sample_xar(model, torch.tensor([0, 9]), SampleConfig(steps=2, cfg=2.0), seed=0)
    assert tok.decode(out).shape == (2, 3, 32, 32)
    with pytest.raises(VistokError, match="patch size"):
        tok.encode(torch.zeros(1, 3, 30, 32))


def test_config_validation() -> None:
    base = dataclasses.asdict(XARConfig())
    bad = [dict(heads=5), dict(width=72, heads=12), dict(entity="row"), dict(entity_size=3), dict(context="dirty"),
           dict(entity="scale", entity_size=6), dict(grid=(4, 4, 4))]
    for change in bad:
        with pytest.raises(VistokError):
            from_dict(XARConfig, {**base, **change})
    cfg = from_dict(XARConfig, {"grid": [8, 8], "in_channels": 48, "entity": "token", "num_classes": 10})
    assert cfg.grid == (8, 8) and cfg.partition.num_entities == 64
    with pytest.raises(VistokError, match="tokens"):
        tiny()(torch.randn(2, 4, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(VistokError):
        tiny().predict(torch.randn(1, 5, 4), torch.tensor([0]), torch.rand(1, 1), first=1)
