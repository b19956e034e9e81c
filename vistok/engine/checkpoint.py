"""Checkpoints: atomic, verified training state with auto-resume (exports of EMA weights: `vistok.io.exports`).

Training state (`RUN/ckpt-STEP.pt`, e.g. `ckpt-000200.pt`): model, EMA, optimizer, scheduler, step, RNG states and the
resolved config, with a SHA-256 of that content. Each is written to a temporary file in the same folder, flushed to
disk and renamed into place (then the folder is fsynced), so a crash or SIGKILL at any moment leaves complete
checkpoints only; a killed writer's `.ckpt-STEP.pt.*.tmp` is removed by the next save. The newest
`train.keep_checkpoints` are kept, and `RUN/last.pt` is a hard link to the newest (an alias: no extra space).

Running the same command again resumes from the newest checkpoint that is valid: one that loads, whose content hash
matches and whose weights and optimizer state are finite. A damaged one (torn, overwritten, bit-flipped: a file
system or a disk failing where the atomic rename cannot help) is renamed `NAME.damaged`, one line on stderr says so,
and the run falls back to the one before; when none is valid the run stops with one line. Files load with
`torch.load(weights_only=True)`: RNG states are stored as tensors and plain Python values, never pickled objects.

FSDP2 runs save `RUN/last.dcp/` instead, sharded with torch.distributed.checkpoint, so no rank ever holds the full
state: one checkpoint, replaced as a whole (a temporary folder swapped in), its `meta.pt` hashed and verified like a
full checkpoint; `train.keep_checkpoints` does not apply there (the shards are written in place by every rank).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.optim.lr_scheduler import LambdaLR

from vistok.config import save_config, to_dict
from vistok.engine.dist import DistEnv, broadcast_object, unwrap
from vistok.engine.faults import kill_in_write
from vistok.engine.optim import EMA
from vistok.errors import VistokError
from vistok.io.atomic import TMP_SUFFIX, _temp_prefix, atomic_folder, atomic_write, clean_stale_temps
from vistok.io.checks import nonfinite_names

LAST = "last.pt"  # DDP and one process: an alias (hard link) of the newest RUN/ckpt-STEP.pt
CKPT = re.compile(r"ckpt-(\d+)\.pt")  # DDP and one process: the whole state in one file per kept step
DAMAGED = ".damaged"  # suffix of a checkpoint that failed verification (kept for a post-mortem, never loaded)
HASH = "sha256"  # the key of a checkpoint's content hash
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
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def content_hash(state: Any) -> str:
    """SHA-256 of a checkpoint's content: every key, plain value and tensor (dtype, shape and bytes) in a fixed order.

    Hashing the content rather than the file's bytes lets the hash live inside the file it checks (a torch zip file
    cannot carry a trailer), and catches every change that would reach the model: damage that still unzips included."""
    h = hashlib.sha256()

    def feed(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}".encode())
            for k in sorted(obj, key=repr):
                h.update(repr(k).encode())
                feed(obj[k])
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}".encode())
            for v in obj:
                feed(v)
        else:  # numbers, strings, None, booleans: their repr is exact (floats round-trip)
            h.update(f"V{type(obj).__name__}{obj!r}".encode())

    feed(state)
    return h.hexdigest()


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """The run's full checkpoints, newest first: RUN/ckpt-STEP.pt by step, or a lone RUN/last.pt (older vistok)."""
    run_dir = Path(run_dir)
    found = sorted(((int(m[1]), p) for p in run_dir.glob("ckpt-*.pt") if (m := CKPT.fullmatch(p.name))), reverse=True)
    if found:
        return [p for _, p in found]
    return [run_dir / LAST] if (run_dir / LAST).is_file() else []


def _alias(target: Path, alias: Path) -> None:
    """Point `alias` at `target` atomically: a hard link renamed over it, or (no hard links there) a copy."""
    clean_stale_temps(alias)  # a link a killed writer left behind
    tmp = alias.with_name(f"{_temp_prefix(alias)}link{TMP_SUFFIX}")  # named after its writer, as atomic_write's
    tmp.unlink(missing_ok=True)
    try:
        os.link(target, tmp)
        os.replace(tmp, alias)
    except OSError:
        tmp.unlink(missing_ok=True)
        atomic_write(alias, lambda f: f.write(target.read_bytes()))


