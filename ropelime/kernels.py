"""Locality weight of each perturbed prompt: closer to the original prompt = more weight.

`rwmd_rope` (ours): Relaxed Word Mover's Distance between the prompts' token sets in RoPE embedding
space (`ropelime.rope`), with a Euclidean or cosine ground cost, optionally normalised per
explanation. `cosine`: LIME's distance between the binary mask and the all-kept mask. `uniform`:
every mask weighs the same.

A kernel is a `Kernel` in `KERNELS`: its weight function, its default width and, when it needs one,
how to measure a perturbed prompt's distance to the prompt on the surrogate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ropelime.registry import Registry

if TYPE_CHECKING:
    from ropelime.records import EncodedPrompt, KernelCost

Distance = Callable[[list[int], np.ndarray], float]
"""The distance of a perturbed prompt (its token ids, the positions of its prompt tokens) to the prompt."""


class Geometry(Protocol):
    """What a kernel's distance reads from the surrogate (`ropelime.surrogate.Surrogate` has it)."""

    def rope_vectors(self, ids: list[int], keep: np.ndarray | None = None) -> Any: ...


@dataclass(frozen=True)
class Kernel:
    """One locality kernel: `function(masks, distances, width, normalise) -> weights`."""

    function: Callable[[np.ndarray, np.ndarray | None, float, bool], np.ndarray]
    default_width: float | None = None
    """σ when none is given (None: the kernel has no width)."""
    distance: Callable[[Geometry, EncodedPrompt, KernelCost], Distance] | None = None
    """Builds the distance to the prompt that `function` needs (None: it needs none)."""


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


def uniform(masks: np.ndarray, distances: np.ndarray | None, width: float, normalise: bool) -> np.ndarray:
    """Every mask weighs 1."""
    return np.ones(len(masks))


def cosine(masks: np.ndarray, distances: np.ndarray | None, width: float, normalise: bool) -> np.ndarray:
    """LIME's kernel on the masks' cosine distance to the all-kept mask (never normalised)."""
    return weights_from_distances(mask_cosine_distance(masks), width, normalise=False)


def rwmd_rope(masks: np.ndarray, distances: np.ndarray | None, width: float, normalise: bool) -> np.ndarray:
    """sqrt(exp(-D²/σ²)) of the masks' RWMD distances in RoPE space (see `weights_from_distances`)."""
    if distances is None:
        raise ValueError("the rwmd_rope kernel needs the masks' distances")
    return weights_from_distances(distances, width, normalise)


def rope_distance(surrogate: Geometry, encoded: EncodedPrompt, cost: KernelCost) -> Distance:
    """RWMD in RoPE space to the prompt (`ropelime.rope`, which needs torch: imported on use)."""
    from ropelime.rope import RWMDToPrompt

    return RWMDToPrompt(surrogate.rope_vectors, encoded, cost)


KERNELS: Registry[Kernel] = Registry("kernel", {
    "rwmd_rope": Kernel(rwmd_rope, 0.5, rope_distance),
    "cosine": Kernel(cosine, 0.25),
    "uniform": Kernel(uniform),
}, wrap=Kernel)
"""The kernels by name (the choices of `ExplainConfig.kernel`); a bare function given as a kernel weighs
the masks alone (no distance, no default width)."""


def kernel_weights(
    kernel: str,
    masks: np.ndarray,
    *,
    width: float | None = None,
    distances: np.ndarray | None = None,
    normalise: bool = True,
) -> np.ndarray:
    """One weight per mask row; a kernel with a `distance` needs the masks' `distances` to the prompt
    (`rwmd_rope` divides them by their largest finite value when `normalise`; the others ignore it)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: choose {', '.join(KERNELS)}")
    entry = KERNELS[kernel]
    return entry.function(masks, distances, width or entry.default_width or 1.0, normalise)
