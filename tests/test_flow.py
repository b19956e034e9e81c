"""Rectified flow (xAR, arXiv 2502.20388 Eq. 2-3): noise levels, the straight path, ODE/SDE steps and CFG."""

from __future__ import annotations

import math

import pytest
import torch

from vistok import flow
from vistok.errors import VistokError


def test_logit_normal() -> None:
    g = torch.Generator().manual_seed(0)
    t = flow.logit_normal((200_000,), mean=0.5, std=0.8, generator=g)
    assert t.shape == (200_000,) and bool(((t > 0) & (t < 1)).all())
    n = torch.logit(t.double())
    assert abs(n.mean().item() - 0.5) < 0.01 and abs(n.std().item() - 0.8) < 0.01
    same = flow.logit_normal((200_000,), mean=0.5, std=0.8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, same)
    assert abs(flow.logit_normal((100_000,)).median().item() - 0.5) < 0.01  # standard: median 1/2, global RNG


def test_interpolation_and_velocity() -> None:
    x, eps = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.equal(flow.interpolate(x, eps, 0.0), x)  # t = 0 is data
    assert torch.equal(flow.interpolate(x, eps, 1.0), eps)  # t = 1 is noise
    t, h = 0.3, 1e-3
    finite_diff = (flow.interpolate(x.double(), eps.double(), t + h)
                   - flow.interpolate(x.double(), eps.double(), t - h)) / (2 * h)
    torch.testing.assert_close(finite_diff, flow.velocity_target(x, eps).double())
    per_row = torch.tensor([[0.0], [1.0], [0.5], [0.25]])  # (B, 1) broadcasts over channels
    xt = flow.interpolate(x, eps, per_row)
    assert torch.equal(xt[0], x[0]) and torch.equal(xt[1], eps[1])


def test_time_grids() -> None:
    sde = flow.time_grid(5, sde=True, t_last=0.04)
    assert len(sde) == 6 and sde[0] == 1.0 and sde[-1] == 0.0 and math.isclose(sde[-2], 0.04)
    assert all(a > b for a, b in zip(sde, sde[1:], strict=False))
    ode = flow.time_grid(4, sde=False)
    assert ode == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert flow.time_grid(1) == [1.0, 0.0]
    with pytest.raises(VistokError):
        flow.time_grid(0)


def test_euler_recovers_a_straight_path_exactly() -> None:
    """With the exact velocity of one data point, Euler from t=1 lands on the data for any number of steps."""
    x, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for steps in (1, 3, 7):
        z = eps.clone()
        grid = flow.time_grid(steps, sde=False)
        for t, t_next in zip(grid[:-1], grid[1:], strict=True):
            z = flow.euler_step(z, flow.velocity_target(x, eps), t, t_next)
        torch.testing.assert_close(z, x)


def test_sde_drift_and_step() -> None:
    x, v = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    t = 0.37
    score = -(x + (1 - t) * v) / t
    torch.testing.assert_close(flow.sde_drift(x, v, t), v - t * score)
    noise = torch.randn(10, dtype=torch.float64)
    step = flow.euler_maruyama_step(x, v, t, 0.3, noise)
    torch.testing.assert_close(step, x + flow.sde_drift(x, v, t) * (0.3 - t) + math.sqrt(2 * t * 0.07) * noise)
    torch.testing.assert_close(flow.euler_maruyama_step(x, v, t, 0.0, None), x - t * flow.sde_drift(x, v, t))


@pytest.mark.parametrize("sde", [False, True])
def test_samplers_reach_a_gaussian_target(sde: bool) -> None:
    """Data N(0, s^2) has the closed-form velocity E[eps - x | x_t] = (t - (1-t) s^2) / ((1-t)^2 s^2 + t^2) x_t; both
    samplers must then produce samples with standard deviation s."""
    s = 2.0
    velocity = lambda z, t: (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2) * z  # noqa: E731
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, generator=g, dtype=torch.float64)
    grid = flow.time_grid(100, sde=sde)
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        if sde:
            noise = torch.randn(z.shape, generator=g, dtype=torch.float64) if t_next > 0 else None
            z = flow.euler_maruyama_step(z, velocity(z, t), t, t_next, noise)
        else:
            z = flow.euler_step(z, velocity(z, t), t, t_next)
    assert abs(z.std().item() - s) < 0.04 and abs(z.mean().item()) < 0.05


def test_cfg_schedules_and_guidance() -> None:
    assert [flow.cfg_scale(3.0, s, 5, "linear") for s in range(5)] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert [flow.cfg_scale(3.0, s, 4, "constant") for s in range(4)] == [3.0] * 4
    assert flow.cfg_scale(3.0, 0, 1, "linear") == 3.0  # one entity: full guidance
    # linear-guided: 1 + (3 - 1)(s + 1)/5, the linear ramp shifted one step, so entity 0 is guided too
    assert [flow.cfg_scale(3.0, s, 5, "linear-guided") for s in range(5)] == pytest.approx([1.4, 1.8, 2.2, 2.6, 3.0])
    assert [flow.cfg_scale(2.0, s, 5, "linear-guided") for s in range(5)] == pytest.approx([1.2, 1.4, 1.6, 1.8, 2.0])
    assert flow.cfg_scale(3.0, 0, 1, "linear-guided") == 3.0
    assert flow.CFG_SCHEDULES == ("linear", "constant", "linear-guided")
    with pytest.raises(VistokError, match="unknown CFG schedule 'cosine'; use one of linear, constant, linear-guided"):
        flow.cfg_scale(3.0, 0, 4, "cosine")
    with pytest.raises(VistokError):
        flow.cfg_scale(3.0, 4, 4, "linear")
    c, u = torch.randn(6), torch.randn(6)
    torch.testing.assert_close(flow.guide(c, u, 1.0), c)
    torch.testing.assert_close(flow.guide(c, u, 0.0), u)
    torch.testing.assert_close(flow.guide(c, u, 3.0), u + 3 * (c - u))
    # guiding the velocity guides the SDE drift (affine in v with the same x)
    x, t = torch.randn(6), 0.6
    torch.testing.assert_close(flow.sde_drift(x, flow.guide(c, u, 2.5), t),
                               flow.guide(flow.sde_drift(x, c, t), flow.sde_drift(x, u, t), 2.5))


def test_one_step_sde_returns_x0() -> None:
    """The one-step SDE grid [1, 0] has no stochastic step; its deterministic step with the exact velocity of a clean
    x0 (x_1 = eps, v = eps - x0) must land on x0, not on x0 - eps (the drift's mean step over the whole interval)."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    grid = flow.time_grid(1, sde=True)
    assert grid == [1.0, 0.0]
    z = eps
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        z = flow.euler_maruyama_step(z, flow.velocity_target(x0, eps), t, t_next, None)
    torch.testing.assert_close(z, x0)
    # a deterministic last step from t < 1 is still the SDE's mean step (the official sampler's last step)
    t = 0.04
    xt = flow.interpolate(x0, eps, t)
    torch.testing.assert_close(flow.euler_maruyama_step(xt, eps - x0, t, 0.0, None), x0 - t * eps)
