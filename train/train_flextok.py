"""Train a FlexTok tokenizer (Bachmann et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length",
arXiv 2502.13967): encoder with causal registers -> FSQ -> rectified-flow decoder, nested dropout over the registers.

    torchrun --nproc_per_node=N train/train_flextok.py --config train/configs/flextok_cifar10_tiny.yaml [key=value ...]
    python train/train_flextok.py --config train/configs/flextok_cifar10_tiny.yaml  # one plain process (CPU or one GPU)
    python train/train_flextok.py --config ... model.nested_dropout=off train.run_dir=...  # the no-ordering ablation
    python train/train_flextok.py --config ... init_from=cifar10-flextok-tiny data.mix=dead-leaves  # fine-tuning

images -> tokenizer (pixels, or a frozen VAE, or a latent cache of one: `data.latents=CACHE` from `vistok
cache-latents`, a fresh posterior sample of each image or its cached flip per step) -> (B, C, h, w) grid -> FlexTok's
flow-matching loss with nested dropout and null conditioning, plus REPA against a frozen teacher (`repa.teacher`: off,
conv, fid-net or dinov2) when `model.repa_dim` > 0. Running the same command again resumes from RUN/last.pt. At the end
the EMA weights are exported to RUN/export with the model config (the training-only REPA projector left out), the
tokenizer and the decoding settings, so `vistok reconstruct|encode|decode --ckpt RUN/export` needs nothing else; a
reconstruction grid (rows: images, columns: input then k = 1, 2, 4, ..., K) is written next to them.
`init_from` (an export folder, shipped name or hf://) starts from another FlexTok's weights with a fresh optimizer and
schedule: a fine-tune, e.g. on other data; its architecture keys and grid tokenizer must match this run's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from vistok.api import Tokenizer
from vistok.config import to_dict
from vistok.data import ImageDataConfig, build_image_dataset, build_loader, mixed_dataset, subset, to_float, to_uint8
from vistok.data.latents import CacheImages, LatentCache, latent_loader
from vistok.engine import dist
from vistok.engine.loop import TrainConfig, Trainer, init_run, run_main
from vistok.errors import require
from vistok.io import exports
from vistok.io.atomic import atomic_write
from vistok.metrics.fid_net import load_fid_net
from vistok.modules.repa import build_teacher
from vistok.tokenizers.build import build_tokenizer
from vistok.tokenizers.flextok import FAMILY, PRESETS, FlexTok, FlexTokConfig
from vistok.tokenizers.flextok_sampling import DecodeConfig, k_ladder
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer
from vistok.tokenizers.vae import VAE, VAEConfig
from vistok.viz import recon_grid


@dataclass(frozen=True)
class RepaConfig:
    """The frozen REPA teacher; its feature width must equal model.repa_dim (0 turns REPA off)."""

    teacher: str = ""  # "" (off), conv (random conv features), fid-net (cifar10-net export), dinov2 (local weights)
    weights: str = ""  # fid-net: an export folder or shipped name (default cifar10-net); dinov2: a weights file
    arch: str = "vit_large_patch14_dinov2"  # dinov2 only
    resolution: int = 224  # dinov2 input size (16x16 patch features at 224)
    conv_dim: int = 64  # conv teacher feature width


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        run_dir="runs/flextok", lr=1e-3, weight_decay=0.05, betas=(0.9, 0.99), warmup_steps=500, ema_decay=0.999))
    model: FlexTokConfig = field(default_factory=lambda: PRESETS["flextok-tiny-s"])
    tokenizer: Literal["pixel", "vae"] = "pixel"
    pixel: PixelConfig = field(default_factory=lambda: PixelConfig(patch=1, scale=2.0))  # identity grid, unit variance
    vae: VAEConfig = field(default_factory=VAEConfig)  # with data.latents the cache names its VAE instead
    data: ImageDataConfig = field(default_factory=lambda: ImageDataConfig(hflip=True))
    repa: RepaConfig = field(default_factory=RepaConfig)
    sample: DecodeConfig = field(default_factory=DecodeConfig)  # decoding defaults stored in the export
    preview_images: int = 8  # rows of RUN/export/preview.png (0: none)
    init_from: str = ""  # a FlexTok export to fine-tune (fresh optimizer and schedule); empty: from scratch


TRAINING_ONLY = ("nested_dropout", "null_cond_p", "t_mean", "t_std", "repa_dim", "repa_hidden",
                 "repa_layer", "repa_weight")


def init_weights(cfg: Config) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of the export `cfg.init_from` (encoder, FSQ, decoder), checked against this run before any work:
    its architecture and grid tokenizer must be this run's; training-only keys (nested dropout, REPA, ...) may differ.
    Also its pinned name (hf://org/repo@COMMIT for a hub source), which the log and the export record."""
    from vistok.api.exports import load_flextok, open_source

    export = open_source(cfg.init_from)
    init, _, meta = load_flextok(export)
    theirs, ours = to_dict(init.config), to_dict(cfg.model)
    differ = [f"model.{k}={theirs[k]}" for k in ours if k not in TRAINING_ONLY and theirs[k] != ours[k]]
    require(not differ, f"init_from={cfg.init_from} has another architecture ({', '.join(differ)}); set those model "
                        "keys to match it")
    same = exports.tokenizer_identity(meta["tokenizer"]) == exports.tokenizer_identity(tokenizer_spec(cfg))
    require(same, f"init_from={cfg.init_from} was trained on another grid tokenizer ({meta['tokenizer']}); "
                  "configure the same tokenizer")
    return init.state_dict(), export.source


