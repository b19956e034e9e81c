"""Train `cifar10-net`, the CIFAR-10 classifier whose features vistok's FID uses where Inception weights are absent.

    torchrun --nproc_per_node=N train/train_fid_net.py --config train/configs/fid_net.yaml [key=value ...]
    python train/train_fid_net.py --config train/configs/fid_net.yaml      # one plain process (CPU or one GPU)

Running the same command again resumes from RUN/last.pt. At the end the EMA weights are exported to RUN/export
(config.json + model.safetensors) with the test accuracy in config.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from vistok.data import ImageDataConfig, build_image_dataset, build_loader, subset
from vistok.engine import dist
from vistok.engine.loop import TrainConfig, Trainer, init_run, run_main
from vistok.errors import require
from vistok.metrics.fid_net import FAMILY, FidNet, FidNetConfig


@dataclass(frozen=True)
class Config:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(run_dir="runs/fid_net"))
    model: FidNetConfig = field(default_factory=FidNetConfig)
    data: ImageDataConfig = field(default_factory=lambda: ImageDataConfig(hflip=True, crop_pad=4))
    eval_data: str = "cifar10-test"
    eval_limit: int = 0
    label_smoothing: float = 0.1


@torch.no_grad()
def accuracy(model: torch.nn.Module, dataset, env: dist.DistEnv, batch: int = 500) -> float:
    """Top-1 accuracy over `dataset`, split across ranks and summed."""
    model.eval()
    correct = torch.zeros(2, device=env.device)
    for start in range(env.rank * batch, len(dataset), env.world_size * batch):
        images, labels = zip(*(dataset[i] for i in range(start, min(start + batch, len(dataset)))), strict=True)
        logits = model(torch.stack(images).to(env.device))
        correct += torch.tensor([(logits.argmax(-1).cpu() == torch.tensor(labels)).sum().item(), len(labels)],
                                device=env.device)
    model.train()
    total = dist.all_reduce_mean(correct) * env.world_size
    return (total[0] / total[1]).item()


def main() -> None:
    cfg, env = init_run(Config, __doc__)  # config, process group, the same seed (initial weights) on every rank
    tc = cfg.train
    require(not cfg.data.mix, f"data.mix={cfg.data.mix} adds unlabelled images, but the FID net is a classifier; "
                              "drop data.mix")

    model = FidNet(cfg.model).to(env.device)
    run = Trainer(model, cfg, env)  # wraps, EMA, optimizer, schedule; resumes RUN/last.pt if there
    ddp_model = run.ddp_model

    train_set = subset(build_image_dataset(cfg.data.name, cfg.data.root or None, cfg.data.resolution), cfg.data.limit)
    loader = build_loader(train_set, tc.batch_size, env.rank, env.world_size, tc.seed, start_step=run.step,
                          num_workers=tc.num_workers, hflip=cfg.data.hflip, crop_pad=cfg.data.crop_pad,
                          gray_p=cfg.data.gray_p)

    batches = iter(loader)
    with run.logging():
        while run.step < tc.total_steps:
            images, labels = next(batches)
            images, labels = images.to(env.device, non_blocking=True), labels.to(env.device, non_blocking=True)
            for x, y in run.micro_batches(images, labels):
                run.backward(F.cross_entropy(ddp_model(x), y, label_smoothing=cfg.label_smoothing))
            run.finish_step()

    ema_model = FidNet(cfg.model).to(env.device)
    ema_model.load_state_dict(run.ema_state())
    eval_set = subset(build_image_dataset(cfg.eval_data, cfg.data.root or None, cfg.model.resolution), cfg.eval_limit)
    acc = accuracy(ema_model, eval_set, env)
    run.export(FAMILY[0], cfg.model, ema_model.state_dict(), eval_data=cfg.eval_data, eval_images=len(eval_set),
               eval_accuracy=acc, note=f"; {cfg.eval_data} accuracy {acc:.4f} ({len(eval_set)} images)")
    dist.cleanup()


if __name__ == "__main__":
    run_main(main)
