"""The FlexTok evaluation scripts: the out-of-distribution image sets (`experiments/flextok_ood.py`), the nested-dropout
ablation's bookkeeping (`experiments/ablate_flextok.py`) and the CFG-schedule sweep of xAR on FlexTok codes
(`experiments/sweep_flextok_xar_cfg.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import script_env

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / d) for d in ("experiments", "benchmarks")]

import ablate_flextok  # noqa: E402
import ablate_xar  # noqa: E402
import flextok_ood  # noqa: E402
import sweep_flextok_xar_cfg  # noqa: E402,F401  (imported here so a broken script fails collection)


@pytest.mark.parametrize("name", flextok_ood.SETS)
def test_ood_sets_are_deterministic_and_what_they_claim(name: str, data_root) -> None:
    a, b = flextok_ood.build_set(name, 12, seed=3), flextok_ood.build_set(name, 12, seed=3)
    assert a.dtype == np.uint8 and a.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(a, b)  # the same set for the same seed
    assert not np.array_equal(a, flextok_ood.build_set(name, 12, seed=4))  # another seed, other images
    assert len({img.tobytes() for img in a}) == 12  # no duplicates inside a set
    if name in flextok_ood.GRAY:  # grayscale: the three channels agree
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    else:
        assert (a[..., 0] != a[..., 2]).any()
    if name in ("strokes", "text"):  # dark lines or glyphs on a light background: most pixels bright
        assert np.median(a) > 120
    if name == "mnist":  # light digits on black
        assert np.median(a) < 30 and a.max() > 200
    assert a.std(axis=(1, 2, 3)).min() > 3  # every image has content, not a flat crop


def test_ood_sets_differ_from_each_other_and_unknown_names_fail(data_root) -> None:
    sets = [flextok_ood.build_set(n, 8).astype(np.float64) for n in flextok_ood.SETS]
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            assert np.abs(sets[i] - sets[j]).mean() > 10
    with pytest.raises(ValueError, match="unknown image set"):
        flextok_ood.build_set("faces", 2)


def test_ood_script_stops_on_a_missing_data_file_before_any_decoding(tmp_path) -> None:
    """Every set is built before the tokenizer loads, so a missing file is one line and nothing else runs."""
    env = script_env(VISTOK_DATA=str(tmp_path))  # this checkout on the path, as for every script
    proc = subprocess.run([sys.executable, str(Path(flextok_ood.__file__)), "--sets", "shapes,em", "--num", "2",
                           "--ckpt", str(tmp_path / "no-such-export")], env=env, capture_output=True, text=True,
                          timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the em set reads" in lines[0] and "VISTOK_DATA" in lines[0] and not proc.stdout


class _Perfect:
    """A stand-in tokenizer whose reconstruction from k tokens is the image plus noise of std 8 / k (in uint8 units)."""

    registers = 4

    def reconstruct(self, images, ks, seed, steps, batch_size):
        rng = np.random.default_rng(seed)
        return {k: np.clip(images + rng.normal(0, 8 / k, images.shape), 0, 255).round().astype(np.uint8) for k in ks}


def test_ladder_measures_mse_and_psnr_and_keeps_the_reconstructions(tmp_path) -> None:
    images = flextok_ood.build_set("shapes", 16)
    out = flextok_ood.ladder(_Perfect(), images, [1, 2, 4], seed=0, steps=None, keep=tmp_path)
    for k in (1, 2, 4):  # expected MSE ~ (8 / k / 255)^2 (clipping and rounding move it a little)
        assert out[k]["mse"] == pytest.approx((8 / k / 255) ** 2, rel=0.15)
        kept = np.load(tmp_path / f"recon-k{k}.npz")["arr_0"]
        assert kept.shape == images.shape and kept.dtype == np.uint8
        mse = ((kept / 255 - images / 255) ** 2).mean()
        assert out[k]["mse"] == pytest.approx(mse, rel=1e-9)
    assert out[1]["mse"] > out[2]["mse"] > out[4]["mse"] and out[1]["psnr"] < out[4]["psnr"]


def test_ablation_spread_is_half_the_range_for_two_seeds_and_the_std_for_more() -> None:
    assert ablate_flextok.spread([1.0]) == (1.0, 0.0)
    assert ablate_flextok.spread([1.0, 3.0]) == (2.0, 1.0)
    mean, sd = ablate_flextok.spread([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0) and sd == pytest.approx(float(torch.tensor([1.0, 2.0, 6.0]).std()))


def test_ablation_lanes_sharing_one_folder_keep_each_others_runs(tmp_path) -> None:
    """Two calls over disjoint variants write one OUT/ablation.json: each write merges into what is on disk, so a
    lane that loaded the file before the other lane's run finished does not drop it, and no temporary file stays."""
    path = tmp_path / "out" / "ablation.json"
    lane_a = ablate_flextok.save(path, "pow2/seed0", {"seed": 0})
    lane_b = ablate_flextok.save(path, "uniform/seed0", {"seed": 0})  # lane B never saw lane A's dict
    assert set(lane_a) == {"pow2/seed0"} and set(lane_b) == {"pow2/seed0", "uniform/seed0"}
    ablate_flextok.save(path, "pow2/seed0", {"seed": 0, "rescored": True})  # a re-score replaces only its key
    runs = json.loads(path.read_text())["runs"]
    assert runs == {"pow2/seed0": {"seed": 0, "rescored": True}, "uniform/seed0": {"seed": 0}}
    assert [p.name for p in path.parent.iterdir()] == ["ablation.json"]