def save_training_state(run_dir: str | Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Atomically write `state` (plain tensors / containers / numbers / strings) with its content hash to
    RUN/ckpt-STEP.pt, point RUN/last.pt at it and remove all but the `keep` newest checkpoints."""
    run_dir = Path(run_dir)
    step = int(state.get("step", 0))
    path = run_dir / f"ckpt-{step:06d}.pt"
    blob = {**state, HASH: content_hash(state)}
    atomic_write(path, lambda f: torch.save(blob, kill_in_write(f, step)))
    _alias(path, run_dir / LAST)
    for old in checkpoint_files(run_dir)[max(keep, 1):]:
        if old != path and old.name != LAST:
            old.unlink(missing_ok=True)
    return path


def verify_training_state(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`, loaded on the CPU with weights_only=True and verified: it loads, its content hash
    matches, its weights, EMA and optimizer state are finite. Raises VistokError naming the file and the damage."""
    state = _load(path)
    stored = state.pop(HASH, None)
    if stored is not None and stored != content_hash(state):
        raise VistokError(f"checkpoint {path} is damaged (its content does not match the SHA-256 stored with it)")
    bad = nonfinite_names([(f"{part}.{k}", v) for part, tree in (("model", state.get("model", {})),
                                                                  ("ema", state.get("ema", {}).get("shadow", {})),
                                                                  ("optimizer", state.get("optimizer", {})))
                           for k, v in _flat(tree)])
    if bad:
        raise VistokError(f"checkpoint {path} is damaged (non-finite values in {', '.join(bad[:3])}; training never "
                          "writes those)")
    return state


def _flat(tree: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)]
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, (list, tuple)):
        return [kv for i, v in enumerate(tree) for kv in _flat(v, f"{prefix}.{i}" if prefix else str(i))]
    return []


class Found(NamedTuple):
    """The newest valid checkpoint of a run, and the newer ones that failed verification (with why)."""

    path: Path
    state: dict[str, Any]
    damaged: list[tuple[Path, str]]


def newest_training_state(run_dir: str | Path, warn: bool = True) -> Found | None:
    """The run's newest valid checkpoint, or None when it has none yet. With `warn`, each damaged newer one is named in
    one line on stderr; when none is valid, one VistokError names them."""
    files, damaged = checkpoint_files(run_dir), []
    for path in files:
        try:
            state = verify_training_state(path)
        except VistokError as err:
            damaged.append((path, str(err)))
            continue
        if warn:
            for _, why in damaged:
                print(f"warning: {why}; using the previous one, {path.name} (step {int(state.get('step', 0))})",
                      file=sys.stderr)
        return Found(path, state, damaged)
    if not damaged:
        return None
    if len(damaged) == 1:
        raise VistokError(f"{damaged[0][1]} and the run has no older checkpoint; move it away to start a fresh run")
    raise VistokError(f"no checkpoint in {run_dir} is usable ({'; '.join(why for _, why in damaged[:3])}); "
                      "move them away to start a fresh run")


