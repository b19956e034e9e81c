"""Optimizer, learning-rate schedules and EMA.

- AdamW (or plain SGD) with two parameter groups, split by a named rule (`train.decay_rule`): `layers` (the default)
  decays the weights of linear and convolution layers only, none on norms, biases, embedding tables, positional tables
  and learned tokens; `official` is the MAE/MAR/xAR `add_weight_decay` rule (util/misc.py of those repositories): no
  decay on 1-D parameters and `.bias` only, so class tables, position tables and learned tokens are decayed too.
- Schedules are functions of the step and the run's total steps (diffusers' warmup+cosine / constant, and xAR's
  warmup + constant + cosine tail, Ren et al. arXiv 2502.20388), so no run length is hard-coded.
- EMA keyed by parameter name (not by position, unlike diffusers' EMAModel), so the EMA state maps straight onto the
  model's state dict for export, survives `torch.compile`/DDP wrapping, and shards with FSDP2 (its entries are then
  DTensors and are gathered only when saved).
"""

from __future__ import annotations

import functools
import math

import torch
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from torch import nn

from vistok.errors import VistokError

DECAYED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


DECAY_RULES = ("layers", "official")


def decayed(model: nn.Module, rule: str = "layers") -> set[str]:
    """Names of the trainable parameters that get weight decay under `rule` (see the module docstring)."""
    if rule == "layers":
        weights = {id(m.weight) for m in model.modules() if isinstance(m, DECAYED_LAYERS)}
        return {n for n, p in model.named_parameters() if p.requires_grad and id(p) in weights}
    if rule == "official":  # ndim / bias: embeddings and position tables (2-D or more) are decayed
        return {n for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1 and not n.endswith(".bias")}
    raise VistokError(f"train.decay_rule={rule!r} is not one of {', '.join(DECAY_RULES)}")


def param_groups(model: nn.Module, weight_decay: float, rule: str = "layers") -> list[dict]:
    """Split trainable parameters into a decayed group and a no-decay group by `rule` (`layers`: no decay on norms,
    biases, embeddings; `official`: no decay on 1-D parameters and biases only)."""
    names = decayed(model, rule)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (decay if n in names else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
    fused: bool | None = None, kind: str = "adamw", decay_rule: str = "layers",
) -> torch.optim.Optimizer:
    """AdamW (the default), or plain SGD without momentum (`kind="sgd"`: an update proportional to the gradient, which
    the engine's tests use to see the gradient's scale, e.g. averaged vs summed over ranks).

    fused: AdamW's fused kernel (one pass over all parameters; on the CPU it replaces PyTorch's default per-tensor
    Python loop). None picks it when every parameter is a plain CPU or CUDA tensor (FSDP2's DTensor shards
    keep PyTorch's default). decay_rule: which parameters are decayed (`param_groups`)."""
    if kind == "adamw":
        groups = param_groups(model, weight_decay, decay_rule)
        if fused is None:
            fused = all(type(p) in (torch.Tensor, nn.Parameter) and p.device.type in ("cpu", "cuda")
                        for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    if kind == "sgd":
        return torch.optim.SGD(param_groups(model, weight_decay, decay_rule), lr=lr)
    raise VistokError(f"unknown optimizer {kind!r}; use adamw or sgd")


SCHEDULES = ("cosine", "constant", "constant-cosine")


def constant_cosine(step: int, warmup_steps: int, total_steps: int, decay_start: float = 0.75,
                    min_ratio: float = 0.0) -> float:
    """LR multiplier of xAR's official schedule (MAR/xAR `util/lr_sched.py`), scaled to `total_steps`: linear warmup
    from 0 over `warmup_steps`, constant until `decay_start * total_steps`, then half a cosine down to `min_ratio` at
    `total_steps`. The official run is 100 warmup epochs, constant to epoch 600, cosine to min_lr 1e-5 over 600-800 of
    800 (hard-coded there, so a shorter run never decays; here the decay follows the run's length)."""
    start = round(decay_start * total_steps)
    if step < warmup_steps:
        return step / warmup_steps
    if step < start:
        return 1.0
    progress = min(1.0, (step - start) / max(1, total_steps - start))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
    decay_start: float = 0.75,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then: cosine decay to 0 at `total_steps` (`cosine`), a constant rate (`constant`), or constant
    until `decay_start` of the run and cosine to `min_lr` at its end (`constant-cosine`, xAR's official shape)."""
    if warmup_steps > total_steps:
        raise VistokError(f"warmup_steps ({warmup_steps}) exceeds total_steps ({total_steps}); lower "
                          "train.warmup_steps")
    if schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    if schedule == "constant-cosine":
        if not 0.0 <= decay_start <= 1.0 or warmup_steps > round(decay_start * total_steps):
            raise VistokError(f"train.decay_start={decay_start} must be in [0, 1] and come after the warmup "
                              f"({warmup_steps} of {total_steps} steps); raise it or lower train.warmup_steps")
        base = optimizer.param_groups[0]["lr"]
        if not 0.0 <= min_lr <= base:
            raise VistokError(f"train.min_lr={min_lr} must be between 0 and train.lr={base}")
        ratio = min_lr / base if base else 0.0
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, functools.partial(constant_cosine, warmup_steps=warmup_steps, total_steps=total_steps,
                                         decay_start=decay_start, min_ratio=ratio))
    raise VistokError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


class EMA:
    """Exponential moving average of a model's floating-point state, keyed by name.

    decay_t = min(decay, (1 + t) / (10 + t)) when `warmup` is on, so early averages are not dominated by the random
    initialisation. Buffers (e.g. norm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise VistokError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = dict(model.named_parameters())
        state = model.state_dict()
        keys_p = [k for k in self.shadow if k in params]
        if keys_p:
            torch._foreach_lerp_([self.shadow[k] for k in keys_p], [params[k].detach().float() for k in keys_p], 1 - d)
        for k in self.shadow:
            if k not in params:
                self.shadow[k].copy_(state[k])
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise VistokError(f"EMA state does not match the model: keys {sorted(missing)[:5]} differ")
        for k, v in state["shadow"].items():
            dst = self.shadow[k]
            if hasattr(dst, "device_mesh"):  # FSDP2: keep only this rank's shard of the full tensor
                from torch.distributed.tensor import distribute_tensor

                v = distribute_tensor(v.to(dst.device), dst.device_mesh, dst.placements)
            dst.copy_(v)
        self.num_updates = int(state["num_updates"])

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The EMA weights as a plain model state dict (DTensor shards gathered), in the model's own dtypes."""
        out = {}
        for k, v in model.state_dict().items():
            src = self.shadow.get(k, v)
            if hasattr(src, "full_tensor"):
                src = src.full_tensor()
            out[k] = src.detach().to(v.dtype).cpu().clone()
        return out
