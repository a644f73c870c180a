"""Honest partial results: a feature no scored perturbation removed is 'unscored', never a finding."""

from __future__ import annotations

import numpy as np

import ropelime

CONTEXT = "Paris is the capital of France. Cats sleep a lot. France borders Spain."
PROMPT = f"Context: {CONTEXT}\nQuestion: is Paris the capital of France?"


def test_a_partial_explanation_never_calls_an_unscored_feature_a_finding(tiny_surrogate):
    """Only the first singletons scored (as when a time budget stops early): the others are 'unscored', rank last,
    have no direction and are left out of every top list; `complete` is False at the top level."""
    import dataclasses

    samples = ropelime.score(PROMPT, "true", explain=CONTEXT, surrogate=tiny_surrogate, budget=8,
                             granularity="sentence")
    first = dataclasses.replace(samples, masks=samples.masks[:2], scores=samples.scores[:2],
                                distances=None if samples.distances is None else samples.distances[:2])
    partial = ropelime.fit_samples(first)
    removed = int(np.flatnonzero(~first.masks[1])[0])
    states = {f.index: f.evidence for f in partial.features}
    assert states[removed] == "estimated" and sum(s == "unscored" for s in states.values()) == 2
    assert partial.diagnostics.unscored_features == 2 and not partial.complete
    assert partial.model_dump()["complete"] is False
    for direction in ("supporting", "opposing", "both"):
        assert all(f.evidence != "unscored" for f in partial.top(10, direction))
    unscored = [f for f in partial.features if f.evidence == "unscored"]
    assert all(f.rank > 1 and f.direction is None and f.score == 0 for f in unscored)
    assert any("not yet scored" in n for n in partial.diagnostics.notes)
    assert "not yet scored" in " ".join(partial.diagnostics.reliability.reasons)


def test_importance_first_puts_single_removals_in_priority_order():
    from ropelime.anytime import importance_first
    from ropelime.explain import plan_masks
    from ropelime.schema import ExplainConfig

    masks = plan_masks(5, ExplainConfig(sampler="loo_pairs", budget=12))
    order = importance_first(masks, np.array([0.0, 3.0, 1.0, 5.0, 2.0]))
    assert sorted(order.tolist()) == list(range(len(masks))) and order[0] == 0
    removed_first = [int(np.flatnonzero(~masks[i])[0]) for i in order[1:6]]
    assert removed_first == [3, 1, 4, 2, 0]
    assert all((~masks[i]).sum() == 2 for i in order[6:])
    assert importance_first(masks, np.zeros(5)).tolist() == list(range(len(masks)))  # no priority: as planned


def test_the_schedule_scores_the_priors_top_feature_first_and_fits_in_plan_order(tiny_surrogate, monkeypatch):
    import importlib

    from ropelime.priors import question_overlap

    pipeline = importlib.import_module("ropelime.explain")  # the module (ropelime.explain is also the function)

    seen = []
    real = pipeline.score_samples

    def recording(prepared, masks, **kwargs):
        seen.append(masks.copy())
        return real(prepared, masks, **kwargs)

    monkeypatch.setattr(pipeline, "score_samples", recording)
    samples = ropelime.score(PROMPT, "true", explain=CONTEXT, surrogate=tiny_surrogate, budget=8,
                             granularity="sentence")
    prior = question_overlap(PROMPT, samples.features, "true")
    assert int(np.flatnonzero(~seen[0][1])[0]) == int(np.argmax(prior)) == 0  # scored first
    assert np.array_equal(samples.masks, pipeline.plan_masks(len(samples.features), samples.config))
