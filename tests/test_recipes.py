"""The papers' exact recipes (issue 27, item 6): xAR's official weight-decay groups and floor(t * 1000) time input,
and the bf16-on-a-CPU warning in training and sampling. (ADM's evaluator definitions: tests/test_fid.py.)"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from vistok.config import load_config
from vistok.engine import precision
from vistok.engine.loop import TrainConfig
from vistok.engine.optim import build_optimizer, param_groups
from vistok.errors import VistokError
from vistok.generators.xar import PRESETS, XAR

from conftest import load_train_script

REPO = Path(__file__).resolve().parents[1]
TABLES = ("label_emb.table.weight", "pos_in", "pos_mid")  # the class table and both position tables


def group_names(model: torch.nn.Module, rule: str) -> tuple[set[str], set[str]]:
    """(decayed names, not decayed names) of the optimizer groups, matched back to names by identity."""
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = param_groups(model, 0.02, rule)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    return {names[id(p)] for p in decay["params"]}, {names[id(p)] for p in no_decay["params"]}


# ---------------------------------------------------------------------------------------------- weight decay
def test_official_rule_decays_class_and_position_tables_but_not_norms_or_biases() -> None:
    model = XAR(PRESETS["xar-test"])
    decay, no_decay = group_names(model, "official")
    assert set(TABLES) <= decay
    for name, p in model.named_parameters():  # the rule itself, parameter by parameter
        expected_decayed = p.ndim > 1 and not name.endswith(".bias")
        assert (name in decay) == expected_decayed, name
        assert (name in decay) != (name in no_decay), name
    assert {"in_norm.weight", "mid_norm.weight", "out_norm.weight", "head.bias", "in_proj.bias"} <= no_decay
    assert "head.weight" in decay and "blocks_in.0.ada.1.weight" in decay


def test_default_rule_is_unchanged_layers_only() -> None:
    model = XAR(PRESETS["xar-test"])
    decay, no_decay = group_names(model, "layers")
    assert set(TABLES) <= no_decay  # today's default: tables are not decayed
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert decay == linear
    assert TrainConfig().decay_rule == "layers"
    with pytest.raises(VistokError, match="decay_rule"):
        param_groups(model, 0.02, "ndim")


def test_adamw_step_shrinks_the_tables_only_under_the_official_rule() -> None:
    """With zero gradients AdamW's update is the decoupled decay alone: p <- p * (1 - lr * wd)."""
    lr, wd = 0.1, 0.5
    for rule, factor in (("official", 1 - lr * wd), ("layers", 1.0)):
        model = XAR(PRESETS["xar-test"])
        before = {n: model.get_parameter(n).detach().clone() for n in (*TABLES, "out_norm.weight", "head.bias")}
        opt = build_optimizer(model, lr, wd, fused=False, decay_rule=rule)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for n in TABLES:
            torch.testing.assert_close(model.get_parameter(n), before[n] * factor, rtol=1e-6, atol=0)
        for n in ("out_norm.weight", "head.bias"):  # never decayed
            torch.testing.assert_close(model.get_parameter(n), before[n], rtol=0, atol=0)


@pytest.mark.parametrize("size", ["b", "l", "h"])
def test_paper_configs_name_the_official_rules(size) -> None:
    cfg = load_config(load_train_script("train_xar").Config, REPO / f"train/configs/xar_{size}_in256.yaml")
    assert cfg.train.decay_rule == "official" and cfg.model.time_floor is True
    assert load_config(load_train_script("train_xar").Config,
                       REPO / "train/configs/xar_cifar10_tiny.yaml").train.decay_rule == "layers"


