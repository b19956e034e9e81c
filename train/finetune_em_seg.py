"""Fine-tune SegMamba for neuron segmentation on EM volumes: 3 nearest-neighbour affinities, weighted MSE, then a
test score (sliding-window inference, watershed + agglomeration, VOI / ARAND). TokenUnify's downstream task (Chen et
al., arXiv 2405.16847), from a TokenUnify pretraining export or from scratch.

    torchrun --nproc_per_node=N train/finetune_em_seg.py --config train/configs/em_seg_base.yaml init_from=RUN/export
    python train/finetune_em_seg.py --config train/configs/em_seg_tiny.yaml [init_from=EXPORT_DIR] [key=value ...]

`init_from` names a pretraining export (family `tokenunify`, or a `segmamba` export to continue from). Its backbone is
loaded strictly: the backbone config must equal `model` except `out_chans`, every weight but the output head must
match in name and shape, and nothing is dropped silently. Without it the model starts from scratch.
Running the same command again resumes from RUN/last.pt. At the end the EMA weights are exported to RUN/export
(family `segmamba`, with the inference settings, so `vistok em-segment --ckpt RUN/export` needs nothing else), the
test volume `eval.raw` is segmented and scored against `eval.labels`, and the scores go into RUN/export/config.json
and RUN/eval.json.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vistok.config import from_dict, to_dict
from vistok.em.backbone import FAMILY, PRESETS, SegMamba, SegMambaConfig
from vistok.em.data import EvalConfig, SegDataConfig, read_eval, seg_crops, step_loader
from vistok.em.inference import InferenceConfig, segment_volume
from vistok.em.metrics import evaluate
from vistok.em.objectives import FAMILY as PRETRAIN_FAMILY, load_pretrained_backbone
from vistok.em.segmentation import affinities, weighted_mse
from vistok.engine import dist
from vistok.engine.loop import TrainConfig, Trainer, init_run, run_main
from vistok.errors import VistokError, require
from vistok.io import exports


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/em_seg", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), batch_size=2, ema_decay=0.99))
    model: SegMambaConfig = field(default_factory=lambda: PRESETS["segmamba-tiny"])
    data: SegDataConfig = field(default_factory=SegDataConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)  # roi () = data.crop
    eval: EvalConfig = field(default_factory=EvalConfig)
    init_from: str = ""  # a pretraining export folder; empty: from scratch


def load_init(model: SegMamba, init_from: str) -> tuple[list[str], str]:
    """Load a pretrained backbone strictly into `model`; returns the keys left at their init (the output head) and the
    source's pinned name (hf://org/repo@COMMIT for a hub source), which the log and the export record."""
    export = exports.open_export(init_from)
    meta, state = exports.read_export(export)
    family = meta.get("family")
    if family == PRETRAIN_FAMILY[0]:
        backbone, prefix = meta["config"]["backbone"], "backbone."
    elif family == FAMILY[0]:
        backbone, prefix = meta["config"], ""
    else:
        raise VistokError(f"init_from={init_from} holds a {family!r} model; pass a TokenUnify pretraining export "
                          f"(train/pretrain_tokenunify.py writes RUN/export)")
    theirs, ours = to_dict(from_dict(SegMambaConfig, backbone)), to_dict(model.config)
    differ = [k for k in ours if k != "out_chans" and theirs[k] != ours[k]]
    if differ:  # some keys (nslices, mamba_residual) change the computation without changing any weight's shape
        was, now = (", ".join(f"model.{k}={cfg[k]}" for k in differ) for cfg in (theirs, ours))
        raise VistokError(f"init_from={init_from} was pretrained with {was} but this run has {now}; "
                          "set the same backbone keys")
    return load_pretrained_backbone(model, state, prefix), export.source


def main() -> None:
    cfg, env = init_run(Config, __doc__)  # config, process group, the same seed (initial weights) on every rank
    tc = cfg.train
    micro = tc.micro_batch(env.world_size)  # validates the batch split before any work
    require(cfg.model.out_chans == 3, f"model.out_chans={cfg.model.out_chans}; the targets are 3 affinities (z, y, x)")
    infer = replace(cfg.inference, roi=tuple(cfg.inference.roi) or tuple(cfg.data.crop))
    cfg.model.check_input(tuple(cfg.data.crop))
    cfg.model.check_input(infer.roi)  # a bad window fails now, not after training
    # (raw, ids) crops keyed by (index, epoch): deterministic in (seed, step), independent of workers and resume; read
    # lazily (a bad path fails here, before anything is built); each label crop border-widened as the whole volume
    crops = seg_crops(cfg.data, tc.seed, env)
    test = read_eval(cfg.eval)

    model = SegMamba(cfg.model).to(env.device)
    init_from = None  # the pinned source of the pretrained weights, as the log and the export record it
    if cfg.init_from:  # before the EMA, which starts from these weights
        fresh, init_from = load_init(model, cfg.init_from)
        if env.is_main:
            print(f"init_from {init_from}: pretrained backbone loaded; new: {', '.join(fresh) or 'nothing'}")
    run = Trainer(model, cfg, env)  # wrap, EMA, optimizer, schedule; resumes RUN/last.pt if there
    ddp_model = run.ddp_model
    loader = step_loader(crops, tc.batch_size, tc.num_workers, tc.seed, env, start_step=run.step)
    if env.is_main and run.step == 0:
        print(f"SegMamba: {sum(p.numel() for p in model.parameters()):,} parameters, {micro} crops of "
              f"{tuple(cfg.data.crop)} per forward, "
              f"{'init from ' + init_from if init_from else 'from scratch'}")

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            volume, ids = next(batches)  # (B, 1, D, H, W) in [0, 1], (B, D, H, W) neuron ids
            volume, ids = volume.to(env.device, non_blocking=True), ids.to(env.device, non_blocking=True)
            target = affinities(ids)  # (B, 3, D, H, W) in {0, 1}
            for x, t in run.micro_batches(volume, target):
                run.backward(weighted_mse(torch.sigmoid(ddp_model(x).float()), t))
            run.finish_step()

    ema_model = SegMamba(cfg.model).to(env.device)
    ema_model.load_state_dict(run.ema_state())
    scores = {}
    if env.is_main and test is not None:  # the test volume is scored once, by rank 0
        start = time.perf_counter()
        _, seg = segment_volume(ema_model.eval(), test[0], infer)
        scores = {"raw": cfg.eval.raw, "labels": cfg.eval.labels, **evaluate(seg, test[1])._asdict(),
                  "segments": int(len(np.unique(seg))), "seconds": round(time.perf_counter() - start, 1)}
        Path(tc.run_dir, "eval.json").write_text(json.dumps(
            {"step": run.step, "init_from": init_from, **scores}, indent=2) + "\n")
    run.export(FAMILY[0], cfg.model, ema_model.state_dict(), init_from=init_from,
               inference=to_dict(infer), data=list(cfg.data.raw), eval=scores or None)
    if scores:
        print(f"{cfg.eval.raw}: VOI split {scores['voi_split']:.4f}  VOI merge {scores['voi_merge']:.4f}  "
              f"VOI {scores['voi']:.4f}  ARAND {scores['arand']:.4f}  ({scores['segments']} segments) "
              f"-> {Path(tc.run_dir, 'eval.json')}")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
