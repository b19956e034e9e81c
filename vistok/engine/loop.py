"""The pieces every training script shares, each small: the run config, the command line, the optimizer step, the
non-finite guard, mixed precision and micro-steps, throughput and MFU, and `Trainer`, which sets them up together
(with the checkpointer: auto-resume), closes each step and writes the export (`Trainer.export`). A script stays a
readable top-to-bottom loop: config, model, Trainer, data, loop, export.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from vistok.config import load_config, to_dict, valid_keys
from vistok.engine import dist as vdist
from vistok.engine.checkpoint import Checkpointer
from vistok.engine.dist import DistEnv
from vistok.engine.faults import kill_point
from vistok.engine.flops import count_flops, mfu, peak_flops
from vistok.engine.host_memory import keep_freed_memory
from vistok.engine.logging import MetricsLog
from vistok.engine.optim import EMA, build_optimizer, build_scheduler
from vistok.engine.precision import warn_slow_precision
from vistok.errors import VistokError
from vistok.graph_ops import einops_as_graph_ops
from vistok.io.exports import write_export
from vistok.io.lock import hold_for

C = TypeVar("C")
# writes an export folder: (out_dir, family, model config, weights, **meta) -> the folder
# (`vistok.io.exports.write_export`)
Writer = Callable[..., Path]


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
    schedule: Literal["cosine", "constant", "constant-cosine"] = "cosine"
    warmup_steps: int = 0
    min_lr: float = 0.0  # constant-cosine: the rate reached at total_steps
    decay_start: float = 0.75  # constant-cosine: fraction of total_steps where the cosine tail starts (xAR: 600/800)
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp16: autocast + a dynamic loss scale (GradScaler), as xAR
    parallel: Literal["ddp", "fsdp"] = "ddp"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + t) / (10 + t)); false: ema_decay from the first step (xAR)
    ckpt_every: int = 500
    keep_checkpoints: int = 2  # RUN/ckpt-STEP.pt files kept (the newest); a damaged newest falls back to the one before
    log_every: int = 10
    num_workers: int = 2
    tensorboard: bool = False
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: plain, no momentum (an update proportional to the gradient)
    # layers: linear/conv weights only; official: all but 1-D and biases (xAR)
    decay_rule: Literal["layers", "official"] = "layers"
    nonfinite: Literal["skip", "stop"] = "skip"  # a step with a non-finite loss or gradient norm: skip it, or stop
    max_skips: int = 10  # with nonfinite=skip: stop after this many skipped steps in a row
    dist_timeout_s: float = 1800.0  # how long a collective waits for a gone or stuck rank before the run fails
    peak_tflops: float = 0.0  # per-device peak for MFU; 0: looked up for known GPUs (H100/H200/A100), else n/a
    compile: bool = False  # torch.compile the model's forward (and so its backward); same state-dict keys

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise VistokError("train.total_steps, train.batch_size and train.grad_accum must be positive")
        if self.ckpt_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise VistokError("train.ckpt_every, train.log_every and train.keep_checkpoints must be positive "
                              "(at least 1)")
        if self.precision == "fp16" and self.parallel == "fsdp":
            raise VistokError("train.precision=fp16 (a dynamic loss scale) is not supported with train.parallel=fsdp; "
                              "use train.precision=bf16 with FSDP, or fp16 with ddp as the official xAR recipe does")
        if self.max_skips < 0 or self.dist_timeout_s <= 0 or self.peak_tflops < 0:
            raise VistokError("train.max_skips and train.peak_tflops must be >= 0 and train.dist_timeout_s positive")

    def micro_batch(self, world_size: int) -> int:
        """Samples per process per forward pass."""
        if self.batch_size % (world_size * self.grad_accum):
            raise VistokError(
                f"train.batch_size={self.batch_size} must divide by processes x grad_accum = {world_size} x "
                f"{self.grad_accum}"
            )
        return self.batch_size // (world_size * self.grad_accum)


def parse_cli(cls: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """`--config FILE.yaml key=value ...` -> the resolved, type-checked config."""
    parser = argparse.ArgumentParser(description=description, epilog="valid keys: " + ", ".join(valid_keys(cls)))
    parser.add_argument("--config", help="YAML file of config values (overrides follow as key=value)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    return load_config(cls, args.config, args.overrides)


def init_run(cls: type[C], description: str = "", argv: Sequence[str] | None = None) -> tuple[C, DistEnv]:
    """The first lines of every training script: the config from the command line, the process group (waiting at
    most `train.dist_timeout_s` for a gone rank) and the same seed on every rank (so all build the same weights)."""
    cfg = parse_cli(cls, argv, description)
    env = vdist.setup(cfg.train.device, cfg.train.dist_timeout_s)
    vdist.seed_everything(cfg.train.seed)
    return cfg, env


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main; a VistokError becomes one line on stderr and exit status 1, not a traceback."""
    try:
        main()
    except VistokError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def split_micro_batches(tensors: Sequence[torch.Tensor | None], accum: int) -> list[tuple[torch.Tensor | None, ...]]:
    """A per-rank batch cut into `accum` equal chunks along dim 0, each a tuple with one slice per tensor (None, an
    absent optional input, stays None in every chunk)."""
    sizes = {len(t) for t in tensors if t is not None}
    if len(sizes) != 1:
        raise VistokError(f"the batch's tensors differ in length ({sorted(sizes)}); pass one batch of samples")
    size = sizes.pop()
    if size % accum:
        raise VistokError(f"per-process batch {size} does not split into grad_accum={accum} equal micro-batches; "
                          "make train.batch_size a multiple of processes x train.grad_accum")
    return list(zip(*((None,) * accum if t is None else t.chunk(accum) for t in tensors), strict=True))


