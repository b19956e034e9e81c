"""Generation loops, kept apart from the training forwards.

xAR (Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation", arXiv 2502.20388,
§3.2.3 and Table 6): autoregression over entities; each entity starts from N(0, I) and is integrated from t = 1 to
t = 0 in `steps` network evaluations (Euler-Maruyama SDE by default, or the Euler ODE), conditioned on the finished
entities, which are fed *clean* at t = 0. Their keys and values are computed once per entity and cached, so every flow
step runs the transformer on the current entity's tokens only. `full_recompute=True` runs the whole prefix at every
step instead (no cache): the same numbers, slower; it exists to test the cache.

Classifier-free guidance runs the conditional and the null-class branch in one doubled batch (each with its own
cache) and guides the velocity at every flow step, with a scale linear in the autoregressive step (the first entity is
unguided, the last gets the full scale) or constant. Every random draw comes from one `torch.Generator` on the CPU
(`seed` makes one), so the same seed gives the same samples on any device and batch layout of the guidance branches.
A list of generators, one per image, draws each image's noise from its own: an image then does not depend on which
other images share its batch (`generate.py` seeds them by (seed, image index) so any batch size gives the same images).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from vistok import flow
from vistok.errors import require
from vistok.generators.xar import XAR
from vistok.modules.attention import KVCache

Method = Literal["sde", "ode"]




Generators = torch.Generator | Sequence[torch.Generator] | None


def _randn(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    if isinstance(generator, Sequence):  # one generator per image (the leading axis)
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device).to(device) for g in generator])
    src = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=src).to(device)


@torch.no_grad()
def sample_xar(
    model: XAR, labels: torch.Tensor, steps: int = 50, cfg: float | None = None,
    cfg_schedule: flow.CfgSchedule = "linear", method: Method = "sde", seed: int | None = None,
    generator: Generators = None, t_last: float = 0.04, full_recompute: bool = False,
) -> torch.Tensor:
    """Class-conditional samples: labels (B,) -> (B, C, h, w) token grid (decode with the model's tokenizer).

    steps: network evaluations per entity. cfg: guidance scale, or None for the conditional branch alone (cfg=1.0
    still runs both branches and equals None up to rounding). method: "sde" (Euler-Maruyama on linspace(1, t_last,
    steps) then 0) or "ode" (Euler on linspace(1, 0, steps + 1)). seed / generator: the source of every random draw
    (neither: torch's global RNG); `generator` may be a list of B generators, one per image.
    """
    require(method in ("sde", "ode"), f"unknown sampling method {method!r}; use sde or ode")
    require(labels.ndim == 1, f"labels must be a (B,) tensor of class indices, got shape {tuple(labels.shape)}")
    if isinstance(generator, Sequence):
        require(len(generator) == labels.shape[0], f"got {len(generator)} generators for {labels.shape[0]} labels; pass one per image")
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    param = next(model.parameters())
    part, device, dtype = model.partition, param.device, param.dtype
    labels = labels.to(device)
    grid = flow.time_grid(steps, sde=method == "sde", t_last=t_last)
    guided = cfg is not None
    labels_in = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels  # (B',)
    batch, rows = labels.shape[0], labels_in.shape[0]
    cache = None if full_recompute else model.new_cache()
    done: list[torch.Tensor] = []  # finished entities, (B', len_e, C) each, both guidance branches

    with flow.eval_mode(model):
        for s, length in enumerate(part.lengths):
            if cache is not None and s > 0:  # the previous entity joins the context clean, at t = 0, once
                model.predict(done[-1], labels_in, torch.zeros(rows, 1, device=device), first=s - 1, cache=cache, store=True)
            scale = flow.cfg_scale(cfg, s, part.num_entities, cfg_schedule) if guided else 1.0
            x = _randn((batch, length, model.config.in_channels), generator, device)  # (B, len_s, C) at t = 1
            for t, t_next in zip(grid[:-1], grid[1:]):
                x_in = torch.cat([x, x]) if guided else x  # (B', len_s, C)
                v = _velocity(model, x_in.to(dtype), labels_in, s, t, done, cache).float()
                if guided:
                    v = flow.guide(*v.chunk(2), scale)
                if method == "ode":
                    x = flow.euler_step(x, v, t, t_next)
                else:  # the last step (t_last -> 0) is deterministic
                    noise = _randn(x.shape, generator, device) if t_next > 0 else None
                    x = flow.euler_maruyama_step(x, v, t, t_next, noise)
            done.append((torch.cat([x, x]) if guided else x).to(dtype))
    return part.merge(torch.cat(done, dim=1)[:batch].float())  # (B, C, h, w)


def _velocity(
    model: XAR, x: torch.Tensor, labels: torch.Tensor, s: int, t: float, done: list[torch.Tensor], cache: KVCache | None,
) -> torch.Tensor:
    """Velocity (B', len_s, C) of entity s at noise level t, given the clean finished entities."""
    rows = x.shape[0]
    if cache is not None:
        return model.predict(x, labels, torch.full((rows, 1), t, device=x.device), first=s, cache=cache)
    # no cache: the clean prefix (t = 0) and the current entity in one block-causal forward
    t_all = torch.cat([torch.zeros(rows, s, device=x.device), torch.full((rows, 1), t, device=x.device)], dim=1)  # (B', s+1)
    return model.predict(torch.cat([*done, x], dim=1), labels, t_all)[:, -x.shape[1]:]
