"""TokenUnify pretraining: random-token, next-token and next-all-token prediction on a SegMamba backbone.

Chen et al., "TokenUnify: Scalable Autoregressive Visual Pre-training with Mixture Token Prediction", arXiv
2405.16847 (v2: "Scaling Up Autoregressive Pretraining for Neuron Segmentation", ICCV 2025). All three tasks regress
voxels in [0, 1] with MSE on sigmoid outputs, as in the official code:

    random:    input = volume with a random subset of tokens hidden;  target = the whole clean volume
    next-all:  input = volume with tokens [k, K) hidden;             target = the whole clean volume
    next:      same input (one shared forward pass);                  target = token k of the input volume, from a
               small head (3 stride-2 convs + Linear, the official "Perceiver resampler") on the output logits

"Input volume" is the crop as the data side hands it over: perturbed with probability 0.5 in the official recipe
(`vistok.em.perturb`). The official loader cuts the next token out of that perturbed crop, while the next-all target
is the clean crop; `forward(volume, ..., inputs=perturbed)` does the same (k ~ U{1 .. K-1} per sample, the hidden
tokens filled with 0 or N(0, 1)).

The mix is a schedule of task weights over training steps (`MixSchedule`), kept out of `forward`. The paper's
schedule is two runs: random-token prediction, then next-all + next-token 1:1 from its weights with a fresh optimizer
and learning-rate schedule (`load_pretrained` carries the weights across). Every parameter
takes part in every step, so DDP needs no `find_unused_parameters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vistok.em.backbone import AR_BASE, SegMamba, SegMambaConfig
from vistok.em.tokens import hide_tokens, next_token_target, prefix_lengths, prefix_mask, random_token_mask, token_grid
from vistok.errors import VistokError, require


class TaskWeights(NamedTuple):
    random: float = 1.0
    next_all: float = 1.0
    next: float = 1.0


class PretrainLoss(NamedTuple):
    loss: torch.Tensor  # weighted sum, what is optimised
    random: torch.Tensor  # each task's MSE (0 where the task did not run this step)
    next_all: torch.Tensor
    next: torch.Tensor


@dataclass(frozen=True)
class MixSchedule:
    """Task weights per step of one run. `weights` = (random, next_all, next).

    constant:  `weights` at every step (random and autoregressive inputs each get their own forward pass). The paper's
               schedule is two runs of this kind chained through an export: stage 1 `weights=(1, 0, 0)` (random-token
               prediction), then stage 2 `weights=(0, 1, 1)` (next-all + next-token 1:1) initialised from stage 1's
               export with its own warm-up, cosine and a fresh optimizer (`init_from` of train/pretrain_tokenunify.py);
    two_stage: a one-run approximation: (w_random, 0, 0) for the first `switch` fraction of the steps, then
               (0, w_next_all, w_next) -- one optimizer and one cosine, so stage 2 inherits AdamW's moments and gets
               only the low-learning-rate tail;
    alternate: the two phases of two_stage, swapping every `period` steps. Not the official `auto_mode=0`: that was
               meant to switch objectives every 100 epochs via `(epoch // 100) % 2`, but the epoch never reaches the
               model's forward, so the official run trains the next-token loss alone; `auto_mode=1`, the released
               setting, is next-all + next-token 1:1 at every step (stage 2 above).
    """

    kind: Literal["constant", "two_stage", "alternate"] = "two_stage"
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    switch: float = 0.5
    period: int = 1000

    def __post_init__(self) -> None:
        require(min(self.weights) >= 0 and max(self.weights) > 0,
                f"schedule weights {self.weights} must be >= 0, one > 0")
        require(0.0 <= self.switch <= 1.0, f"schedule switch {self.switch} must be a fraction in [0, 1]")
        require(self.period >= 1, f"schedule period {self.period} must be positive")

    def at(self, step: int, total_steps: int) -> TaskWeights:
        w_random, w_all, w_next = self.weights
        if self.kind == "constant":
            return TaskWeights(w_random, w_all, w_next)
        first_phase = step < self.switch * total_steps if self.kind == "two_stage" else (step // self.period) % 2 == 0
        return TaskWeights(w_random, 0.0, 0.0) if first_phase else TaskWeights(0.0, w_all, w_next)


@dataclass(frozen=True)
class TokenUnifyConfig:
    backbone: SegMambaConfig = field(default_factory=SegMambaConfig)
    input_size: tuple[int, int, int] = (16, 160, 160)  # the crop; sets the next-token head's Linear
    patch_size: tuple[int, int, int] = (4, 16, 16)
    mask_ratio: tuple[float, float] = (0.4, 0.4)  # per-sample U(lo, hi); the official non-0.4 setting is (0.2, 0.8)
    fill: Literal["zero", "noise"] = "noise"
    head_channels: int = 12

    def __post_init__(self) -> None:
        require(self.backbone.out_chans == self.backbone.in_chans,
                "TokenUnify reconstructs its input: backbone.out_chans must equal backbone.in_chans")
        k = math.prod(token_grid(self.input_size, self.patch_size))
        require(k >= 2, f"input {self.input_size} with patch {self.patch_size} gives {k} token(s); need at least 2")
        lo, hi = self.mask_ratio
        require(0.0 <= lo <= hi <= 1.0, f"mask_ratio {self.mask_ratio} must satisfy 0 <= lo <= hi <= 1")
        require(self.fill in ("zero", "noise"), f"fill must be 'zero' or 'noise', got {self.fill!r}")
        self.backbone.check_input(self.input_size)

    @property
    def num_tokens(self) -> int:
        return math.prod(token_grid(self.input_size, self.patch_size))


class NextTokenHead(nn.Module):
    """Full-resolution output map (B, C, D, H, W) -> the next token's voxels (B, C * prod(patch))."""

    def __init__(self, channels: int, input_size: tuple[int, int, int],
                 patch: tuple[int, int, int], hidden: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv3d(channels, hidden, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv3d(hidden, hidden, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv3d(hidden, 1, 3, stride=2, padding=1),
        )
        reduced = math.prod(math.ceil(s / 8) for s in input_size)  # three stride-2 convs
        self.proj = nn.Linear(reduced, channels * math.prod(patch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.convs(x).flatten(1))  # (B, C * pd * ph * pw)


class TokenUnify(nn.Module):
    """SegMamba backbone + next-token head; `forward(volume, weights)` is the pretraining loss."""

    def __init__(self, config: TokenUnifyConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = SegMamba(config.backbone)
        self.next_head = NextTokenHead(config.backbone.in_chans, config.input_size, config.patch_size,
                                       config.head_channels)

    def hide(self, volume: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return hide_tokens(volume, mask, self.config.patch_size, self.config.fill, generator)

    def forward(self, volume: torch.Tensor, weights: TaskWeights = TaskWeights(),  # noqa: B008 (an immutable NamedTuple)
                generator: torch.Generator | None = None, inputs: torch.Tensor | None = None) -> PretrainLoss:
        """(B, C, D, H, W) clean volumes in [0, 1] -> the weighted loss and each task's MSE. `inputs` (same shape) is
        what the network sees before tokens are hidden, e.g. the perturbed crops; the default is `volume`."""
        cfg = self.config
        if tuple(volume.shape[2:]) != cfg.input_size:
            raise VistokError(f"TokenUnify was built for {cfg.input_size} crops, got {tuple(volume.shape[2:])}; "
                              "set model.input_size to the crop size")
        seen = volume if inputs is None else inputs
        if seen.shape != volume.shape:
            raise VistokError(f"inputs of shape {tuple(seen.shape)} do not match the volumes' {tuple(volume.shape)}")
        b, k, dev = volume.shape[0], cfg.num_tokens, volume.device
        zero = volume.new_zeros(())
        l_random = l_all = l_next = zero
        logits = None
        if weights.random > 0:  # random-token prediction
            mask = random_token_mask(b, k, cfg.mask_ratio, generator, dev)  # (B, K)
            logits = self.backbone(self.hide(seen, mask, generator))  # (B, C, D, H, W)
            l_random = F.mse_loss(torch.sigmoid(logits), volume)
        if weights.next_all > 0 or weights.next > 0:  # next-all and next-token from one forward pass
            prefix = prefix_lengths(b, k, generator, dev)  # (B,)
            logits = self.backbone(self.hide(seen, prefix_mask(prefix, k), generator))
            l_all = F.mse_loss(torch.sigmoid(logits), volume)
            target = next_token_target(seen, prefix, cfg.patch_size)  # (B, C * prod(patch)), as the official loader
            l_next = F.mse_loss(torch.sigmoid(self.next_head(logits)), target)
        if logits is None:
            raise VistokError(f"task weights {tuple(weights)} are all zero; at least one task must run")
        if weights.next == 0 and weights.next_all == 0:  # keep the head in the graph (zero gradient) for DDP
            l_next = l_next + 0.0 * self.next_head(logits).sum()
        loss = weights.random * l_random + weights.next_all * l_all + weights.next * l_next
        return PretrainLoss(loss, l_random.detach(), l_all.detach(), l_next.detach())

    @torch.no_grad()
    def reconstruct(self, volume: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> sigmoid of the backbone output, the volume as the network fills it in."""
        return torch.sigmoid(self.backbone(volume))


def load_pretrained(model: TokenUnify, state: dict[str, torch.Tensor], source: str) -> None:
    """Every weight of a TokenUnify export (backbone and next-token head) into `model`, strictly: stage 2 of the
    paper's schedule starts from stage 1's weights; nothing is missing, unexpected or mis-shaped."""
    from vistok.io.exports import load_state_strict

    load_state_strict(model, state, source)


def load_pretrained_backbone(model: SegMamba, state: dict[str, torch.Tensor], prefix: str = "backbone.") -> list[str]:
    """Copy a TokenUnify state dict's backbone into a SegMamba (strictly); returns the keys left at their init.

    Only the output head (`head.*`) may differ (1 reconstruction channel vs 3 affinities); any other missing,
    unexpected or mis-shaped key is an error, never silently dropped.
    """
    src = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not src:
        raise VistokError(f"the checkpoint has no '{prefix}*' weights; is it a TokenUnify pretraining export?")
    own = model.state_dict()
    head = {k for k in own if k.startswith("head.")}
    missing = sorted(set(own) - set(src) - head)
    unexpected = sorted(set(src) - set(own))
    shapes = sorted(k for k in set(src) & set(own) - head if src[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        raise VistokError(f"pretrained backbone does not match the model: missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}, shape mismatches {shapes[:3]}; use the same backbone config")
    kept = sorted(k for k in head if k in src and src[k].shape == own[k].shape)
    model.load_state_dict({**own, **{k: src[k] for k in set(src) - head}, **{k: src[k] for k in kept}})
    return sorted(head - set(kept))


_BASE = SegMambaConfig(out_chans=1)
_TINY = SegMambaConfig(out_chans=1, feat_size=(8, 16, 32, 64), hidden_size=64, depths=(1, 1, 1, 1),
                       kernel_size=(1, 3, 3), nslices=4)

PRESETS = {  # the paper's crop 16x160x160 (400 tokens); the tiny one fits the 16x64x64 crops of the CPU demos
    "tokenunify-base": TokenUnifyConfig(backbone=_BASE),
    # the official autoregressive stage's model (src/segmamba_ar.py): what `convert --from tokenunify` of a released
    # pretraining checkpoint builds
    "tokenunify-ar-base": TokenUnifyConfig(backbone=AR_BASE),
    "tokenunify-tiny": TokenUnifyConfig(backbone=_TINY, input_size=(16, 64, 64)),
}

FAMILY = ("tokenunify", TokenUnifyConfig, TokenUnify)
