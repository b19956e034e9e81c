"""Engine: parameter groups, schedules, EMA, checkpoints (atomic, RNG, weights_only, export), the loop's pieces."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as tdist
from torch import nn

from vistok import registry
from vistok.config import to_dict
from vistok.engine import checkpoint, flops
from vistok.engine.dist import DistEnv, seed_everything, setup, unwrap, wrap_model
from vistok.engine.logging import MetricsLog, read_metrics
from vistok.engine.loop import Checkpointer, TrainConfig, Trainer, optimizer_step, run_main, split_micro_batches
from vistok.engine.optim import EMA, build_optimizer, build_scheduler, param_groups
from vistok.errors import VistokError
from vistok.io import atomic, exports
from vistok.metrics.fid_net import FidNet

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class Toy(nn.Module):
    """One of everything that param_groups must sort."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.zeros(1, 4, 8))
        self.token = nn.Parameter(torch.zeros(8))
        self.conv = nn.Conv2d(3, 8, 3)
        self.conv_nb = nn.Conv1d(8, 8, 1, bias=False)
        self.norm = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(2, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.norm(x)))


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)  # float buffers (running stats) and an integer one (num_batches_tracked)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


# ---------------------------------------------------------------- optimizer and schedules


def test_param_groups_decay_only_linear_and_conv_weights():
    model = Toy()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model.conv.weight, model.conv_nb.weight, model.fc.weight])
    expected_no_decay = [model.embed.weight, model.pos, model.token, model.conv.bias, model.norm.weight,
                         model.norm.bias, model.gn.weight, model.gn.bias, model.bn.weight, model.bn.bias,
                         model.fc.bias]
    assert ids(no_decay["params"]) == ids(expected_no_decay)
    assert not ids(decay["params"] + no_decay["params"]) & ids(model.frozen.parameters())  # frozen: in neither
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.8, 0.9))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0] and opt.param_groups[0]["betas"] == (0.8, 0.9)


def lrs(schedule: str, warmup: int, total: int, steps: list[int]) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, schedule, warmup, total)
    out = {}
    for s in range(max(steps) + 1):
        out[s] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return [out[s] for s in steps]


def test_warmup_cosine_schedule():
    got = lrs("cosine", 10, 110, [0, 5, 10, 35, 60, 85, 110])
    expected = [0.0, 1.0, 2.0, 2 * 0.5 * (1 + math.cos(math.pi * 0.25)), 1.0, 2 * 0.5 * (1 + math.cos(math.pi * 0.75)),
                0.0]
    assert got == pytest.approx(expected, abs=1e-12)
    assert lrs("cosine", 0, 4, [0, 2, 4]) == pytest.approx([2.0, 1.0, 0.0], abs=1e-12)


def test_warmup_constant_schedule():
    assert lrs("constant", 4, 100, [0, 1, 2, 4, 50, 100]) == pytest.approx([0.0, 0.5, 1.0, 2.0, 2.0, 2.0])
    assert lrs("constant", 0, 10, [0, 9]) == pytest.approx([2.0, 2.0])


def test_schedule_errors():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(VistokError, match="warmup_steps .11. exceeds total_steps .10."):
        build_scheduler(opt, "cosine", 11, 10)
    with pytest.raises(VistokError, match="unknown schedule"):
        build_scheduler(opt, "linear", 0, 10)


# ---------------------------------------------------------------- EMA


