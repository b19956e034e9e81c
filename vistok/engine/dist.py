"""Distributed set-up written once: torchrun's environment or one plain process.

Under `torchrun` (RANK / WORLD_SIZE / LOCAL_RANK in the environment) a process group is created, NCCL on CUDA and gloo
on CPU; without them the script runs as one ordinary process and every collective is a no-op. Models are wrapped in DDP,
or sharded with FSDP2 (`fully_shard`) for large models.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from vistok.errors import VistokError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistEnv:
    """Initialise from torchrun's environment (or as one process) and pick the device.

    `device` is "auto" (CUDA when present, else CPU), "cpu" or "cuda". `timeout_s` bounds how long a collective waits
    for a rank that is gone or stuck before the process group fails the run (torchrun may then restart it).
    """
    if timeout_s <= 0:
        raise VistokError(f"train.dist_timeout_s must be positive, got {timeout_s}")
    if device not in ("auto", "cpu", "cuda"):
        raise VistokError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise VistokError("device=cuda was asked for but no CUDA device is visible; use device=cpu or device=auto")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store = _restart_store(world_size, timeout)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None,
                                timeout=timeout,
                                **({"store": store, "rank": rank, "world_size": world_size} if store else {}))
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def _restart_store(world_size: int, timeout: timedelta) -> dist.Store | None:
    """Under torchrun, the agent's store with a key prefix per restart attempt (None otherwise: env:// as usual).

    torchrun keeps one store across `--max-restarts` attempts, and the process group's keys from the attempt that died
    (e.g. a dead rank's gloo address) are still there: a restarted rank can read them and hang connecting to a process
    that is gone. A prefix per attempt (TORCHELASTIC_RESTART_COUNT) gives every attempt fresh keys."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"vistok/attempt_{attempt}", store)


def cleanup(wait: bool = True) -> None:
    """Tear the process group down (no-op in a single process). wait: a barrier first, so that no rank destroys its
    group and exits while another is still exporting or inside a collective (an early exit there could abort at
    shutdown); pass False on an error path, where a dead rank would never arrive."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch with `seed + rank`, so ranks draw different noise but runs repeat."""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in one process)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def any_rank(flag: bool | torch.Tensor, device: torch.device | None = None) -> bool:
    """True when `flag` is true on at least one rank (the same answer on every rank; the flag itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    t = torch.as_tensor(flag, dtype=torch.float32, device=device).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def wrap_model(model: nn.Module, env: DistEnv, parallel: str = "ddp") -> nn.Module:
    """DDP (default) or FSDP2 around `model`; returned unchanged in one process.

    FSDP2 shards every module listed in `model.fsdp_units()` (the transformer blocks of vistok's models), then the
    root, so parameters are gathered block by block.
    """
    if parallel not in ("ddp", "fsdp"):
        raise VistokError(f"parallel must be ddp or fsdp, not {parallel!r}")
    if not env.distributed:
        return model
    if parallel == "ddp":
        ids = [env.local_rank] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    units = model.fsdp_units() if hasattr(model, "fsdp_units") else []
    for unit in units:
        fully_shard(unit)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP or torch.compile wrappers (FSDP2 modifies in place and needs no unwrapping)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