def tokenizer_spec(cfg: Config) -> dict:
    """The export's record of the tokenizer: the cache's VAE with data.latents, else the configured one."""
    if cfg.data.latents:
        return LatentCache(cfg.data.latents).tokenizer
    return {"family": cfg.tokenizer, "config": to_dict(cfg.pixel if cfg.tokenizer == "pixel" else cfg.vae)}


def build_image_tokenizer(cfg: Config) -> torch.nn.Module:
    """The frozen images <-> grid tokenizer: neither trained nor checkpointed (the export records its config)."""
    if cfg.data.latents:
        return build_tokenizer(tokenizer_spec(cfg))
    return PixelTokenizer(cfg.pixel) if cfg.tokenizer == "pixel" else VAE(cfg.vae)


def check_config(cfg: Config) -> None:
    """Choices that contradict each other, caught before anything is built."""
    require(not (cfg.data.latents and cfg.tokenizer != "vae"),
            "data.latents needs tokenizer=vae (pixels need no cache)")
    require(not (cfg.data.latents and cfg.data.limit), "data.limit does not apply to a latent cache (it holds its "
                                                       "whole folder)")
    require(not (cfg.data.latents and (cfg.data.mix or cfg.data.gray_p)), "data.mix and data.gray_p change the images, "
            "which a latent cache has already encoded; train from images (drop data.latents) to use them")
    require(bool(cfg.repa.teacher) == (cfg.model.repa_dim > 0),
            f"REPA needs both a teacher and a projector: got repa.teacher={cfg.repa.teacher!r} and model.repa_dim="
            f"{cfg.model.repa_dim}; set both (e.g. repa.teacher=conv model.repa_dim={cfg.repa.conv_dim}) or neither")


