"""Checkpoints: atomic training state with auto-resume, and safetensors export of EMA weights.

Training state (`RUN/last.pt`): model, EMA, optimizer, scheduler, step, RNG states and the resolved config. It is
written to a temporary file in the same folder, flushed to disk and renamed over the old one (then the folder is
fsynced), so a crash or SIGKILL at any moment leaves either the old or the new checkpoint, never a torn one; a
killed writer's `.last.pt.*.tmp` is removed by the next save. Running the same command again finds `last.pt` and
resumes (`Checkpointer`). It loads with `torch.load(weights_only=True)`: RNG states are stored as tensors and plain
Python values, never pickled objects. FSDP2 runs save `RUN/last.dcp/` instead, sharded with
torch.distributed.checkpoint, so no rank ever holds the full state.

Export (`DIR/config.json` + `DIR/model.safetensors`): the EMA weights and the model's own config, enough to rebuild the
model from that folder alone (`registry.load_model`), written as one unit (a temporary sibling folder swapped in).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.optim.lr_scheduler import LambdaLR

from vistok.config import save_config, to_dict
from vistok.engine.atomic import atomic_folder, atomic_write
from vistok.engine.dist import DistEnv, broadcast_object, unwrap
from vistok.engine.export_check import check_finite, read_config
from vistok.engine.optim import EMA
from vistok.errors import VistokError

LAST = "last.pt"  # DDP and one process: the whole state in one file
SHARDED = "last.dcp"  # FSDP2: a torch.distributed.checkpoint folder, one file per rank, plus META
META = "meta.pt"


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((state["python_version"], tuple(py[:-1]), py[-1]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write `state` (plain tensors / containers / numbers / strings) to RUN/last.pt."""
    path = Path(run_dir) / LAST
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def load_training_state(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/last.pt loaded on the CPU with weights_only=True, or None when the run has no checkpoint yet."""
    path = Path(run_dir) / LAST
    if not path.is_file():
        return None
    return _load(path)


def read_sharded_state(run_dir: str | Path) -> dict[str, Any] | None:
    """An FSDP run's RUN/last.dcp gathered into one CPU state laid out like last.pt (model, optimizer, ema, step, ...),
    in one plain process: for inspection and tests (training itself resumes shard by shard)."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder = Path(run_dir) / SHARDED
    if not (folder / META).is_file():
        return None
    meta = _load(folder / META)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(folder, Path(tmp) / "full.pt")
        full = _load(Path(tmp) / "full.pt")
    return {**meta, "model": full["model"], "optimizer": full["optim"], "ema": {**meta["ema"], "shadow": full["ema"]}}


def _load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign or damaged file: say which and how to proceed
        raise VistokError(
            f"cannot load checkpoint {path} ({type(err).__name__}); move it away to start a fresh run"
        ) from None


def nonfinite_names(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of floating-point tensors holding a NaN or an infinity (a DTensor: this rank's shard)."""
    bad = []
    for name, t in named:
        t = t.to_local() if hasattr(t, "to_local") else t
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(name)
    return bad


def export(out_dir: str | Path, family: str, config: dict[str, Any], weights: dict[str, torch.Tensor],
           extra: Callable[[Path], None] | None = None, **meta: Any) -> Path:
    """Write `config.json` (family, model config, metadata) and `model.safetensors` to `out_dir`, as one unit.

    Both files (and whatever `extra(folder)` adds, e.g. a tokenizer sub-folder) are written into a temporary sibling
    folder that then replaces `out_dir` whole, so a crash never leaves a new config beside old weights. Non-finite
    weights are refused before anything is written. Files a caller adds to `out_dir` afterwards (a preview) stay."""
    out = Path(out_dir)
    bad = nonfinite_names(weights.items())
    if bad:
        raise VistokError(f"refusing to export {out}: non-finite weights in {', '.join(bad[:4])}; "
                          "the run diverged (lower train.lr and train again from an earlier checkpoint)")
    blob = {"family": family, "config": config, **meta}
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    with atomic_folder(out) as tmp:
        (tmp / "model.safetensors").write_bytes(save(tensors))
        (tmp / "config.json").write_text(json.dumps(blob, indent=2))
        if extra is not None:
            extra(tmp)
    return out


def read_export(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json contents, state dict) of an exported folder."""
    path = Path(path)
    cfg_file, weights_file = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not weights_file.is_file():
        raise VistokError(
            f"{path} is not an exported vistok model (needs config.json and model.safetensors); "
            "pass a folder written by a training run's export or the name of a shipped model (`vistok models` lists them)"
        )
    state = load_file(weights_file)
    check_finite(state, path)  # NaN weights would give black images with exit status 0
    return read_config(path), state


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that names what is missing or unexpected instead of silently dropping weights."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False: name the first one, on one line
        detail = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err).splitlines()[0])
        raise VistokError(f"{source} does not match the model: {detail}; was it exported from a different preset?") from None
    if result.missing_keys or result.unexpected_keys:
        raise VistokError(
            f"{source} does not match the model: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}; was it exported from a different preset?"
        )



# ------------------------------------------------------------------------------------------------ the run's state
def _shapes(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _mismatch(saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str:
    """'' when the keys and shapes agree, else a short description naming the first keys that differ."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {list(saved[k])} (model {list(expected[k])})" for k in expected if k in saved and saved[k] != expected[k]]
    parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)) if keys]
    return "; ".join(parts)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(prefix + k)
    return keys


