"""RoPE geometry: a prompt as the set of its token vectors in RoPE embedding space, and the relaxed word
mover's distance (RWMD, Kusner et al. 2015) between two such sets — the distance of the `rwmd_rope` kernel.

A token's vector is the surrogate's input embedding rotated by the model's own rotary embedding at the
token's position (per head-dim chunk, the model's own frequencies and scaling).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ropelime.records import EncodedPrompt, KernelCost

Vectors = Callable[[list[int], "np.ndarray | None"], torch.Tensor]
"""A prompt's token ids (and which of them to keep) → their vectors in RoPE space (`Surrogate.rope_vectors`)."""


def find_rotary(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's rotary embedding module, or None for a model without RoPE."""
    for module in model.modules():
        if "Rotary" in type(module).__name__:
            return module
    return None


@torch.inference_mode()
def rope_vectors(model: torch.nn.Module, rotary: torch.nn.Module, ids: list[int],
                 keep: np.ndarray | None = None) -> torch.Tensor:
    """Input embeddings of the tokens rotated by the model's rotary embedding at their positions.

    The embedding vector is cut into head-dim chunks and each chunk is rotated like a query
    (the model's own frequencies and scaling); `keep` selects which tokens to return.
    """
    device = model.get_input_embeddings().weight.device
    ids_t = torch.tensor([ids], device=device)
    vectors = model.get_input_embeddings()(ids_t).float()
    positions = torch.arange(len(ids), device=device).unsqueeze(0)
    cos, sin = _rotary(model, rotary, vectors, positions)
    cos, sin = cos[0].float(), sin[0].float()
    head = cos.shape[-1]
    chunks = []
    for start in range(0, vectors.shape[-1], head):
        chunk = vectors[0, :, start:start + head]
        half = chunk.shape[-1] // 2
        c = torch.cat([cos[:, :half], cos[:, :half]], dim=-1)
        s = torch.cat([sin[:, :half], sin[:, :half]], dim=-1)
        rotated_half = torch.cat([-chunk[:, half:2 * half], chunk[:, :half]], dim=-1)
        chunks.append(chunk[:, :2 * half] * c + rotated_half * s)
    out = torch.cat(chunks, dim=-1)
    return out if keep is None else out[torch.as_tensor(keep, device=device)]


def _rotary(model: torch.nn.Module, rotary: torch.nn.Module, x: torch.Tensor, positions: torch.Tensor):
    parameters = inspect.signature(rotary.forward).parameters
    if "layer_type" in parameters:
        layer_types = list(getattr(model.config, "layer_types", None) or [])
        most_common = max(set(layer_types), key=layer_types.count) if layer_types else None
        return rotary(x, positions, layer_type=most_common)
    return rotary(x, positions)


def ground_cost(a: torch.Tensor, b: torch.Tensor, cost: KernelCost = "euclidean") -> torch.Tensor:
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
    costs = ground_cost(a, b, cost)
    return float(max(costs.min(dim=1).values.mean(), costs.min(dim=0).values.mean()))


class RWMDToPrompt:
    """The RWMD in RoPE space from one prompt's tokens to a perturbed prompt's: `distance(ids, keep)`."""

    def __init__(self, vectors: Vectors, encoded: EncodedPrompt, cost: KernelCost = "euclidean") -> None:
        self.vectors, self.cost = vectors, cost
        self.base = vectors(encoded.ids, encoded.prompt_tokens)

    def __call__(self, ids: list[int], keep: np.ndarray) -> float:
        return rwmd(self.base, self.vectors(ids, keep), self.cost)
