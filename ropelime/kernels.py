"""Locality weight of each perturbed prompt: closer to the original prompt = more weight.

`rwmd_rope` (ours): Relaxed Word Mover's Distance (Kusner et al. 2015) between the prompts' token
sets in RoPE embedding space (see `Surrogate.rope_vectors`), with a Euclidean or cosine ground cost,
optionally normalised per explanation. `cosine`: LIME's distance between the binary mask and the
all-kept mask. `uniform`: every mask weighs the same.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ropelime.schema import Kernel, KernelCost

DEFAULT_WIDTH: dict[str, float] = {"rwmd_rope": 0.5, "cosine": 0.25, "uniform": 1.0}


def _ground_cost(a: torch.Tensor, b: torch.Tensor, cost: KernelCost = "euclidean") -> torch.Tensor:
    """Cost between every row of `a` and every row of `b`: Euclidean distance, or cosine distance
    1 − cos(a, b) (in 0..2, blind to the vectors' lengths).

    Euclidean distances go through a matrix product (|a|² + |b|² − 2a·b): 16× faster than the
    direct difference on a 1,600-token prompt (28 s → 1.7 s for 64 masks), with absolute errors
    about 1e-3 (so identical vectors are ~1e-3 apart, not 0) against distances of 1–30."""
    if cost == "euclidean":
        return torch.cdist(a.unsqueeze(0), b.unsqueeze(0), compute_mode="use_mm_for_euclid_dist").squeeze(0)
    if cost == "cosine":
        return (1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).clamp_min(0.0)
    raise ValueError(f"unknown kernel cost {cost!r}: choose euclidean or cosine")


def rwmd(a: torch.Tensor, b: torch.Tensor, cost: KernelCost = "euclidean") -> float:
    """Relaxed WMD with uniform weights: the larger of the two one-sided averages of
    nearest-neighbour costs. 0 for identical sets."""
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else float("inf")
    costs = _ground_cost(a, b, cost)
    return float(max(costs.min(dim=1).values.mean(), costs.min(dim=0).values.mean()))


def mask_cosine_distance(masks: np.ndarray) -> np.ndarray:
    """1 - cosine similarity between each mask and the all-kept mask (LIME's text distance)."""
    d = masks.shape[1]
    kept = masks.sum(axis=1)
    return 1.0 - np.sqrt(kept / d)


def weights_from_distances(distances: np.ndarray, width: float, normalise: bool = True) -> np.ndarray:
    """sqrt(exp(-D²/σ²)), with D divided by its largest finite value first when `normalise`.

    An infinite distance (every prompt token removed) counts as the largest finite one, so such a
    mask still weighs a little instead of nothing.
    """
    distances = np.asarray(distances, dtype=np.float64)
    finite = distances[np.isfinite(distances)]
    largest = finite.max() if finite.size and finite.max() > 0 else 1.0
    scaled = np.where(np.isfinite(distances), distances, largest) / (largest if normalise else 1.0)
    return np.sqrt(np.exp(-(scaled ** 2) / width ** 2))


def kernel_weights(
    kernel: Kernel,
    masks: np.ndarray,
    *,
    width: float | None = None,
    rwmd_distances: np.ndarray | None = None,
    normalise: bool = True,
) -> np.ndarray:
    """One weight per mask row; `rwmd_rope` needs the masks' RWMD distances to the original and
    divides them by their largest finite value when `normalise` (the other kernels ignore it)."""
    width = width or DEFAULT_WIDTH[kernel]
    if kernel == "uniform":
        return np.ones(len(masks))
    if kernel == "cosine":
        return weights_from_distances(mask_cosine_distance(masks), width, normalise=False)
    if kernel == "rwmd_rope":
        if rwmd_distances is None:
            raise ValueError("the rwmd_rope kernel needs rwmd_distances")
        return weights_from_distances(rwmd_distances, width, normalise)
    raise ValueError(f"unknown kernel {kernel!r}: choose rwmd_rope, cosine or uniform")
