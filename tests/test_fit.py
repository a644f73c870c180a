"""The weighted linear fit recovers planted attributions and reports honest intervals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ropelime.fit import fit_linear, weighted_r2
from ropelime.samplers import sample_masks


def planted(n: int = 200, d: int = 12, noise: float = 0.05, seed: int = 1):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, d)) < 0.6
    coef = np.zeros(d)
    coef[[2, 5, 9]] = [1.5, -0.8, 0.4]
    y = 0.3 + masks @ coef + rng.normal(0, noise, n)
    return masks, y, coef


@pytest.mark.parametrize("solver", ["ridge", "ols", "lasso"])
def test_recovers_planted_coefficients(solver):
    masks, y, coef = planted()
    fit = fit_linear(masks, y, np.ones(len(y)), solver=solver, alpha=0.01 if solver != "ols" else None)
    np.testing.assert_allclose(fit.coef, coef, atol=0.06)
    assert fit.r2 > 0.98
    covered = (fit.ci_low <= coef) & (coef <= fit.ci_high)
    assert covered.mean() >= 0.75
    # intervals are narrow for this much data and noise
    assert np.all(fit.ci_high - fit.ci_low < 0.2)
    np.testing.assert_allclose(fit.predict(masks), fit.intercept + masks @ fit.coef)


def test_weights_decide_which_rows_matter():
    masks, y, coef = planted(noise=0.0)
    y_corrupt = y.copy()
    y_corrupt[:40] += 5 * masks[:40, 0]  # rows that say feature 0 matters a lot
    weights = np.ones(len(y))
    weights[:40] = 1e-6
    fit = fit_linear(masks, y_corrupt, weights, solver="ols")
    assert abs(fit.coef[0]) < 0.05
    unweighted = fit_linear(masks, y_corrupt, np.ones(len(y)), solver="ols")
    assert unweighted.coef[0] > 0.5


def test_lasso_never_returns_silent_zeros():
    masks, y, _ = planted()
    fit = fit_linear(masks, y * 0.001, np.ones(len(y)), solver="lasso", alpha=1.0)
    assert np.any(fit.coef != 0)
    assert any("alpha lowered" in note for note in fit.notes)


@pytest.mark.parametrize("solver", ["ridge", "ols", "lasso"])
def test_a_kernel_that_leaves_one_mask_says_so(solver):
    masks, y, _ = planted()
    weights = np.zeros(len(y))
    weights[0] = 1.0  # e.g. raw distances far beyond the kernel width: only the unperturbed prompt weighs
    fit = fit_linear(masks, y, weights, solver=solver)
    assert not np.any(fit.coef) and np.all(np.isfinite([fit.ci_low, fit.ci_high]))
    assert any("only one mask has weight" in note for note in fit.notes)
    assert not fit_linear(masks, y, np.ones(len(y)), solver=solver).notes


def test_intervals_widen_with_noise_and_never_nan():
    masks, y, _ = planted(noise=0.01)
    quiet = fit_linear(masks, y, np.ones(len(y)))
    masks, y, _ = planted(noise=0.5)
    noisy = fit_linear(masks, y, np.ones(len(y)))
    assert np.mean(noisy.ci_high - noisy.ci_low) > 3 * np.mean(quiet.ci_high - quiet.ci_low)
    constant = fit_linear(masks[:5], np.ones(5), np.ones(5))
    assert np.all(np.isfinite(constant.coef)) and constant.r2 == 0.0


def test_weighted_r2():
    y = np.array([1.0, 2.0, 3.0])
    assert weighted_r2(y, y, np.ones(3)) == 1.0
    assert weighted_r2(y, np.full(3, 2.0), np.ones(3)) == 0.0



@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 6), solver=st.sampled_from(["ridge", "ols", "lasso", "differences"]),
       data=st.data())
def test_fit_never_returns_nan(n, d, solver, data):
    finite = st.floats(-1e6, 1e6, allow_nan=False)
    masks = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=d, max_size=d), min_size=n, max_size=n)))
    y = np.array(data.draw(st.lists(finite, min_size=n, max_size=n)))
    weights = np.array(data.draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    fit = fit_linear(masks, y, weights, solver=solver, bootstrap=20)
    for values in (fit.coef, fit.ci_low, fit.ci_high, [fit.intercept, fit.r2]):
        assert np.all(np.isfinite(values))
    assert np.all(fit.ci_low <= fit.coef) and np.all(fit.coef <= fit.ci_high)


@pytest.mark.parametrize("solver", ["ridge", "ols"])
def test_closed_form_equals_scikit_learn(solver):
    from sklearn.linear_model import LinearRegression, Ridge

    masks, y, _ = planted(n=60, noise=0.3)
    weights = np.random.default_rng(3).random(60)
    fit = fit_linear(masks, y, weights, solver=solver, alpha=2.0)
    w = weights / weights.mean()
    reference = (Ridge(alpha=2.0) if solver == "ridge" else LinearRegression()).fit(masks, y, sample_weight=w)
    np.testing.assert_allclose(fit.coef, reference.coef_, atol=1e-8)
    np.testing.assert_allclose(fit.intercept, reference.intercept_, atol=1e-8)


def test_estimates_sit_inside_their_intervals_on_a_sparse_design():
    """Each feature is removed by only a few masks (as at word level): draws that miss them give the feature
    0, which pulled percentile intervals to one side of the estimate; the intervals are symmetric about it,
    planted effects stand out and noise features rarely exclude 0."""
    rng = np.random.default_rng(4)
    d, n = 60, 65
    masks = np.ones((n, d), dtype=bool)
    for row in masks[1:]:
        row[rng.choice(d, size=8, replace=False)] = False
    truth = np.zeros(d)
    truth[:5] = [1.0, 0.8, 0.6, -0.7, 0.5]
    y = masks @ truth + rng.normal(0, 0.05, n)
    fit = fit_linear(masks, y, np.ones(n))
    removed = ~masks.all(axis=0)
    assert np.all((fit.ci_low < fit.coef) & (fit.coef < fit.ci_high) | ~removed)
    np.testing.assert_allclose(fit.coef - fit.ci_low, fit.ci_high - fit.coef)
    excluding = (fit.ci_low > 0) | (fit.ci_high < 0)
    assert excluding[removed & (truth == 0)].mean() <= 0.1
    assert excluding[:5].sum() >= 4


def test_interval_ends_at_float_noise_are_zero():
    masks = np.vstack([np.ones(4, dtype=bool), ~np.eye(4, dtype=bool), np.ones(4, dtype=bool)])
    fit = fit_linear(masks, np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), np.ones(6))  # nothing changes the target
    assert np.all(fit.ci_low == 0.0) and np.all(fit.ci_high == 0.0)


def singletons_and_pairs(d: int, pairs: int, seed: int = 0) -> np.ndarray:
    """The all-kept row, the d singletons and `pairs` pair masks (the default sentence method's design)."""
    return np.vstack([np.ones((1, d), dtype=bool), sample_masks(d, "loo_pairs", d + pairs, seed=seed)])


def test_differences_reads_each_score_off_its_singleton_and_its_interval_off_the_pairs():
    d = 10
    masks = singletons_and_pairs(d, 30)
    effect = np.linspace(0.0, 0.9, d)
    additive = 2.0 - (~masks) @ effect  # a target that falls by each removed feature's effect
    exact = fit_linear(masks, additive, np.ones(len(masks)), solver="differences")
    np.testing.assert_allclose(exact.coef, effect, atol=1e-12)
    np.testing.assert_allclose(exact.ci_high - exact.ci_low, 0.0, atol=1e-12)  # pairs add up: nothing uncertain
    assert exact.notes == []
    # pairs that fall short of their singletons' sum (a saturating target): the coefficients stay the singletons',
    # the intervals widen with the shortfall, ± 1.96 sigma with residual variance 2 sigma^2 per pair
    pair = (~masks).sum(axis=1) == 2
    saturating = additive + np.where(pair, 0.1, 0.0)
    fit = fit_linear(masks, saturating, np.ones(len(masks)), solver="differences")
    np.testing.assert_allclose(fit.coef, effect, atol=1e-12)
    np.testing.assert_allclose((fit.ci_high - fit.ci_low) / 2, 1.959964 * np.sqrt(0.1**2 / 2), rtol=1e-5)
    assert ((fit.ci_low > 0) == (effect > 1.959964 * np.sqrt(0.005))).all()


def test_differences_without_every_singleton_falls_back_to_ridge_and_says_so():
    masks = singletons_and_pairs(8, 20)
    y = 1.0 - (~masks) @ np.arange(8.0)
    partial = np.delete(masks, 3, axis=0)  # the singleton of feature 2 was never scored (a time budget)
    fit = fit_linear(partial, np.delete(y, 3), np.ones(len(partial)), solver="differences")
    assert any("1 is missing: fitted by ridge instead" in note for note in fit.notes)
    assert np.argmax(fit.coef) == 7 and np.all(fit.ci_low <= fit.coef)


def test_differences_without_pairs_has_unmeasured_intervals_and_a_note():
    masks = np.vstack([np.ones((1, 4), dtype=bool), sample_masks(4, "loo", 4)])
    fit = fit_linear(masks, np.array([1.0, 0.5, 0.9, 1.0, 0.2]), np.ones(5), solver="differences")
    np.testing.assert_allclose(fit.coef, [0.5, 0.1, 0.0, 0.8])
    np.testing.assert_allclose(fit.ci_low, 0.0)
    np.testing.assert_allclose(fit.ci_high, 2 * fit.coef)
    assert any("intervals (± each score) are not measured" in note for note in fit.notes)