def _collective(env: DistEnv) -> bool:
    return env.distributed and dist.is_available() and dist.is_initialized()


class Checkpointer:
    """Saves and restores the whole training state of one run folder; the same command resumes a stopped run.

    DDP and one process: `RUN/last.pt`, gathered and written by rank 0; on resume rank 0 reads it and broadcasts it,
    so every rank continues from the same step even when only rank 0's node holds the file. FSDP2 (`sharded`):
    `RUN/last.dcp/`, written and read shard by shard with torch.distributed.checkpoint (no rank holds the full state),
    with `meta.pt` (step, schedule, RNG, config); every rank checks that it sees the same step before loading.

    Config changes on resume are applied, not ignored: the optimizer keeps its moments but takes the current config's
    lr, betas and weight decay, the schedule is rebuilt from the current config at the resumed step (so `train.lr`,
    `train.schedule`, `train.warmup_steps` and `train.total_steps` take effect), the EMA uses the current decay, and
    the data loader continues at the resumed step with the current batch size. A checkpoint whose tensors do not fit
    the model (a changed width) is refused with one line naming the keys; nothing in the run folder is written before
    a load succeeded. Parameters or EMA weights holding NaN or infinity are never written."""

    def __init__(self, run_dir: str | Path, env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: LambdaLR, ema: EMA, config: Any, sharded: bool = False) -> None:
        self.run_dir, self.env, self.sharded = Path(run_dir), env, sharded
        self.model, self.optimizer, self.scheduler, self.ema, self.config = model, optimizer, scheduler, ema, config
        self.meta: dict[str, Any] = {}  # extra values of the resumed checkpoint (e.g. skip counters)

    @property
    def path(self) -> Path:
        return self.run_dir / (SHARDED if self.sharded else LAST)

    # -------------------------------------------------------------------------------------------- save
    def _gather(self, obj: Any) -> list:
        if not _collective(self.env):
            return [obj]
        out: list = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def _check_finite(self, step: int) -> None:
        named = [*unwrap(self.model).named_parameters(), *((f"ema.{k}", v) for k, v in self.ema.shadow.items())]
        bad = [name for names in self._gather(nonfinite_names(named)) for name in names]
        if bad:
            raise VistokError(
                f"refusing to write {self.path} at step {step}: non-finite values in {', '.join(sorted(set(bad))[:4])}; "
                "the last good checkpoint is kept. Lower train.lr (or set train.nonfinite=skip) and run again")

    def save(self, step: int, **extra: Any) -> None:
        """Write the state after `step` steps (collective: every rank calls it)."""
        self._check_finite(step)
        meta = {"step": step, "scheduler": self.scheduler.state_dict(), "rng": self._gather(rng_state()),
                "config": to_dict(self.config), "world_size": self.env.world_size, **extra}
        if self.sharded:
            self._save_sharded(meta)
        else:
            model_state, optim_state = get_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            # the shadow's own keys: unwrapped (no DDP `module.` prefix), without integer buffers the EMA does not keep
            full = self.ema.full_state(unwrap(self.model))
            ema_state = {**self.ema.state_dict(), "shadow": {k: full[k] for k in self.ema.shadow}}
            if self.env.is_main:
                save_training_state(self.run_dir, {**meta, "model": model_state, "optimizer": optim_state, "ema": ema_state})
        if _collective(self.env):
            dist.barrier()
        other = self.run_dir / (LAST if self.sharded else SHARDED)
        if self.env.is_main and other.exists():  # a run switched between sharded and full: keep only the newest
            shutil.rmtree(other) if other.is_dir() else other.unlink()

    def _save_sharded(self, meta: dict[str, Any]) -> None:
        from torch.distributed import checkpoint as dcp

        model_state, optim_state = get_state_dict(self.model, self.optimizer)  # DTensor shards: no full copy anywhere
        state = {"model": model_state, "optim": optim_state, "ema": dict(self.ema.shadow)}
        meta = {**meta, "ema": {"decay": self.ema.decay, "num_updates": self.ema.num_updates}}
        if self.env.is_main:
            with atomic_folder(self.path) as tmp:  # every rank writes its shards into one temporary folder
                broadcast_object(str(tmp))
                dcp.save(state, checkpoint_id=tmp)  # returns once every rank's files are written and synced
                atomic_write(tmp / META, lambda f: torch.save(meta, f))
        else:
            dcp.save(state, checkpoint_id=broadcast_object(None))

    # -------------------------------------------------------------------------------------------- resume
    def resume(self) -> int:
        """Load the run's checkpoint if there is one and return its step (0 for a fresh run); then save the config."""
        other = self.run_dir / (LAST if self.sharded else SHARDED)
        if self._exists_anywhere(other) and not self._exists_anywhere(self.path):
            kind = "an FSDP (sharded)" if other.name == SHARDED else "a DDP / one-process"
            fix = "fsdp" if other.name == SHARDED else "ddp"
            raise VistokError(f"{self.run_dir} holds {kind} checkpoint ({other.name}); resume it with "
                              f"train.parallel={fix}, or use a new train.run_dir")
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        meta = self._load_sharded() if self.sharded else self._load_full()
        step = 0
        if meta is not None:
            step = int(meta["step"])
            for group, hyper in zip(self.optimizer.param_groups, fresh):  # the current config's lr, betas, decay
                group.update(hyper)
            self._schedule_at(step)
            rng = meta["rng"]
            set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0])
            self.meta = {k: v for k, v in meta.items() if k in ("skips", "flops")}
            changed = _diff_keys(meta["config"], to_dict(self.config))
            if changed and self.env.is_main:
                print(f"note: resuming {self.run_dir} at step {step} with changed config keys: {', '.join(changed)}; "
                      "the current values apply from this step on", file=sys.stderr)
        if self.env.is_main:  # only now: a refused resume leaves the folder as it was
            save_config(self.config, self.run_dir / "config.yaml")
        return step

    def _exists_anywhere(self, path: Path) -> bool:
        return any(self._gather(path.exists()))

    def _refuse(self, detail: str, saved_config: dict) -> VistokError:
        changed = [k for k in _diff_keys(saved_config, to_dict(self.config)) if not k.startswith("train.")]
        hint = f" (changed since: {', '.join(changed[:4])})" if changed else ""
        return VistokError(f"{self.path} does not match the model: {detail}{hint}; restore the run's config "
                           f"(saved as {self.run_dir / 'config.yaml'}) or use a new train.run_dir")

    def _load_full(self) -> dict[str, Any] | None:
        """Rank 0 reads last.pt and broadcasts it (or its error), so no rank can start from another step."""
        result: tuple[str, Any] = ("none", None)
        if self.env.is_main:
            try:
                state = load_training_state(self.run_dir)
                result = ("ok", state) if state is not None else ("none", None)
            except VistokError as err:
                result = ("error", str(err))
        if _collective(self.env):
            result = broadcast_object(result)
        kind, state = result
        if kind == "error":
            raise VistokError(state)
        if kind == "none":
            return None
        expected = _shapes(unwrap(self.model).state_dict())
        detail = _mismatch(_shapes(state["model"]), expected) or _mismatch(
            _shapes(state["ema"]["shadow"]), {k: expected[k] for k in self.ema.shadow})
        if detail:
            raise self._refuse(detail, state["config"])
        try:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        except (RuntimeError, KeyError, ValueError) as err:
            raise self._refuse(f"optimizer state ({str(err).strip().splitlines()[0][:120]})", state["config"]) from None
        self.ema.load_state_dict(state["ema"])
        return state

    def _load_sharded(self) -> dict[str, Any] | None:
        """Every rank reads meta.pt and its own shards; all must see the same step."""
        from torch.distributed import checkpoint as dcp

        meta_file = self.path / META
        meta = _load(meta_file) if meta_file.is_file() else None
        steps = self._gather(None if meta is None else int(meta["step"]))
        if len(set(steps)) > 1:
            seen = ", ".join(f"rank {r}: {'none' if s is None else f'step {s}'}" for r, s in enumerate(steps))
            raise VistokError(f"the ranks see different checkpoints in {self.path} ({seen}); a sharded (FSDP) run "
                              "needs train.run_dir on a file system every node shares")
        if meta is None:
            return None
        stored = dcp.FileSystemReader(str(self.path)).read_metadata().state_dict_metadata
        saved = {k[len("model."):]: tuple(v.size) for k, v in stored.items() if k.startswith("model.") and hasattr(v, "size")}
        detail = _mismatch(saved, _shapes(unwrap(self.model).state_dict()))
        if detail:
            raise self._refuse(detail, meta["config"])
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state = {"model": model_state, "optim": optim_state, "ema": dict(self.ema.shadow)}
        dcp.load(state, checkpoint_id=self.path)  # in place, shard by shard (the EMA's DTensors included)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.ema.num_updates = int(meta["ema"]["num_updates"])
        return meta

    def _schedule_at(self, step: int) -> None:
        """Put the (current config's) schedule at `step`: the learning rate it gives there, as if it had run so far."""
        sched = self.scheduler
        sched.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        sched.last_epoch = step
        lrs = [base * fn(step) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs


__all__ = [
    "Checkpointer",
    "nonfinite_names",
    "read_sharded_state",
    "export",
    "load_state_strict",
    "load_training_state",
    "read_export",
    "rng_state",
    "save_training_state",
    "set_rng_state",
]
