"""The adjustment for the surrogate's position sensitivity: a trend of the scores' size along the prompt is fitted
robustly and divided out, so early evidence outranks late text that only sits near the answer."""

from __future__ import annotations

import numpy as np
import pytest

import ropelime
from ropelime.cache import ScoreCache
from ropelime.position import MAX_SLOPE, MIN_FEATURES, position_factors
from ropelime.samples import resolve_config
from ropelime.schema import ExplainConfig


def planted(d: int = 40, slope: float = 1.2, evidence: tuple[int, ...] = (4, 9, 15), seed: int = 0) -> np.ndarray:
    """Scores growing e^slope-fold from the first feature to the last, with noise, and a few 4× early features."""
    rng = np.random.default_rng(seed)
    position = np.arange(d) / (d - 1)
    scores = np.exp(slope * position + rng.normal(0, 0.3, d))
    scores[list(evidence)] *= 4.0
    return scores


def test_the_fitted_trend_is_divided_out_and_early_evidence_ranks_first():
    scores = planted()
    factors, slope = position_factors(scores)
    assert slope == pytest.approx(1.2, abs=0.3)  # the evidence does not move a median of slopes
    assert set(np.argsort(-scores)[:3]) != {4, 9, 15}  # late text outranks it as scored
    assert set(np.argsort(-(scores * factors))[:3]) == {4, 9, 15}
    assert np.all(factors > 0) and factors[0] > 1 > factors[-1]


def test_a_steep_trend_is_capped_so_evidence_at_the_end_keeps_its_rank():
    assert position_factors(planted(slope=3.0))[1] == MAX_SLOPE
    assert position_factors(-planted(slope=-3.0))[1] == -MAX_SLOPE
    scores = planted(slope=0.5, evidence=(34, 35, 36, 37, 38, 39))  # the evidence is the last sentences
    scores[[34, 35, 36, 37, 38, 39]] *= 4  # 16× their neighbours
    factors, slope = position_factors(scores)
    assert 0.5 < slope <= MAX_SLOPE  # pulled up by the evidence, but no further than the cap
    assert set(np.argsort(-(scores * factors))[:6]) == {34, 35, 36, 37, 38, 39}


def test_signs_are_kept_and_too_few_scores_are_left_alone():
    scores = planted() * np.where(np.arange(40) % 2, 1.0, -1.0)
    factors, _ = position_factors(scores)
    assert np.array_equal(np.sign(scores * factors), np.sign(scores))
    few = np.zeros(40)
    few[:MIN_FEATURES - 1] = 1.0
    assert position_factors(few) is None
    assert position_factors(np.ones(MIN_FEATURES - 1)) is None


def test_off_unless_asked_at_every_granularity():
    for granularity in ("word", "sentence", "paragraph"):
        assert resolve_config(ExplainConfig(granularity=granularity), 10).adjust_position is False


def test_an_explanation_divides_its_scores_and_intervals_by_the_factors(tiny_surrogate, tmp_path):
    context = " ".join(f"Fact {i} is that the item number {i} weighs {i + 2} kilograms." for i in range(10))
    prompt, response = f"Context: {context}\nQuestion: What does item 3 weigh?", "Item 3 weighs 5 kilograms."
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        samples = ropelime.score(prompt, response, explain=context, surrogate=tiny_surrogate, cache=cache,
                                 granularity="sentence", budget=24)
    finally:
        cache.close()
    adjusted = ropelime.fit_samples(samples, adjust_position=True, prior_weight=0.0)  # the division alone
    plain = ropelime.fit_samples(samples, prior_weight=0.0)
    assert adjusted.config.adjust_position is True and len(adjusted.features) == 10
    factors, slope = position_factors(np.array([f.score for f in plain.features]))
    for a, p, factor in zip(adjusted.features, plain.features, factors, strict=True):
        expected = (p.score * factor, p.ci_low * factor, p.ci_high * factor)
        assert (a.score, a.ci_low, a.ci_high) == pytest.approx(expected)
        assert (a.direction, a.likelihood_effect) == (p.direction, p.likelihood_effect)
    assert any("scores adjusted for the surrogate's position" in note for note in adjusted.diagnostics.notes)
    assert not any("position" in note for note in plain.diagnostics.notes)
    signed = ropelime.fit_samples(samples, adjust_position=True, target="nll", solver="ridge")  # a signed refit too
    assert any("scores adjusted" in note for note in signed.diagnostics.notes)


def test_asked_for_with_too_few_features_it_says_so_and_leaves_the_scores(tiny_surrogate, tmp_path):
    context = "The sky is blue. Paris is the capital of France. Cats sleep a lot."
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        samples = ropelime.score(f"{context}\nQuestion: What is the capital of France?", "Paris.", explain=context,
                                 surrogate=tiny_surrogate, cache=cache, granularity="sentence", budget=8)
    finally:
        cache.close()
    asked, plain = ropelime.fit_samples(samples, adjust_position=True), ropelime.fit_samples(samples)
    assert [f.score for f in asked.features] == [f.score for f in plain.features]
    assert any(f"fewer than {MIN_FEATURES} features" in note for note in asked.diagnostics.notes)
