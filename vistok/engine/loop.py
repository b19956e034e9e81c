"""The pieces every training script shares, each small: the run config, the command line, the optimizer step, the
non-finite guard, mixed precision, the checkpointer (auto-resume) and `Trainer`, which sets them up together and
closes each step. A script stays a readable top-to-bottom loop: config, model, Trainer, data, loop, export.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from vistok.config import load_config, save_config, to_dict, valid_keys
from vistok.engine import checkpoint
from vistok.engine import dist as vdist
from vistok.engine.dist import DistEnv, unwrap
from vistok.engine.logging import MetricsLog
from vistok.engine.optim import EMA, build_optimizer, build_scheduler
from vistok.errors import VistokError

C = TypeVar("C")


@dataclass(frozen=True)
class TrainConfig:
    """What every run has, whatever the model. `batch_size` is global: over processes and accumulation steps."""

    run_dir: str = "runs/default"
    seed: int = 0
    total_steps: int = 1000
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    parallel: Literal["ddp", "fsdp"] = "ddp"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ema_decay: float = 0.999
    ckpt_every: int = 500
    log_every: int = 10
    num_workers: int = 2
    tensorboard: bool = False

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise VistokError("train.total_steps, train.batch_size and train.grad_accum must be positive")
        if self.ckpt_every < 1 or self.log_every < 1:
            raise VistokError("train.ckpt_every and train.log_every must be positive")

    def micro_batch(self, world_size: int) -> int:
        """Samples per process per forward pass."""
        if self.batch_size % (world_size * self.grad_accum):
            raise VistokError(
                f"train.batch_size={self.batch_size} must divide by processes x grad_accum = {world_size} x {self.grad_accum}"
            )
        return self.batch_size // (world_size * self.grad_accum)


def parse_cli(cls: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """`--config FILE.yaml key=value ...` -> the resolved, type-checked config."""
    parser = argparse.ArgumentParser(description=description, epilog="valid keys: " + ", ".join(valid_keys(cls)))
    parser.add_argument("--config", help="YAML file of config values (overrides follow as key=value)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main; a VistokError becomes one line on stderr and exit status 1, not a traceback."""
    try:
        main()
    except VistokError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def micro_steps(model: nn.Module, batch: Sequence[torch.Tensor], accum: int) -> Iterator[tuple[contextlib.AbstractContextManager, list]]:
    """Split a per-rank batch into `accum` chunks; DDP syncs gradients only on the last one."""
    chunks = list(zip(*(t.chunk(accum) for t in batch)))
    if len(chunks) != accum:
        raise VistokError(f"per-process batch {len(batch[0])} is smaller than grad_accum={accum}")
    for i, chunk in enumerate(chunks):
        last = i == accum - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        yield sync, list(chunk)


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss).all():
        raise VistokError(
            f"loss is {loss.item()} at step {step}; training stopped. Lower train.lr, use train.precision=fp32 "
            "or raise train.warmup_steps, then run again (it resumes from the last checkpoint)"
        )


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, grad_clip: float
) -> torch.Tensor:
    """Clip (after backward, before the step), step, advance the schedule, clear grads; returns the grad norm."""
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


