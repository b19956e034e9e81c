"""ADM's evaluator definitions (Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021;
openai/guided-diffusion `evaluations/evaluator.py`), the protocol behind ImageNet-256 tables such as xAR's, written in
PyTorch on torch-fidelity's Inception port. Where they differ from torch-fidelity's own metrics:

- Inception Score: softmax of the bias-free logits (torch-fidelity's `logits_unbiased`, the evaluator's
  `softmax/logits/MatMul` weight alone), over contiguous splits of 5,000 images in input order, no shuffle (50,000
  samples: 10 splits); the score is the mean over splits. torch-fidelity shuffles before splitting.
- sFID: FID on spatial features, the first 7 channels of Inception's `mixed_6/conv` output (the 1x1 branch of the
  4th 17x17 block, torch-fidelity's `Mixed_6d.branch1x1` after its ReLU: 17 x 17 x 7 = 2,023 values), flattened in
  TensorFlow's (h, w, c) order so that the statistics match a reference batch's `mu_s`/`sigma_s`. torch-fidelity
  exposes no such layer, so a forward hook reads it.
- Precision/recall (Kynkaanniemi et al., NeurIPS 2019, as the evaluator runs it): squared Euclidean distances in blocks
  of 10,000 x 10,000, each block first in float16 (inputs rounded to half, half results; float32 accumulation, as
  TensorFlow's GPU kernels) and recomputed in float32 only when some half value overflowed; the radius of a point is
  its distance to its 3rd nearest neighbour in its own set; precision = the fraction of samples inside some reference
  ball, recall = the fraction of references inside some sample ball.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from einops import rearrange
from torch import nn

IS_SPLIT_SIZE = 5000  # images per Inception Score split (50,000 samples: 10 splits)
PR_K = 3  # neighbourhood size of the precision/recall manifolds
PR_BATCH = 10_000  # row and column block of the pairwise distances
SPATIAL_CHANNELS = 7  # channels of the spatial layer kept for sFID
# the spatial layer per extractor: Inception's mixed_6/conv; for cifar10-net (no ADM counterpart: relative comparisons
# only) its middle stage, which like mixed_6 sits halfway down the network
SPATIAL_MODULE = {"inception-v3-compat": "Mixed_6d.branch1x1", "cifar10-net": "net.stage2"}


def inception_score(logits: torch.Tensor | np.ndarray, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """(mean, std over splits) of exp(E_x KL(p(y|x) || p(y))) over contiguous splits of `split_size` rows of
    (N, classes) logits, in input order (the last split may be shorter, as in the evaluator)."""
    probs = torch.as_tensor(logits).double().softmax(dim=1)  # (N, K)
    scores = []
    for part in probs.split(split_size):
        kl = part * (part.log() - part.mean(dim=0, keepdim=True).log())  # (n, K)
        scores.append(kl.sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def statistics(features: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """{mu, sigma} of (N, D) features as the evaluator forms them (np.mean, np.cov with rowvar=False)."""
    x = np.asarray(features, dtype=np.float32)
    return {"mu": x.mean(axis=0), "sigma": np.cov(x, rowvar=False)}


# --------------------------------------------------------------------------------------------- spatial features
@contextlib.contextmanager
def spatial_features(fe: nn.Module, extractor: str) -> Iterator[list[torch.Tensor]]:
    """While open, every forward of the feature extractor appends its (B, 7 * h * w) spatial features to the yielded
    list, in call order."""
    out: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        kept = output[:, :SPATIAL_CHANNELS].float()  # (B, 7, h, w)
        out.append(rearrange(kept, "b c h w -> b (h w c)").cpu())  # TensorFlow's NHWC flattening

    handle = fe.get_submodule(SPATIAL_MODULE[extractor]).register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------- precision/recall
def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n, D), (m, D) -> (n, m) float32 squared distances max(|u|^2 - 2 u.v + |v|^2, 0), computed as the evaluator's
    DistanceBlock: in half precision, unless some half value is not finite, then in float32."""
    u16, v16 = u.half(), v.half()
    norm_u = (u16 * u16).float().sum(dim=1).half()  # (n,)
    norm_v = (v16 * v16).float().sum(dim=1).half()  # (m,)
    dots = (u16.float() @ v16.float().T).half()  # (n, m): half inputs, float accumulation, half result
    d16 = ((norm_u[:, None] - 2 * dots) + norm_v[None, :]).clamp_min(0)
    if torch.isfinite(d16).all():
        return d16.float()
    u32, v32 = u.float(), v.float()
    d32 = (u32 * u32).sum(dim=1)[:, None] - 2 * (u32 @ v32.T) + (v32 * v32).sum(dim=1)[None, :]
    return d32.clamp_min(0)


def manifold_radii(features: torch.Tensor, k: int = PR_K, batch: int = PR_BATCH) -> torch.Tensor:
    """(N,) squared distance of each point to its k-th nearest neighbour in the set (itself excluded: it is the
    0-th), from blocks of `batch` x `batch` distances."""
    radii = []
    for rows in features.split(batch):
        d = torch.cat([pairwise_sq_distances(rows, cols) for cols in features.split(batch)], dim=1)  # (r, N)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K,
                     batch: int = PR_BATCH) -> tuple[float, float]:
    """(precision, recall) of fake (N2, D) features against real (N1, D), as the evaluator's `compute_prec_recall`
    (distances always real rows x fake columns, the orientation its half-precision rounding sees)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    real, fake = real.float().to(device), fake.float().to(device)
    r_real, r_fake = manifold_radii(real, k, batch), manifold_radii(fake, k, batch)
    real_in = torch.zeros(len(real), dtype=torch.bool, device=device)  # inside some fake ball: recall
    fake_in = torch.zeros(len(fake), dtype=torch.bool, device=device)  # inside some real ball: precision
    for i in range(0, len(real), batch):
        for j in range(0, len(fake), batch):
            d = pairwise_sq_distances(real[i:i + batch], fake[j:j + batch])  # (r, f)
            real_in[i:i + batch] |= (d <= r_fake[None, j:j + batch]).any(dim=1)
            fake_in[j:j + batch] |= (d <= r_real[i:i + batch, None]).any(dim=0)
    return fake_in.double().mean().item(), real_in.double().mean().item()