# ---------------------------------------------------------------------------------------------- time input
def sinusoid(x: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """The sinusoidal features written out by hand: [cos(x w_j), sin(x w_j)], w_j = 10000^(-j / 128)."""
    j = torch.arange(dim // 2, dtype=torch.float64)
    args = x.double()[..., None] * torch.pow(10000.0, -j / (dim // 2))
    return torch.cat([args.cos(), args.sin()], -1).float()


@pytest.mark.parametrize("floor", [True, False])
def test_training_forward_embeds_floor_t_when_set(floor) -> None:
    torch.manual_seed(0)
    model = XAR(replace(PRESETS["xar-test"], time_floor=floor)).train()
    seen = []
    model.time_emb.mlp[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    tokens, labels = torch.randn(2, 48, 8, 8), torch.tensor([1, 2])
    t = torch.tensor([[0.1234, 0.5, 0.9999, 0.0007], [0.25, 0.3337, 0.75, 0.0419]])
    model(tokens, labels, t=t).backward()
    assert len(seen) == 1 and seen[0].shape == (2, 4, 256)
    integer = torch.tensor([[123, 500, 999, 0], [250, 333, 750, 41]])
    want = sinusoid(integer if floor else t.double() * 1000)
    torch.testing.assert_close(seen[0], want, rtol=0, atol=2e-4)
    other = sinusoid(t.double() * 1000 if floor else integer)  # the other time input is far off
    assert (seen[0] - other).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------- bf16 on a CPU
@pytest.fixture
def fresh_warning(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())


def test_bf16_on_cpu_warns_once_fp32_and_cuda_do_not(fresh_warning) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not precision.warn_slow_precision("fp32", "cpu")
        assert not precision.warn_slow_precision("bf16", "cuda")
        assert precision.warn_slow_precision("bf16", torch.device("cpu"))
        assert not precision.warn_slow_precision("bf16", "cpu")  # once per process
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "\n" not in text and "CPU" in text and "fp32" in text and "slower" in text


def test_bf16_on_cpu_warns_in_training_and_sampling(tmp_path, fresh_warning) -> None:
    from vistok.api.models import run_batches
    from vistok.engine import dist
    from vistok.engine.loop import Trainer

    @dataclass(frozen=True)
    class Cfg:
        train: TrainConfig

    env = dist.setup("cpu")
    with pytest.warns(UserWarning, match="bf16 on a CPU"):
        Trainer(torch.nn.Linear(2, 2), Cfg(TrainConfig(run_dir=str(tmp_path / "run"), precision="bf16", device="cpu",
                                                       batch_size=2)), env)
    precision._warned.clear()
    def step(start, n, rows):
        return {"images": torch.zeros(rows, 1).numpy()}

    with pytest.warns(UserWarning, match="bf16 on a CPU"):
        list(run_batches(step, 2, precision="bf16", device=torch.device("cpu")))
    precision._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fp32 sampling stays silent
        list(run_batches(step, 2, precision="fp32", device=torch.device("cpu")))


# ---------------------------------------------------------------------------------------------- fp16 + GradScaler
@dataclass(frozen=True)
class _Run:
    train: TrainConfig


def _fp16_run(run_dir, **train):
    from vistok.engine import dist
    from vistok.engine.loop import Trainer

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    cfg = TrainConfig(**{"run_dir": str(run_dir), "precision": "fp16", "device": "cpu", "batch_size": 4, "lr": 1e-2,
                         "total_steps": 6, "ckpt_every": 1, "log_every": 1, "warmup_steps": 0, **train})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on a CPU warns (tested above)
        return Trainer(model, _Run(cfg), dist.setup("cpu"))


def _step(run) -> None:
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(run.step))
    for xm in run.micro_batches(x):
        run.backward(run.ddp_model(xm).float().pow(2).mean())
    run.finish_step()


def test_fp16_overflow_halves_the_loss_scale_without_an_update_or_a_skip(tmp_path) -> None:
    """The official recipe's fp16: the loss is scaled before backward and the gradients unscaled before clipping; a
    step whose fp16 gradients overflow changes nothing but the scale (halved), and is not a failed step."""
    run = _fp16_run(tmp_path / "run", total_steps=20, schedule="constant")
    assert run.scaler.is_enabled()
    run.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)  # far beyond fp16's 65504: the first steps overflow
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in run.ema.shadow.items()}
    with run.logging():
        _step(run)
        assert run.scaler.get_scale() == 2.0 ** 23 and run.skipped == 0 and run.step == 1
        assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())  # no update
        assert all(torch.equal(ema_before[k], v) for k, v in run.ema.shadow.items())
        while run.step < 20:
            _step(run)
    assert run.scaler.get_scale() < 2.0 ** 23 and run.skipped == 0  # halved until the gradients fit fp16
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())  # updates once it fits


def test_fp16_loss_scale_is_saved_and_resumed_and_fp32_has_none(tmp_path) -> None:
    run = _fp16_run(tmp_path / "run", total_steps=3)
    with run.logging():
        while run.step < 3:
            _step(run)
    saved = run.scaler.state_dict()
    assert saved["scale"] == 65536.0 and saved["_growth_tracker"] == 3  # three good steps at the initial scale
    again = _fp16_run(tmp_path / "run", total_steps=4)
    assert again.step == 3 and again.scaler.state_dict() == saved
    plain = _fp16_run(tmp_path / "plain", precision="fp32")
    assert not plain.scaler.is_enabled()
    with pytest.raises(VistokError, match="fp16 .* not supported with train.parallel=fsdp"):
        TrainConfig(precision="fp16", parallel="fsdp")


@pytest.mark.parametrize("size", ["b", "l", "h"])
def test_paper_configs_train_in_fp16(size) -> None:
    text = (Path(__file__).resolve().parents[1] / "train" / "configs" / f"xar_{size}_in256.yaml").read_text()
    assert re.search(r"^  precision: fp16\b", text, re.M)
