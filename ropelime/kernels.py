"""Locality weight of each perturbed prompt: closer to the original prompt = more weight.

`rwmd_rope` (ours): Relaxed Word Mover's Distance (Kusner et al. 2015) between the prompts' token
sets in RoPE embedding space (see `Surrogate.rope_vectors`). `cosine`: LIME's distance between the
binary mask and the all-kept mask. `uniform`: every mask weighs the same.
"""

from __future__ import annotations

import numpy as np
import torch

from ropelime.schema import Kernel

DEFAULT_WIDTH: dict[str, float] = {"rwmd_rope": 0.5, "cosine": 0.25, "uniform": 1.0}


def rwmd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relaxed WMD with uniform weights and Euclidean cost: the larger of the two one-sided
    averages of nearest-neighbour distances. 0 for identical sets."""
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else float("inf")
    cost = torch.cdist(a.unsqueeze(0), b.unsqueeze(0), compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)
    return float(max(cost.min(dim=1).values.mean(), cost.min(dim=0).values.mean()))


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
) -> np.ndarray:
    """One weight per mask row; `rwmd_rope` needs the masks' RWMD distances to the original."""
    width = width or DEFAULT_WIDTH[kernel]
    if kernel == "uniform":
        return np.ones(len(masks))
    if kernel == "cosine":
        return weights_from_distances(mask_cosine_distance(masks), width, normalise=False)
    if kernel == "rwmd_rope":
        if rwmd_distances is None:
            raise ValueError("the rwmd_rope kernel needs rwmd_distances")
        return weights_from_distances(rwmd_distances, width)
    raise ValueError(f"unknown kernel {kernel!r}: choose rwmd_rope, cosine or uniform")
