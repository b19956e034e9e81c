"""Generation loops, kept apart from the training forwards.

xAR (Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation", arXiv 2502.20388,
§3.2.3 and Table 6): autoregression over entities; each entity starts from N(0, I) and is integrated from t = 1 to
t = 0 in `steps` network evaluations (Euler-Maruyama SDE by default, or the Euler ODE), conditioned on the finished
entities, which are fed *clean* at t = 0. Their keys and values are computed once per entity and cached, so every flow
step runs the transformer on the current entity's tokens only. `full_recompute=True` runs the whole prefix at every
step instead (no cache): the same numbers, slower; it exists to test the cache.

Classifier-free guidance runs the conditional and the null-class branch in one doubled batch (each with its own
cache) and guides the velocity at every flow step, with a scale per autoregressive step from `flow.cfg_scale`: linear
(the first entity unguided, the last at the full scale; xAR's), constant, or linear-guided (the linear ramp shifted so
the first entity is guided too). At a scale of 1 the null branch does not change the velocity, so an unguided first
entity (the linear schedule's) is integrated by the conditional rows alone: it has no cached context to slice, and
the null branch's cache still receives the finished entity, as the next entities need.

`snap` (optional) maps every finished entity before it joins the context and the output, in both guidance branches:
the sampler for FlexTok codes passes the FSQ lattice (`FlexTokCodes.snap`), so later groups are conditioned on exactly
the codes training fed (the nearest grid points), not on the flow's slightly-off continuous output.

Each sampler takes its frozen settings object (`SampleConfig`, `ARSampleConfig`: what an export stores and a user
overrides) plus the per-call data: the model, the labels, and the source of its draws. Every random draw goes through
`vistok.seeding` from one `torch.Generator` on the CPU (`seed` makes one), so the same seed gives the same samples on
any device and batch layout of the guidance branches; a list of generators, one per image, draws each image's noise
from its own, so an image does not depend on which other images share its batch (`vistok.seeding.image_generators`
seeds them by (seed, image index), so any batch size gives the same images).
`sample_entities` may stop after any entity: on FlexTok register codes (prefix groups ending at k = 1, 2, 4, ..., K)
that is generation of the first k tokens, and the first entities of a longer run are exactly those of a shorter one.

GPT over FlexTok ids (Bachmann et al., "FlexTok", arXiv 2502.13967, §4; GPT-2, Radford et al. 2019), `sample_ar`:
one token per step from the class token on, with a KV cache (each step feeds the newest token only) or full
recomputation; logits are divided by the temperature (0: greedy), cut to the top-k and to the top-p nucleus, and
sampled by inverse CDF from one uniform draw per image (from that image's generator). CFG: the class and the null
class run in one doubled batch and the logits combine as null + scale (cond - null), constant over the tokens.
Generation stops at any k <= K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from vistok import flow
from vistok.checks import MAX_STEPS, MAX_TEMPERATURE, float_arg, guidance_arg, int_arg
from vistok.errors import ArgumentTypeError, require
from vistok.generators.ar import AR
from vistok.generators.xar import XAR
from vistok.modules.attention import KVCache
from vistok.seeding import Generators, rand, randn, resolve

Method = Literal["sde", "ode"]


@dataclass(frozen=True)
class SampleConfig:
    """xAR sampling settings (`sample_xar`, `sample_entities`); an export stores its choice, `vistok sample` flags and
    `Generator.sample` keywords override them."""

    steps: int = 50  # network evaluations per entity
    cfg: float = 1.0  # guidance scale (1: no guidance)
    cfg_schedule: flow.CfgSchedule = "linear"  # see flow.cfg_scale; exports on FlexTok codes store "constant"
    method: Method = "sde"

    def __post_init__(self) -> None:
        int_arg(self.steps, "steps (flow steps per entity)", 1, MAX_STEPS)
        flow.check_cfg_schedule(self.cfg_schedule)
        require(self.method in ("sde", "ode"), f"unknown sampling method {self.method!r}; use sde or ode")
        guidance_arg(self.cfg)


@dataclass(frozen=True)
class ARSampleConfig:
    """GPT sampling settings (`sample_ar`); an export stores its choice, flags and keywords override them."""

    cfg: float = 1.0  # guidance scale on the logits (1: no guidance)
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __post_init__(self) -> None:
        guidance_arg(self.cfg)
        float_arg(self.temperature, "temperature", 0.0, MAX_TEMPERATURE, why=" (0: greedy)")
        int_arg(self.top_k, "top_k", 0, why=" (0: off)")
        require(0.0 < float_arg(self.top_p, "top_p") <= 1.0, f"top-p must lie in (0, 1] (1: off), got {self.top_p}")


Snap = Callable[[torch.Tensor], torch.Tensor]


def settings_arg(settings: object, kind: type, sampler: str) -> None:
    """A one-line TypeError when a sampler is handed something other than its settings object (e.g. an old-style
    number of steps in its place)."""
    if not isinstance(settings, kind):
        raise ArgumentTypeError(f"{sampler}: the settings must be one {kind.__name__}, e.g. {kind.__name__}(cfg=2.0); "
                                f"got {type(settings).__name__} {settings!r}")


@torch.no_grad()
def sample_xar(
    model: XAR, labels: torch.Tensor, settings: SampleConfig = SampleConfig(), *, seed: int | None = None,
    generator: Generators = None, t_last: float = 0.04, full_recompute: bool = False, compile: bool = False,
    snap: Snap | None = None,
) -> torch.Tensor:
    """Class-conditional samples: labels (B,) -> (B, C, h, w) token grid (decode with the model's tokenizer).

    settings: steps per entity, cfg (1.0: no guidance, the conditional branch alone, no null pass), its schedule and the
    method, "sde" (Euler-Maruyama on linspace(1, t_last, steps) then 0) or "ode" (Euler on linspace(1, 0, steps + 1)).
    seed / generator: the source of every random draw (`vistok.seeding.resolve`; neither: torch's global RNG);
    `generator` may be a list of B generators, one per image. compile: run the transformer stack through
    `torch.compile` (`XAR.compile_stack`; compiled once per model, the same numbers up to float rounding). snap: a map
    (B', len, C) -> (B', len, C) applied to every finished entity before it joins the context and the output (None:
    the flow's output as it is).
    """
    seq = sample_entities(model, labels, settings, seed=seed, generator=generator, t_last=t_last,
                          full_recompute=full_recompute, compile=compile, snap=snap)
    return model.partition.merge(seq)  # (B, C, h, w)


@torch.no_grad()
def sample_entities(
    model: XAR, labels: torch.Tensor, settings: SampleConfig = SampleConfig(), *, entities: int | None = None,
    seed: int | None = None, generator: Generators = None, t_last: float = 0.04, full_recompute: bool = False,
    compile: bool = False, snap: Snap | None = None,
) -> torch.Tensor:
    """The first `entities` entities (None: all) of class-conditional samples, as a (B, L', C) float sequence in
    entity order (L' = their tokens). The CFG schedule runs over all the model's entities, so stopping early gives
    exactly the beginning of a full run. Other arguments as in `sample_xar`."""
    settings_arg(settings, SampleConfig, "sample_entities")
    require(labels.ndim == 1, f"labels must be a (B,) tensor of class indices, got shape {tuple(labels.shape)}")
    generator = resolve(generator, seed, labels.shape[0])
    if compile:
        model.compile_stack()
    param = next(model.parameters())
    part, device, dtype = model.partition, param.device, param.dtype
    labels = labels.to(device)
    cfg, method = settings.cfg, settings.method
    grid = flow.time_grid(settings.steps, sde=method == "sde", t_last=t_last)
    guided = cfg != 1.0  # scale 1 is the conditional model: no null branch
    labels_in = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels  # (B',)
    batch, rows = labels.shape[0], labels_in.shape[0]
    cache = None if full_recompute else model.new_cache()
    done: list[torch.Tensor] = []  # finished entities, (B', len_e, C) each, both guidance branches
    stop = part.num_entities if entities is None else entities
    require(1 <= stop <= part.num_entities, f"entities={entities} must lie in 1..{part.num_entities}")

    with flow.eval_mode(model):
        for s, length in enumerate(part.lengths[:stop]):
            if cache is not None and s > 0:  # the previous entity joins the context clean, at t = 0, once
                model.predict(done[-1], labels_in, torch.zeros(rows, 1, device=device), first=s - 1,
                              cache=cache, store=True)
            scale = flow.cfg_scale(cfg, s, part.num_entities, settings.cfg_schedule) if guided else 1.0
            # scale 1: the null branch would not change v; for entity 0 (no cached rows to slice) it is skipped
            both = guided and not (s == 0 and scale == 1.0)
            x = randn((batch, length, model.config.in_channels), generator, device)  # (B, len_s, C) at t = 1
            for t, t_next in zip(grid[:-1], grid[1:], strict=True):
                if both:
                    # (B', len_s, C)
                    v = _velocity(model, x.repeat(2, 1, 1).to(dtype), labels_in, s, t, done, cache).float()
                    v = flow.guide(*v.chunk(2), scale)
                else:  # the conditional rows alone (no guidance, or the unguided entity 0 without a cache)
                    v = _velocity(model, x.to(dtype), labels, s, t, done, cache if s > 0 else None).float()
                if method == "ode":
                    x = flow.euler_step(x, v, t, t_next)
                else:  # the last step (t_last -> 0) is deterministic
                    noise = randn(x.shape, generator, device) if t_next > 0 else None
                    x = flow.euler_maruyama_step(x, v, t, t_next, noise)
            x = snap(x) if snap is not None else x  # e.g. onto the FSQ lattice, before the context and the output
            done.append((torch.cat([x, x]) if guided else x).to(dtype))  # both branches continue from the same entity
    return torch.cat(done, dim=1)[:batch].float()  # (B, L', C)


def _velocity(
    model: XAR, x: torch.Tensor, labels: torch.Tensor, s: int, t: float, done: list[torch.Tensor],
    cache: KVCache | None,
) -> torch.Tensor:
    """Velocity (B', len_s, C) of entity s at noise level t, given the clean finished entities."""
    rows = x.shape[0]
    if cache is not None:
        return model.predict(x, labels, torch.full((rows, 1), t, device=x.device), first=s, cache=cache)
    # no cache: the clean prefix (t = 0) and the current entity in one block-causal forward
    # (B', s+1)
    t_all = torch.cat([torch.zeros(rows, s, device=x.device), torch.full((rows, 1), t, device=x.device)], dim=1)
    return model.predict(torch.cat([*done, x], dim=1), labels, t_all)[:, -x.shape[1]:]


# ------------------------------------------------------------------------------------------------------------ GPT
def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with everything outside the top_k largest (0: no cut) and outside the top-p nucleus (the fewest
    most likely tokens whose probabilities reach p; the most likely token always stays) set to -inf."""
    require(top_k >= 0 and 0.0 < top_p <= 1.0, f"top_k must be >= 0 and top_p in (0, 1], got {top_k} and {top_p}")
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)  # mass of better tokens
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_tokens(
    logits: torch.Tensor, settings: ARSampleConfig = ARSampleConfig(), generator: Generators = None,
) -> torch.Tensor:
    """(B, V) logits -> (B,) int64 ids: argmax at temperature 0, else an inverse-CDF draw from the softmax filtered by
    the settings' top-k and top-p (their cfg is applied before, by `guided_logits`)."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.double() / settings.temperature, settings.top_k, settings.top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    cdf = probs.cumsum(dim=-1)
    u = rand(logits.shape[0], generator).to(logits.device)[:, None] * cdf[:, -1:]  # (B, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_max(logits.shape[-1] - 1)[:, 0]


def guided_logits(logits: torch.Tensor, cfg: float) -> torch.Tensor:
    """(2B, V) logits of [cond; null] rows -> (B, V): null + cfg (cond - null)."""
    return flow.guide(*logits.chunk(2), cfg)


@torch.no_grad()
def sample_ar(
    model: AR, labels: torch.Tensor, settings: ARSampleConfig = ARSampleConfig(), *, tokens: int | None = None,
    seed: int | None = None, generator: Generators = None, full_recompute: bool = False, compile: bool = False,
) -> torch.Tensor:
    """Class-conditional token ids: labels (B,) -> (B, tokens) int64 ids (None: all K), the first `tokens` of an
    image's sequence (stopping early draws exactly the beginning of a longer run).

    settings: cfg on the logits (1.0: no guidance, the conditional branch alone, no null pass), temperature (0:
    greedy), top_k (0: off), top_p (1: off); see `draw_tokens`. seed / generator: the source of every draw
    (`vistok.seeding.resolve`; neither: torch's global RNG); a list gives one generator per image.
    compile: run the block stack through `torch.compile` (`AR.compile_stack`).
    """
    settings_arg(settings, ARSampleConfig, "sample_ar")
    k = model.config.tokens if tokens is None else tokens
    require(1 <= k <= model.config.tokens, f"tokens={tokens} must lie in 1..{model.config.tokens}")
    require(labels.ndim == 1, f"labels must be a (B,) tensor of class indices, got shape {tuple(labels.shape)}")
    generator = resolve(generator, seed, labels.shape[0])
    if compile:
        model.compile_stack()
    device = next(model.parameters()).device
    labels = labels.to(device)
    cfg = settings.cfg
    guided = cfg != 1.0
    labels_in = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels  # (B',)
    cache = None if full_recompute else model.new_cache()
    ids = torch.zeros(labels_in.shape[0], 0, dtype=torch.long, device=device)  # (B', n): both branches share them

    with flow.eval_mode(model):
        for n in range(k):
            if cache is None:  # the whole prefix [class, tokens 0..n-1] at every step
                logits = model.logits(model.embed(labels_in, ids))[:, -1]
            elif n == 0:  # the class token opens the cache
                logits = model.logits(model.label_emb(labels_in)[:, None], 0, cache, store=True)[:, -1]
            else:  # only the newest token, at position n
                logits = model.logits(model.token_embedding(ids[:, -1:]), n, cache, store=True)[:, -1]
            logits = guided_logits(logits, cfg) if guided else logits  # (B, V)
            nxt = draw_tokens(logits, settings, generator)  # (B,)
            ids = torch.cat([ids, (torch.cat([nxt, nxt]) if guided else nxt)[:, None]], dim=1)
    return ids[:labels.shape[0]]  # (B, k)
