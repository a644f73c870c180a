"""Perturbation masks: rows of a (n, d) bool array, True = feature kept.

The unperturbed all-ones mask is never returned (the caller scores it anyway), rows are distinct,
and the result depends only on the arguments (numpy `default_rng(seed)`).

- `loo`: the d singletons, row i removes feature i; `budget` does not apply.
- `bernoulli`: every feature kept with probability 0.5; `budget` distinct masks (all of them
  when fewer exist).
- `loo_pairs`: the d singletons in order (as `loo`), then budget - d masks removing two features
  each (at least `MIN_PAIRS`, at most every pair), balanced as sparse_k's: the singletons measure each
  feature, the pairs how far the features' effects add up (the `differences` solver's intervals).
- `sparse_k`: every mask removes a few features: 1..K, K = `k` or `default_k(d)`, capped at d - 1
  (so some feature is always kept, unless d = 1), sizes drawn from `SIZE_DISTRIBUTIONS[sizes]`. Each mask
  is built greedily: repeatedly take the feature removed least often so far, ties broken by the
  fewest co-removals with the features already taken, then at random; the last feature is the best
  one that does not repeat an earlier mask. So removal counts differ by at most one (unless
  avoiding duplicates forces another choice: small d, or a size nearly used up) and pairs spread
  evenly. With a budget of at least 2d the first d rows are the singletons in order and the others
  remove two or more features. Returns min(budget, number of possible masks) rows; when every
  possible mask fits in the budget, all of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ropelime.registry import Registry

DEFAULT_K_FRACTION = 0.25
"""sparse_k with k=None: K = ceil(d * DEFAULT_K_FRACTION), at least 1. Against K fixed at 1, 2, 4 and 8 on 30
MMLU items: AUROC ties, K = 1 loses LDS (docs/EVALUATION.md §2.4)."""

GREEDY_TRIES = 4
"""Greedy constructions (fresh random tie-breaks) before a duplicate mask falls back."""

ENUMERATE_LIMIT = 50_000
"""Fallback: largest number of same-size masks searched exhaustively for an unused one."""

RANDOM_TRIES = 64
"""Fallback above that limit: random masks of the size tried for an unused one."""

MIN_PAIRS = 16
"""loo_pairs: pair masks scored even when the budget leaves fewer after the singletons."""


def uniform_sizes(k: int) -> np.ndarray:
    """Probability of removing 1..k features: uniform."""
    return np.full(k, 1.0 / k)


def harmonic_sizes(k: int) -> np.ndarray:
    """Probability of removing s of 1..k features proportional to 1/s: small masks more often."""
    weights = 1.0 / np.arange(1, k + 1)
    return weights / weights.sum()


SIZE_DISTRIBUTIONS: Registry[Callable[[int], np.ndarray]] = Registry(
    "size distribution", {"uniform": uniform_sizes, "harmonic": harmonic_sizes})
"""sparse_k: maps K to the probabilities of removing 1..K features."""


def default_k(d: int) -> int:
    """sparse_k's K when none is given."""
    return max(1, math.ceil(d * DEFAULT_K_FRACTION))


def sample_masks(d: int, sampler: str, budget: int, *, k: int | None = None,
                 sizes: str = "uniform", seed: int = 0) -> np.ndarray:
    """Masks to score besides the unperturbed prompt: a (n, d) bool array, True = kept.

    `sampler` names an entry of `SAMPLERS`; `k` and `sizes` apply to sparse_k only; `budget` to sparse_k
    and bernoulli (loo always gives d rows).
    """
    if d <= 0:
        raise ValueError(f"no features to perturb (d={d}); the explainable text must hold at least one feature.")
    if budget <= 0:
        raise ValueError(f"budget must be a positive number of masks, got {budget}.")
    if k is not None and k < 1:
        raise ValueError(f"k (most features removed per mask) must be at least 1, got {k}.")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use {', '.join(SAMPLERS)}.")
    return SAMPLERS[sampler].function(d, budget, np.random.default_rng(seed), k=k, sizes=sizes)


