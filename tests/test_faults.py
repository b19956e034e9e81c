"""Faults a long run meets, each provoked on purpose: a SIGKILL in the middle of a checkpoint save, a torn metrics log,
an infinite gradient, a full disk, a changed config or model on resume, and one rank of a torchrun job killed and
restarted by `torchrun --max-restarts=1`. The run must keep its last good state and, resumed, give the losses of a
run that was never interrupted.
"""

from __future__ import annotations

import errno
import gc
import json
import math
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vistok.engine import checkpoint
from vistok.engine.dist import DistEnv
from vistok.engine.logging import read_metrics
from vistok.engine.loop import TrainConfig, Trainer
from vistok.errors import VistokError
from vistok.io import exports

from conftest import check_ok, script_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "train" / "train_fid_net.py")
CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


# ------------------------------------------------------------------------------------------ in-process: a tiny run
class Net(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, width), nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the loss
        return (self.fc2(torch.tanh(self.fc1(x))) - x[:, :1]).pow(2).mean()


@dataclass(frozen=True)
class Cfg:
    train: TrainConfig = field(default_factory=TrainConfig)
    width: int = 8


def config(run_dir: Path, width: int = 8, **train) -> Cfg:
    values = dict(run_dir=str(run_dir), total_steps=8, batch_size=8, log_every=1, ckpt_every=2, num_workers=0,
                  device="cpu", warmup_steps=0, lr=1e-2, ema_decay=0.9)
    return Cfg(TrainConfig(**{**values, **train}), width)


def train(cfg: Cfg, until: int, inject=None) -> Trainer:
    """Run (or resume) the tiny run up to step `until`; `inject(run)` may tamper with each step's gradients."""
    torch.manual_seed(0)
    run = Trainer(Net(cfg.width), cfg, CPU)
    with run.logging():
        while run.step < until:
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(run.step))  # the data of this step
            for xm in run.micro_batches(x):
                run.backward(run.ddp_model(xm))
            if inject is not None:
                inject(run)
            run.finish_step()
    return run


def params(run: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.named_parameters()}


def stderr_lines(capsys, prefix: str) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(prefix)]


def test_infinite_gradient_skips_the_step_everywhere(tmp_path, capsys):
    before = {}

    def inf_at_step_3(run: Trainer) -> None:
        if run.step + 1 == 3:
            before.update(params=params(run), ema={k: v.clone() for k, v in run.ema.shadow.items()},
                          moments=run.optimizer.state[run.model.fc1.weight]["exp_avg"].clone())
            run.model.fc1.weight.grad[0, 0] = float("inf")  # the loss stays finite

    run = train(config(tmp_path / "a", ckpt_every=1), 3, inf_at_step_3)
    # step 3 changed nothing: parameters, EMA and optimizer moments are those after step 2
    assert all(torch.equal(v, before["params"][k]) for k, v in params(run).items())
    assert all(torch.equal(v, before["ema"][k]) for k, v in run.ema.shadow.items())
    assert torch.equal(run.optimizer.state[run.model.fc1.weight]["exp_avg"], before["moments"])
    assert run.ema.num_updates == 2 and run.skipped == 1 and run.scheduler.last_epoch == 3
    warnings = stderr_lines(capsys, "warning:")
    assert len(warnings) == 1 and "gradient norm inf at step 3" in warnings[0] and "skipped" in warnings[0]
    assert [r["skipped"] for r in read_metrics(tmp_path / "a")] == [0, 0, 1]
    assert read_metrics(tmp_path / "a")[2]["grad_norm"] == float("inf")
    # resumed, the run goes on from there with its skip count
    run = train(config(tmp_path / "a", ckpt_every=1), 4)
    assert run.skips == 0 and run.skipped == 1 and not torch.equal(params(run)["fc1.weight"],
                                                                   before["params"]["fc1.weight"])


