"""Train a class-conditional GPT on FlexTok token ids (Bachmann et al., "FlexTok: Resampling Images into 1D Token
Sequences of Flexible Length", arXiv 2502.13967, §4: the AR stage; GPT-2, Radford et al. 2019).

    vistok encode --ckpt cifar10-flextok-tiny --input cifar10-train --out runs/tokens/cifar10-flextok-tiny-train.npz
    torchrun --nproc_per_node=N train/train_flextok_gpt.py --config train/configs/flextok_gpt_cifar10_tiny.yaml [key=value ...]
    python train/train_flextok_gpt.py --config train/configs/flextok_gpt_cifar10_tiny.yaml   # one plain process

cached token ids (N, K) + labels -> next-token cross-entropy with label dropout (for CFG). Running the same command
again resumes from RUN/last.pt. At the end the EMA weights are exported to RUN/export with the FlexTok export copied
into RUN/export/tokenizer, the class names and the sampling settings, so `vistok sample --ckpt RUN/export --tokens k`
needs nothing else; a preview grid (one row per k = 1, 2, 4, ..., K, one column per class) is written next to them.
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
from vistok.generators.ar import FAMILY, PRESETS, AR, ARConfig
import vistok
from vistok.api import export_paired, read_flextok_config
from vistok.generators.flextok_codes import check_pairing
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
    cfg = parse_cli(Config, description=__doc__)
    tc = cfg.train
    env = dist.setup(tc.device)
    dist.seed_everything(tc.seed)  # same initial weights on every rank

    flextok = read_flextok_config(cfg.tokenizer.ckpt)
    check_pairing(cfg.model, flextok)
    dataset = load_tokens(cfg.data, flextok.registers, cfg.model.vocab_size,
                          f"vistok encode --ckpt {cfg.tokenizer.ckpt} --input cifar10-train --out {cfg.data.tokens}")
    require(len(dataset.classes) <= cfg.model.num_classes, f"the data has {len(dataset.classes)} classes but "
            f"model.num_classes={cfg.model.num_classes}; set model.num_classes={len(dataset.classes)}")

    model = AR(cfg.model).to(env.device)
    run = Trainer(model, cfg, env)  # wrap, EMA, optimizer, schedule; resumes RUN/last.pt if there
    ddp_model = run.ddp_model
    loader = build_loader(dataset, tc.batch_size // tc.grad_accum * tc.grad_accum, env.rank, env.world_size, tc.seed,
                          start_step=run.step, num_workers=tc.num_workers)

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            ids, labels = (t.to(env.device, non_blocking=True) for t in next(batches))  # (B, K), (B,)
            total_loss = torch.zeros((), device=env.device)
            for sync, (x, y) in micro_steps(ddp_model, (ids, labels), tc.grad_accum):
                with sync, autocast(tc.precision, env.device):
                    loss = ddp_model(x, y) / tc.grad_accum  # next-token cross-entropy over the K ids
                loss.backward()
                total_loss += loss.detach()
            run.finish_step(total_loss)

    ema_model = AR(cfg.model).to(env.device)
    ema_model.load_state_dict(run.ema_state())
    if env.is_main:
        out = export_paired(
            f"{tc.run_dir}/export", FAMILY[0], to_dict(cfg.model), ema_model.state_dict(), cfg.tokenizer.ckpt,
            classes=list(dataset.classes), sample=to_dict(cfg.sample), step=run.step, data=cfg.data.tokens)
        print(f"exported EMA weights (step {run.step}) to {out}; sample with: vistok sample --ckpt {out} --tokens "
              f"{flextok.registers} --num 100 --out DIR")
        if cfg.preview_per_class:
            labels = torch.arange(cfg.preview_per_class * len(dataset.classes)) % len(dataset.classes)
            preview = vistok.load(out, env.device).ladder(labels, tc.seed)
            Image.fromarray(preview).save(out / "preview.png")
            print(f"wrote {out / 'preview.png'} (rows: k = {', '.join(map(str, k_ladder(flextok.registers)))}; "
                  "columns: classes)")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