def loo(d: int, budget: int, rng: np.random.Generator, **_) -> np.ndarray:
    """The d singletons: row i removes feature i."""
    return ~np.eye(d, dtype=bool)


def bernoulli(d: int, budget: int, rng: np.random.Generator, **_) -> np.ndarray:
    """`budget` distinct masks keeping every feature with probability 0.5 (all of them when fewer exist)."""
    return _bernoulli(d, budget, rng)


def sparse_k(d: int, budget: int, rng: np.random.Generator, *, k: int | None = None, sizes: str = "uniform",
             **_) -> np.ndarray:
    """Masks removing 1..k features each, with balanced coverage (see the module)."""
    if sizes not in SIZE_DISTRIBUTIONS:
        raise ValueError(f"unknown size distribution {sizes!r}; use {' or '.join(SIZE_DISTRIBUTIONS)}.")
    return _sparse_k(d, budget, default_k(d) if k is None else k, SIZE_DISTRIBUTIONS[sizes], rng)


def loo_pairs(d: int, budget: int, rng: np.random.Generator, **_) -> np.ndarray:
    """The d singletons, then max(budget - d, MIN_PAIRS) balanced pair masks (every pair when fewer exist)."""
    pairs = min(max(budget - d, MIN_PAIRS), math.comb(d, 2))
    if not pairs:
        return loo(d, budget, rng)
    return _sparse_k(d, d + pairs, 2, uniform_sizes, rng, singletons=True)


@dataclass(frozen=True)
class Sampler:
    """`function(d, budget, rng, *, k, sizes) -> (n, d) bool masks` (True = kept; never the all-kept row);
    whether it draws `budget` masks (else its own number), whether it takes `k`, and the solver its masks are
    made for (the default fit)."""

    function: Callable[..., np.ndarray]
    uses_budget: bool = True
    uses_k: bool = False
    solver: str = "ridge"


SAMPLERS: Registry[Sampler] = Registry("sampler", {
    "sparse_k": Sampler(sparse_k, uses_k=True),
    "loo": Sampler(loo, uses_budget=False),
    "bernoulli": Sampler(bernoulli),
    "loo_pairs": Sampler(loo_pairs, solver="differences"),
}, wrap=Sampler)
"""The samplers by name (the choices of `ExplainConfig.sampler`)."""


def _bernoulli(d: int, budget: int, rng: np.random.Generator) -> np.ndarray:
    if d < 63 and 2**d - 1 <= budget:
        codes = rng.permutation(np.arange(2**d - 1))  # every mask but all-ones, in random order
        return (codes[:, None] >> np.arange(d)) & 1 == 1
    rows: dict[bytes, np.ndarray] = {}
    while len(rows) < budget:
        for row in rng.random((budget, d)) < 0.5:
            if not row.all():
                rows.setdefault(row.tobytes(), row)
                if len(rows) == budget:
                    break
    return np.array(list(rows.values()), dtype=bool)