def check_pairing(cfg: Config, tokenizer: torch.nn.Module, teacher_dim: int) -> None:
    """The model must take the tokenizer's grid of the configured images, and REPA's widths must agree."""
    m, res = cfg.model, cfg.data.resolution
    if isinstance(tokenizer, PixelTokenizer):
        grid, channels = tokenizer.grid(res, res), tokenizer.token_channels
    else:
        require(res % tokenizer.factor == 0,
                f"data.resolution={res} must divide by the VAE's factor {tokenizer.factor}")
        grid, channels = (res // tokenizer.factor,) * 2, tokenizer.latent_channels
    require(tuple(m.grid) == grid and m.in_channels == channels,
            f"the {cfg.tokenizer} tokenizer turns {res}px images into {channels}-channel {grid[0]}x{grid[1]} grids, "
            f"but the model expects {m.in_channels} channels on {m.grid[0]}x{m.grid[1]}; set "
            f"model.in_channels={channels} model.grid=[{grid[0]},{grid[1]}]")
    require(m.repa_dim == teacher_dim, f"model.repa_dim={m.repa_dim} but the REPA teacher {cfg.repa.teacher!r} gives "
                                       f"{teacher_dim}-d features; set model.repa_dim={teacher_dim}")


class CachedLatents(Dataset):
    """((latent sample, image), label) pairs keyed (index, epoch): a latent cache, and the same images (ADM-cropped as
    cached, mirrored when the flip's moments were drawn) for REPA's teacher; or (latent sample, label) alone."""

    def __init__(self, cache: LatentCache, images: CacheImages | None) -> None:
        self.cache, self.images = cache, images

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        latent, label, flipped = self.cache.draw(index, epoch)
        if self.images is None:
            return latent, label
        image = to_float(self.images[index][0])  # (3, R, R) in [-1, 1]
        return (latent, image.flip(-1) if flipped else image), label


def latent_dataset(cfg: Config, with_images: bool) -> CachedLatents:
    """The training set as a finished latent cache (`vistok cache-latents`), with its images when REPA needs them."""
    cache = LatentCache(cfg.data.latents, seed=cfg.train.seed)
    m = cache.manifest
    require(m["resolution"] == cfg.data.resolution,
            f"the cache {cfg.data.latents} holds {m['resolution']}px images; set "
            f"data.resolution={m['resolution']}")
    images = None
    if with_images:
        images = CacheImages(cfg.data.name, m["resolution"])
        require(images.relative() == (cache.root / "files.txt").read_text().splitlines(),
                f"data.name={cfg.data.name} does not hold the images of the cache {cfg.data.latents} (cached from "
                f"{m['source']}); point data.name at that folder")
    return CachedLatents(cache, images)


def export_model(cfg: Config, ema_state: dict[str, torch.Tensor], device: torch.device) -> FlexTok:
    """The EMA weights in a model without the REPA projector (a training-only head)."""
    ema_model = FlexTok(dataclasses.replace(cfg.model, repa_dim=0)).to(device)
    state = {k: v for k, v in ema_state.items() if not k.startswith("repa_proj.")}
    ema_model.load_state_dict(state)
    return ema_model.eval()


def main() -> None:
    cfg, env = init_run(Config, __doc__)  # config, process group, the same seed (initial weights) on every rank
    tc = cfg.train
    check_config(cfg)
    init, init_from = init_weights(cfg) if cfg.init_from else (None, None)  # a bad export fails here, before any work
    if init_from and env.is_main:
        print(f"init_from {init_from}: weights loaded (fresh optimizer and schedule)")

    tokenizer = build_image_tokenizer(cfg).to(env.device).eval()
    fid_net = load_fid_net(cfg.repa.weights or "cifar10-net") if cfg.repa.teacher == "fid-net" else None
    teacher = build_teacher(cfg.repa.teacher, cfg.repa.weights, cfg.repa.conv_dim, net=fid_net, **(
        dict(arch=cfg.repa.arch, resolution=cfg.repa.resolution) if cfg.repa.teacher == "dinov2" else {}
    )).to(env.device) if cfg.repa.teacher else None
    check_pairing(cfg, tokenizer, teacher.dim if teacher is not None else 0)
    images = subset(build_image_dataset(cfg.data.name, cfg.data.root or None, cfg.data.resolution), cfg.data.limit)
    images = mixed_dataset(cfg.data, images, tc.seed)  # + procedural images with data.mix (labels unused here)
    cached = bool(cfg.data.latents)
    train_set = latent_dataset(cfg, teacher is not None) if cached else images

    model = FlexTok(cfg.model).to(env.device)
    if init is not None:  # before the Trainer: the EMA starts from these weights (a resumed run then loads RUN/last.pt)
        missing, unexpected = model.load_state_dict(init, strict=False)
        assert not unexpected and all(k.startswith("repa_proj.") for k in missing), (missing, unexpected)
    run = Trainer(model, cfg, env)  # wrap, EMA, optimizer, schedule; resumes RUN/last.pt if there
    ddp_model = run.ddp_model

    if cached:  # keyed (index, epoch): a fresh posterior sample (and flip choice) per visit
        loader = latent_loader(train_set, tc.batch_size, env.rank, env.world_size, tc.seed, run.step, tc.num_workers)
    else:
        loader = build_loader(train_set, tc.batch_size, env.rank, env.world_size, tc.seed, start_step=run.step,
                              num_workers=tc.num_workers, hflip=cfg.data.hflip, crop_pad=cfg.data.crop_pad,
                              gray_p=cfg.data.gray_p)

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            inputs, _ = next(batches)
            if cached:  # (B, C, h, w) latent samples, and (B, 3, H, W) images for the teacher
                x0, pixels = (inputs if teacher is not None else (inputs, None))
                x0 = x0.to(env.device, non_blocking=True)
            else:  # (B, 3, H, W) images in [-1, 1] -> (B, C, h, w) grid, outside the autograd graph
                pixels = inputs.to(env.device, non_blocking=True)
                with torch.no_grad():
                    x0 = tokenizer.encode(pixels)
            feats = None
            if teacher is not None:
                with torch.no_grad(), run.autocast():
                    feats = teacher(pixels.to(env.device, non_blocking=True)).float()  # (B, repa_dim, h', w')
            for x, f in run.micro_batches(x0, feats):
                out = ddp_model(x, f)  # k, t, noise and null drawn inside
                run.backward(out.loss, flow=out.flow, **({"repa": out.repa} if f is not None else {}))
            run.finish_step()

    ema_model = export_model(cfg, run.ema_state(), env.device)
    mix = {"mix": cfg.data.mix, "mix_frac": cfg.data.mix_frac, "gray_p": cfg.data.gray_p} \
        if cfg.data.mix or cfg.data.gray_p else None  # what widened the training images, if anything
    out = run.export(FAMILY[0], ema_model.config, ema_model.state_dict(), tokenizer=tokenizer_spec(cfg),
                     resolution=cfg.data.resolution, sample=to_dict(cfg.sample), step=run.step, data=cfg.data.name,
                     data_mix=mix, init_from=init_from, nested_dropout=cfg.model.nested_dropout,
                     repa_teacher=cfg.repa.teacher,
                     note="; try: vistok reconstruct --ckpt {out} --input cifar10-test --num 100 --out DIR")
    if out is not None and cfg.preview_images:
        rows = subset(images, cfg.preview_images)  # evenly spaced: one per class for sorted datasets
        pixels = to_uint8(torch.stack([rows[i][0] for i in range(len(rows))])).permute(0, 2, 3, 1).numpy()  # NHWC
        ks = k_ladder(cfg.model.registers)
        recons = Tokenizer(ema_model, tokenizer, cfg.sample, resolution=cfg.data.resolution).reconstruct(
            pixels, ks, seed=tc.seed)  # a VAE's grid is not the image size
        grid = recon_grid(pixels, recons, rows=len(pixels))  # (rows * H, cols * W, 3) uint8
        atomic_write(out / "preview.png", lambda f: Image.fromarray(grid).save(f, format="PNG"))
        print(f"wrote {out / 'preview.png'} (rows: images; columns: input, then k = {', '.join(map(str, ks))})")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