def clip_and_norm(model: nn.Module, grad_clip: float) -> torch.Tensor:
    """The global gradient norm (over every rank's shard under FSDP2), clipping to `grad_clip` when it is > 0."""
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, grad_clip: float
) -> torch.Tensor:
    """Clip (after backward, before the step), step, advance the schedule, clear grads; returns the grad norm."""
    norm = clip_and_norm(model, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def compile_for_training(model: nn.Module, device: torch.device) -> None:
    """`train.compile=true`: `torch.compile` the model in place (DDP/FSDP wrap the compiled module, checkpoints keep
    their keys). Static shapes: another batch size (an evaluation, a last batch) gets its own graph instead of a
    symbolic one that every later step would then run (slower kernels). On the CPU, random ops (dropout) draw from
    PyTorch's own generator (inductor's `fallback_random`): the same draws as eager, and faster there than inductor's
    generated random numbers (benchmarks/bench_xar.py, the dropout rows with --compile)."""
    einops_as_graph_ops()
    model.compile(dynamic=False, options={"fallback_random": True} if device.type == "cpu" else None)


def hold_run_folder(owner: object, run_dir: str, env: DistEnv) -> None:
    """A training run's lock on its folder, for `owner`'s lifetime: rank 0 takes it and tells every rank the
    outcome (one collective), so a refused job fails on all ranks at once instead of waiting at its first
    all-reduce. `env` is the run's `DistEnv`."""
    if env.world_size == 1:
        hold_for(owner, run_dir, "train.run_dir")
        return
    refused = None
    if env.rank == 0:
        try:
            hold_for(owner, run_dir, "train.run_dir")
        except VistokError as err:
            refused = str(err)
    refused = vdist.broadcast_object(refused)
    if refused:
        raise VistokError(refused)


class Trainer:
    """The state every training loop carries, set up once: the wrapped model, its EMA, the optimizer, the schedule,
    the checkpointer (resumed: `step` is where the run continues), precision and micro-steps, and, inside
    `logging()`, the metrics log.

        run = Trainer(model, cfg, env)
        loader = ...(cfg.train.batch_size, start_step=run.step)
        with run.logging():
            while run.step < cfg.train.total_steps:
                x, y = next(batches)
                for xm, ym in run.micro_batches(x, y):      # under autocast; DDP syncs on the last one only
                    run.backward(run.ddp_model(xm, ym))      # scaled by 1 / grad_accum; the mean is logged
                run.finish_step()                            # non-finite check, clip, step, EMA, log, checkpoint

    Non-finite values: the global gradient norm (which clip_grad_norm_ computes anyway) and the loss are checked on
    every step and the verdict is agreed across ranks, so all ranks skip the same step (`train.nonfinite=skip`: no
    parameter or EMA update, at most `train.max_skips` in a row) or all stop (`stop`). Throughput (images/s, tokens/s
    when the script gives `tokens_per_sample`) and MFU are logged; the model FLOPs of a step are counted once, on the
    run's first step (forward and backward, all micro-batches), and kept in the checkpoint.

    Exact resume: a run killed at any moment (kill -9 included) and run again continues from its newest valid
    checkpoint (`train.keep_checkpoints` are kept) and gives the weights, losses and export of a run never
    interrupted, bit for bit on the same machine: every rank's RNG states (Python, NumPy, torch, CUDA) are restored on
    entering `logging()`, right before the first resumed step, so nothing the script builds in between can shift
    them; the data order is a function of (seed, step). Generators a script keeps itself must be keyed by the step
    (as pretrain_tokenunify.py's are) or they would restart."""

    def __init__(self, model: nn.Module, cfg: Any, env: DistEnv, tokens_per_sample: int | None = None) -> None:
        tc = cfg.train
        self.micro = tc.micro_batch(env.world_size)  # validates the batch split before any work
        hold_run_folder(self, tc.run_dir, env)  # one writer per run folder: a second run is refused in one line
        self.tc, self.env, self.model, self.tokens_per_sample = tc, env, model, tokens_per_sample
        warn_slow_precision(tc.precision, env.device)
        if env.device.type == "cpu":
            keep_freed_memory()  # every step allocates the same activations: no page faults on reusing them
        if tc.compile:
            compile_for_training(model, env.device)
        self.ddp_model = vdist.wrap_model(model, env, tc.parallel)
        # after wrapping: under FSDP2 its entries are shards too
        self.ema = EMA(model, tc.ema_decay, warmup=tc.ema_warmup)
        self.optimizer = build_optimizer(model, tc.lr, tc.weight_decay, tc.betas, kind=tc.optimizer,
                                         decay_rule=tc.decay_rule)
        self.scheduler = build_scheduler(self.optimizer, tc.schedule, tc.warmup_steps, tc.total_steps, tc.min_lr,
                                         tc.decay_start)
        self.ckpt = Checkpointer(tc.run_dir, env, self.ddp_model, self.optimizer, self.scheduler, self.ema, cfg,
                                 sharded=tc.parallel == "fsdp" and env.distributed, keep=tc.keep_checkpoints)
        self.step = self.resumed_at = self.ckpt.resume()  # RNG states: restored by logging(), at the loop's start
        if self.step == 0:
            vdist.seed_everything(tc.seed, env.rank)  # ranks draw different noise
        self.skips, self.skipped = self.ckpt.meta.get("skips", [0, 0])  # non-finite steps: in a row, in all
        # fp16: the dynamic loss scale (a disabled scaler passes everything through unchanged); resumed with the run
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=tc.precision == "fp16")
        if self.scaler.is_enabled() and self.ckpt.meta.get("scaler"):
            self.scaler.load_state_dict(self.ckpt.meta["scaler"])
        self.log: MetricsLog | None = None
        self._sums: dict[str, torch.Tensor] = {}
        # this rank's model FLOPs per optimizer step, counted once per run: counting runs the step under a dispatch
        # mode, which can change the last bits of some kernels, so a resumed run reuses the count instead of counting
        # again at another step (and stays bitwise equal to an uninterrupted run)
        key = json.dumps([{k: v for k, v in to_dict(cfg).items() if k != "train"}, tc.batch_size, tc.grad_accum,
                          tc.precision, env.world_size], sort_keys=True, default=str)
        saved_key, saved = self.ckpt.meta.get("flops", ["", None])
        self.flops_per_step: int | None = saved if saved_key == key else None
        self._flops_key = key
        dtype = torch.bfloat16 if tc.precision == "bf16" else torch.float32
        self.peak = peak_flops(env.device, dtype, tc.peak_tflops or None)
        self._clock: tuple[float, int] | None = None  # (time, step) where the throughput window started

    # ---------------------------------------------------------------------------------------------- one step
    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's precision (bf16/fp16 autocast or nothing), e.g. for a frozen teacher's forward outside
        micro-batches."""
        return autocast(self.tc.precision, self.env.device)

    def micro_batches(self, *batch: torch.Tensor) -> Iterator[Any]:
        """Yield the per-rank batch in `train.grad_accum` micro-batches (a tensor, or a tuple for several), each under
        the run's autocast; DDP all-reduces (FSDP2 reduce-scatters) gradients only after the last one."""
        chunks = split_micro_batches(batch, self.tc.grad_accum)
        with count_flops() if self.flops_per_step is None else contextlib.nullcontext() as counted:
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                with self._sync(last), self.autocast():
                    yield chunk if len(chunk) > 1 else chunk[0]
        if counted is not None:
            self.flops_per_step = counted.total
            if self.env.is_main:
                peak = (f"{self.peak / 1e12:g} TFLOP/s per device" if self.peak
                        else "unknown (MFU n/a; set train.peak_tflops)")
                message = (f"model FLOPs per step: {self.flops_per_step / 1e9:.4g} GFLOP per process (forward + "
                           f"backward); peak {peak}")
                tqdm.write(message, file=sys.stdout)  # above the progress bar

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        model = self.ddp_model
        if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
            model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if last or not hasattr(model, "no_sync"):
            return contextlib.nullcontext()
        return model.no_sync()

    def backward(self, loss: torch.Tensor, **metrics: torch.Tensor | float) -> None:
        """Backward of `loss` / grad_accum (outside autocast); `loss` and `metrics` are averaged over the micro-batches
        for the log."""
        with torch.autocast(self.env.device.type, enabled=False):
            self.scaler.scale(loss / self.tc.grad_accum).backward()  # fp16: times the loss scale; else as it is
        for name, value in {"loss": loss, **metrics}.items():
            value = torch.as_tensor(value, device=self.env.device).detach().float() / self.tc.grad_accum
            self._sums[name] = self._sums[name] + value if name in self._sums else value

    def finish_step(self, **logged: float) -> None:
        """After the micro-batches: agree on finiteness, clip + step (or skip), update the EMA, log, checkpoint.

        `logged`: extra plain values for this step's log row (written only on logging steps)."""
        if "loss" not in self._sums:
            raise RuntimeError("Trainer.finish_step: call run.backward(loss) for each micro-batch first")
        sums, self._sums = self._sums, {}
        loss = sums["loss"]
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients before clipping (a no-op otherwise)
        norm = clip_and_norm(self.ddp_model, self.tc.grad_clip)
        step = self.step + 1  # numbered like metrics.jsonl: the step being taken
        finite_loss = not vdist.any_rank(not torch.isfinite(loss), self.env.device)
        if self.scaler.is_enabled() and finite_loss and vdist.any_rank(not torch.isfinite(norm), self.env.device):
            # fp16 gradients overflowed at this loss scale: no update, the scale halves (the official recipe's
            # GradScaler); this is how the scale is found, not a failure, so it does not count as a skipped step
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
        elif not finite_loss or vdist.any_rank(not torch.isfinite(norm), self.env.device):
            self.scaler.update()  # fp16: closes this step's unscale_ (and halves the scale); a no-op otherwise
            self._skip(step, loss, norm)
        else:
            self.scaler.step(self.optimizer)  # optimizer.step() (fp16: after checking the unscaled gradients)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema.update(self.model)
            self.skips = 0
        with warnings.catch_warnings():  # a skipped step still advances the schedule (its number and data did)
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        self.step = step
        self.log.advance()
        if step % self.tc.log_every == 0 or step == self.tc.total_steps:
            names = list(sums)
            means = vdist.all_reduce_mean(torch.stack([sums[k] for k in names])).tolist()
            self.log.log(step, **dict(zip(names, means, strict=True)), **logged, grad_norm=norm,
                         lr=self.scheduler.get_last_lr()[0], skipped=self.skipped, **self._throughput(step))
        if step % self.tc.ckpt_every == 0 or step == self.tc.total_steps:
            self.ckpt.save(step, skips=[self.skips, self.skipped], flops=[self._flops_key, self.flops_per_step],
                           scaler=self.scaler.state_dict())
        kill_point("step", step)  # the kill -9 tests' deterministic "between checkpoints" (VISTOK_KILL_AT=step:N)

    def _skip(self, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """A step whose loss or gradients are not finite on some rank: no update anywhere, or the end of the run."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skips, self.skipped = self.skips + 1, self.skipped + 1
        what = f"loss is {loss.item():.4g} and the gradient norm {norm.item():.4g} at step {step}"
        if self.tc.nonfinite == "stop" or self.skips > self.tc.max_skips:
            why = "" if self.tc.nonfinite == "stop" else f" after {self.tc.max_skips} skipped steps in a row"
            if self.ckpt.loaded is not None and step - self.skips <= self.resumed_at:  # no good step since the resume
                raise VistokError(
                    f"{what} (on some rank){why}, right after resuming from {self.ckpt.loaded}; training stopped. "
                    "That checkpoint is likely damaged: move it away and run again (it resumes from the one before)")
            raise VistokError(
                f"{what} (on some rank){why}; training stopped. Lower train.lr, use train.precision=fp32 or raise "
                "train.warmup_steps, then run again (it resumes from the last checkpoint)")
        self.log.note(f"warning: {what} (on some rank); step skipped ({self.skips} in a row, at most "
                      f"{self.tc.max_skips}: train.max_skips)")

    def _throughput(self, step: int) -> dict[str, float | None]:
        """images/s (and tokens/s) over the steps since the last log row, and MFU against the device's peak."""
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        now = time.perf_counter()
        start, self._clock = self._clock, (now, step)
        if start is None or step <= start[1]:  # the first logged window includes start-up and the FLOP count
            return {}
        seconds = (now - start[0]) / (step - start[1])
        out: dict[str, float | None] = {"img_per_s": self.tc.batch_size / seconds}
        if self.tokens_per_sample:
            out["tok_per_s"] = self.tc.batch_size * self.tokens_per_sample / seconds
        out["mfu"] = mfu(self.flops_per_step, seconds, self.peak)
        return out

    # ---------------------------------------------------------------------------------------------- run-level
    @contextlib.contextmanager
    def logging(self) -> Iterator[MetricsLog]:
        """The loop's context: the metrics log and progress bar (closed first on the way out, so an error message
        starts its own line), and, on entry, every RNG put where the resumed checkpoint had it. Restoring here, right
        before the first resumed step, rather than when the checkpoint is read, makes the resume exact whatever the
        script does in between (building a data loader's iterator draws a seed from torch's generator)."""
        self.ckpt.restore_rng()
        self.log = MetricsLog(self.tc.run_dir, self.env.is_main, self.step, self.tc.total_steps, self.tc.tensorboard)
        self._clock = None
        try:
            yield self.log
        finally:
            self.log.close()

    def ema_state(self) -> dict[str, torch.Tensor]:
        """The EMA weights as a plain state dict of the unwrapped model (on every rank: under FSDP it gathers)."""
        return self.ema.full_state(self.model)

    def export(
        self, family: str, config: Any, weights: dict[str, torch.Tensor] | None = None, *,
        writer: Writer | None = None, note: str = "", **meta: Any,
    ) -> Path | None:
        """Write RUN/export, the end of every training script: the EMA weights (`weights`, default `ema_state()`; a
        script that evaluates or trims its EMA model passes that model's state dict) with `config.json` holding the
        family, the model `config` (its dataclass), the step and `meta`, in the order given (`step` first unless the
        caller places it).

        Call it on every rank: the weights are gathered everywhere, rank 0 alone writes and returns the folder, the
        other ranks get None. `writer` has `write_export`'s signature (the default: atomic, the export-target
        check, non-finite weights refused); a paired generator passes one that also copies its FlexTok in. With the
        default writer the kill -9 tests' "export" point falls between writing the files and putting them in place.
        On rank 0 one line says where the export went, followed by `note` (where "{out}" stands for the folder)."""
        weights = self.ema_state() if weights is None else weights
        if not self.env.is_main:
            return None
        meta = meta if "step" in meta else {"step": self.step, **meta}
        out_dir = Path(self.tc.run_dir) / "export"
        if writer is None:
            out = write_export(out_dir, family, to_dict(config), weights,
                               extra=lambda tmp: kill_point("export"), **meta)
        else:
            out = writer(out_dir, family, to_dict(config), weights, **meta)
        print(f"exported EMA weights (step {self.step}) to {out}{note.replace('{out}', str(out))}")
        return out
