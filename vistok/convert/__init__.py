"""Released checkpoints in: `convert(kind, input, out, **options)` writes a vistok export (`config.json` +
`model.safetensors`) that `--ckpt DIR`, `vistok.registry.load_model` and the training scripts accept.

Kinds: `xar` (OliverRensu/xAR training containers and released state dicts), `mar-vae` (MAR's KL-16 `kl16.ckpt`),
`mamba` (`mamba_ssm` Mamba layers), `segmamba` (TokenUnify's SegMamba with its v3 Mamba layers), `tokenunify`
(TokenUnify's pretrained model: that SegMamba plus its next-token head), `flextok` (apple/ml-flextok's released
tokenizers: a hub folder or a bare state dict). Pickled inputs are
read with `weights_only=True`, an explicit allow-list (`argparse.Namespace`) and `map_location="cpu"`
(`vistok.io.safeload`), so a file that names any other class or function is refused with one line and nothing
is written. Each converter checks the mapped state dict against the vistok model (keys and shapes, on the meta
device) before it writes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, NamedTuple

from vistok.errors import VistokError

KINDS = {"xar": "xar", "mar-vae": "mar_vae", "mamba": "mamba", "segmamba": "segmamba", "tokenunify": "tokenunify",
         "flextok": "flextok"}
OPTIONS = {  # the options each kind takes (anything else given is an error, not silently ignored)
    "xar": ("weights", "time_floor", "heads", "vae"),
    "mar-vae": (),
    "mamba": ("prefix", "nslices"),
    "segmamba": ("nslices",),
    "tokenunify": ("nslices", "input_size", "patch_size"),
    "flextok": ("fsq_levels", "max_timestep", "nested_dropout", "head_dim"),
}


class Converted(NamedTuple):
    path: Path
    kind: str
    summary: str  # one line: what was written


def convert(kind: str, input: str | Path, out: str | Path, **options: Any) -> Converted:
    """Convert `input` (a checkpoint file of `kind`) into the export folder `out`. Options left at None are unset."""
    if kind not in KINDS:
        raise VistokError(f"unknown checkpoint kind {kind!r}; --from takes one of {', '.join(KINDS)}")
    given = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(set(given) - set(OPTIONS[kind]))
    if wrong:
        takes = ", ".join("--" + o.replace("_", "-") for o in OPTIONS[kind])
        raise VistokError(f"--{wrong[0].replace('_', '-')} does not apply to --from {kind}"
                          f"{' (it takes ' + takes + ')' if OPTIONS[kind] else ''}")
    module = importlib.import_module(f"vistok.convert.{KINDS[kind]}")
    path, summary = module.convert(input, out, **given)
    return Converted(Path(path), kind, summary)


__all__ = ["KINDS", "Converted", "convert"]
