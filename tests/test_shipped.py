"""Golden values of the models shipped in `assets/`: a regression in the samplers, the networks, the tokenizers or the
FID pipeline moves these numbers.

The recorded values were measured on the CPU in fp32 (`pytest tests/test_shipped.py` prints them on failure). Sampling
is seeded per image, so another CPU reproduces them up to BLAS rounding; the tolerances allow for that and no more:
each test also shows that a plainly worse sampler lands outside its tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

import vistok
from vistok.data.sources import load_images
from vistok.metrics import fid
from vistok.metrics.recon import image_metrics
from vistok.tokenizers.flextok_sampling import k_ladder

# cifar10-xar-tiny: 300 samples (30 per class), seed 0, the export's sampler (50 SDE steps, cfg 2.0 linear)
XAR_NUM, XAR_FID, XAR_TOL = 300, 186.159, 5.0
# cifar10-flextok-tiny: MSE (pixels in [0, 1]) of 100 CIFAR-10 test images from their first k tokens, 25 Euler steps
FLEXTOK_NUM, FLEXTOK_RTOL = 100, 0.03
FLEXTOK_MSE = {1: 0.074883, 2: 0.061725, 4: 0.050655, 8: 0.040708, 16: 0.034118}


def xar_fid(tmp_path, **overrides) -> float:
    images = vistok.load("cifar10-xar-tiny").sample(num=XAR_NUM, seed=0, batch_size=XAR_NUM, **overrides)
    path = tmp_path / "samples.npz"
    np.savez(path, arr_0=images)
    return fid.calculate(path, "cifar10-train")["fid"]


def test_xar_tiny_fid_matches_the_recorded_value(tmp_path):
    value = xar_fid(tmp_path)
    assert abs(value - XAR_FID) < XAR_TOL, f"FID {value:.3f}, recorded {XAR_FID} +- {XAR_TOL}"
    worse = xar_fid(tmp_path, steps=4)  # a broken sampler of the same model, for scale
    assert worse - XAR_FID > 3 * XAR_TOL, f"4 steps give FID {worse:.3f}: the tolerance would not catch it"


def flextok_mse(**overrides) -> dict[int, float]:
    tok = vistok.load("cifar10-flextok-tiny")
    images, _ = load_images("cifar10-test", tok.resolution, FLEXTOK_NUM)
    recons = tok.reconstruct(images, k_ladder(tok.registers), **overrides)
    return {k: image_metrics(images, r)["mse"] for k, r in recons.items()}


def test_flextok_tiny_reconstruction_error_matches_and_falls_with_k(data_root):
    mse = flextok_mse()
    assert list(mse) == list(FLEXTOK_MSE)
    for k, value in mse.items():
        assert value == pytest.approx(FLEXTOK_MSE[k], rel=FLEXTOK_RTOL), f"k={k}: MSE {mse}, recorded {FLEXTOK_MSE}"
    values = list(mse.values())
    assert all(a > b for a, b in zip(values, values[1:])), f"MSE must fall with every k step: {mse}"
    assert values[-1] <= 0.5 * values[0], f"MSE at k = K must be at most half of MSE at k = 1: {mse}"
    fewer = flextok_mse(steps=2)  # another decoder setting (blurrier, lower MSE), for scale
    assert all(abs(fewer[k] / FLEXTOK_MSE[k] - 1) > 3 * FLEXTOK_RTOL for k in fewer), fewer
