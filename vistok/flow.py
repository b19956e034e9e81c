"""Rectified flow: noise-level sampling, the straight interpolation path, its velocity, ODE/SDE steps and CFG.

Conventions (Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation",
arXiv 2502.20388, Eq. 2-3; SiT/REPA for the SDE): **t = 0 is data, t = 1 is noise**.

    x_t = (1 - t) x + t eps,        v = dx_t/dt = eps - x,        t ~ logit-normal(mean, std)

Sampling integrates from t = 1 down to t = 0. The Euler-Maruyama sampler integrates the reverse SDE whose marginals
match the flow's: with the score s(x_t) = -(x_t + (1 - t) v) / t and diffusion g^2 = 2t, the drift is
d = v - t s = (2 - t) v + x_t and a step is x += d dt + sqrt(2t |dt|) xi (dt < 0). Its grid is t = linspace(1, t_last,
N) followed by 0: N - 1 stochastic steps and one last deterministic step to 0, so N network evaluations either way. With
N = 1 there is no stochastic step at all and the single deterministic step 1 -> 0 is the ODE (Euler) step, which
returns the predicted x0 (the drift's mean step over the whole interval would return x0 - eps).

Classifier-free guidance combines the conditional and unconditional velocities, v_u + w (v_c - v_u). Because the SDE
drift is affine in v with the same x_t for both branches, guiding v is the same as guiding the drift. The scale w_s at
autoregressive step s of S (`cfg_scale`) is one of
- "linear": w_s = 1 + (w - 1) s / (S - 1): the first entity is unguided and the last one gets the full scale (xAR's
  schedule, for pixel or latent cells);
- "constant": w_s = w at every step;
- "linear-guided": w_s = 1 + (w - 1) (s + 1) / S: the same ramp shifted by one step, so the first entity is guided too
  (1 + (w - 1) / S) and the last gets w. Meant for FlexTok's prefix groups, whose first token is the most semantic.

Adaptive projected guidance (`apg`, Sadat et al., arXiv 2410.02416; FlexTok's sampler default) damps the guidance
term with momentum, clips its norm and drops its component parallel to the conditional velocity.

Everything here is a plain function of tensors; networks and generation loops live elsewhere.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from vistok.errors import require

CfgSchedule = Literal["linear", "constant", "linear-guided"]
CFG_SCHEDULES: tuple[str, ...] = ("linear", "constant", "linear-guided")


def logit_normal(
    shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t = sigmoid(n), n ~ N(mean, std^2): noise levels in (0, 1), denser in the middle (SD3's logit-normal)."""
    if generator is None:  # no generator=None: under torch.compile with a symbolic batch that overload fails
        n = torch.randn(shape, device=device)
    else:
        n = torch.randn(shape, generator=generator, device=generator.device)
    t = torch.sigmoid(n * std + mean)
    return t if device is None else t.to(device)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 - t) x + t noise; `t` broadcasts against `x` (e.g. (B, L, 1) against (B, L, C))."""
    return (1 - t) * x + t * noise


def velocity_target(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt = noise - x, the regression target of the flow network (paper Eq. 3)."""
    return noise - x


def time_grid(steps: int, sde: bool = True, t_last: float = 0.04) -> list[float]:
    """steps + 1 noise levels from 1 to 0 (Python floats: no device syncs in the sampling loop).

    ODE: uniform in t. SDE: linspace(1, t_last, steps) then 0, so the last step (t_last -> 0) is deterministic and
    the 1/t in the score is never evaluated at t = 0.
    """
    require(steps >= 1, f"the number of sampling steps must be at least 1, got {steps}")
    if not sde:
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    require(0.0 < t_last < 1.0, f"t_last must lie in (0, 1), got {t_last}")
    if steps == 1:
        return [1.0, 0.0]
    return torch.linspace(1.0, t_last, steps, dtype=torch.float64).tolist() + [0.0]


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx = v dt (t_next < t)."""
    return x + (t_next - t) * v


def sde_drift(x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """Drift of the reverse SDE, v - t * score with score = -(x + (1 - t) v) / t; simplifies to (2 - t) v + x."""
    return (2.0 - t) * v + x


def euler_maruyama_step(
    x: torch.Tensor, v: torch.Tensor, t: float, t_next: float, noise: torch.Tensor | None
) -> torch.Tensor:
    """One Euler-Maruyama step x + d dt + sqrt(2t |dt|) noise; `noise=None` takes the deterministic step.

    A deterministic step that starts at t = 1 (the whole one-step SDE grid [1, 0]) is the probability-flow (Euler ODE)
    step x - v = x0: with x_1 = eps the score is -x and the drift mean step would return -v = x0 - eps."""
    dt = t_next - t
    if noise is None and t >= 1.0:
        return euler_step(x, v, t, t_next)
    x = x + sde_drift(x, v, t) * dt
    if noise is not None:
        x = x + math.sqrt(2.0 * t * abs(dt)) * noise
    return x


def cfg_scale(scale: float, step: int, num_steps: int, schedule: CfgSchedule = "linear") -> float:
    """Guidance scale at autoregressive step `step` of `num_steps`.

    linear: 1 + (scale - 1) * step / (num_steps - 1), so step 0 is unguided (with one step only, the full scale).
    constant: `scale` at every step.
    linear-guided: 1 + (scale - 1) * (step + 1) / num_steps, so step 0 is guided too and the last step gets `scale`.
    """
    check_cfg_schedule(schedule)
    require(0 <= step < num_steps, f"step {step} is outside 0..{num_steps - 1}")
    if schedule == "constant" or num_steps == 1:
        return float(scale)
    if schedule == "linear-guided":
        return 1.0 + (scale - 1.0) * (step + 1) / num_steps
    return 1.0 + (scale - 1.0) * step / (num_steps - 1)


def check_cfg_schedule(schedule: str) -> None:
    """A one-line VistokError unless `schedule` is one of CFG_SCHEDULES."""
    require(schedule in CFG_SCHEDULES, f"unknown CFG schedule {schedule!r}; use one of {', '.join(CFG_SCHEDULES)}")


def guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: v_uncond + scale * (v_cond - v_uncond); scale 1 is the conditional velocity."""
    return v_uncond + scale * (v_cond - v_uncond)


def apg(
    v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, running: torch.Tensor | None = None,
    momentum: float = -0.5, norm_threshold: float = 2.5, eta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive projected guidance (Sadat et al., "Eliminating Oversaturation and Artifacts of High Guidance Scales
    in Diffusion Models", arXiv 2410.02416), on per-sample tensors (B, ...); FlexTok's defaults.

    diff = v_cond - v_uncond; running = diff + momentum * running (the previous step's, None at the first step);
    diff = running clipped to L2 norm `norm_threshold` per sample (0 disables); split diff into its parts parallel and
    orthogonal to v_cond; returns (v_cond + (scale - 1) (diff_orth + eta diff_par), running). With momentum 0, no
    clipping and eta 1 this is exactly `guide` (CFG). Computed in float32, returned in v_cond's dtype.
    """
    cond, diff = v_cond.float(), (v_cond - v_uncond).float()
    if running is not None and momentum != 0:
        diff = diff + momentum * running
    running = diff
    dims = tuple(range(1, diff.ndim))
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.clamp(norm_threshold / norm.clamp_min(1e-12), max=1.0)
    unit = cond / cond.norm(p=2, dim=dims, keepdim=True).clamp_min(1e-12)
    parallel = (diff * unit).sum(dim=dims, keepdim=True) * unit
    update = (diff - parallel) + eta * parallel
    return (cond + (scale - 1.0) * update).to(v_cond.dtype), running


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while sampling; the model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