def _sparse_k(d: int, budget: int, k: int, size_distribution, rng: np.random.Generator, *,
              singletons: bool | None = None) -> np.ndarray:
    """`budget` balanced masks of 1..k removals; `singletons`: the d singletons first, then larger masks only
    (default: when budget >= 2d)."""
    k = min(k, max(d - 1, 1))
    possible = sum(math.comb(d, s) for s in range(1, k + 1))
    if possible <= budget:
        return _all_sparse(d, k, rng)
    singletons = budget >= 2 * d if singletons is None else singletons
    sizes = np.arange(2 if singletons else 1, k + 1)
    weights = size_distribution(k)[sizes - 1]
    weights = weights / weights.sum()
    unused = {int(s): math.comb(d, int(s)) for s in sizes}  # masks of each size not yet taken
    masks = list(~np.eye(d, dtype=bool)) if singletons else []
    seen = {(i,) for i in range(d)} if singletons else set()
    counts = np.full(d, 1.0 if singletons else 0.0)
    pairs = np.zeros((d, d))  # co-removal counts (the diagonal holds the removal counts)
    while len(masks) < budget:
        size = int(rng.choice(sizes, p=weights))
        chosen = _new_mask(size, unused, counts, pairs, seen, rng)
        if chosen is None:
            break
        seen.add(chosen)
        idx = np.array(chosen)
        counts[idx] += 1
        pairs[np.ix_(idx, idx)] += 1
        row = np.ones(d, dtype=bool)
        row[idx] = False
        masks.append(row)
        unused[len(chosen)] -= 1
        if unused[len(chosen)] == 0:  # size exhausted: draw among the other sizes from now on
            weights = np.where(sizes == len(chosen), 0.0, weights)
            weights = weights / weights.sum()
    return np.array(masks, dtype=bool).reshape(-1, d)


def _new_mask(size: int, unused: dict[int, int], counts: np.ndarray, pairs: np.ndarray,
              seen: set[tuple[int, ...]], rng: np.random.Generator) -> tuple[int, ...] | None:
    """Sorted indices of the features a new, unused mask removes; None when none can be found."""
    for _ in range(GREEDY_TRIES):
        chosen = _greedy(size, counts, pairs, seen, rng)
        if chosen is not None:
            return chosen
    others = [s for s, n in unused.items() if n > 0 and s != size]
    for s in [size, *rng.permutation(others).tolist()]:
        chosen = _fallback(int(s), counts, pairs, seen, rng)
        if chosen is not None:
            return chosen
    return None


def _greedy(size: int, counts: np.ndarray, pairs: np.ndarray, seen: set[tuple[int, ...]],
            rng: np.random.Generator) -> tuple[int, ...] | None:
    """Take `size` features: fewest removals, then fewest co-removals with those taken, then random.

    The last feature is the best one that makes the mask unused; None if there is none.
    """
    scale = pairs.max() * size + 1  # co-removal sums stay below this: counts dominate
    key = counts * scale + rng.random(len(counts))
    chosen = []
    for _ in range(size - 1):
        i = int(np.argmin(key))
        chosen.append(i)
        key += pairs[i]
        key[i] = np.inf
    for i in np.argsort(key)[:len(key) - len(chosen)].tolist():
        mask = tuple(sorted([*chosen, i]))
        if mask not in seen:
            return mask
    return None


def _fallback(size: int, counts: np.ndarray, pairs: np.ndarray, seen: set[tuple[int, ...]],
              rng: np.random.Generator) -> tuple[int, ...] | None:
    """An unused mask of `size` removed features, as balanced as a search can find; None if none."""
    d = len(counts)
    if math.comb(d, size) <= ENUMERATE_LIMIT:
        unused = [c for c in itertools.combinations(range(d), size) if c not in seen]
        if not unused:
            return None
        idx = np.array(unused)
        cost = (counts[idx].sum(axis=1) * (pairs.max() * size * size + 1)
                + pairs[idx[:, :, None], idx[:, None, :]].sum(axis=(1, 2)) + rng.random(len(idx)))
        return unused[int(np.argmin(cost))]
    for _ in range(RANDOM_TRIES):
        chosen = tuple(sorted(rng.choice(d, size, replace=False).tolist()))
        if chosen not in seen:
            return chosen
    return None


def _all_sparse(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Every mask removing 1..k features: the singletons in order, then each larger size shuffled."""
    masks = [~np.eye(d, dtype=bool)]
    for s in range(2, k + 1):
        idx = np.array(list(itertools.combinations(range(d), s)))
        rows = np.ones((len(idx), d), dtype=bool)
        rows[np.arange(len(idx))[:, None], idx] = False
        masks.append(rows[rng.permutation(len(rows))])
    return np.vstack(masks)
