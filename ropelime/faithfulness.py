"""Faithfulness of an explanation on the surrogate: does its linear model predict what removing
features really does to the surrogate's support for the response?

- LDS (linear datamodeling score): Spearman correlation, over held-out random masks, between the
  support the explanation's scores predict (sum of the kept features' scores) and the true support.
- Top-k removal drop: how much support falls when the k highest-scored features are removed,
  against the mean fall when k random features are removed.

Support is the target with its sign turned so that larger = the response is better supported.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field
from scipy.stats import spearmanr

from ropelime.anytime import Deadline
from ropelime.cache import ScoreCache
from ropelime.explain import mask_targets
from ropelime.samplers import sample_masks
from ropelime.schema import Cost, Explanation
from ropelime.surrogate import Surrogate
from ropelime.targets import support_sign

HELDOUT_SEED = 1_000_003
"""Offset of the held-out masks' seed, so they are drawn independently of any explanation's masks."""


class Faithfulness(BaseModel):
    """How well an explanation predicts the surrogate's response to held-out perturbations."""

    lds: float = Field(description="Spearman correlation of predicted and true support on held-out random masks")
    heldout_masks: int
    k: int = Field(description="features removed for the removal test")
    topk_drop: float = Field(description="support lost when the k top-scored features are removed")
    random_k_drop: float = Field(description="mean support lost when k random features are removed")
    cost: Cost


def heldout_masks(d: int, n: int, seed: int = 0) -> np.ndarray:
    """n distinct random masks (each feature kept with probability ½), independent of the fitting masks."""
    return sample_masks(d, "bernoulli", n, seed=HELDOUT_SEED + seed)


def default_k(d: int) -> int:
    """Features removed by the removal test when no k is given: a tenth, at least 1, fewer than d."""
    return max(1, min(d - 1, round(d / 10)))


def scores_vector(explanation: Explanation) -> np.ndarray:
    """The features' scores in feature order."""
    return np.array([f.score for f in sorted(explanation.features, key=lambda f: f.index)])


def lds(explanation: Explanation, masks: np.ndarray, support: np.ndarray) -> float:
    """Spearman correlation between the predicted support (masks @ scores) and the true support; 0 if either is constant."""
    predicted = np.asarray(masks, dtype=np.float64) @ scores_vector(explanation)
    if np.ptp(predicted) == 0 or np.ptp(support) == 0:
        return 0.0
    return float(spearmanr(predicted, support).statistic)


def removal_masks(explanation: Explanation, k: int, n_random: int, seed: int = 0) -> np.ndarray:
    """Row 0 keeps everything, row 1 removes the k top-scored features, then n_random rows remove k random ones."""
    d = len(explanation.features)
    top = np.argsort(-scores_vector(explanation), kind="stable")[:k]
    rows = np.ones((2 + n_random, d), dtype=bool)
    rows[1, top] = False
    rng = np.random.default_rng(HELDOUT_SEED + seed)
    for r in range(n_random):
        rows[2 + r, rng.choice(d, size=k, replace=False)] = False
    return rows


def evaluate_faithfulness(
    explanation: Explanation,
    *,
    heldout: int = 32,
    k: int | None = None,
    n_random: int = 8,
    seed: int = 0,
    surrogate: Surrogate | str | None = None,
    cache: ScoreCache | None = None,
    deadline: Deadline | None = None,
) -> Faithfulness:
    """LDS on `heldout` random masks and the top-k vs random-k removal drop, scored through the cache.

    Raises OutOfTime when `deadline` comes first (the masks scored so far stay cached)."""
    d = len(explanation.features)
    if d < 2:
        raise ValueError("faithfulness needs at least two features.")
    k = default_k(d) if k is None else k
    if not 1 <= k < d:
        raise ValueError(f"k must be between 1 and {d - 1} (the number of features less one), got {k}.")
    held = heldout_masks(d, heldout, seed)
    removal = removal_masks(explanation, k, n_random, seed)
    values, cost = mask_targets(explanation, np.vstack([removal, held]), surrogate=surrogate, cache=cache,
                                 deadline=deadline)
    support = support_sign(explanation.config.target) * values
    full, removed = support[0], support[1:len(removal)]
    return Faithfulness(
        lds=lds(explanation, held, support[len(removal):]),
        heldout_masks=len(held),
        k=k,
        topk_drop=float(full - removed[0]),
        random_k_drop=float(np.mean(full - removed[1:])),
        cost=cost,
    )
