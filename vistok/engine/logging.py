"""Metrics: JSONL on rank 0 (truncated to the resume step, so a resumed run's log has one line per step), optional
TensorBoard, and a tqdm progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vistok.errors import VistokError


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool, start_step: int, total_steps: int, tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled, dynamic_ncols=True, mininterval=2.0)
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # drop lines written after the checkpoint we resume from
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise VistokError("tensorboard=true needs TensorBoard: pip install 'vistok[log]'") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)

    def log(self, step: int, **metrics: Any) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (float(v) if hasattr(v, "__float__") else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        shown = {k: f"{v:.4g}" for k, v in row.items() if k != "step" and isinstance(v, float)}
        self.bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
