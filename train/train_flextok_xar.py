"""Train a class-conditional xAR (Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual
Generation", arXiv 2502.20388) on FlexTok register codes (Bachmann et al., "FlexTok", arXiv 2502.13967).

    vistok encode --ckpt cifar10-flextok-tiny --input cifar10-train --out runs/tokens/cifar10-flextok-tiny-train.npz
    torchrun --nproc_per_node=N train/train_flextok_xar.py --config train/configs/flextok_xar_cifar10_tiny.yaml [key=value ...]
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

import torch
from PIL import Image

from vistok.config import to_dict
from vistok.data import build_loader
from vistok.data.tokens import TokenDataConfig, load_tokens
from vistok.engine import dist
from vistok.engine.loop import TrainConfig, Trainer, autocast, micro_steps, parse_cli, run_main
from vistok.errors import require
import vistok
from vistok.api import export_paired, read_flextok_config
from vistok.generators.flextok_codes import check_pairing, code_scale_of, ids_to_grid
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
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(steps=50, cfg=2.0))  # stored in the export
    preview_per_class: int = 1  # columns per class in RUN/export/preview.png, one row per k (0: none)


def main() -> None:
    cfg = parse_cli(Config, description=__doc__)
    tc = cfg.train
    env = dist.setup(tc.device)
    dist.seed_everything(tc.seed)  # same initial weights on every rank

    flextok = read_flextok_config(cfg.tokenizer.ckpt)
    check_pairing(cfg.model, flextok)
    fsq = FSQ(flextok.levels)  # ids -> codes needs the quantizer only, not FlexTok's weights
    dataset = load_tokens(cfg.data, flextok.registers, fsq.codebook_size,
                          f"vistok encode --ckpt {cfg.tokenizer.ckpt} --input cifar10-train --out {cfg.data.tokens}")
    require(len(dataset.classes) <= cfg.model.num_classes, f"the data has {len(dataset.classes)} classes but "
            f"model.num_classes={cfg.model.num_classes}; set model.num_classes={len(dataset.classes)}")
    scale = cfg.tokenizer.code_scale or code_scale_of(dataset.ids, fsq)
    fsq = fsq.to(env.device)
    if env.is_main:
        print(f"code scale {scale:.4f} (xAR tokens = FSQ codes x scale)", flush=True)

    model = XAR(cfg.model).to(env.device)
    run = Trainer(model, cfg, env)  # wrap, EMA, optimizer, schedule; resumes RUN/last.pt if there
    ddp_model = run.ddp_model
    loader = build_loader(dataset, tc.batch_size // tc.grad_accum * tc.grad_accum, env.rank, env.world_size, tc.seed,
                          start_step=run.step, num_workers=tc.num_workers)

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            ids, labels = (t.to(env.device, non_blocking=True) for t in next(batches))  # (B, K), (B,)
            tokens = ids_to_grid(ids, fsq, scale)  # (B, d, 1, K)
            total_loss = torch.zeros((), device=env.device)
            for sync, (x, y) in micro_steps(ddp_model, (tokens, labels), tc.grad_accum):
                with sync, autocast(tc.precision, env.device):
                    loss = ddp_model(x, y) / tc.grad_accum  # flow-matching loss over all groups, each with its own t
                loss.backward()
                total_loss += loss.detach()
            run.finish_step(total_loss)

    ema_model = XAR(cfg.model).to(env.device)
    ema_model.load_state_dict(run.ema_state())
    if env.is_main:
        out = export_paired(
            f"{tc.run_dir}/export", FAMILY[0], to_dict(cfg.model), ema_model.state_dict(), cfg.tokenizer.ckpt,
            code_scale=scale, classes=list(dataset.classes), sample=to_dict(cfg.sample), step=run.step,
            data=cfg.data.tokens)
        ends = ", ".join(map(str, cfg.model.partition.offsets[1:]))
        print(f"exported EMA weights (step {run.step}) to {out}; sample with: vistok sample --ckpt {out} --tokens "
              f"{flextok.registers} --num 100 --out DIR (--tokens: one of {ends})")
        if cfg.preview_per_class:
            labels = torch.arange(cfg.preview_per_class * len(dataset.classes)) % len(dataset.classes)
            preview = vistok.load(out, env.device).ladder(labels, tc.seed)
            Image.fromarray(preview).save(out / "preview.png")
            print(f"wrote {out / 'preview.png'} (rows: k = {ends}; columns: classes)")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
