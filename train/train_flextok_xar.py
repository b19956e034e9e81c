"""Train a class-conditional xAR (Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual
Generation", arXiv 2502.20388) on FlexTok register codes (Bachmann et al., "FlexTok", arXiv 2502.13967).

    vistok encode --ckpt cifar10-flextok-tiny --input cifar10-train --out runs/tokens/cifar10-flextok-tiny-train.npz
    torchrun --nproc_per_node=N train/train_flextok_xar.py \
        --config train/configs/flextok_xar_cifar10_tiny.yaml [key=value ...]
    python train/train_flextok_xar.py --config train/configs/flextok_xar_cifar10_tiny.yaml   # one plain process

cached token ids (N, K) -> FSQ codes (N, K, d) x code_scale -> a (B, d, 1, K) grid cut into prefix groups 1, 1, 2, 4,
..., K/2 -> xAR's flow-matching loss with Noisy Context Learning, one noise level per (sequence, group). code_scale 0
measures 1 / std of the file's codes once (FSQ codes lie in [-1, 1]; the flow's noise has unit variance). Running the
same command again resumes from RUN/last.pt. At the end the EMA weights are exported to RUN/export with the FlexTok
export copied into RUN/export/tokenizer, the code scale, the class names and the sampling settings, so
`vistok sample --ckpt RUN/export --tokens k` needs nothing else (k a group end: 1, 2, 4, ..., K); a preview grid (one
row per k, one column per class) is written next to them.
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
from vistok.generators.flextok_codes import SAMPLING, code_scale_of, ids_to_grid
from vistok.generators.sampling import SampleConfig
from vistok.generators.xar import FAMILY, PRESETS, XAR, XARConfig
from vistok.modules.fsq import FSQ


@dataclass(frozen=True)
class TokenizerRef:
    ckpt: str = "cifar10-flextok-tiny"  # the FlexTok export (folder or shipped name) whose ids the file holds
    code_scale: float = 0.0  # xAR tokens = FSQ codes x code_scale; 0: 1 / std of the token file's codes


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/flextok_xar", lr=1e-3, weight_decay=0.02, betas=(0.9, 0.96), warmup_steps=200, ema_decay=0.999))
    model: XARConfig = field(default_factory=lambda: PRESETS["xar-flextok-tiny"])
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    data: TokenDataConfig = field(default_factory=TokenDataConfig)
    sample: SampleConfig = field(default_factory=lambda: SAMPLING)  # stored in the export (cfg 2.0, constant schedule)
    preview_per_class: int = 1  # columns per class in RUN/export/preview.png, one row per k (0: none)


def main() -> None:
    cfg, env = init_run(Config, __doc__)  # config, process group, the same seed (initial weights) on every rank
    tc = cfg.train
    flextok, dataset = token_dataset(cfg.tokenizer.ckpt, cfg.data, cfg.model)
    fsq = FSQ(flextok.levels)  # ids -> codes needs the quantizer only, not FlexTok's weights
    scale = cfg.tokenizer.code_scale or code_scale_of(dataset.ids, fsq)
    fsq = fsq.to(env.device)
    if env.is_main:
        print(f"code scale {scale:.4f} (xAR tokens = FSQ codes x scale)", flush=True)

    model = XAR(cfg.model).to(env.device)
    run = Trainer(model, cfg, env, tokens_per_sample=flextok.registers)  # wrap, EMA, optimizer, schedule; resumes
    ddp_model = run.ddp_model
    loader = build_loader(dataset, tc.batch_size, env.rank, env.world_size, tc.seed, start_step=run.step,
                          num_workers=tc.num_workers)

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            ids, labels = (t.to(env.device, non_blocking=True) for t in next(batches))  # (B, K), (B,)
            tokens = ids_to_grid(ids, fsq, scale)  # (B, d, 1, K)
            for x, y in run.micro_batches(tokens, labels):
                run.backward(ddp_model(x, y))  # flow-matching loss over all groups, each with its own t
            run.finish_step()

    writer = partial(export_with_preview, tokenizer_ckpt=cfg.tokenizer.ckpt, classes=list(dataset.classes),
                     preview_per_class=cfg.preview_per_class, seed=tc.seed, device=env.device)  # + FlexTok, preview
    ends = ", ".join(map(str, cfg.model.partition.offsets[1:]))
    hint = (f"; sample with: vistok sample --ckpt {{out}} --tokens {flextok.registers} --num 100 --out DIR (--tokens: "
            f"one of {ends})")
    out = run.export(FAMILY[0], cfg.model, writer=writer, code_scale=scale, sample=to_dict(cfg.sample), step=run.step,
                     data=cfg.data.tokens, note=hint)
    if out is not None and cfg.preview_per_class:
        print(f"wrote {out / 'preview.png'} (rows: k = {ends}; columns: classes)")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
