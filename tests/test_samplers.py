"""Masks: distinct, never all-ones, deterministic per seed; sparse_k balances features and pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ropelime.samplers import default_k, sample_masks


def removed(masks: np.ndarray) -> np.ndarray:
    return ~masks


def pair_counts(masks: np.ndarray) -> np.ndarray:
    """How often each pair of distinct features is removed together (upper triangle)."""
    r = removed(masks).astype(int)
    both = r.T @ r
    return both[np.triu_indices(masks.shape[1], 1)]


def possible_sparse(d: int, k: int) -> int:
    k = min(k, max(d - 1, 1))
    return sum(math.comb(d, s) for s in range(1, k + 1))


def test_loo_is_the_identity_complement():
    masks = sample_masks(5, "loo", budget=2, seed=3)
    np.testing.assert_array_equal(masks, ~np.eye(5, dtype=bool))
    np.testing.assert_array_equal(sample_masks(1, "loo", budget=9), [[False]])


@pytest.mark.parametrize(("d", "budget", "pairs"), [(40, 64, 24), (91, 64, 16), (5, 64, 10), (10, 12, 16)])
def test_loo_pairs_is_the_singletons_then_balanced_pairs(d, budget, pairs):
    masks = sample_masks(d, "loo_pairs", budget, seed=2)
    np.testing.assert_array_equal(masks[:d], ~np.eye(d, dtype=bool))
    assert len(masks) == d + pairs and (removed(masks[d:]).sum(axis=1) == 2).all()
    assert len({row.tobytes() for row in masks}) == len(masks)
    counts = removed(masks[d:]).sum(axis=0)
    assert counts.max() - counts.min() <= 1  # every feature in as many pairs as any other, give or take one


@pytest.mark.parametrize("sampler", ["sparse_k", "bernoulli", "loo_pairs"])
def test_deterministic_per_seed_and_different_across_seeds(sampler):
    a = sample_masks(40, sampler, 64, seed=7)
    np.testing.assert_array_equal(a, sample_masks(40, sampler, 64, seed=7))
    assert not np.array_equal(a, sample_masks(40, sampler, 64, seed=8))


@settings(max_examples=120, deadline=None)
@given(d=st.integers(1, 40), budget=st.integers(1, 300), k=st.one_of(st.none(), st.integers(1, 12)),
       sampler=st.sampled_from(["sparse_k", "bernoulli", "loo", "loo_pairs"]), seed=st.integers(0, 2**32 - 1))
def test_masks_are_distinct_and_never_all_ones(d, budget, k, sampler, seed):
    masks = sample_masks(d, sampler, budget, k=k, seed=seed)
    assert masks.dtype == bool and masks.ndim == 2 and masks.shape[1] == d
    assert len({row.tobytes() for row in masks}) == len(masks)
    assert not masks.all(axis=1).any()
    if sampler == "loo":
        assert len(masks) == d
    elif sampler == "loo_pairs":
        pairs = math.comb(d, 2) if d > 2 else 0  # a pair of two features would remove everything
        assert len(masks) == d + min(max(budget - d, 16), pairs)
    elif sampler == "bernoulli":
        assert len(masks) == min(budget, 2**d - 1)
    else:
        big_k = min(default_k(d) if k is None else k, max(d - 1, 1))
        assert len(masks) == min(budget, possible_sparse(d, big_k))
        sizes = removed(masks).sum(axis=1)
        assert sizes.min() >= 1 and sizes.max() <= big_k


def test_default_k():
    assert [default_k(d) for d in (1, 4, 5, 8, 9, 100)] == [1, 1, 2, 2, 3, 25]


@pytest.mark.parametrize("d, budget", [(10, 20), (30, 60), (40, 300)])
def test_sparse_k_puts_the_singletons_first_when_budget_allows(d, budget):
    masks = sample_masks(d, "sparse_k", budget, seed=1)
    np.testing.assert_array_equal(masks[:d], ~np.eye(d, dtype=bool))
    assert (removed(masks[d:]).sum(axis=1) >= 2).all()


def test_sparse_k_without_room_for_singletons_draws_all_sizes():
    masks = sample_masks(40, "sparse_k", 79, seed=1)  # budget < 2d
    sizes = removed(masks).sum(axis=1)
    assert set(sizes.tolist()) == set(range(1, default_k(40) + 1))
    assert not np.array_equal(masks[:40], ~np.eye(40, dtype=bool))


def test_sparse_k_returns_every_mask_when_the_budget_covers_them():
    masks = sample_masks(5, "sparse_k", 100, k=2, seed=0)  # 5 singletons + 10 pairs
    assert len(masks) == 15
    np.testing.assert_array_equal(masks[:5], ~np.eye(5, dtype=bool))
    assert sorted(map(tuple, np.argwhere(~masks[5:])[:, 1].reshape(-1, 2).tolist())) == [
        (i, j) for i in range(5) for j in range(i + 1, 5)]
    np.testing.assert_array_equal(sample_masks(1, "sparse_k", 10), [[False]])


@pytest.mark.parametrize("d", [30, 50, 100, 300])
@pytest.mark.parametrize("budget", [16, 64, 256, 2000])
def test_sparse_k_removes_every_feature_equally_often(d, budget):
    """The greedy takes the least-removed features first, so counts differ by at most one."""
    for seed in range(3):
        counts = removed(sample_masks(d, "sparse_k", budget, seed=seed)).sum(axis=0)
        assert counts.max() - counts.min() <= 1


@pytest.mark.parametrize("d, budget, k", [(20, 64, None), (40, 400, None), (100, 512, None), (30, 300, 3)])
def test_sparse_k_spreads_pairs_more_evenly_than_random_masks_of_the_same_sizes(d, budget, k):
    masks = sample_masks(d, "sparse_k", budget, k=k, seed=0)
    ours = pair_counts(masks).std()
    rng = np.random.default_rng(1)
    for _ in range(10):
        random = np.ones_like(masks)
        for row, size in zip(random, removed(masks).sum(axis=1)):
            row[rng.choice(d, size, replace=False)] = False
        assert ours < 0.8 * pair_counts(random).std()


def test_sparse_k_respects_k():
    masks = sample_masks(50, "sparse_k", 200, k=3, seed=2)
    assert set(removed(masks).sum(axis=1).tolist()) == {1, 2, 3}
    # k larger than d - 1 is capped: no mask removes every feature
    assert removed(sample_masks(4, "sparse_k", 50, k=10)).sum(axis=1).max() == 3


def test_harmonic_sizes_remove_fewer_features_than_uniform():
    uniform = removed(sample_masks(60, "sparse_k", 400, k=8, seed=1)).sum(axis=1)
    harmonic = removed(sample_masks(60, "sparse_k", 400, k=8, sizes="harmonic", seed=1)).sum(axis=1)
    assert set(harmonic.tolist()) == set(range(1, 9))
    # sizes 2..8 (the 60 singletons come first) ∝ 1/s have mean ≈ 4.0; uniform over 2..8 has mean 5
    assert harmonic[60:].mean() < 4.4 < 4.6 < uniform[60:].mean()
    assert np.mean(harmonic[60:] == 2) > 2 * np.mean(uniform[60:] == 2)


def test_bernoulli_keeps_about_half_and_returns_all_masks_of_a_tiny_space():
    masks = sample_masks(200, "bernoulli", 500, seed=0)
    assert masks.shape == (500, 200)
    assert abs(masks.mean() - 0.5) < 0.01
    assert len(sample_masks(3, "bernoulli", 100)) == 7


@pytest.mark.parametrize("kwargs, message", [
    (dict(d=0, sampler="loo", budget=4), "no features"),
    (dict(d=3, sampler="sparse_k", budget=0), "budget must be a positive"),
    (dict(d=3, sampler="sparse_k", budget=4, k=0), "k .* at least 1"),
    (dict(d=3, sampler="random", budget=4), "unknown sampler"),
    (dict(d=3, sampler="sparse_k", budget=4, sizes="zipf"), "unknown size distribution"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_masks(**kwargs)
