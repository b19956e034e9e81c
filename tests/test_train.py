"""The real training script with tiny settings: DDP/FSDP equivalence (torchrun) and SIGKILL resume (a killed child
process) where a process boundary is the subject; gradient accumulation, bf16 and bad input with the script's own
`main` run in this process (`script_main`: what `python train/train_fid_net.py ARGV` prints and exits with).

Plus an in-process check that the model and optimizer pieces can overfit one batch.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vistok.config import load_config
from vistok.data import build_image_dataset
from vistok.engine import checkpoint
from vistok.engine.dist import seed_everything
from vistok.engine.logging import read_metrics
from vistok.engine.loop import optimizer_step
from vistok.engine.optim import build_optimizer, build_scheduler
from vistok.io import exports
from vistok.metrics.fid_net import PRESETS, FidNet

from conftest import CliResult, check_ok, run, script_env, script_main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "train" / "train_fid_net.py")
TINY = ["model.widths=[8,16,16,32]", "model.groups=4", "train.num_workers=0", "train.warmup_steps=0",
        "train.device=cpu"]


def train_cmd(run_dir: Path, *overrides: str, nproc: int = 1) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return launcher + [SCRIPT, f"train.run_dir={run_dir}", *TINY, *overrides]


def fid_net_main(run_dir: Path, *overrides: str) -> CliResult:
    """`python train/train_fid_net.py train.run_dir=RUN_DIR TINY... OVERRIDES` in this process (`script_main`)."""
    return script_main("train_fid_net", *train_cmd(run_dir, *overrides)[2:])


def assert_states_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def cifar_cache(data_root):
    """Decode CIFAR-10 into the cache once, here, before several subprocesses want it at the same time."""
    build_image_dataset("cifar10-train")
    build_image_dataset("cifar10-test")


# ---------------------------------------------------------------- a. data parallel == one process


def step0_state(fid_net_script, overrides: list[str]) -> dict[str, torch.Tensor]:
    """The weights the script starts from (it seeds, then builds the model), rebuilt here from the same config."""
    cfg = load_config(fid_net_script.Config, None, [*TINY, *overrides])
    seed_everything(cfg.train.seed)
    return FidNet(cfg.model).state_dict()


def assert_moved(start: dict, end: dict, max_change: float) -> float:
    """Every weight moved from the step-0 state, by no more than `max_change` (so `start` really is step 0's);
    returns the largest change."""
    largest = 0.0
    for k, v in start.items():
        if v.is_floating_point() and "running" not in k:
            change = (end[k] - v).abs().max().item()
            assert 0 < change <= max_change, f"{k} moved by {change}"
            largest = max(largest, change)
    return largest


# SGD (no momentum, no clipping) moves the weights by lr x the gradient: gradients summed over ranks instead of
# averaged would double the step and fail the comparison; AdamW with clipping (the FSDP run) would not see that
@pytest.mark.slow
@pytest.mark.parametrize("parallel,optim", [("ddp", ["train.optimizer=sgd", "train.grad_clip=0", "train.lr=0.05"]),
                                            ("fsdp", ["train.lr=1e-3"])])
def test_ddp_two_processes_match_one_process(tmp_path, shared_image_folder, fid_net_script, parallel, optim):
    """2 processes (DDP, or FSDP2 sharding) and 1 process at the same global batch give the same weights."""
    common = [f"data.name={shared_image_folder}", f"eval_data={shared_image_folder}", "train.batch_size=16",
              "train.total_steps=5", "train.ckpt_every=5", "train.log_every=1", *optim]
    ddp = run(*train_cmd(tmp_path / "ddp", *common, f"train.parallel={parallel}", nproc=2), timeout=240)
    check_ok(ddp)
    check_ok(fid_net_main(tmp_path / "one", *common))  # the reference: one process, this one
    a = checkpoint.load_training_state(tmp_path / "one")
    if parallel == "fsdp":  # sharded with torch.distributed.checkpoint, one file per rank: no full last.pt
        assert (not (tmp_path / "ddp" / "last.pt").exists()
                and len(list((tmp_path / "ddp" / "last.dcp").glob("*.distcp"))) == 2)
        b = checkpoint.read_sharded_state(tmp_path / "ddp")
    else:
        b = checkpoint.load_training_state(tmp_path / "ddp")
    assert (a["step"], b["step"]) == (5, 5) and (a["world_size"], b["world_size"]) == (1, 2)
    # training moved every weight away from the step-0 state (AdamW: by at most about lr per step); with SGD's larger
    # steps rounding differences grow too, but stay far below what a 2x step (gradients summed over ranks) would give
    atol = 2e-4 if parallel == "ddp" else 1e-5
    moved = assert_moved(step0_state(fid_net_script, common), a["model"], 1.0 if parallel == "ddp" else 6e-3)
    assert moved > 100 * atol or parallel == "fsdp", moved
    assert_states_close(a["model"], b["model"], atol=atol)
    # EMA under DDP is stored under the model's own keys (no `module.` prefix), so a DDP run can resume
    assert set(b["ema"]["shadow"]) == set(b["model"]) == set(a["ema"]["shadow"])
    assert_states_close(a["ema"]["shadow"], b["ema"]["shadow"], atol=atol)
    # the export holds the EMA weights of the last step
    for run_dir, state in ((tmp_path / "one", a), (tmp_path / "ddp", b)):
        meta, weights = exports.read_export(run_dir / "export")
        assert meta["family"] == "fid_net" and meta["step"] == 5 and meta["eval_images"] == 32
        assert_states_close(weights, state["ema"]["shadow"], atol=0)
    losses_a = [r["loss"] for r in read_metrics(tmp_path / "one")]
    losses_b = [r["loss"] for r in read_metrics(tmp_path / "ddp")]
    assert len(losses_a) == len(losses_b) == 5
    assert losses_a == pytest.approx(losses_b, abs=atol)
    assert [r["step"] for r in read_metrics(tmp_path / "ddp")] == [1, 2, 3, 4, 5]  # rank 0 alone writes the log


# ---------------------------------------------------------------- b. SIGKILL and resume


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted_run(tmp_path, cifar_cache):
    total = 40
    common = ["model.widths=[16,32,32,64]", "data.name=cifar10-train", "data.limit=256", "eval_limit=100",
              "train.batch_size=32", f"train.total_steps={total}", "train.ckpt_every=5", "train.log_every=1"]
    killed_dir, ref_dir = tmp_path / "killed", tmp_path / "reference"
    victim = subprocess.Popen(train_cmd(killed_dir, *common), cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline, step = time.monotonic() + 120, 0
        while step < 5:
            assert victim.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint at step >= 5 within 120 s"
            state = checkpoint.load_training_state(killed_dir) if (killed_dir / "last.pt").exists() else None
            step = state["step"] if state else 0
            time.sleep(0.01)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    killed_at = checkpoint.load_training_state(killed_dir)["step"]
    assert 5 <= killed_at < total and not (killed_dir / "export").exists()
    assert max(r["step"] for r in read_metrics(killed_dir)) >= killed_at  # (lines past it are dropped on resume)

    check_ok(fid_net_main(killed_dir, *common))  # the same command again (in this process: it reads only the folder)
    check_ok(fid_net_main(ref_dir, *common))  # the uninterrupted run
    rows, ref_rows = read_metrics(killed_dir), read_metrics(ref_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(1, total + 1))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref_rows], abs=1e-6)
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in ref_rows], abs=1e-12)
    a, b = checkpoint.load_training_state(killed_dir), checkpoint.load_training_state(ref_dir)
    assert a["step"] == b["step"] == total
    assert_states_close(a["model"], b["model"], atol=1e-6)
    assert_states_close(a["ema"]["shadow"], b["ema"]["shadow"], atol=1e-6)
    exported = [exports.read_export(d / "export")[1] for d in (killed_dir, ref_dir)]
    assert_states_close(*exported, atol=1e-6)


# ---------------------------------------------------------------- c. overfitting one batch


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = FidNet(PRESETS["cifar10-net-test"])
    images, labels = torch.rand(16, 3, 32, 32) * 2 - 1, torch.arange(16) % 10
    optimizer = build_optimizer(model, lr=3e-3, weight_decay=0.0, betas=(0.9, 0.99))
    scheduler = build_scheduler(optimizer, "constant", 0, 40)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer_step(model, optimizer, scheduler, grad_clip=2.0)
        losses.append(loss.item())
    assert losses[0] == pytest.approx(2.3, abs=0.2)  # chance level for 10 classes
    assert losses[-1] < 0.3 * losses[0], losses
    assert (model(images).argmax(-1) == labels).float().mean() >= 0.9


# ---------------------------------------------------------------- d. bad input

BAD_CONFIG = {
    "train.lrr=0.1": ("unknown config key 'train.lrr'", "valid keys", "train.lr,", "train.total_steps"),
    "train.total_steps=many": ("train.total_steps", "not a int"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory, shared_image_folder) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every bad-input command, run once each (one after another: two cores gain nothing from overlapping them).

    The config errors name the first bad key; tests/test_config.py checks every kind of bad value in-process."""
    root = tmp_path_factory.mktemp("bad")
    folder = [f"data.name={shared_image_folder}", f"eval_data={shared_image_folder}", "train.batch_size=16"]
    cmds = {key: (root / f"cfg{i}", [key]) for i, key in enumerate(BAD_CONFIG)}
    cmds["missing_root"] = (root / "missing_root", ["data.name=cifar10-train", "data.root=/nonexistent/vistok-data"])
    cmds["non_finite"] = (root / "non_finite", [*folder, "train.total_steps=20", "train.lr=1e30"])
    return {name: (run_dir, fid_net_main(run_dir, *args)) for name, (run_dir, args) in cmds.items()}


def check_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 1, f"exit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow  # with the other bad-input tests: four script runs, about 20 s in all
@pytest.mark.parametrize("override", list(BAD_CONFIG))
def test_bad_config_is_one_line_error(bad_runs, override):
    run_dir, proc = bad_runs[override]
    check_one_line_error(proc, *BAD_CONFIG[override])
    assert not run_dir.exists()  # nothing was started


@pytest.mark.slow
def test_missing_data_root_is_one_line_error(bad_runs):
    check_one_line_error(bad_runs["missing_root"][1], "/nonexistent/vistok-data", "does not exist", "VISTOK_DATA")


@pytest.mark.slow
def test_non_finite_loss_aborts_with_a_clear_message(bad_runs):
    run_dir, proc = bad_runs["non_finite"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]  # a line of its own, after the bar
    assert len(errors) == 1, proc.stderr
    assert "loss is nan" in errors[0] or "loss is inf" in errors[0]
    assert "training stopped" in errors[0] and "train.lr" in errors[0]
    assert not (run_dir / "export").exists()


# ---------------------------------------------------------------- d. accumulation, bf16, TensorBoard


@pytest.mark.slow
def test_grad_accumulation_matches_one_big_batch_and_bf16_tensorboard_run(tmp_path, shared_image_folder,
                                                                          fid_net_script):
    # plain SGD without clipping: micro-batch gradients summed instead of averaged would take a 4x step here
    common = [f"data.name={shared_image_folder}", f"eval_data={shared_image_folder}", "train.batch_size=16",
              "train.total_steps=3", "train.ckpt_every=3", "train.log_every=1", "train.optimizer=sgd",
              "train.grad_clip=0", "train.lr=0.05"]
    check_ok(fid_net_main(tmp_path / "accum1", *common))
    check_ok(fid_net_main(tmp_path / "accum4", *common, "train.grad_accum=4"))
    a, b = checkpoint.load_training_state(tmp_path / "accum1"), checkpoint.load_training_state(tmp_path / "accum4")
    assert_moved(step0_state(fid_net_script, common), a["model"], 1.0)
    assert_states_close(a["model"], b["model"], atol=1e-5)
    assert [r["loss"] for r in read_metrics(tmp_path / "accum1")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "accum4")], abs=1e-5)

    check_ok(fid_net_main(tmp_path / "bf16", *common, "train.precision=bf16", "train.tensorboard=true"))
    losses = [r["loss"] for r in read_metrics(tmp_path / "bf16")]
    assert len(losses) == 3 and all(abs(x - y) < 0.05 for x, y in zip(
        losses, [r["loss"] for r in read_metrics(tmp_path / "accum1")], strict=True))
    assert list((tmp_path / "bf16" / "tb").glob("events.out.tfevents.*")), "TensorBoard wrote no event file"
