"""Metrics: JSONL on rank 0 (truncated to the resume step, so a resumed run's log has one line per step), optional
TensorBoard, and a tqdm progress bar.

A run killed while appending leaves a torn last line; it is skipped with a one-line warning when the run resumes (and
by `read_metrics`), and the truncated log is rewritten atomically."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vistok.errors import VistokError
from vistok.io.atomic import atomic_write_bytes


class MetricsLog:
    def __init__(self, run_dir: str | Path, enabled: bool, start_step: int, total_steps: int,
                 tensorboard: bool = False) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if enabled:  # before the bar, so that a warning gets a line of its own
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # drop lines written after the checkpoint we resume from
                rows = _parse(self.path, warn=True)
                kept = [json.dumps(r) for r in rows if r.get("step", 0) <= start_step]
                atomic_write_bytes(self.path, "".join(ln + "\n" for ln in kept).encode())
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise VistokError("tensorboard=true needs TensorBoard: pip install 'vistok[log]'") from None
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled, dynamic_ncols=True, mininterval=2.0)

    def log(self, step: int, **metrics: Any) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (float(v) if hasattr(v, "__float__") and not isinstance(v, int) else v)
                                for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        shown = {k: f"{v:.4g}" for k, v in row.items() if k != "step" and isinstance(v, float)}
        self.bar.set_postfix(shown, refresh=False)

    def note(self, message: str) -> None:
        """One line on stderr from rank 0, printed above the progress bar."""
        if self.enabled:
            self.bar.write(message, file=sys.stderr)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _parse(path: Path, warn: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSONL log; lines that are not a JSON object (torn by a kill mid-write) are skipped."""
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif warn:
            print(f"warning: {path}: skipped line {number}, which is not a complete JSON row (torn when the run "
                  "was killed)", file=sys.stderr)
    return rows


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of RUN/metrics.jsonl (a torn line skipped); [] when there is no log."""
    path = Path(run_dir) / "metrics.jsonl"
    return _parse(path) if path.exists() else []
