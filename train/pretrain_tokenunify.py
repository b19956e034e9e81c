"""Pretrain TokenUnify (Chen et al., "TokenUnify: Scalable Autoregressive Visual Pre-training with Mixture Token
Prediction", arXiv 2405.16847) on EM volumes: random-token, next-token and next-all-token prediction on SegMamba.

    torchrun --nproc_per_node=N train/pretrain_tokenunify.py --config train/configs/tokenunify_pretrain_base.yaml
    python train/pretrain_tokenunify.py --config train/configs/tokenunify_pretrain_tiny.yaml [key=value ...]

Crops of `model.input_size` are drawn from `data.volumes` (FILE[:DATASET] each, HDF5 / zarr / npy read lazily: only the
chunks a crop touches; min-max normalised by each volume's stored or scanned range; volumes sharded over ranks).
The task mix is `schedule`, a function of the step kept out of the model:
    random-token only:  schedule.kind=constant  schedule.weights=[1,0,0]   (the paper's stage 1)
    paper's stage 2:    schedule.kind=constant  schedule.weights=[0,1,1]  init_from=STAGE1_RUN/export
    next-all only:      schedule.kind=constant  schedule.weights=[0,1,0]
    one-run two-stage:  schedule.kind=two_stage schedule.weights=[1,1,1] schedule.switch=0.5  (shares one optimizer)
    all three per step: schedule.kind=constant  schedule.weights=[1,1,1]   (two forward passes per step)
The paper's schedule is the first two lines chained: stage 2 loads every weight of stage 1's export (strictly; the
model config must be equal) and starts its own warm-up, cosine and AdamW state. The official autoregressive stage
(its backbone variant, input perturbations, optimizer and precision) is train/configs/tokenunify_official_ar.yaml;
`data.perturb` hands the network a perturbed crop (tokens are hidden in it, the next token is cut out of it) while
the next-all target stays the clean crop. Data settings and loaders: vistok/em/data.py.
Running the same command again resumes from RUN/last.pt. At the end the EMA weights are exported to RUN/export
(config.json + model.safetensors, family `tokenunify`) with each task's MSE on fixed crops; fine-tune from it with
`python train/finetune_em_seg.py ... init_from=RUN/export`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vistok.config import from_dict, to_dict
from vistok.em.data import VolumeDataConfig, fixed_crops, pretrain_crops, step_loader, volume_ranges
from vistok.em.objectives import (
    FAMILY,
    PRESETS,
    MixSchedule,
    TaskWeights,
    TokenUnify,
    TokenUnifyConfig,
    load_pretrained,
)
from vistok.em.volumes import EMCrops, open_volumes
from vistok.engine import dist
from vistok.engine.loop import TrainConfig, Trainer, init_run, run_main
from vistok.errors import VistokError, require
from vistok.io import exports
from vistok.seeding import step_generator


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/tokenunify", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), batch_size=2, ema_decay=0.99))
    model: TokenUnifyConfig = field(default_factory=lambda: PRESETS["tokenunify-tiny"])  # crops are model.input_size
    data: VolumeDataConfig = field(default_factory=VolumeDataConfig)
    schedule: MixSchedule = field(default_factory=MixSchedule)
    eval_crops: int = 8  # fixed crops of data.volumes scored per task at the end (0: none)
    init_from: str = ""  # a TokenUnify export to start from (the paper's stage 2 after stage 1); fresh optimizer

    def __post_init__(self) -> None:
        require(self.eval_crops >= 0, "eval_crops must be >= 0")


def load_init(model: TokenUnify, init_from: str) -> exports.Export:
    """Load every weight of a TokenUnify export into `model` (config must match); returns the export found (its
    metadata, and its source's pinned name, hf://org/repo@COMMIT for a hub source, which the log and export record)."""
    export = exports.open_export(init_from)
    meta, state = exports.read_export(export)
    if meta.get("family") != FAMILY[0]:
        raise VistokError(f"init_from={init_from} holds a {meta.get('family')!r} model; pass a TokenUnify pretraining "
                          "export (RUN/export of train/pretrain_tokenunify.py)")
    theirs, ours = to_dict(from_dict(TokenUnifyConfig, meta["config"])), to_dict(model.config)
    if theirs != ours:
        differ = [k for k in ours if theirs[k] != ours[k]]
        raise VistokError(f"init_from={init_from} was pretrained with a different model config ({', '.join(differ)} "
                          "differ); set the same model keys as the first stage")
    load_pretrained(model, state, str(init_from))
    return export


@torch.no_grad()
def task_errors(model: TokenUnify, crops: EMCrops, seed: int, device: torch.device) -> dict[str, float]:
    """Each task's MSE on the same fixed crops and masks (random, next-all, next token), one crop at a time."""
    model.eval()
    totals = torch.zeros(3)
    gen = torch.Generator(device).manual_seed(seed)
    for i in range(len(crops)):
        out = model(crops[i][None].to(device), TaskWeights(1.0, 1.0, 1.0), gen)
        totals += torch.stack([out.random, out.next_all, out.next]).cpu()
    model.train()
    return dict(zip(("random_mse", "next_all_mse", "next_mse"), (totals / len(crops)).tolist(), strict=True))


def main() -> None:
    cfg, env = init_run(Config, __doc__)  # config, process group, the same seed (initial weights) on every rank
    tc = cfg.train
    micro = tc.micro_batch(env.world_size)  # validates the batch split before any work
    volumes = open_volumes(cfg.data.volumes)  # lazily (metadata only); a bad path fails before anything is built
    ranges = volume_ranges(volumes, cfg.data.intensity)  # whole-volume min-max, without loading it
    # (input, clean) crops keyed by (index, epoch): deterministic in (seed, step), independent of workers, world size
    # and resume; the input is perturbed with probability data.perturb.p (the official recipe: 0.5)
    crops = pretrain_crops(cfg.data, volumes, ranges, cfg.model.input_size, tc.seed, env)

    model = TokenUnify(cfg.model).to(env.device)
    init_from = None  # the pinned source of the first stage's weights, as the log and the export record it
    if cfg.init_from:  # before the Trainer: the EMA starts from these weights; the optimizer and schedule are new
        prev = load_init(model, cfg.init_from)
        init_from = prev.source
        if env.is_main:
            print(f"init_from {init_from}: all weights loaded (its schedule: {prev.meta.get('schedule')}, "
                  f"step {prev.meta.get('step')})")
    run = Trainer(model, cfg, env)  # wrap, EMA, optimizer, schedule; resumes RUN/last.pt if there
    ddp_model = run.ddp_model
    loader = step_loader(crops, tc.batch_size, tc.num_workers, tc.seed, env, start_step=run.step)
    if env.is_main and run.step == 0:
        print(f"TokenUnify: {sum(p.numel() for p in model.parameters()):,} parameters, {cfg.model.num_tokens} tokens "
              f"per {tuple(cfg.model.input_size)} crop, {micro} crops per forward, schedule {cfg.schedule.kind} "
              f"{tuple(cfg.schedule.weights)}")

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            seen, volume = (t.to(env.device, non_blocking=True) for t in next(batches))  # 2 x (B, 1, D, H, W), [0, 1]
            weights = cfg.schedule.at(run.step, tc.total_steps)  # this step's task mix
            gen = step_generator(tc.seed, run.step, env.rank, env.device)  # masks, prefix lengths, fill noise
            for x, x_seen in run.micro_batches(volume, seen):
                out = ddp_model(x, weights, gen, x_seen)
                run.backward(out.loss, random=out.random, next_all=out.next_all, next=out.next)
            run.finish_step(w_random=weights.random, w_next_all=weights.next_all, w_next=weights.next)

    ema_model = TokenUnify(cfg.model).to(env.device)
    ema_model.load_state_dict(run.ema_state())
    scores = {}
    if env.is_main and cfg.eval_crops:  # the same crops and masks for every run of a config: comparable schedules
        fixed = fixed_crops(volumes, ranges, cfg.model.input_size, cfg.eval_crops, seed=tc.seed + 1)
        scores = task_errors(ema_model, fixed, tc.seed, env.device)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
    run.export(FAMILY[0], cfg.model, ema_model.state_dict(), schedule=to_dict(cfg.schedule),
               volumes=list(cfg.data.volumes), init_from=init_from,
               eval={"crops": cfg.eval_crops, **scores}, note=f"; {shown}" if shown else "")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