@pytest.mark.filterwarnings("ignore:10 fake images")  # FID of 10 images: only compared with itself here
def test_cfg_sweep_runs_a_variant_and_switches_snapping_off_for_nosnap(data_root, tmp_path) -> None:
    """`experiments/sweep_flextok_xar_cfg.py` on the shipped xAR, 10 samples: k = 1 does not depend on snapping
    (group 0 has no context), k = 2 does (group 1 is conditioned on group 0), and the API's sampler is restored
    afterwards."""
    import sweep_flextok_xar_cfg as sweep

    import vistok.api.models as models

    keep = models.sample_ids
    rows = {(v, k): sweep.run("cifar10-flextok-xar-tiny", v, k, seed=0, num=10, cfg=2.0, batch=10, keep_dir=tmp_path)
            for v in ("constant", "constant-nosnap") for k in (1, 2)}
    kept = np.load(tmp_path / "constant-nosnap-k2-seed0-10.npz")["arr_0"]  # the samples stay for re-scoring
    assert kept.shape == (10, 32, 32, 3) and kept.dtype == np.uint8 and len(list(tmp_path.glob("*.npz"))) == 4
    assert models.sample_ids is keep
    assert rows["constant", 1]["snap"] and not rows["constant-nosnap", 1]["snap"]
    assert rows["constant", 1]["schedule"] == rows["constant-nosnap", 1]["schedule"] == "constant"
    assert rows["constant", 1]["fid"] == rows["constant-nosnap", 1]["fid"]
    assert rows["constant", 2]["fid"] != rows["constant-nosnap", 2]["fid"]


@pytest.mark.filterwarnings("ignore:.*fake images")  # FID of 20 images: only compared with itself here
def test_ablations_rescore_kept_samples_once_when_the_feature_network_changes(tmp_path, data_root) -> None:
    """A score recorded by another `cifar10-net` (another fingerprint) is recomputed from the kept files, and only
    then: a second call, or a row of the current network, leaves the recorded value alone."""
    from vistok.metrics import fid

    images = flextok_ood.build_set("shapes", 20)
    for k in (1, 2):
        np.savez(tmp_path / f"recon-k{k}.npz", arr_0=images if k == 1 else images[::-1] // 2)
    np.savez(tmp_path / "samples-20-seed3.npz", arr_0=images)
    truth = {k: fid.calculate(tmp_path / f"recon-k{k}.npz", "cifar10-train")["fid"] for k in (1, 2)}
    assert truth[1] != truth[2]

    run = {"ladder": {"1": {"mse": 0.1, "fid": -1.0}, "2": {"mse": 0.05, "fid": -2.0}}, "extractor": "older"}
    assert ablate_flextok.rescore(tmp_path, run, "cifar10-train")
    assert run["ladder"]["1"]["fid"] == pytest.approx(truth[1]) and run["ladder"]["2"]["fid"] == pytest.approx(truth[2])
    assert run["ladder"]["1"]["mse"] == 0.1 and run["extractor"] == ablate_flextok.fid_net_fingerprint()
    assert not ablate_flextok.rescore(tmp_path, run, "cifar10-train")  # now current: nothing to do

    row = {"fid": -1.0, "num": 20, "sample_s": 9.0}  # scored before fingerprints were recorded
    fresh = ablate_xar.rescore(tmp_path, row, seed=3)
    assert fresh["fid"] == pytest.approx(truth[1]) and fresh["sample_s"] == 9.0
    assert ablate_xar.rescore(tmp_path, fresh, seed=3) is None
    assert ablate_xar.rescore(tmp_path, {**row, "num": 21}, seed=3) is None  # no kept samples: the row stays


def test_loss_curve_windows_and_clear_errors(tmp_path) -> None:
    """`experiments/plot_loss.py`: one value per step (a repeated step's later row), window means over steps 1..w,
    w+1..2w, ... with non-finite values left out, and one-line errors for a folder without a log or a key it does not
    hold."""
    import json

    import plot_loss

    from vistok.errors import VistokError

    rows = [{"step": s, "loss": float(s), "lr": 0.1} for s in range(10, 51, 10)]
    rows += [{"step": 40, "loss": 400.0}, {"step": 60, "loss": float("nan")}, {"step": 70, "loss": 7.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    points = plot_loss.curve(tmp_path)
    assert [s for s, _ in points] == [10, 20, 30, 40, 50, 60, 70] and dict(points)[40] == 400.0
    table = plot_loss.windows(points, 30)
    assert [(a, b) for a, b, _ in table] == [(10, 30), (40, 60), (70, 70)]
    assert table[0][2] == pytest.approx(20.0) and table[1][2] == pytest.approx(225.0) and table[2][2] == 7.0
    assert plot_loss.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    with pytest.raises(VistokError, match="has no metrics.jsonl"):
        plot_loss.curve(tmp_path / "nope")
    with pytest.raises(VistokError, match=r"no 'flow' values; it logs loss, lr"):
        plot_loss.curve(tmp_path, "flow")
