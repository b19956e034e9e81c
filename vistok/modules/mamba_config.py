"""A single Mamba layer as a model family (config dataclass + module), so converted `mamba_ssm` layers are exports.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752. The layer itself is
`vistok.modules.mamba.Mamba` (parameter names of `mamba_ssm.modules.mamba_simple.Mamba`, and of the `_b` / `_s`
copies of the bidirectional forks used by Vision Mamba and SegMamba / TokenUnify); this file only gives it a frozen
config, so `vistok convert --from mamba` can write `config.json` + `model.safetensors` that the registry rebuilds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vistok.errors import require
from vistok.modules.mamba import Mamba


@dataclass(frozen=True)
class MambaConfig:
    d_model: int = 32
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int = 0  # 0: "auto" = ceil(d_model / 16)
    conv_bias: bool = True
    bias: bool = False  # in_proj / out_proj biases
    bimamba_type: Literal["none", "v2", "v3"] = "none"
    nslices: int = 5  # v3 only: interleaved slices of the third direction

    def __post_init__(self) -> None:
        require(self.d_model >= 1 and self.d_state >= 1 and self.d_conv >= 1,
                "mamba d_model, d_state, d_conv must be positive")
        require(self.bimamba_type in ("none", "v2", "v3"), f"bimamba_type={self.bimamba_type!r} must be none, v2 or v3")
        require(self.dt_rank >= 0 and self.nslices >= 1, "mamba dt_rank must be >= 0 and nslices >= 1")


class MambaLayerModel(Mamba):
    """`Mamba` built from a `MambaConfig`: (B, L, d_model) -> (B, L, d_model)."""

    def __init__(self, config: MambaConfig) -> None:
        c = config
        super().__init__(c.d_model, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, dt_rank=c.dt_rank or "auto",
                         conv_bias=c.conv_bias, bias=c.bias, bimamba_type=c.bimamba_type, nslices=c.nslices)
        self.config = config


PRESETS = {"mamba-d32": MambaConfig()}  # 9,920 parameters: mamba_ssm's Mamba(d_model=32) with its defaults

FAMILY = ("mamba", MambaConfig, MambaLayerModel)
