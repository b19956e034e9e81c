"""Train a class-conditional GPT on FlexTok token ids (Bachmann et al., "FlexTok: Resampling Images into 1D Token
Sequences of Flexible Length", arXiv 2502.13967, §4: the AR stage; GPT-2, Radford et al. 2019).

    vistok encode --ckpt cifar10-flextok-tiny --input cifar10-train --out runs/tokens/cifar10-flextok-tiny-train.npz
    torchrun --nproc_per_node=N train/train_flextok_gpt.py \
        --config train/configs/flextok_gpt_cifar10_tiny.yaml [key=value ...]
    python train/train_flextok_gpt.py --config train/configs/flextok_gpt_cifar10_tiny.yaml   # one plain process

cached token ids (N, K) + labels -> next-token cross-entropy with label dropout (for CFG). Running the same command
again resumes from RUN/last.pt. At the end the EMA weights are exported to RUN/export with the FlexTok export copied
into RUN/export/tokenizer, the class names and the sampling settings, so `vistok sample --ckpt RUN/export --tokens k`
needs nothing else; a preview grid (one row per k = 1, 2, 4, ..., K, one column per class) is written next to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from vistok.api.token_training import export_with_preview, token_dataset
from vistok.config import to_dict
from vistok.data import build_loader
from vistok.data.tokens import TokenDataConfig
from vistok.engine import dist
from vistok.engine.loop import TrainConfig, Trainer, init_run, run_main
from vistok.generators.ar import AR, FAMILY, PRESETS, ARConfig
from vistok.generators.sampling import ARSampleConfig
from vistok.tokenizers.flextok_sampling import k_ladder


@dataclass(frozen=True)
class TokenizerRef:
    ckpt: str = "cifar10-flextok-tiny"  # the FlexTok export (folder or shipped name) whose ids the file holds


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/flextok_gpt", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), warmup_steps=200, ema_decay=0.999))
    model: ARConfig = field(default_factory=lambda: PRESETS["gpt-tiny"])
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    sample: ARSampleConfig = field(default_factory=lambda: ARSampleConfig(cfg=2.0))  # stored in the export
    preview_per_class: int = 1  # columns per class in RUN/export/preview.png, one row per k (0: none)


def main() -> None:
    cfg, env = init_run(Config, __doc__)  # config, process group, the same seed (initial weights) on every rank
    tc = cfg.train
    flextok, dataset = token_dataset(cfg.tokenizer.ckpt, cfg.data, cfg.model)

    model = AR(cfg.model).to(env.device)
    run = Trainer(model, cfg, env, tokens_per_sample=flextok.registers)  # wrap, EMA, optimizer, schedule; resumes
    ddp_model = run.ddp_model
    loader = build_loader(dataset, tc.batch_size, env.rank, env.world_size, tc.seed, start_step=run.step,
                          num_workers=tc.num_workers)

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            ids, labels = (t.to(env.device, non_blocking=True) for t in next(batches))  # (B, K), (B,)
            for x, y in run.micro_batches(ids, labels):
                run.backward(ddp_model(x, y))  # next-token cross-entropy over the K ids
            run.finish_step()

    writer = partial(export_with_preview, tokenizer_ckpt=cfg.tokenizer.ckpt, classes=list(dataset.classes),
                     preview_per_class=cfg.preview_per_class, seed=tc.seed, device=env.device)  # + FlexTok, preview
    hint = f"; sample with: vistok sample --ckpt {{out}} --tokens {flextok.registers} --num 100 --out DIR"
    out = run.export(FAMILY[0], cfg.model, writer=writer, sample=to_dict(cfg.sample), step=run.step,
                     data=cfg.data.tokens, note=hint)
    if out is not None and cfg.preview_per_class:
        print(f"wrote {out / 'preview.png'} (rows: k = {', '.join(map(str, k_ladder(flextok.registers)))}; "
              "columns: classes)")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
