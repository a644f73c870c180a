"""The reliability summary: a verdict and reasons from the explanation's measured signals."""

from __future__ import annotations

from ropelime.reliability import NLL_MEDIUM, R2_LOW, R2_MEDIUM, assess, excludes_zero
from ropelime.schema import Diagnostics, FeatureScore


def features(*intervals: tuple[float, float]) -> list[FeatureScore]:
    return [FeatureScore(index=i, text="w", start=i, end=i + 1, score=(lo + hi) / 2, ci_low=lo, ci_high=hi, rank=i + 1)
            for i, (lo, hi) in enumerate(intervals)]


def diagnostics(**given) -> Diagnostics:
    return Diagnostics(**{"r2": 0.8, "samples": 65, "planned_samples": 65, "complete": True, "surrogate_nll": 1.0,
                          **given})


def test_sound_signals_give_high_with_the_numbers():
    result = assess(diagnostics(), features((0.2, 0.5), (-0.1, 0.1)))
    assert result.verdict == "high" and result.significant_features == 1
    assert "R² 0.80" in result.reasons[0] and "1 of 2" in result.reasons[0]


def test_each_weak_signal_lowers_the_verdict_and_says_why():
    sound = features((0.2, 0.5))
    assert assess(diagnostics(r2=R2_MEDIUM - 0.01), sound).verdict == "medium"
    assert assess(diagnostics(r2=R2_LOW - 0.01), sound).verdict == "low"
    unlikely = assess(diagnostics(surrogate_nll=NLL_MEDIUM + 1), sound)
    assert unlikely.verdict == "medium" and "unlikely" in unlikely.reasons[0]
    partial = assess(diagnostics(samples=9, complete=False), sound)
    assert partial.verdict == "medium" and "9 of 65" in partial.reasons[0]
    nothing = assess(diagnostics(), features((-0.1, 0.3), (-0.2, 0.0)))
    assert nothing.verdict == "low" and nothing.significant_features == 0
    several = assess(diagnostics(r2=0.1, complete=False, samples=9), sound)
    assert several.verdict == "low" and len(several.reasons) == 2  # the lowest signal decides; every reason stays


def test_an_interval_end_at_float_noise_does_not_exclude_zero():
    assert not excludes_zero(features((1e-17, 0.9))[0])
    assert excludes_zero(features((1e-6, 0.9))[0]) and excludes_zero(features((-0.9, -1e-6))[0])


def test_a_late_off_topic_feature_in_the_top_three_lowers_the_verdict_and_names_it():
    ranked = features((0.5, 0.9), (0.4, 0.8), (0.3, 0.7), (-0.1, 0.1), (-0.1, 0.1), (0.6, 1.0))
    ranked[5] = ranked[5].model_copy(update={"rank": 1, "text": "The weather was mild that spring."})
    overlap = [2.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # the last feature shares no word with the question or the answer
    flagged = assess(diagnostics(), ranked, overlap)
    assert flagged.verdict == "medium"
    assert "feature 6 of 6" in flagged.reasons[0] and "weather" in flagged.reasons[0]
    assert assess(diagnostics(), ranked, [2.0, 1.0, 1.0, 0.0, 0.0, 0.5]).verdict == "high"  # on topic: fine
    early = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]  # an off-topic feature early in the prompt is no position effect
    assert assess(diagnostics(), ranked, early).verdict == "high"
    assert assess(diagnostics(), ranked).verdict == "high"  # words: no overlap given, no check
