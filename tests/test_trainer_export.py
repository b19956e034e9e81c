"""`Trainer.export`, the one ending every train/*.py script shares: rank 0 writes RUN/export (EMA weights, config.json
with the family, model config, step and metadata in order), atomically, through the export-target check."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from vistok.engine.dist import DistEnv
from vistok.engine.loop import TrainConfig, Trainer
from vistok.errors import VistokError
from vistok.io import exports

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@dataclass(frozen=True)
class NetConfig:
    width: int = 4


class Net(nn.Module):
    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config, self.fc = config, nn.Linear(2, config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the loss
        return self.fc(x).pow(2).mean()


@dataclass(frozen=True)
class Cfg:
    train: TrainConfig = field(default_factory=TrainConfig)
    model: NetConfig = field(default_factory=NetConfig)


def trained(run_dir: Path, steps: int = 2) -> Trainer:
    torch.manual_seed(0)
    tc = TrainConfig(run_dir=str(run_dir), total_steps=steps, batch_size=4, log_every=1, ckpt_every=100, num_workers=0,
                     device="cpu", warmup_steps=0, lr=0.1, ema_decay=0.5, ema_warmup=False)
    run = Trainer(Net(NetConfig()), Cfg(tc), CPU)
    with run.logging():
        while run.step < steps:
            for x in run.micro_batches(torch.randn(4, 2, generator=torch.Generator().manual_seed(run.step))):
                run.backward(run.ddp_model(x))
            run.finish_step()
    return run


def test_export_writes_the_ema_weights_and_config_in_order(tmp_path, capsys) -> None:
    run = trained(tmp_path)
    out = run.export("net", run.model.config, extra_key=[1, 2], note="; try: use --ckpt {out}")
    assert out == tmp_path / "export"
    meta, weights = exports.read_export(out)
    assert list(meta) == ["family", "config", "step", "extra_key"]  # step first unless placed by the caller
    assert meta == {"family": "net", "config": {"width": 4}, "step": 2, "extra_key": [1, 2]}
    ema, live = run.ema_state(), run.model.state_dict()
    assert weights.keys() == ema.keys() and all(torch.equal(weights[k], ema[k]) for k in ema)
    assert not torch.equal(weights["fc.weight"], live["fc.weight"])  # the EMA weights, not the live ones
    assert capsys.readouterr().out.splitlines()[-1] == f"exported EMA weights (step 2) to {out}; try: use --ckpt {out}"
    # a caller that places `step` keeps its order (the scripts' config.json files stay byte for byte as they were)
    run.export("net", run.model.config, {"fc.weight": ema["fc.weight"]}, a=1, step=7, b=2)
    meta, weights = exports.read_export(out)
    assert list(meta) == ["family", "config", "a", "step", "b"] and meta["step"] == 7 and list(weights) == ["fc.weight"]


def test_export_is_rank_zero_only_and_takes_a_writer(tmp_path) -> None:
    run = trained(tmp_path)
    run.env = dataclasses.replace(CPU, rank=1)
    assert run.export("net", run.model.config) is None and not (tmp_path / "export").exists()
    run.env = CPU
    calls = []

    def writer(out_dir, family, config, weights, **meta):
        calls.append((out_dir, family, config, sorted(weights), meta))
        return Path(out_dir)

    assert run.export("net", run.model.config, writer=writer, classes=["a"]) == tmp_path / "export"
    meta = {"step": 2, "classes": ["a"]}
    assert calls == [(tmp_path / "export", "net", {"width": 4}, ["fc.bias", "fc.weight"], meta)]


def test_export_refuses_a_folder_of_other_files_and_non_finite_weights(tmp_path) -> None:
    run = trained(tmp_path)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("mine")
    with pytest.raises(VistokError, match="folder of other files"):
        run.export("net", run.model.config)
    assert (tmp_path / "export" / "notes.txt").read_text() == "mine"
    (tmp_path / "export" / "notes.txt").unlink()
    bad = {k: torch.full_like(v, float("nan")) for k, v in run.ema_state().items()}
    with pytest.raises(VistokError, match="non-finite weights"):
        run.export("net", run.model.config, bad)
    assert not any((tmp_path / "export").iterdir())


def test_export_kill_point_leaves_the_files_out_of_place(tmp_path, monkeypatch) -> None:
    """With the default writer the "export" kill point falls after the files are written, before they are in place
    (the SIGKILL tests kill there): an exception raised there leaves no export behind."""
    from vistok.engine import loop

    run = trained(tmp_path)

    def boom(name: str, *args) -> None:
        if name == "export":
            raise RuntimeError("killed at export")

    monkeypatch.setattr(loop, "kill_point", boom)
    with pytest.raises(RuntimeError, match="killed at export"):
        run.export("net", run.model.config)
    assert not (tmp_path / "export").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
