"""FlexTok decoding at the released size on a CPU: a progress bar with one tick per Euler step that never changes the
result, and memory bounded by one step (no autograd graph, nothing of a step kept for the next)."""

from __future__ import annotations

import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import vistok.progress
from vistok.api.models import Tokenizer
from vistok.tokenizers import flextok_sampling as sampling
from vistok.tokenizers.flextok import FlexTok, FlexTokConfig
from vistok.tokenizers.flextok_sampling import DecodeConfig
from vistok.tokenizers.pixel import PixelConfig, PixelTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_flextok import peak_rss, reset_peak_rss  # noqa: E402


def tiny(width: int = 32, depth: int = 2, grid: int = 16, patch: int = 4, registers: int = 8) -> FlexTok:
    """A pixel FlexTok with every zero-initialised weight (heads, adaLN) random, so outputs depend on all inputs."""
    torch.manual_seed(0)
    model = FlexTok(FlexTokConfig(in_channels=3, grid=(grid, grid), patch=patch, registers=registers, enc_width=width,
                                  enc_depth=depth, dec_width=width, dec_depth=depth, head_dim=16, null_cond_p=0.0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def ids_of(model: FlexTok, batch: int = 2) -> torch.Tensor:
    c = model.config
    x = torch.randn(batch, 3, *c.grid, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    return sampling.encode(model, x)


def test_progress_ticks_once_per_step_and_never_changes_the_result(monkeypatch, capsys) -> None:
    model, steps = tiny(), 5
    ids = ids_of(model)
    plain = sampling.decode(model, ids, DecodeConfig(steps=steps, cfg=3.0, guidance="apg"), keep_k=[8, 3], seed=0,
                            progress=False)
    events: list[str] = []
    bars = []
    real_bar = sampling.progress_bar

    def recording_bar(*args, **kwargs):
        bar = real_bar(*args, **kwargs)
        update = bar.update
        bar.update = lambda n=1: (events.append(f"tick {n}"), update(n))[1]
        bars.append((bar, bar.disable))  # (closing a bar disables it)
        return bar

    monkeypatch.setattr(sampling, "progress_bar", recording_bar)
    model.decoder.register_forward_hook(lambda *_: events.append("forward"))
    monkeypatch.setattr(vistok.progress, "is_terminal", lambda: True)  # as if stderr were a terminal
    capsys.readouterr()
    shown = sampling.decode(model, ids, DecodeConfig(steps=steps, cfg=3.0, guidance="apg"), keep_k=[8, 3], seed=0,
                            progress=True)
    assert events == ["forward", "tick 1"] * steps  # both guidance branches in one forward, then one tick
    assert torch.equal(shown, plain)
    assert len(bars) == 1 and not bars[0][1] and bars[0][0].total == steps and bars[0][0].n == steps
    err = capsys.readouterr().err  # tqdm redraws at most every 0.1 s and clears the bar when done: its start shows
    assert f"0/{steps} " in err and "step" in err
    # asked off, or stderr not a terminal: a silent bar (still one tick per step), the same result
    assert torch.equal(sampling.decode(model, ids, DecodeConfig(steps=steps, cfg=3.0, guidance="apg"), keep_k=[8, 3],
                                       seed=0, progress=False), plain)
    monkeypatch.setattr(vistok.progress, "is_terminal", lambda: False)
    assert torch.equal(sampling.decode(model, ids, DecodeConfig(steps=steps, cfg=3.0, guidance="apg"), keep_k=[8, 3],
                                       seed=0, progress=True), plain)
    assert [disabled for _, disabled in bars[1:]] == [True, True] and capsys.readouterr().err == ""


def test_api_decode_passes_progress_to_the_steps(monkeypatch, capsys) -> None:
    tok = Tokenizer(tiny(), PixelTokenizer(PixelConfig(patch=1)))
    ids = np.arange(8, dtype=np.int64)[None] * 1000
    plain = tok.decode(ids, steps=3, progress=False)
    monkeypatch.setattr(vistok.progress, "is_terminal", lambda: True)
    capsys.readouterr()
    shown = tok.decode(ids, steps=3, progress=True)
    err = capsys.readouterr().err
    assert np.array_equal(shown, plain)
    assert "0/3 " in err and "step/s" in err  # the Euler-step bar, beside the images bar
    assert capsys.readouterr().err == "" and np.array_equal(tok.decode(ids, steps=3, progress=False), plain)


def test_decode_keeps_nothing_of_a_step_for_the_next() -> None:
    """Every decoder block's output of step i is freed before step i + 1 (an autograd graph would keep them all,
    with every saved activation), and no step runs with gradients."""
    model, steps = tiny(), 6
    ids = ids_of(model)
    outputs: list[weakref.ref] = []
    alive_at_call: list[int] = []
    modes: list[tuple[bool, bool]] = []

    def hook(_module, _inputs, out):
        alive_at_call.append(sum(r() is not None for r in outputs))
        outputs.append(weakref.ref(out))
        modes.append((torch.is_grad_enabled(), out.requires_grad))

    model.decoder.blocks[0].register_forward_hook(hook)
    assert torch.is_grad_enabled()  # the caller's mode: decode turns gradients off itself
    out = sampling.decode(model, ids, DecodeConfig(steps=steps, cfg=2.0), seed=0)
    assert alive_at_call == [0] * steps
    assert modes == [(False, False)] * steps
    # what comes back is an ordinary tensor: usable in autograd and in-place afterwards (not an inference tensor)
    assert not out.is_inference() and not sampling.encode(model, out.clamp(-1, 1)).is_inference()
    out.mul_(2.0)
    ids_embedded = torch.nn.Embedding(model.fsq.codebook_size, 4)(ids)
    ids_embedded.sum().backward()


@pytest.mark.skipif(not reset_peak_rss(), reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_decode_peak_memory_does_not_grow_with_steps() -> None:
    """Peak RSS of decoding 8 steps is that of 2 steps. Kept activations (an autograd graph) would add about 20 MB
    per step here, over 100 MB for the 6 extra steps (measured with the graph planted back)."""
    model = tiny(width=128, depth=2, grid=32, patch=2, registers=64)
    ids = ids_of(model, batch=1)

    def peak(steps: int) -> int:
        reset_peak_rss()
        sampling.decode(model, ids, DecodeConfig(steps=steps, cfg=2.0, guidance="apg"), seed=0)
        return peak_rss()

    peak(2)  # warm-up: allocator pools, kernels' scratch
    two = peak(2)  # before the 8-step run: memory freed after a run stays resident and would hide a later peak
    growth = peak(8) - two
    assert growth < 16 * 2**20, f"decoding 8 steps peaked {growth / 2**20:.0f} MB above decoding 2"


def test_bench_released_row_runs_and_extrapolates() -> None:
    """benchmarks/bench_flextok.py's released-size row on the smallest preset: one row of the header's width, the decode
    time labelled as extrapolated when fewer steps were measured, and equal to VAE + steps x per-step time."""
    from bench_flextok import released_rows

    header, row = released_rows(["flextok-test"], torch.device("cpu"), steps=25, cfg_scale=7.5, measure_steps=2)
    assert len(row) == len(header) and "25 steps, APG 7.5" in header[4]
    decode, per_step, vae = row[4], float(row[5]), float(row[6])
    assert decode.endswith("(extrapolated from 2 steps)")
    assert abs(float(decode.split()[0]) - (vae + 25 * per_step)) <= 0.1 + 25 * 0.005  # the printed roundings
    assert float(row[3]) >= float(row[1]) and float(row[7]) >= float(row[1])  # peak RSS holds the weights