class Checkpointer:
    """Saves and restores the whole training state of one run folder; the same command resumes a stopped run."""

    def __init__(self, run_dir: str | Path, env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, ema: EMA, config: Any) -> None:
        self.run_dir, self.env = Path(run_dir), env
        self.model, self.optimizer, self.scheduler, self.ema, self.config = model, optimizer, scheduler, ema, config
        self.options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _gather_rng(self) -> list[dict]:
        state = checkpoint.rng_state()
        if not self.env.distributed:
            return [state]
        out: list = [None] * self.env.world_size
        dist.all_gather_object(out, state)
        return out

    def save(self, step: int) -> None:
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=self.options)
        # the shadow's own keys: unwrapped (no DDP `module.` prefix) and without integer buffers the EMA does not keep
        full = self.ema.full_state(unwrap(self.model))
        ema_state = {**self.ema.state_dict(), "shadow": {k: full[k] for k in self.ema.shadow}}
        rng = self._gather_rng()
        if self.env.is_main:
            checkpoint.save_training_state(self.run_dir, {
                "step": step, "model": model_state, "optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                "ema": ema_state, "rng": rng, "config": to_dict(self.config), "world_size": self.env.world_size,
            })
        if self.env.distributed:
            dist.barrier()

    def resume(self) -> int:
        """Load RUN/last.pt if it exists and return its step (0 for a fresh run); saves the resolved config."""
        state = checkpoint.load_training_state(self.run_dir)
        if self.env.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
        if state is None:
            return 0
        if state["config"] != to_dict(self.config) and self.env.is_main:
            changed = sorted(_diff_keys(state["config"], to_dict(self.config)))
            print(f"note: resuming {self.run_dir} with changed config keys: {', '.join(changed)}", file=sys.stderr)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        self.ema.load_state_dict(state["ema"])
        rng = state["rng"]
        checkpoint.set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0])
        return int(state["step"])


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys |= _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.add(prefix + k)
    return keys


class Trainer:
    """The state every training loop carries, set up once: the wrapped model, its EMA, the optimizer, the schedule,
    the checkpointer (resumed: `step` is where the run continues) and, inside `logging()`, the metrics log.

        run = Trainer(model, cfg, env)
        loader = ...(start_step=run.step)
        with run.logging():
            while run.step < cfg.train.total_steps:
                ...; loss.backward()
                run.finish_step(loss)
    """

    def __init__(self, model: nn.Module, cfg: Any, env: DistEnv) -> None:
        tc = cfg.train
        self.tc, self.env, self.model = tc, env, model
        self.ddp_model = vdist.wrap_model(model, env, tc.parallel)
        self.ema = EMA(model, tc.ema_decay)  # after wrapping: under FSDP2 its entries are shards too
        self.optimizer = build_optimizer(model, tc.lr, tc.weight_decay, tc.betas)
        self.scheduler = build_scheduler(self.optimizer, tc.schedule, tc.warmup_steps, tc.total_steps)
        self.ckpt = Checkpointer(tc.run_dir, env, self.ddp_model, self.optimizer, self.scheduler, self.ema, cfg)
        self.step = self.ckpt.resume()
        if self.step == 0:
            vdist.seed_everything(tc.seed, env.rank)  # ranks draw different noise; a resume restores every rank's RNG
        tc.micro_batch(env.world_size)  # validates the batch split before any work
        self.log: MetricsLog | None = None

    @contextlib.contextmanager
    def logging(self) -> Iterator[MetricsLog]:
        """The metrics log and progress bar, closed first on the way out so an error message starts its own line."""
        self.log = MetricsLog(self.tc.run_dir, self.env.is_main, self.step, self.tc.total_steps, self.tc.tensorboard)
        try:
            yield self.log
        finally:
            self.log.close()

    def finish_step(self, loss: torch.Tensor, metrics: Callable[[], dict[str, Any]] | None = None) -> None:
        """After backward: abort on a non-finite loss, clip + step, update the EMA, log, checkpoint.

        `metrics` is called only on logging steps (it may all-reduce); by default the loss averaged over ranks."""
        check_finite(loss, self.step + 1)  # numbered like metrics.jsonl: the step being taken
        grad_norm = optimizer_step(self.ddp_model, self.optimizer, self.scheduler, self.tc.grad_clip)
        self.ema.update(self.model)
        self.step += 1
        self.log.advance()
        if self.step % self.tc.log_every == 0 or self.step == self.tc.total_steps:
            values = metrics() if metrics is not None else {"loss": vdist.all_reduce_mean(loss)}
            self.log.log(self.step, **values, grad_norm=grad_norm, lr=self.scheduler.get_last_lr()[0])
        if self.step % self.tc.ckpt_every == 0 or self.step == self.tc.total_steps:
            self.ckpt.save(self.step)

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA weights as a plain state dict of the unwrapped model."""
        return self.ema.full_state(self.model)
