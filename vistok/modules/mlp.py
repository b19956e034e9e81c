"""Gated MLPs: SwiGLU and GEGLU (Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202).

out = fc2(act(fc1_g(x)) * fc1_x(x)), with SiLU (SwiGLU) or GELU (GEGLU). Built on timm's `SwiGLU` layer, whose split
fc1_g / fc1_x weights match the official checkpoints of MAR-lineage models; xAR (Ren et al., arXiv 2502.20388) uses
the GELU variant with hidden width int(8 D / 3) and dropout after the activation and after fc2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import SwiGLU as _TimmGLU
from torch import nn

from vistok.modules.attention import dropout


class _GLU(_TimmGLU):
    """timm's layer (same parameters and state-dict keys) with a leaner forward: the projections run as functional
    calls and dropout only in training (`attention.dropout`: the same p, faster masks on the CPU), which matters for the
    many small forwards of a sampler."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(F.linear(x, self.fc1_g.weight, self.fc1_g.bias)) * F.linear(x, self.fc1_x.weight, self.fc1_x.bias)
        if self.training:
            h = dropout(h, self.drop1.p)
        out = F.linear(h if isinstance(self.norm, nn.Identity) else self.norm(h), self.fc2.weight, self.fc2.bias)
        return dropout(out, self.drop2.p) if self.training else out


def glu_hidden(width: int) -> int:
    """int(8 D / 3): a gated MLP with this hidden width has the parameters of a plain 4x MLP."""
    return width * 8 // 3


def SwiGLU(width: int, hidden: int | None = None, drop: float = 0.0, bias: bool = True) -> nn.Module:
    """(..., width) -> (..., width) with SiLU gating; hidden defaults to int(8 width / 3)."""
    return _GLU(width, hidden or glu_hidden(width), act_layer=nn.SiLU, drop=drop, bias=bias)


def GEGLU(width: int, hidden: int | None = None, drop: float = 0.0, bias: bool = True) -> nn.Module:
    """(..., width) -> (..., width) with (exact) GELU gating; hidden defaults to int(8 width / 3)."""
    return _GLU(width, hidden or glu_hidden(width), act_layer=nn.GELU, drop=drop, bias=bias)
