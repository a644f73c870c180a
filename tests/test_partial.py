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


def test_the_schedule_scores_the_priors_top_feature_first_when_the_budget_may_stop_early(tiny_surrogate, monkeypatch):
    from ropelime import scoring
    from ropelime.anytime import scoring_order
    from ropelime.explain import plan_masks
    from ropelime.priors import question_overlap

    orders = []

    def recording(todo, urgent, predicted_s, left_s):
        chosen = scoring_order(todo, urgent, predicted_s, left_s)
        orders.append((list(todo), chosen, left_s))
        return chosen

    monkeypatch.setattr(scoring, "scoring_order", recording)
    samples = ropelime.score(PROMPT, "true", explain=CONTEXT, surrogate=tiny_surrogate, budget=8,
                             granularity="sentence", seed=1)
    plan, chosen, left = orders[-1]
    assert chosen == plan and left == float("inf")  # no time budget: the plan's order, which batches best
    assert np.array_equal(samples.masks, plan_masks(len(samples.features), samples.config))
    every = list(range(len(samples.masks)))
    urgent = scoring_order(every, importance_order(samples), predicted_s=None, left_s=30.0)
    prior = question_overlap(PROMPT, samples.features, "true")
    assert int(np.flatnonzero(~samples.masks[urgent[1]])[0]) == int(np.argmax(prior)) == 0  # budget: prior first


def importance_order(samples) -> list[int]:
    from ropelime.anytime import importance_first
    from ropelime.priors import question_overlap

    return importance_first(samples.masks, question_overlap(PROMPT, samples.features, "true")).tolist()


def test_scoring_order_reorders_only_when_the_budget_may_not_suffice():
    from ropelime.anytime import SAFETY, scoring_order

    plan, urgent = [1, 2, 3, 4], [0, 3, 1, 4, 2]
    assert scoring_order(plan, urgent, predicted_s=10.0, left_s=10.0 * SAFETY) == plan  # will finish: as planned
    assert scoring_order(plan, urgent, predicted_s=10.0, left_s=10.0) == [3, 1, 4, 2]  # may not: urgent first
    assert scoring_order(plan, urgent, predicted_s=None, left_s=10.0) == [3, 1, 4, 2]  # pace unknown: urgent
    assert scoring_order(plan, urgent, predicted_s=None, left_s=float("inf")) == plan  # no budget
    assert scoring_order(plan, None, predicted_s=None, left_s=1.0) == plan


def test_whether_the_top_could_still_change_follows_the_intervals_and_the_unscored():
    from ropelime.render import settled_line
    from ropelime.schema import Cost, Diagnostics, ExplainConfig, Explanation, FeatureScore, SurrogateInfo

    def explanation(*intervals, unscored=()):
        feats = [FeatureScore(index=i, text=f"s{i}", start=i, end=i + 1, score=(lo + hi) / 2, ci_low=lo, ci_high=hi,
                              rank=i + 1, evidence="unscored" if i in unscored else "estimated")
                 for i, (lo, hi) in enumerate(intervals)]
        return Explanation(explanation_id="x", prompt="p" * 10, explain_start=0, explain_end=10, response="r",
                           response_source="given", features=feats, config=ExplainConfig(),
                           diagnostics=Diagnostics(r2=0.9, samples=9, planned_samples=9, complete=not unscored,
                                                   unscored_features=len(unscored), surrogate_nll=1.0),
                           cost=Cost(), surrogate=SurrogateInfo(name="s", dtype="f", device="cpu", chat_template=False))

    clear = explanation((0.8, 1.0), (0.6, 0.7), (0.4, 0.5), (0.0, 0.2), (-0.1, 0.1))
    assert clear.rivals(3) == 0 and clear.settled_top == 3 and clear.model_dump()["settled_top"] == 3
    assert "top 3 is settled" in settled_line(clear)
    close = explanation((0.8, 1.0), (0.6, 0.7), (0.3, 0.5), (0.2, 0.35), (0.0, 0.31))
    assert close.rivals(3) == 2 and close.settled_top == 2
    assert "1 other's 95% interval reaches theirs" in settled_line(close, 4)
    assert "top 3 could still change: 2 others' 95% intervals reach theirs" in settled_line(close)
    waiting = explanation((0.8, 1.0), (0.6, 0.7), (0.4, 0.5), (0.0, 0.0), (0.0, 0.0), unscored=(3, 4))
    assert waiting.rivals(3) == 2 and waiting.settled_top == 0
    assert settled_line(waiting) == "3 of 5 features scored; the top 3 could still change: 2 not yet scored"
