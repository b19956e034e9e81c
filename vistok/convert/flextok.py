"""Released FlexTok tokenizers (apple/ml-flextok; EPFL-VILAB/flextok_*) -> a vistok `flextok` export.

Bachmann et al., "FlexTok", arXiv 2502.13967. The input is a released hub folder (config.json with the Hydra tree +
model.safetensors) or a bare state-dict file (.safetensors, or a pickle read with `weights_only=True`); the mapping,
the checks and the export live in `vistok.tokenizers.flextok_official` (the export loader converts hub folders with it
too), documented there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vistok.convert import common
from vistok.tokenizers import flextok_official


def convert(input: str | Path, out: str | Path, **options: Any) -> tuple[Path, str]:
    """Write the export of a released FlexTok folder or state-dict file; options: fsq_levels, max_timestep,
    nested_dropout, head_dim (values the weights do not hold). Returns (out, summary)."""
    path = Path(input).expanduser()
    if path.is_dir():
        official, hub = flextok_official.read_hub(path)
    else:
        obj = common.read_weights(path, "FlexTok checkpoint")
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        official, hub = common.strip_prefix(common.tensors_only(obj, str(path))), {}
    return flextok_official.export(official, hub, out, str(input), **options)