def load_training_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest valid checkpoint of RUN loaded on the CPU (see `newest_training_state`), or None when the run has no
    checkpoint yet."""
    found = newest_training_state(run_dir)
    return None if found is None else found.state


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
        raise VistokError(f"cannot load checkpoint {path} ({type(err).__name__}: the file is damaged or not a "
                          "vistok checkpoint)") from None


# ------------------------------------------------------------------------------------------------ the run's state
def _shapes(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _mismatch(saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> str:
    """'' when the keys and shapes agree, else a short description naming the first keys that differ."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {list(saved[k])} (model {list(expected[k])})" for k in expected
              if k in saved and saved[k] != expected[k]]
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

    DDP and one process: `RUN/ckpt-STEP.pt` (the newest `keep`, `last.pt` an alias of the newest), gathered and
    written by rank 0; on resume rank 0 reads the newest valid one (falling back past damaged ones, each named in one
    line and renamed `NAME.damaged` once the older one has loaded) and broadcasts it, so every rank continues from the
    same step even when only rank 0's node holds the file. FSDP2 (`sharded`):
    `RUN/last.dcp/`, written and read shard by shard with torch.distributed.checkpoint (no rank holds the full state),
    with `meta.pt` (step, schedule, RNG, config); every rank checks that it sees the same step before loading.

    Config changes on resume are applied, not ignored: the optimizer keeps its moments but takes the current config's
    lr, betas and weight decay, the schedule is rebuilt from the current config at the resumed step (so `train.lr`,
    `train.schedule`, `train.warmup_steps` and `train.total_steps` take effect), the EMA uses the current decay, and
    the data loader continues at the resumed step with the current batch size. A checkpoint whose tensors do not fit
    the model (a changed width) is refused with one line naming the keys; nothing in the run folder is written before
    a load succeeded. Parameters or EMA weights holding NaN or infinity are never written.

    The RNG states (every rank's own: Python, NumPy, torch, CUDA) are not set by `resume` but by `restore_rng`, which
    the trainer calls right before the first resumed step: whatever setup draws in between (a data loader's iterator
    takes a seed from torch's generator, a model may initialise weights that the checkpoint then replaces), the
    resumed step draws exactly what the uninterrupted run drew."""

    def __init__(self, run_dir: str | Path, env: DistEnv, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: LambdaLR, ema: EMA, config: Any, sharded: bool = False, keep: int = 2) -> None:
        self.run_dir, self.env, self.sharded, self.keep = Path(run_dir), env, sharded, keep
        self.model, self.optimizer, self.scheduler, self.ema, self.config = model, optimizer, scheduler, ema, config
        self.meta: dict[str, Any] = {}  # extra values of the resumed checkpoint (e.g. skip counters)
        self.loaded: Path | None = None  # the file the run resumed from
        self._rng: dict[str, Any] | None = None  # this rank's RNG states of the resumed checkpoint, until restored

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

    def file(self, step: int) -> Path:
        """Where the checkpoint of `step` goes."""
        return self.path if self.sharded else self.run_dir / f"ckpt-{step:06d}.pt"

    def _check_finite(self, step: int) -> None:
        named = [*unwrap(self.model).named_parameters(), *((f"ema.{k}", v) for k, v in self.ema.shadow.items())]
        bad = [name for names in self._gather(nonfinite_names(named)) for name in names]
        if bad:
            raise VistokError(
                f"refusing to write {self.file(step)} at step {step}: non-finite values in "
                f"{', '.join(sorted(set(bad))[:4])}; "
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
                state = {**meta, "model": model_state, "optimizer": optim_state, "ema": ema_state}
                save_training_state(self.run_dir, state, keep=self.keep)
        if _collective(self.env):
            dist.barrier()
        if self.env.is_main:  # a run switched between sharded and full: keep only the newest kind
            others = ([self.run_dir / LAST, *checkpoint_files(self.run_dir)] if self.sharded
                      else [self.run_dir / SHARDED])
            for other in others:
                if other.exists():
                    shutil.rmtree(other) if other.is_dir() else other.unlink()

    def _save_sharded(self, meta: dict[str, Any]) -> None:
        from torch.distributed import checkpoint as dcp

        model_state, optim_state = get_state_dict(self.model, self.optimizer)  # DTensor shards: no full copy anywhere
        state = {"model": model_state, "optim": optim_state, "ema": dict(self.ema.shadow)}
        meta = {**meta, "ema": {"decay": self.ema.decay, "num_updates": self.ema.num_updates}}
        meta[HASH] = content_hash(meta)
        if self.env.is_main:
            with atomic_folder(self.path) as tmp:  # every rank writes its shards into one temporary folder
                broadcast_object(str(tmp))
                dcp.save(state, checkpoint_id=tmp)  # returns once every rank's files are written and synced
                atomic_write(tmp / META, lambda f: torch.save(meta, kill_in_write(f, meta["step"])))
        else:
            dcp.save(state, checkpoint_id=broadcast_object(None))

    # -------------------------------------------------------------------------------------------- resume
    def resume(self) -> int:
        """Load the run's checkpoint if there is one and return its step (0 for a fresh run); then save the config."""
        full = any(self._gather(bool(checkpoint_files(self.run_dir))))
        sharded = self._exists_anywhere(self.run_dir / SHARDED)
        if (full and self.sharded and not sharded) or (sharded and not self.sharded and not full):
            other = self.run_dir / (LAST if self.sharded else SHARDED)
            kind = "an FSDP (sharded)" if other.name == SHARDED else "a DDP / one-process"
            fix = "fsdp" if other.name == SHARDED else "ddp"
            raise VistokError(f"{self.run_dir} holds {kind} checkpoint ({other.name}); resume it with "
                              f"train.parallel={fix}, or use a new train.run_dir")
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        meta = self._load_sharded() if self.sharded else self._load_full()
        step = 0
        if meta is not None:
            step = int(meta["step"])
            # the current config's lr, betas, decay
            for group, hyper in zip(self.optimizer.param_groups, fresh, strict=True):
                group.update(hyper)
            self._schedule_at(step)
            rng = meta["rng"]
            self._rng = rng[self.env.rank] if self.env.rank < len(rng) else rng[0]  # set by restore_rng
            self.meta = {k: v for k, v in meta.items() if k in ("skips", "flops", "scaler")}
            changed = _diff_keys(meta["config"], to_dict(self.config))
            if changed and self.env.is_main:
                print(f"note: resuming {self.run_dir} at step {step} with changed config keys: {', '.join(changed)}; "
                      "the current values apply from this step on", file=sys.stderr)
        if self.env.is_main:  # only now: a refused resume leaves the folder as it was
            save_config(self.config, self.run_dir / "config.yaml")
        return step

    def restore_rng(self) -> None:
        """Put every RNG where the resumed checkpoint had it (once; a no-op for a fresh run). Call it right before the
        first resumed step."""
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None

    def _exists_anywhere(self, path: Path) -> bool:
        return any(self._gather(path.exists()))

    def _refuse(self, detail: str, saved_config: dict) -> VistokError:
        changed = [k for k in _diff_keys(saved_config, to_dict(self.config)) if not k.startswith("train.")]
        hint = f" (changed since: {', '.join(changed[:4])})" if changed else ""
        return VistokError(f"{self.loaded or self.path} does not match the model: {detail}{hint}; restore the run's "
                           f"config (saved as {self.run_dir / 'config.yaml'}) or use a new train.run_dir")

    def _load_full(self) -> dict[str, Any] | None:
        """Rank 0 reads the newest valid checkpoint and broadcasts it (or its error), so no rank can start from
        another step."""
        result: tuple[str, Any] = ("none", None)
        found = None
        if self.env.is_main:
            try:
                found = newest_training_state(self.run_dir, warn=False)
                result = ("ok", (found.path, found.state)) if found is not None else ("none", None)
            except VistokError as err:
                result = ("error", str(err))
        if _collective(self.env):
            result = broadcast_object(result)
        kind, payload = result
        if kind == "error":
            raise VistokError(payload)
        if kind == "none":
            return None
        self.loaded, state = payload
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
        if found is not None and found.damaged:  # only now, with the older checkpoint in place: set the damaged aside
            for bad, why in found.damaged:
                kept = ""
                if bad.name != LAST and bad.exists():
                    os.replace(bad, bad.with_name(bad.name + DAMAGED))
                    kept = f" (kept as {bad.name}{DAMAGED})"
                print(f"warning: {why}{kept}; resuming from the previous one, {self.loaded.name} (step "
                      f"{int(state['step'])})", file=sys.stderr)
            _alias(self.loaded, self.run_dir / LAST)  # last.pt: the newest valid checkpoint
        return state

    def _load_sharded(self) -> dict[str, Any] | None:
        """Every rank reads meta.pt and its own shards; all must see the same step."""
        from torch.distributed import checkpoint as dcp

        meta_file = self.path / META
        meta = None
        if meta_file.is_file():
            try:
                meta = _load(meta_file)
            except VistokError as err:
                raise VistokError(f"{err}; move {self.path} away to start a fresh run") from None
            stored = meta.pop(HASH, None)
            if stored is not None and stored != content_hash(meta):
                raise VistokError(f"checkpoint {meta_file} is damaged (its content does not match the SHA-256 stored "
                                  f"with it); move {self.path} away to start a fresh run")
        steps = self._gather(None if meta is None else int(meta["step"]))
        if len(set(steps)) > 1:
            seen = ", ".join(f"rank {r}: {'none' if s is None else f'step {s}'}" for r, s in enumerate(steps))
            raise VistokError(f"the ranks see different checkpoints in {self.path} ({seen}); a sharded (FSDP) run "
                              "needs train.run_dir on a file system every node shares")
        if meta is None:
            return None
        self.loaded = self.path
        stored = dcp.FileSystemReader(str(self.path)).read_metadata().state_dict_metadata
        saved = {k[len("model."):]: tuple(v.size) for k, v in stored.items()
                 if k.startswith("model.") and hasattr(v, "size")}
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
        lrs = [base * fn(step) for base, fn in zip(sched.base_lrs, sched.lr_lambdas, strict=True)]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = lrs


__all__ = [
    "Checkpointer",
    "checkpoint_files",
    "content_hash",
    "newest_training_state",
    "verify_training_state",
    "read_sharded_state",
    "load_training_state",
    "rng_state",
    "save_training_state",
    "set_rng_state",
]