def _two_ranks(rank: int, init_file: str, run_dir: str) -> None:
    """One of two gloo processes: rank 1 alone sees a NaN loss at step 2."""
    import torch.distributed as tdist

    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        env = DistEnv(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
        torch.manual_seed(0)
        run = Trainer(Net(8), config(Path(run_dir), batch_size=16), env)
        with run.logging():
            while run.step < 3:
                x = torch.randn(16, 4, generator=torch.Generator().manual_seed(run.step))[rank * 8:(rank + 1) * 8]
                for xm in run.micro_batches(x):
                    run.backward(run.ddp_model(xm))
                if run.step == 1 and rank == 1:
                    run._sums["loss"] = run._sums["loss"] * float("nan")
                run.finish_step()
        torch.save({"params": params(run), "skipped": run.skipped}, Path(run_dir) / f"rank{rank}.pt")
        del run  # DDP's reducer first, then both ranks leave together: gloo aborts a process torn down mid-exchange
        gc.collect()
        tdist.barrier()
    finally:
        tdist.destroy_process_group()


def test_a_non_finite_loss_on_one_rank_is_skipped_by_all(tmp_path):
    """The verdict is all-reduced: with a per-rank check rank 0 would step and rank 1 not, and the replicas diverge."""
    torch.multiprocessing.spawn(_two_ranks, (str(tmp_path / "pg"), str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["skipped"] == r1["skipped"] == 1
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])


def test_non_finite_steps_stop_the_run_when_asked_or_after_the_limit(tmp_path, capsys):
    def nan_loss_from_step_2(run: Trainer) -> None:
        if run.step + 1 >= 2:
            run._sums["loss"] = run._sums["loss"] * float("nan")

    with pytest.raises(VistokError,
                       match=r"loss is nan .* at step 2 \(on some rank\); training stopped.*train.lr") as err:
        train(config(tmp_path / "stop", nonfinite="stop"), 8, nan_loss_from_step_2)
    assert "\n" not in str(err.value)
    with pytest.raises(VistokError, match=r"at step 5 .*after 3 skipped steps in a row; training stopped"):
        train(config(tmp_path / "skip", max_skips=3), 8, nan_loss_from_step_2)
    assert len(stderr_lines(capsys, "warning:")) == 3
    assert checkpoint.load_training_state(tmp_path / "skip")["step"] == 4  # skipped steps still checkpoint (finite)


def test_non_finite_state_is_never_written(tmp_path):
    run = train(config(tmp_path), 2)
    good = (tmp_path / "last.pt").read_bytes()
    with torch.no_grad():
        run.model.fc2.bias.fill_(float("nan"))
    with pytest.raises(VistokError, match=r"refusing to write .*ckpt-000003.pt at step 3: non-finite values in "
                                          r"fc2.bias") as err:
        run.ckpt.save(3)
    assert "\n" not in str(err.value)
    assert (tmp_path / "last.pt").read_bytes() == good
    with torch.no_grad():
        run.model.fc2.bias.zero_()
        run.ema.shadow["fc1.weight"][0, 0] = float("inf")
    with pytest.raises(VistokError, match="non-finite values in ema.fc1.weight"):
        run.ckpt.save(3)
    with pytest.raises(VistokError, match=r"refusing to export .*: non-finite weights in fc1.weight"):
        exports.write_export(tmp_path / "export", "net", {}, run.ema_state())
    assert not (tmp_path / "export").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000002.pt", "config.yaml", "last.pt", "metrics.jsonl"]


def test_torn_metrics_line_is_skipped_on_resume(tmp_path, capsys):
    reference = train(config(tmp_path / "ref"), 6)
    train(config(tmp_path / "torn"), 4)
    with open(tmp_path / "torn" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.12')  # killed in the middle of a line
    capsys.readouterr()
    resumed = train(config(tmp_path / "torn"), 6)
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if ln.startswith("warning:")]
    # the FLOP count of step 1 comes back with the checkpoint: counting again would run step 5 under a dispatch mode
    assert "model FLOPs per step" not in captured.out and resumed.flops_per_step == reference.flops_per_step > 0
    assert len(warnings) == 1 and "metrics.jsonl: skipped line 5" in warnings[0]
    rows, ref_rows = read_metrics(tmp_path / "torn"), read_metrics(tmp_path / "ref")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    assert all(torch.equal(v, params(reference)[k]) for k, v in params(resumed).items())


def test_full_disk_keeps_the_last_checkpoint_and_export(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    run = train(cfg, 2)
    exports.write_export(tmp_path / "export", "net", {"width": 8}, run.ema_state(), step=2)
    good, good_export = (tmp_path / "last.pt").read_bytes(), (tmp_path / "export" / "model.safetensors").read_bytes()

    def full(obj, f, *args, **kwargs):
        f.write(b"the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(VistokError, match=r"cannot write .*ckpt-000004.pt: No space left on device") as err:
        train(cfg, 4)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(exports, "save",
                        lambda tensors: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(VistokError, match="No space left on device"):
        exports.write_export(tmp_path / "export", "net", {"width": 8}, run.ema_state(), step=4)
    monkeypatch.undo()
    assert (tmp_path / "last.pt").read_bytes() == good and not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / "export" / "model.safetensors").read_bytes() == good_export
    assert json.loads((tmp_path / "export" / "config.json").read_text())["step"] == 2  # still a matching pair
    assert train(cfg, 4).step == 4  # with space again, the run resumes from step 2


def test_changed_optimisation_config_applies_on_resume(tmp_path, capsys):
    train(config(tmp_path, total_steps=10), 4)
    lr, betas, wd, eps = 2e-3, (0.8, 0.9), 0.2, 1e-8
    cfg = config(tmp_path, total_steps=20, lr=lr, betas=betas, weight_decay=wd)
    torch.manual_seed(0)
    run = Trainer(Net(8), cfg, CPU)
    assert run.step == 4
    assert ("changed config keys: train.betas, train.lr, train.total_steps, train.weight_decay"
            in capsys.readouterr().err)
    expected_lr = lr * 0.5 * (1 + math.cos(math.pi * 4 / 20))  # the new cosine, at step 4
    decay, no_decay = run.optimizer.param_groups
    assert decay["lr"] == pytest.approx(expected_lr, rel=1e-12) == no_decay["lr"] and decay["initial_lr"] == lr
    assert decay["betas"] == betas and decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    # the next step is AdamW with exactly those values, from the saved moments
    w = run.model.fc1.weight
    state = {k: v.clone() for k, v in run.optimizer.state[w].items()}
    start = w.detach().clone()
    with run.logging():
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(4))
        run.backward(run.ddp_model(x))
        g = w.grad.clone() * min(1.0, 1.0 / (torch.nn.utils.get_total_norm([p.grad for p in run.model.parameters()])
                                             + 1e-6))
        run.finish_step()
    t = state["step"] + 1
    m = betas[0] * state["exp_avg"] + (1 - betas[0]) * g
    v = betas[1] * state["exp_avg_sq"] + (1 - betas[1]) * g * g
    expected = (start * (1 - expected_lr * wd)
                - expected_lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps))
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-7)
    assert read_metrics(tmp_path)[-1]["lr"] == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 5 / 20)))