def test_ema_math_buffers_and_warmup():
    torch.manual_seed(0)
    model = Small()
    ema = EMA(model, decay=0.9)
    assert "bn.num_batches_tracked" not in ema.shadow  # integer buffers are not averaged
    start = {k: v.clone() for k, v in ema.shadow.items()}
    expected = dict(start)
    for t in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.bn.running_mean.fill_(float(t + 1))
        d = min(0.9, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        for k, p in model.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * p.detach()
            torch.testing.assert_close(ema.shadow[k], expected[k])
        assert torch.equal(ema.shadow["bn.running_mean"], model.bn.running_mean)  # copied, not averaged
    assert ema.num_updates == 4
    no_warmup = EMA(model, decay=0.75, warmup=False)
    before = no_warmup.shadow["fc1.weight"].clone()
    with torch.no_grad():
        model.fc1.weight.add_(1.0)
    no_warmup.update(model)
    torch.testing.assert_close(no_warmup.shadow["fc1.weight"], 0.75 * before + 0.25 * model.fc1.weight.detach())
    with pytest.raises(VistokError, match="decay"):
        EMA(model, decay=1.0)


def test_ema_state_dict_round_trip_and_full_state():
    torch.manual_seed(1)
    model = Small()
    ema = EMA(model, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            model.fc1.weight.mul_(1.5)
        ema.update(model)
    other = EMA(Small(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 3 and other.current_decay() == ema.current_decay()
    for k in ema.shadow:
        assert torch.equal(other.shadow[k], ema.shadow[k])
    bad = {**ema.state_dict(), "shadow": {k: v for k, v in ema.shadow.items() if k != "fc2.bias"}}
    with pytest.raises(VistokError, match="fc2.bias"):
        EMA(Small()).load_state_dict(bad)
    full = ema.full_state(model.to(torch.float64))
    assert set(full) == set(model.state_dict())  # every key, integer buffers included (from the model)
    assert full["fc1.weight"].dtype == torch.float64 and full["bn.num_batches_tracked"].dtype == torch.int64
    assert torch.equal(full["fc1.weight"], ema.shadow["fc1.weight"].double())


# ---------------------------------------------------------------- checkpoints


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    old = {"step": 1, "w": torch.arange(4.0)}
    path = checkpoint.save_training_state(tmp_path, old)
    assert path == tmp_path / "ckpt-000001.pt" and (tmp_path / "last.pt").samefile(path)  # last.pt: the newest

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save_training_state(tmp_path, {"step": 2, "w": torch.zeros(4)})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001.pt", "last.pt"]  # no temporary file left
    loaded = checkpoint.load_training_state(tmp_path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], old["w"])

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.atomic_write(tmp_path / "ckpt-000001.pt", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001.pt", "last.pt"]
    assert checkpoint.load_training_state(tmp_path)["step"] == 1


def test_written_files_have_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        checkpoint.save_training_state(tmp_path, {"step": 0})
        exports.write_export(tmp_path / "export", "fid_net", {}, {"w": torch.zeros(1)})
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(umask)
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    for p in (tmp_path / "last.pt", tmp_path / "export" / "config.json", tmp_path / "export" / "model.safetensors"):
        assert stat.S_IMODE(p.stat().st_mode) == plain == 0o644, p


def draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())


def test_rng_state_round_trip(tmp_path):
    seed_everything(123)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    np.random.randn(1)  # and in NumPy's (has_gauss=1)
    state = checkpoint.rng_state()
    first = draws()
    checkpoint.set_rng_state(state)
    assert draws() == first
    checkpoint.save_training_state(tmp_path, {"rng": [state]})  # through a weights_only save/load
    draws()
    checkpoint.set_rng_state(torch.load(tmp_path / "last.pt", weights_only=True)["rng"][0])
    assert draws() == first
    seed_everything(123, rank=1)
    assert draws() != first


def test_seed_everything_differs_per_rank():
    seed_everything(5, rank=0)
    a = torch.rand(2)
    seed_everything(5, rank=0)
    assert torch.equal(torch.rand(2), a)
    seed_everything(5, rank=1)
    assert not torch.equal(torch.rand(2), a)


def test_training_state_loads_with_weights_only(tmp_path):
    model = Small()
    opt = build_optimizer(model, 1e-2, 0.1)
    sched = build_scheduler(opt, "cosine", 2, 10)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    sched.step()
    state = {"step": 3, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "ema": EMA(model).state_dict(), "rng": [checkpoint.rng_state()],
             "config": {"train": {"betas": [0.9, 0.95]}}}
    checkpoint.save_training_state(tmp_path, state)
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)  # raises on any pickled object
    assert loaded["step"] == 3 and loaded["config"] == state["config"]
    assert checkpoint.load_training_state(tmp_path)["optimizer"]["state"].keys() == opt.state_dict()["state"].keys()
    assert checkpoint.load_training_state(tmp_path / "nothing_here") is None


def test_damaged_training_state(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(VistokError, match="cannot load checkpoint .*last.pt.*move it away"):
        checkpoint.load_training_state(tmp_path)


def test_export_round_trip_and_registry_load(tmp_path):
    preset = registry.get_preset("cifar10-net-test")
    torch.manual_seed(0)
    model = FidNet(preset.config)
    out = exports.write_export(tmp_path / "export", "fid_net", to_dict(preset.config), model.state_dict(), step=7,
                               note="x")
    meta, state = exports.read_export(out)
    assert meta["family"] == "fid_net" and meta["step"] == 7 and meta["config"]["widths"] == [8, 16, 16, 32]
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    loaded, meta2 = registry.load_model(out)
    assert meta2 == meta and not loaded.training
    assert loaded.config == preset.config  # rebuilt from config.json alone, tuples and all
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    with pytest.raises(VistokError, match="not an exported vistok model"):
        exports.read_export(tmp_path)
    with pytest.raises(VistokError, match="neither an exported folder nor a shipped model"):
        registry.load_model(tmp_path / "missing")
    # an export of another preset does not load silently
    meta["config"] = to_dict(registry.get_preset("cifar10-net").config)
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(VistokError, match="does not match the model: size mismatch for") as err:
        registry.load_model(out)
    assert "\n" not in str(err.value)


def test_load_state_strict():
    model = Small()
    state = model.state_dict()
    exports.load_state_strict(Small(), state, "ok")
    missing = {k: v for k, v in state.items() if k != "fc2.weight"}
    with pytest.raises(VistokError, match=r"src.*missing \['fc2.weight'\]"):
        exports.load_state_strict(Small(), missing, "src")
    with pytest.raises(VistokError, match=r"unexpected \['extra.weight'\]"):
        exports.load_state_strict(Small(), {**state, "extra.weight": torch.zeros(1)}, "src")
    with pytest.raises(VistokError, match=r"src does not match the model: size mismatch for fc2.weight"):
        exports.load_state_strict(Small(), {**state, "fc2.weight": torch.zeros(3, 8)}, "src")


def test_param_count_on_meta_device():
    n = registry.param_count("cifar10-net-test")
    assert n == sum(p.numel() for p in FidNet(registry.get_preset("cifar10-net-test").config).parameters())
    with pytest.raises(VistokError, match="unknown preset"):
        registry.get_preset("no-such-model")


# ---------------------------------------------------------------- loop pieces


def test_optimizer_step_clips_before_stepping():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = build_scheduler(opt, "constant", 0, 10)
    grads = [torch.randn_like(p) * 10 for p in model.parameters()]
    total = torch.sqrt(sum((g**2).sum() for g in grads))
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    before = [p.detach().clone() for p in model.parameters()]
    norm = optimizer_step(model, opt, sched, grad_clip=1.0)
    assert norm.item() == pytest.approx(total.item(), rel=1e-6)  # the norm before clipping is reported
    deltas = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
    # the step used the clipped gradients: lr * grad / |grad| * clip
    for d, g in zip(deltas, grads, strict=True):
        torch.testing.assert_close(d, 0.5 * g / total, rtol=1e-5, atol=1e-7)
    assert torch.sqrt(sum((d**2).sum() for d in deltas)).item() == pytest.approx(0.5, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())
    assert sched.last_epoch == 1
    # no clipping: the raw gradient
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    before = [p.detach().clone() for p in model.parameters()]
    norm = optimizer_step(model, opt, sched, grad_clip=0.0)
    assert norm.item() == pytest.approx(total.item(), rel=1e-6)
    for b, p, g in zip(before, model.parameters(), grads, strict=True):
        torch.testing.assert_close(b - p.detach(), 0.5 * g, rtol=1e-5, atol=1e-6)


def test_split_micro_batches():
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    chunks = split_micro_batches((x, y, None), 3)
    assert len(chunks) == 3 and all(c[2] is None for c in chunks)
    assert torch.equal(torch.cat([c[0] for c in chunks]), x) and torch.equal(torch.cat([c[1] for c in chunks]), y)
    with pytest.raises(VistokError, match="grad_accum=4"):
        split_micro_batches((x, y), 4)  # 6 samples do not split into 4 equal micro-batches
    with pytest.raises(VistokError, match="differ in length"):
        split_micro_batches((x, y[:5]), 1)


def test_train_config_checks():
    assert TrainConfig(batch_size=16, grad_accum=2).micro_batch(2) == 4
    with pytest.raises(VistokError, match="must divide"):
        TrainConfig(batch_size=10, grad_accum=1).micro_batch(4)
    with pytest.raises(VistokError, match="positive"):
        TrainConfig(total_steps=0)
    with pytest.raises(VistokError, match="positive"):
        TrainConfig(ckpt_every=0)


def test_run_main_turns_errors_into_one_line(capsys):
    def fails() -> None:
        raise VistokError("bad thing; do this instead")

    with pytest.raises(SystemExit) as exit_:
        run_main(fails)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: bad thing; do this instead\n"
    run_main(lambda: None)  # no error, no exit


def test_dist_setup_single_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    env = setup("cpu")
    assert env == CPU and env.is_main and not env.distributed
    model = nn.Linear(2, 2)
    assert wrap_model(model, env) is model and unwrap(model) is model
    with pytest.raises(VistokError, match="device must be"):
        setup("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(VistokError, match="no CUDA device"):
            setup("cuda")


def test_metrics_log_truncates_to_resume_step(tmp_path):
    log = MetricsLog(tmp_path, enabled=True, start_step=0, total_steps=10)
    for s in range(1, 9):
        log.log(s, loss=torch.tensor(float(s)), lr=0.1)
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 9))
    assert read_metrics(tmp_path)[2] == {"step": 3, "loss": 3.0, "lr": 0.1}
    log = MetricsLog(tmp_path, enabled=True, start_step=5, total_steps=10)
    log.log(6, loss=60.0)
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[-1]["loss"] == 60.0
    MetricsLog(tmp_path / "other", enabled=False, start_step=0, total_steps=1).log(1, loss=1.0)
    assert not (tmp_path / "other" / "metrics.jsonl").exists()


def make_run(seed: int, wrap=None):
    torch.manual_seed(seed)
    model = Small()
    trained = wrap(model) if wrap else model
    ema = EMA(model, 0.9)  # after wrapping: under FSDP2 its entries are shards too
    opt = build_optimizer(model, 1e-2, 0.1)
    sched = build_scheduler(opt, "cosine", 2, 20)
    return model, trained, ema, opt, sched


def train_steps(model, trained, ema, opt, sched, n: int) -> None:
    for _ in range(n):
        trained(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer_step(trained, opt, sched, 1.0)
        ema.update(model)


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def check_checkpointer_round_trip(tmp_path: Path, wrap=None, sharded: bool = False) -> None:
    cfg = TrainConfig(run_dir=str(tmp_path), total_steps=20)
    model, trained, ema, opt, sched = make_run(0, wrap)
    ckpt = Checkpointer(tmp_path, CPU, trained, opt, sched, ema, cfg, sharded=sharded)
    assert ckpt.resume() == 0 and (tmp_path / "config.yaml").is_file()
    train_steps(model, trained, ema, opt, sched, 3)
    ckpt.save(3)
    after_save = torch.rand(3)  # the RNG stream right after the checkpoint
    saved = checkpoint.read_sharded_state(tmp_path) if sharded else checkpoint.load_training_state(tmp_path)
    assert (tmp_path / "last.dcp").is_dir() == sharded and (tmp_path / "last.pt").is_file() != sharded
    assert set(saved["ema"]["shadow"]) == set(ema.shadow)  # plain model keys: no DDP prefix, no integer buffers
    assert set(saved["model"]) == set(model.state_dict())
    assert all(torch.equal(saved["model"][k], full(v)) for k, v in model.state_dict().items())

    model2, trained2, ema2, opt2, sched2 = make_run(1, wrap)  # different initial weights
    resumed = Checkpointer(tmp_path, CPU, trained2, opt2, sched2, ema2, cfg, sharded=sharded)
    rng_before = torch.get_rng_state()
    step = resumed.resume()
    assert step == 3 and torch.equal(torch.get_rng_state(), rng_before)  # not here: right before the first step
    torch.rand(5)  # setup may draw in between (a DataLoader's iterator takes a seed)
    resumed.restore_rng()
    assert torch.equal(torch.rand(3), after_save)
    for k, v in model.state_dict().items():
        assert torch.equal(full(model2.state_dict()[k]), full(v)), k
    for k, v in ema.shadow.items():
        assert torch.equal(full(ema2.shadow[k]), full(v)), k
    assert ema2.num_updates == 3 and sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    # both continue identically
    torch.manual_seed(9)
    train_steps(model, trained, ema, opt, sched, 2)
    torch.manual_seed(9)
    train_steps(model2, trained2, ema2, opt2, sched2, 2)
    for k, v in model.state_dict().items():
        assert torch.equal(full(model2.state_dict()[k]), full(v)), k
    for k, v in ema.shadow.items():
        assert torch.equal(full(ema2.shadow[k]), full(v)), k


def test_checkpointer_save_resume(tmp_path):
    check_checkpointer_round_trip(tmp_path)


def test_checkpointer_save_resume_under_ddp(tmp_path):
    """A DDP-wrapped model (one gloo process) saves EMA weights under the model's own keys and resumes."""
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        check_checkpointer_round_trip(tmp_path / "run", wrap=lambda m: nn.parallel.DistributedDataParallel(m))
    finally:
        tdist.destroy_process_group()


def test_checkpointer_save_resume_sharded_under_fsdp2(tmp_path):
    """FSDP2 (one gloo process): the state goes through torch.distributed.checkpoint shard by shard (RUN/last.dcp),
    resumes exactly, and a checkpoint of another width is one line naming the keys, before anything is written."""
    from torch.distributed.fsdp import fully_shard

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        check_checkpointer_round_trip(tmp_path / "run", wrap=fully_shard, sharded=True)
        torch.manual_seed(0)
        wide = fully_shard(nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 2)))
        opt = build_optimizer(wide, 1e-2, 0.1)
        ckpt = Checkpointer(tmp_path / "run", CPU, wide, opt, build_scheduler(opt, "cosine", 2, 20), EMA(wide),
                            TrainConfig(), sharded=True)
        before = (tmp_path / "run" / "config.yaml").read_bytes()
        with pytest.raises(VistokError,
                           match=r"last.dcp does not match the model: missing 0.weight.*unexpected fc1") as err:
            ckpt.resume()
        assert "\n" not in str(err.value) and (tmp_path / "run" / "config.yaml").read_bytes() == before
        # a DDP / one-process run on that folder is told how to resume it
        model, trained, ema, opt, sched = make_run(0)
        with pytest.raises(VistokError,
                           match="holds an FSDP .sharded. checkpoint .last.dcp.; resume it with train.parallel=fsdp"):
            Checkpointer(tmp_path / "run", CPU, trained, opt, sched, ema, TrainConfig()).resume()
        # one sharded checkpoint is kept (no older one to fall back to): its meta.pt is verified against its hash
        meta_file = tmp_path / "run" / "last.dcp" / "meta.pt"
        meta = torch.load(meta_file, weights_only=True)
        torch.save({**meta, "step": meta["step"] + 1}, meta_file)  # the stored hash kept
        model, trained, ema, opt, sched = make_run(0, fully_shard)
        with pytest.raises(VistokError, match=r"meta.pt is damaged \(its content does not match the SHA-256.*"
                                              r"move .*last.dcp away to start a fresh run") as err:
            Checkpointer(tmp_path / "run", CPU, trained, opt, sched, ema, TrainConfig(), sharded=True).resume()
        assert "\n" not in str(err.value)
    finally:
        tdist.destroy_process_group()


def test_checkpointer_notes_changed_config(tmp_path, capsys):
    model, trained, ema, opt, sched = make_run(0)
    Checkpointer(tmp_path, CPU, trained, opt, sched, ema, TrainConfig(run_dir=str(tmp_path), total_steps=20)).save(1)
    changed = TrainConfig(run_dir=str(tmp_path), total_steps=20, lr=5e-4)
    assert Checkpointer(tmp_path, CPU, trained, opt, sched, ema, changed).resume() == 1
    assert "changed config keys: lr" in capsys.readouterr().err


def test_atomic_write_turns_a_full_disk_into_one_line_and_cleans_stale_temps(tmp_path):
    import errno

    target = tmp_path / "out.bin"
    atomic.atomic_write_bytes(target, b"old")
    (tmp_path / ".out.bin.abc123.tmp").write_bytes(b"left by a killed writer of an older version")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: its writer was killed
    (tmp_path / f".out.bin.h-{atomic._host()}.p-{dead.pid}.x1_y.tmp").write_bytes(b"left by a killed writer")

    def full(f):
        f.write(b"new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(VistokError, match="No space left on device") as err:
        atomic.atomic_write(target, full)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"] and target.read_bytes() == b"old"


def test_atomic_writers_of_one_target_never_delete_each_others_temporary_files(tmp_path):
    """Two processes building the same cache at once: the second one's clean-up must not remove the first one's
    temporary file (it did: the first then failed with 'No such file or directory'), and the later rename wins."""
    target = tmp_path / "cache.npz"

    def slow_writer(f):
        f.write(b"first ")
        atomic.atomic_write_bytes(target, b"second")  # a second writer (same process: its pid is alive) meanwhile
        f.write(b"writer")

    atomic.atomic_write(target, slow_writer)
    assert target.read_bytes() == b"first writer" and [p.name for p in tmp_path.iterdir()] == ["cache.npz"]
    # in another process, alive while we write: its temporary file stays
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".cache.npz.h-{atomic._host()}.p-{live.pid}.abc.tmp"
        theirs.write_bytes(b"in progress")
        atomic.atomic_write_bytes(target, b"mine")
        with atomic.atomic_folder(tmp_path / "export") as folder:
            (folder / "a.txt").write_text("1")
        assert theirs.read_bytes() == b"in progress"
    finally:
        live.kill()
        live.wait()
    atomic.atomic_write_bytes(target, b"again")  # now its writer is gone: cleaned up
    assert not theirs.exists()
    # another host's temporary file: kept while fresh, removed after a day without a change
    foreign = tmp_path / ".cache.npz.h-other-node.p-1.abc.tmp"
    foreign.write_bytes(b"theirs")
    atomic.atomic_write_bytes(target, b"x")
    assert foreign.exists()
    os.utime(foreign, (time.time() - 2 * atomic.FOREIGN_STALE_S,) * 2)
    atomic.atomic_write_bytes(target, b"x")
    assert not foreign.exists()
    # a temporary file of another target whose name extends this one is never touched
    other = tmp_path / ".cache.npz.bak.abc.tmp"
    other.write_bytes(b"not ours")
    atomic.atomic_write_bytes(target, b"x")
    assert other.exists()


def test_atomic_folder_keeps_a_killed_writers_moved_aside_folder_until_its_own_rename(tmp_path):
    """A writer killed between its two renames left the only complete copy as a temporary folder; a new write that
    then fails must not have removed it."""
    out = tmp_path / "export"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = tmp_path / f".export.h-{atomic._host()}.p-{dead.pid}.abc.tmp"
    aside.mkdir()
    (aside / "a.txt").write_text("complete")
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(out):
            raise RuntimeError("killed half way")
    assert (aside / "a.txt").read_text() == "complete"
    with atomic.atomic_folder(out) as folder:
        (folder / "a.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_atomic_folder_replaces_the_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "export"
    with atomic.atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "b.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic.atomic_folder(out) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("killed half way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (out / "a.txt").read_text() == "1" and (out / "b.txt").read_text() == "1"
    with atomic.atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"] and (out / "a.txt").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# ---------------------------------------------------------------- FLOPs, peak and MFU


def test_model_flops_counts_forward_and_backward():
    layer = nn.Linear(4, 8)
    x = torch.randn(2, 4)
    assert flops.model_flops(lambda: layer(x)) == 2 * 2 * 4 * 8  # one (2x4)@(4x8) matmul: 2 FLOPs per multiply-add
    # backward: the weight gradient only (x needs no gradient), the same size again
    assert flops.model_flops(lambda: layer(x).sum().backward()) == 2 * (2 * 2 * 4 * 8)
    assert flops.model_flops(lambda: layer(x.requires_grad_()).sum().backward()) == 3 * (2 * 2 * 4 * 8)


def test_peak_flops_lookup(monkeypatch):
    assert flops.peak_flops("cpu") is None and flops.peak_flops("cpu", override=100.0) == 100e12
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, dtype, expected in (("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),
                                  ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
                                  ("NVIDIA H200", torch.bfloat16, 989.4e12),
                                  ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
                                  ("NVIDIA GeForce RTX 4090", torch.bfloat16, None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert flops.peak_flops("cuda", dtype) == expected, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-40GB")
    tf32 = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module: monkeypatch cannot undo it
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert flops.peak_flops("cuda", torch.float32) == 19.5e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert (flops.mfu(10**12, 0.5, 4e12) == 0.5 and flops.mfu(None, 0.5, 4e12) is None
            and flops.mfu(10, 1.0, None) is None)


def test_trainer_logs_throughput_and_mfu(tmp_path, capsys):
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Cfg:
        train: TrainConfig = field(default_factory=TrainConfig)

    tc = TrainConfig(run_dir=str(tmp_path), total_steps=4, batch_size=8, grad_accum=2, log_every=1, ckpt_every=4,
                     num_workers=0, device="cpu", peak_tflops=1e-6)  # a peak of 1 MFLOP/s
    torch.manual_seed(0)
    lin = nn.Linear(4, 8)
    run = Trainer(lin, Cfg(tc), CPU, tokens_per_sample=3)
    with run.logging():
        while run.step < tc.total_steps:
            for x in run.micro_batches(torch.randn(8, 4)):
                assert x.shape == (4, 4)
                run.backward(run.ddp_model(x).pow(2).mean())
            run.finish_step()
    # two micro-batches of 4: forward 2*4*4*8 each, backward the weight gradient (same) and nothing for the input
    assert run.flops_per_step == 2 * 2 * (2 * 4 * 4 * 8)
    assert "model FLOPs per step: 1.024e-06 GFLOP per process" in capsys.readouterr().out
    rows = read_metrics(tmp_path)
    assert "img_per_s" not in rows[0]  # the first step holds start-up and the FLOP count
    for r in rows[1:]:
        assert r["tok_per_s"] == pytest.approx(3 * r["img_per_s"])
        assert r["mfu"] == pytest.approx(run.flops_per_step * r["img_per_s"] / 8 / 1e6)


def test_dist_setup_passes_the_timeout_and_prefixes_restart_attempts(monkeypatch):
    import datetime

    from vistok.engine import dist as vdist

    with pytest.raises(VistokError, match="dist_timeout_s must be positive"):
        setup("cpu", timeout_s=0)
    calls = []
    monkeypatch.setattr(vdist.dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(vdist.dist, "is_initialized", lambda: False)
    for var, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    env = setup("cpu", timeout_s=42)
    assert env.rank == 1 and env.world_size == 2
    assert calls[-1]["backend"] == "gloo" and calls[-1]["timeout"] == datetime.timedelta(seconds=42)
    assert "store" not in calls[-1]  # a plain env:// rendezvous outside torchrun restarts
    # under torchrun: the agent's store, with keys of their own for each restart attempt
    server = tdist.TCPStore("127.0.0.1", 0, None, is_master=True, timeout=datetime.timedelta(seconds=10),
                            wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(server.port))
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    setup("cpu", timeout_s=42)
    assert calls[-1]["rank"] == 1 and calls[-1]["world_size"] == 2
    calls[-1]["store"].set("rank_1", "here")
    assert server.get("vistok/attempt_3/rank_1") == b"here" and not server.check(["rank_1"])


def test_adamw_is_fused_on_plain_tensors_and_steps_like_the_reference_loop():
    """build_optimizer picks the fused AdamW kernel for plain CPU parameters; a few steps of it match PyTorch's
    per-tensor reference implementation (decayed and undecayed groups alike)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    twin = copy.deepcopy(model)
    fused = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.8, 0.9))
    assert fused.defaults["fused"] is True
    loop = build_optimizer(twin, lr=1e-2, weight_decay=0.1, betas=(0.8, 0.9), fused=False)
    assert not loop.defaults["fused"] and not loop.defaults["foreach"]
    for _ in range(3):
        x = torch.randn(4, 6)
        for m, opt in ((model, fused), (twin, loop)):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
