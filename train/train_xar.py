"""Train a class-conditional xAR generator (Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual
Generation", arXiv 2502.20388) on images through a tokenizer, or on a cache of VAE latents.

    torchrun --nproc_per_node=N train/train_xar.py --config train/configs/xar_cifar10_tiny.yaml [key=value ...]
    python train/train_xar.py --config train/configs/xar_cifar10_tiny.yaml      # one plain process (CPU or one GPU)
    torchrun --nnodes=N --nproc_per_node=8 ... train/train_xar.py --config train/configs/xar_b_in256.yaml \
        data.latents=CACHE                                                      # the paper's ImageNet-256 runs

images -> tokenizer.encode -> (B, C, h, w) tokens -> xAR's flow-matching loss with Noisy Context Learning. With
`data.latents=CACHE` (written by `vistok cache-latents`) every step instead draws `scale * (mean + std * eps)` from the
cached posterior moments of each image or of its flip, as MAR/xAR train on ImageNet, and the cache's VAE becomes the
tokenizer. Running the same command again resumes from RUN/last.pt. At the end the EMA weights are exported to
RUN/export with the model config, the tokenizer config, the class names and the sampling settings, so
`vistok sample --ckpt RUN/export` needs nothing else; a preview grid (one row per class) is written next to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from vistok.api import Generator
from vistok.config import to_dict
from vistok.data import ImageDataConfig, build_image_dataset, build_loader, subset
from vistok.data.latents import LatentCache, latent_loader
from vistok.engine import dist
from vistok.engine.loop import TrainConfig, Trainer, init_run, run_main
from vistok.errors import require
from vistok.generators.sampling import SampleConfig
from vistok.generators.xar import FAMILY, PRESETS, XAR, XARConfig
from vistok.io.atomic import atomic_write
from vistok.tokenizers.build import build_tokenizer
from vistok.tokenizers.pixel import FAMILY as TOKENIZER_FAMILY, PixelConfig, PixelTokenizer
from vistok.viz import class_grid


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/xar", lr=1e-3, weight_decay=0.02, betas=(0.9, 0.96), warmup_steps=500, ema_decay=0.999))
    model: XARConfig = field(default_factory=lambda: PRESETS["xar-tiny-s"])
    tokenizer: PixelConfig = field(default_factory=lambda: PixelConfig(patch=4, scale=2.0))
    data: ImageDataConfig = field(default_factory=lambda: ImageDataConfig(hflip=True))
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(steps=50, cfg=2.0))  # stored in the export
    preview_per_class: int = 10  # images per class in RUN/export/preview.png (0: none)


def check_pairing(cfg: Config, channels: int, grid_hw: tuple[int, int], num_classes: int, source: str) -> None:
    """The generator must accept the tokens of the configured data, and have a label for every class."""
    m = cfg.model
    require(tuple(m.grid) == tuple(grid_hw) and m.in_channels == channels,
            f"{source} gives {channels}-channel {grid_hw[0]}x{grid_hw[1]} token grids, but the model expects "
            f"{m.in_channels} channels on {m.grid[0]}x{m.grid[1]}; set model.in_channels={channels} "
            f"model.grid=[{grid_hw[0]},{grid_hw[1]}]")
    require(num_classes <= m.num_classes,
            f"the data has {num_classes} classes but model.num_classes={m.num_classes}; set "
            f"model.num_classes={num_classes}")


@torch.no_grad()
def encode(tokenizer: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, C, h, w) tokens, once per batch, outside the autograd graph. (A VAE is
    not run here: its latents come from a cache, `data.latents`.)"""
    return tokenizer.encode(images)


def main() -> None:
    cfg, env = init_run(Config, __doc__)  # config, process group, the same seed (initial weights) on every rank
    tc = cfg.train
    require(not cfg.data.mix, f"data.mix={cfg.data.mix} adds unlabelled images, but xAR is class-conditional; "
                              "only the tokenizer (train_flextok.py) can mix them in")

    cached = bool(cfg.data.latents)
    if cached:  # the cache's VAE decodes previews and samples; it never runs in the loop
        require(not cfg.data.limit, "data.limit does not apply to a latent cache (it holds its whole folder)")
        cache = LatentCache(cfg.data.latents, seed=tc.seed)  # checks that every shard is there; flips as cached
        tokenizer_spec, classes, resolution = cache.tokenizer, list(cache.classes), cache.manifest["resolution"]
        check_pairing(cfg, cache.latent_shape[0], cache.latent_shape[1:], len(classes), f"the cache {cfg.data.latents}")
    else:
        tokenizer_spec = {"family": TOKENIZER_FAMILY[0], "config": to_dict(cfg.tokenizer)}
        dataset = build_image_dataset(cfg.data.name, cfg.data.root or None, cfg.data.resolution)
        classes, resolution = list(getattr(dataset, "classes", ())) or ["images"], cfg.data.resolution  # flat: 1 class
        pixel = PixelTokenizer(cfg.tokenizer)
        check_pairing(cfg, pixel.token_channels, pixel.grid(resolution, resolution), len(classes), "the tokenizer")

    model = XAR(cfg.model).to(env.device)
    run = Trainer(model, cfg, env, tokens_per_sample=cfg.model.grid[0] * cfg.model.grid[1])  # wrap, EMA, optim, resume
    ddp_model = run.ddp_model
    tokenizer = build_tokenizer(tokenizer_spec).to(env.device).eval()  # frozen: neither trained nor checkpointed

    if cached:
        loader = latent_loader(cache, tc.batch_size, env.rank, env.world_size, tc.seed, start_step=run.step,
                               num_workers=tc.num_workers)
    else:
        loader = build_loader(subset(dataset, cfg.data.limit), tc.batch_size, env.rank, env.world_size, tc.seed,
                              start_step=run.step, num_workers=tc.num_workers, hflip=cfg.data.hflip,
                              crop_pad=cfg.data.crop_pad, gray_p=cfg.data.gray_p)

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            inputs, labels = next(batches)
            inputs = inputs.to(env.device, non_blocking=True)
            tokens = inputs if cached else encode(tokenizer, inputs)  # (B, C, h, w)
            labels = labels.to(env.device, non_blocking=True)
            for x, y in run.micro_batches(tokens, labels):
                run.backward(ddp_model(x, y))  # flow-matching loss over all entities, each with its own t
            run.finish_step()

    ema_model = XAR(cfg.model).to(env.device)
    ema_model.load_state_dict(run.ema_state())
    out = run.export(FAMILY[0], cfg.model, ema_model.state_dict(), tokenizer=tokenizer_spec, classes=classes,
                     resolution=resolution, sample=to_dict(cfg.sample), step=run.step,
                     data=cfg.data.latents or cfg.data.name,
                     note="; sample with: vistok sample --ckpt {out} --num 100 --out DIR")
    if out is not None and cfg.preview_per_class:
        labels = torch.arange(cfg.preview_per_class * len(classes)) % len(classes)
        images = Generator(ema_model, tokenizer, cfg.sample).sample(labels, seed=tc.seed)  # (N, H, W, 3) uint8
        grid = class_grid(images, labels.numpy())  # (rows * H, cols * W, 3) uint8
        atomic_write(out / "preview.png", lambda f: Image.fromarray(grid).save(f, format="PNG"))
        print(f"wrote {out / 'preview.png'} ({cfg.sample.steps} steps, cfg {cfg.sample.cfg}, one row per class)")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