def test_mismatched_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    train(config(tmp_path), 2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(VistokError) as err:
        train(config(tmp_path, width=16, lr=5e-3), 4)
    message = str(err.value)
    assert "\n" not in message and "ckpt-000002.pt does not match the model" in message
    assert "shape of fc1.weight [8, 4] (model [16, 4])" in message and "changed since: width" in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # config.yaml, metrics and last.pt untouched


def test_iterating_a_loader_leaves_the_global_rng_alone():
    """A DataLoader's iterator draws its workers' base seed; from torch's global generator it would shift every later
    draw of the step (the cause of inexact resumes: the checkpoint's RNG restored, then the loader built)."""
    from vistok.data import build_loader

    images = [(torch.full((3, 4, 4), float(i)), i % 2) for i in range(16)]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    batches = iter(build_loader(images, 8, seed=3, hflip=True, crop_pad=1))
    first = next(batches)
    assert torch.equal(torch.get_rng_state(), state)
    again = next(iter(build_loader(images, 8, seed=3, hflip=True, crop_pad=1)))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


# ------------------------------------------------------------------------------------------ checkpoints you can trust
def damage(path: Path, how: str) -> None:
    """Damage a checkpoint in place (so `last.pt`, a hard link to the newest, sees the same bytes)."""
    if how in ("hash", "nan"):  # a file that still loads: a changed value (the stored hash kept), or NaN (re-hashed)
        state = torch.load(path, weights_only=True)
        w = state["model"]["fc1.weight"]
        if how == "hash":
            w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))  # one ulp
        else:
            w[0, 0] = float("nan")
            state["sha256"] = checkpoint.content_hash({k: v for k, v in state.items() if k != "sha256"})
        with open(path, "r+b") as f:
            f.truncate(0)
            torch.save(state, f)
        return
    data = bytearray(path.read_bytes())
    if how == "garbage":  # 4 KB of random bytes written into the middle of the file
        start = max(0, len(data) // 2 - 2048)
        data[start:start + 4096] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    else:  # truncated: the second half lost
        data = data[: len(data) // 2]
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(bytes(data))


@pytest.mark.parametrize("how", ["garbage", "truncated", "hash", "nan"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, how):
    reference = train(config(tmp_path / "ref"), 8)
    run_dir = tmp_path / "run"
    train(config(run_dir), 6)  # checkpoints at 2, 4, 6: the newest two kept
    assert [p.name for p in checkpoint.checkpoint_files(run_dir)] == ["ckpt-000006.pt", "ckpt-000004.pt"]
    assert (run_dir / "last.pt").samefile(run_dir / "ckpt-000006.pt")
    damage(run_dir / "ckpt-000006.pt", how)
    capsys.readouterr()
    resumed = train(config(run_dir), 8)
    warnings = stderr_lines(capsys, "warning:")
    assert len(warnings) == 1, warnings
    why = {"garbage": ("cannot load checkpoint", "does not match the SHA-256"),
           "truncated": ("cannot load checkpoint",), "hash": ("does not match the SHA-256",),
           "nan": ("non-finite values in model.fc1.weight",)}[how]
    assert "ckpt-000006.pt" in warnings[0] and any(w in warnings[0] for w in why), warnings[0]
    assert "kept as ckpt-000006.pt.damaged" in warnings[0]
    assert warnings[0].endswith("resuming from the previous one, ckpt-000004.pt (step 4)")
    # the run completed as if never damaged: the same losses and weights as the uninterrupted one
    assert [r["loss"] for r in read_metrics(run_dir)] == [r["loss"] for r in read_metrics(tmp_path / "ref")]
    assert all(torch.equal(v, params(reference)[k]) for k, v in params(resumed).items())
    assert (run_dir / "ckpt-000006.pt.damaged").is_file()  # set aside for a post-mortem, never loaded again
    assert [p.name for p in checkpoint.checkpoint_files(run_dir)] == ["ckpt-000008.pt", "ckpt-000006.pt"]
    capsys.readouterr()
    assert train(config(run_dir), 8).step == 8 and not stderr_lines(capsys, "warning:")


def test_no_valid_checkpoint_is_one_line_and_touches_nothing(tmp_path):
    train(config(tmp_path), 4)
    damage(tmp_path / "ckpt-000004.pt", "garbage")
    damage(tmp_path / "ckpt-000002.pt", "truncated")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(VistokError, match=r"no checkpoint in .* is usable \(.*ckpt-000004.pt.*ckpt-000002.pt.*\); "
                                          r"move them away to start a fresh run") as err:
        train(config(tmp_path), 8)
    assert "\n" not in str(err.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_keep_checkpoints_keeps_the_newest_n(tmp_path):
    run = train(config(tmp_path / "three", ckpt_every=1, keep_checkpoints=3), 8)
    assert [p.name for p in checkpoint.checkpoint_files(tmp_path / "three")] == [
        "ckpt-000008.pt", "ckpt-000007.pt", "ckpt-000006.pt"]
    assert (tmp_path / "three" / "last.pt").samefile(tmp_path / "three" / "ckpt-000008.pt")
    for p in checkpoint.checkpoint_files(tmp_path / "three"):  # each verifies: its stored hash is its content's
        state = torch.load(p, weights_only=True)
        assert state.pop("sha256") == checkpoint.content_hash(state) and state["step"] == int(p.stem[5:])
    assert checkpoint.load_training_state(tmp_path / "three")["step"] == 8 == run.step
    train(config(tmp_path / "one", keep_checkpoints=1), 8)
    assert sorted(p.name for p in (tmp_path / "one").glob("*.pt")) == ["ckpt-000008.pt", "last.pt"]
    with pytest.raises(VistokError, match="train.keep_checkpoints must be positive"):
        config(tmp_path, keep_checkpoints=0)


def test_content_hash_sees_any_change():
    state = {"step": 3, "model": {"w": torch.arange(6.0).reshape(2, 3)}, "rng": [{"pos": 1}], "lr": 0.1}
    h = checkpoint.content_hash(state)
    assert h == checkpoint.content_hash({k: state[k] for k in reversed(list(state))})  # key order does not matter
    for changed in ({**state, "step": 4}, {**state, "lr": 0.10000000000000002},
                    {**state, "model": {"w": torch.arange(6.0).reshape(3, 2)}},
                    {**state, "model": {"w": torch.arange(6.0).reshape(2, 3).double()}},
                    {**state, "rng": [{"pos": 2}]}):
        assert checkpoint.content_hash(changed) != h


def test_a_non_finite_first_step_after_resume_blames_the_checkpoint_not_the_lr(tmp_path):
    train(config(tmp_path), 4)

    def nan_loss(run: Trainer) -> None:
        run._sums["loss"] = run._sums["loss"] * float("nan")

    with pytest.raises(VistokError, match=r"at step 5 .*right after resuming from .*ckpt-000004.pt; training stopped. "
                                          r"That checkpoint is likely damaged: move it away") as err:
        train(config(tmp_path, nonfinite="stop"), 8, nan_loss)
    assert "train.lr" not in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ subprocesses: kills
DRIVER = '''
import os, runpy, signal, sys
import torch
mode, step = sys.argv[1], int(sys.argv[2])
sys.argv = sys.argv[3:]
if mode == "kill-in-save":  # SIGKILL half way through writing the checkpoint of `step`
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == step:
            f.write(b"the first bytes of a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif mode == "kill-rank-1":  # rank 1 dies after finishing `step` on torchrun's first attempt; restarted, it resumes
    # from what rank 0 read and broadcast
    from vistok.engine import loop
    real_finish = loop.Trainer.finish_step
    def finish_step(self, **kwargs):
        real_finish(self, **kwargs)
        if self.step == step and os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
            os.kill(os.getpid(), signal.SIGKILL)
    loop.Trainer.finish_step = finish_step
    # as if on a node without the file
    if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "1":
        from vistok.engine import checkpoint
        def no_file(*args, **kwargs):
            raise AssertionError("rank 1 read a checkpoint itself")
        checkpoint.newest_training_state = checkpoint.load_training_state = no_file
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def command(run_dir: Path, folder: Path, nproc: int = 1, driver: list[str] = ()) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "--max-restarts=1",
                     "--monitor-interval=0.1"]
    overrides = [f"train.run_dir={run_dir}", "model.widths=[8,16,16,32]", "model.groups=4", "train.num_workers=0",
                 "train.warmup_steps=0", "train.device=cpu", f"data.name={folder}", f"eval_data={folder}",
                 "train.batch_size=16", "train.total_steps=6", "train.ckpt_every=2", "train.log_every=1"]
    return launcher + [*driver, SCRIPT, *overrides]


def launch(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, **kwargs), cwd=REPO, env=script_env(), capture_output=True, text=True,
                          timeout=300)


def start(*args, **kwargs) -> subprocess.Popen:
    """The uninterrupted reference run, started alongside (two cores: overlapping the start-ups saves time)."""
    return subprocess.Popen(command(*args, **kwargs), cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]


def assert_same_run(a: Path, b: Path) -> None:
    rows, ref = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, 7))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    assert [r["lr"] for r in rows] == [r["lr"] for r in ref]
    sa, sb = checkpoint.load_training_state(a), checkpoint.load_training_state(b)
    for k in sb["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert exports.read_export(a / "export")[1].keys() == exports.read_export(b / "export")[1].keys()


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


@pytest.mark.slow
def test_sigkill_during_checkpoint_save_keeps_the_previous_one(tmp_path, shared_image_folder, driver):
    reference = start(tmp_path / "ref", shared_image_folder)
    killed = launch(tmp_path / "run", shared_image_folder, driver=[str(driver), "kill-in-save", "4"])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint.load_training_state(tmp_path / "run")["step"] == 2  # the previous checkpoint survived
    assert len(list((tmp_path / "run").glob(".ckpt-000004.pt.*.tmp"))) == 1  # the killed writer's half file
    check_ok(launch(tmp_path / "run", shared_image_folder))  # the same command again resumes
    assert not list((tmp_path / "run").glob(".*.tmp"))
    finish(reference)
    assert_same_run(tmp_path / "run", tmp_path / "ref")


@pytest.mark.slow
def test_torchrun_restarts_a_killed_rank_to_the_same_losses(tmp_path, shared_image_folder, driver):
    reference = start(tmp_path / "ref", shared_image_folder, nproc=2)
    restarted = launch(tmp_path / "run", shared_image_folder, nproc=2, driver=[str(driver), "kill-rank-1", "3"])
    check_ok(restarted)
    assert "local_rank: 1" in restarted.stderr and "exitcode: -9" in restarted.stderr  # killed, then restarted
    finish(reference)
    assert_same_run(tmp_path / "run", tmp_path / "ref")


# ------------------------------------------------------------------ kill -9 of the real scripts, at named points
# The kill points are deterministic (VISTOK_KILL_AT, read by the engine: vistok/engine/faults.py), so each test kills
# at the same place on every machine. One uninterrupted reference run per script (module-scoped) serves every test.
# Both scripts draw from torch's global generator inside the step (xAR: dropout, label drop, t and noise; FlexTok: the
# nested-dropout k, t, noise and null conditioning), so a resume that puts any RNG elsewhere changes the export.
KILL_SCRIPTS = {
    "xar": ["train/train_xar.py", "--config", "train/configs/xar_cifar10_tiny.yaml", "model.width=32",
            "model.depth=1", "model.heads=2", "model.num_classes=2", "model.dropout=0.1", "model.attn_dropout=0.1",
            "model.label_drop=0.5", "preview_per_class=1", "sample.steps=2"],
    "flextok": ["train/train_flextok.py", "--config", "train/configs/flextok_cifar10_tiny.yaml", "model.registers=8",
                "model.enc_width=32", "model.dec_width=32", "model.enc_depth=1", "model.dec_depth=1",
                "model.head_dim=16", "preview_images=1", "sample.steps=2"],
}
KILL_TRAIN = ["train.batch_size=8", "train.total_steps=6", "train.ckpt_every=2", "train.warmup_steps=0",
              "train.num_workers=0", "train.device=cpu", "train.log_every=1"]  # 32 images: an epoch ends at step 4


def run_script(script: str, run_dir: Path, folder: Path, kill_at: str = "",
               nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable]
    if nproc > 1:  # no restarts: a killed rank ends the job, and the same command is run again
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "--max-restarts=0",
                     "--monitor-interval=0.1"]
    env = {k: v for k, v in script_env().items() if k != "VISTOK_KILL_AT"}
    if kill_at:
        env["VISTOK_KILL_AT"] = kill_at
    cmd = [*launcher, *KILL_SCRIPTS[script], f"train.run_dir={run_dir}", f"data.name={folder}", *KILL_TRAIN]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def killed(proc: subprocess.CompletedProcess, nproc: int = 1) -> None:
    """The process died of SIGKILL (one process), or the job failed because a rank did (torchrun)."""
    expected = "exitcode: -9" if nproc > 1 else None
    if expected:
        assert proc.returncode != 0 and expected in proc.stderr, proc.stderr[-3000:]
    else:
        assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"


def assert_same_export(run: Path, reference: Path) -> None:
    """Bit for bit: every file of the export (weights, config, preview) and every logged loss."""
    names = sorted(p.name for p in (reference / "export").iterdir())
    assert "model.safetensors" in names and sorted(p.name for p in (run / "export").iterdir()) == names
    for name in names:
        assert (run / "export" / name).read_bytes() == (reference / "export" / name).read_bytes(), name
    rows, ref = read_metrics(run), read_metrics(reference)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, 7))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    assert not list(run.glob(".*.tmp"))  # the killed writers' temporary files are gone


@pytest.fixture(scope="module")
def references(tmp_path_factory, shared_image_folder) -> dict[str, Path]:
    """One uninterrupted run per script, started together (two cores) and shared by every kill test."""
    root = tmp_path_factory.mktemp("kill_refs")
    procs = {}
    for script in KILL_SCRIPTS:
        cmd = [sys.executable, *KILL_SCRIPTS[script], f"train.run_dir={root / script}",
               f"data.name={shared_image_folder}", *KILL_TRAIN]
        env = {k: v for k, v in script_env().items() if k != "VISTOK_KILL_AT"}
        procs[script] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         text=True)
    for proc in procs.values():
        finish(proc)
    return {script: root / script for script in KILL_SCRIPTS}


# One run folder per script is killed five times in a row and then finished; each kill's aftermath is recorded when it
# happens and the tests below read it (five runs and a finish where the three tests once took eight runs a script).
KILL_SEQUENCE = ("step:1", "step:3", "ckpt:4:4096", "ckpt:6:100", "export")


@pytest.fixture(scope="module")
def kill_sequence(tmp_path_factory, shared_image_folder):
    """script -> {kill point: what the run folder held right after that kill, "done": the finishing run}, run once."""
    done: dict[str, dict] = {}

    def get(script: str) -> dict:
        if script not in done:
            run_dir, seen = tmp_path_factory.mktemp(f"killed_{script}"), {}
            for point in KILL_SEQUENCE:
                proc = run_script(script, run_dir, shared_image_folder, point)
                files = [p.name for p in checkpoint.checkpoint_files(run_dir)]
                seen[point] = dict(proc=proc, files=files, export=(run_dir / "export").exists(),
                                   step=checkpoint.load_training_state(run_dir)["step"] if files else None,
                                   ckpt4_tmp=len(list(run_dir.glob(".ckpt-000004.pt.*.tmp"))),
                                   export_tmp=len(list(run_dir.glob(".export.*.tmp"))))
            seen["done"] = dict(proc=run_script(script, run_dir, shared_image_folder), run_dir=run_dir,
                                files=[p.name for p in checkpoint.checkpoint_files(run_dir)])
            done[script] = seen
        return done[script]

    return get


def finished_like_the_reference(seen: dict, reference: Path) -> None:
    check_ok(seen["done"]["proc"])
    assert_same_export(seen["done"]["run_dir"], reference)


@pytest.mark.slow
@pytest.mark.parametrize("script", list(KILL_SCRIPTS))
def test_sigkill_between_checkpoints_resumes_bit_for_bit(references, kill_sequence, script):
    seen = kill_sequence(script)["step:3"]  # checkpoint at 2, killed after step 3
    killed(seen["proc"])
    assert seen["step"] == 2 and not seen["export"]
    finished_like_the_reference(kill_sequence(script), references[script])


@pytest.mark.slow
@pytest.mark.parametrize("script", list(KILL_SCRIPTS))
def test_sigkill_inside_a_checkpoint_write_resumes_bit_for_bit(references, kill_sequence, script):
    seen = kill_sequence(script)["ckpt:4:4096"]  # resumed from 2: 4 KB of step 4's file on disk
    killed(seen["proc"])
    assert seen["files"] == ["ckpt-000002.pt"]
    assert seen["ckpt4_tmp"] == 1  # the torn file never took a checkpoint's name
    finished_like_the_reference(kill_sequence(script), references[script])


@pytest.mark.slow
@pytest.mark.parametrize("script", list(KILL_SCRIPTS))
def test_three_sigkills_in_one_run_resume_bit_for_bit(references, kill_sequence, script):
    """Before any checkpoint, inside the last checkpoint's write, inside the export (with the two kills above in
    between): the last try finishes."""
    runs = kill_sequence(script)
    killed(runs["step:1"]["proc"])  # before any checkpoint: the next try starts over
    assert not runs["step:1"]["files"]
    killed(runs["ckpt:6:100"]["proc"])
    assert runs["ckpt:6:100"]["step"] == 4
    killed(runs["export"]["proc"])  # files written, not yet in place
    assert runs["export"]["step"] == 6 and not runs["export"]["export"]
    assert runs["export"]["export_tmp"] == 1
    finished_like_the_reference(runs, references[script])
    assert runs["done"]["files"] == ["ckpt-000006.pt", "ckpt-000004.pt"]


@pytest.mark.slow
def test_sigkills_on_two_gloo_ranks_resume_bit_for_bit(tmp_path, shared_image_folder):
    """torchrun, 2 ranks (each draws its own dropout and noise): rank 1 killed between checkpoints, then rank 0 inside
    a checkpoint write; the run resumed twice equals an uninterrupted 2-rank run."""
    reference = run_script("xar", tmp_path / "ref", shared_image_folder, nproc=2)
    check_ok(reference)
    killed(run_script("xar", tmp_path / "run", shared_image_folder, "step:3@1", nproc=2), nproc=2)
    assert checkpoint.load_training_state(tmp_path / "run")["step"] == 2
    killed(run_script("xar", tmp_path / "run", shared_image_folder, "ckpt:4:4096@0", nproc=2), nproc=2)
    assert checkpoint.load_training_state(tmp_path / "run")["step"] == 2
    check_ok(run_script("xar", tmp_path / "run", shared_image_folder, nproc=2))
    assert_same_export(tmp_path / "run", tmp_path / "ref")
