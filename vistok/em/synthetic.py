"""A synthetic EM-like volume with dense neuron labels, for tests and CPU demos.

Cells are the Voronoi regions of random seeds (stretched in z, like anisotropic serial-section EM), their borders are
dark membranes, their insides bright textured cytoplasm with a few dark vesicle-like blobs, and the image is blurred
and noisy. Labels are 1..num_cells inside cells and 0 on membranes, like the ground truth of EM benchmarks
(Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for connectomics", 2015).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vistok.errors import require


def synthetic_em_volume(shape: tuple[int, int, int] = (32, 96, 96), num_cells: int = 40, seed: int = 0,
                        anisotropy: float = 2.0, noise: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """-> (raw (z, y, x) uint8, labels (z, y, x) int32 with 0 on membranes)."""
    require(len(shape) == 3 and min(shape) >= 2, f"shape {shape} must be 3 sizes of at least 2")
    require(num_cells >= 1, "num_cells must be positive")
    rng = np.random.default_rng(seed)
    markers = np.zeros(shape, np.int32)
    points = (rng.random((num_cells, 3)) * np.array(shape)).astype(int)
    markers[tuple(points.T)] = np.arange(1, num_cells + 1)
    _, nearest = ndimage.distance_transform_edt(markers == 0, sampling=(anisotropy, 1.0, 1.0), return_indices=True)
    cells = markers[tuple(nearest)]  # (z, y, x) Voronoi labels
    cross = ndimage.generate_binary_structure(3, 1)
    membrane = ndimage.maximum_filter(cells, footprint=cross) != ndimage.minimum_filter(cells, footprint=cross)

    brightness = rng.uniform(0.55, 0.85, num_cells + 1)[cells]
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0.5, 1.5, 1.5))
    blobs = ndimage.gaussian_filter((rng.random(shape) < 0.002).astype(float), sigma=(0.7, 1.5, 1.5)) > 0.02
    image = brightness + 0.15 * texture / (texture.std() + 1e-8) - 0.3 * blobs
    image[membrane] = 0.15
    image = ndimage.gaussian_filter(image, sigma=(0.3, 0.8, 0.8)) + noise * rng.standard_normal(shape)
    raw = np.clip(image * 255, 0, 255).astype(np.uint8)
    labels = np.where(membrane, 0, cells).astype(np.int32)
    return raw, labels
