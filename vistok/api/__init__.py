"""The Python API: `vistok.load(source)` and the typed objects it returns.

    import vistok
    gen = vistok.load("cifar10-xar-tiny")
    images = gen.sample(labels=[3, 5], seed=0)            # uint8 (N, H, W, 3); steps/cfg default from the export

`source` is the name of a model shipped with the package (`vistok models`), an export folder (config.json +
model.safetensors) or `hf://org/repo[@revision]` (through huggingface_hub's cache; HF_HUB_OFFLINE=1 works). What comes
back depends on the export's family: a `Generator` (xAR on pixels or latents), a `PairedGenerator` (GPT or xAR on
FlexTok tokens), a `Tokenizer` (FlexTok), a `Segmenter` (SegMamba fine-tuned for EM neuron segmentation) or a
`FeatureNet` (cifar10-net). The `vistok` command calls these same objects.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vistok.api.exports import (
    export_paired,
    is_paired,
    load_flextok,
    load_generator,
    load_paired,
    open_source,
    read_flextok_config,
    read_meta,
    settings,
)
from vistok.api.models import FeatureNet, Generator, PairedGenerator, Segmenter, Tokenizer, as_images
from vistok.errors import VistokError, require
from vistok.generators.ar import AR
from vistok.generators.flextok_codes import CFG_SCHEDULE
from vistok.generators.sampling import ARSampleConfig, SampleConfig
from vistok.io.exports import Export

Loaded = Generator | PairedGenerator | Tokenizer | Segmenter | FeatureNet


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" (CUDA when present, else CPU), "cpu", "cuda" or a torch.device."""
    if isinstance(name, torch.device):
        return name
    require(name in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise VistokError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def load(source: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """The model of an export (shipped name, folder or hf://org/repo[@revision]) as a typed object (see the module).
    Its `source` names the export (an hf:// source pinned to the commit it resolved to); `save` and `push_to_hub`
    pass it on as an export (`vistok.api.sharing`)."""
    export = open_source(source)  # resolved once (hf:// pinned to its commit); every loader below reads this folder
    loaded = _build(export, resolve_device(device))
    loaded.export = export
    return loaded


def _build(export: Export, device: torch.device) -> Loaded:
    meta, source = export.meta, export.source
    family, name = meta.get("family"), export.source
    if is_paired(meta):
        model, codes, meta = load_paired(export, device)
        if isinstance(model, AR):
            sampling = settings(ARSampleConfig, meta.get("sample", {}))
        else:  # an export that stores no schedule gets the one for FlexTok codes, not xAR's linear
            sampling = settings(SampleConfig, {"cfg_schedule": CFG_SCHEDULE, **meta.get("sample", {})})
        return PairedGenerator(model, codes, sampling, meta["classes"], name)
    if family == "xar":
        model, tokenizer, meta = load_generator(export, device)
        return Generator(model, tokenizer, settings(SampleConfig, meta.get("sample", {})), meta["classes"], name)
    if family == "flextok":
        from vistok.tokenizers.flextok_sampling import DecodeConfig

        model, tokenizer, meta = load_flextok(export, device)
        return Tokenizer(model, tokenizer, settings(DecodeConfig, meta.get("sample", {})), meta["resolution"], name)
    if family == "segmamba":
        from vistok.em.inference import InferenceConfig, load_segmenter

        model, meta = load_segmenter(export, device)
        return Segmenter(model, settings(InferenceConfig, meta.get("inference") or {}), name)
    if family == "fid_net":
        from vistok.metrics.fid_net import load_fid_net

        return FeatureNet(load_fid_net(export, device), meta.get("classes"), name)
    if family == "tokenunify":
        raise VistokError(f"{source} is a TokenUnify pretraining export; fine-tune it into a segmenter first "
                          "(train/finetune_em_seg.py init_from=...), then load that")
    raise VistokError(f"{source} holds a {family!r} model, which the Python API does not load")


__all__ = ["FeatureNet", "Generator", "Loaded", "PairedGenerator", "Segmenter", "Tokenizer", "as_images",
           "export_paired", "load", "load_flextok", "load_generator", "load_paired", "open_source",
           "read_flextok_config", "read_meta", "resolve_device"]
