"""Verification of the top features with the closed model itself: litellm against a real
OpenAI-compatible server on 127.0.0.1 whose answer depends on whether one sentence is in the prompt.

Explanations come from the tiny random surrogate with planted scores, so the top features are
known; `explain(verify=K)` runs with whatever ranking the tiny model gives, and its assertions
hold for any ranking.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import ropelime
from ropelime.errors import InputError
from ropelime.errors import Cancelled
from ropelime.schema import Explanation
from ropelime.verify import MARGIN, similarity, summary_lines, verdict, words
from tests.openai_stub import OpenAIStub

KEY = "Paris is the capital of France."
SENTENCES = ["Rivers run to the sea.", KEY, "Cats sleep a lot.", "The sky is blue.", "Bread is baked daily.",
             "Trout swim upstream.", "Cables hold the bridge."]
CONTEXT = " ".join(SENTENCES)
PROMPT = f"Context: {CONTEXT}\nQuestion: What is the capital of France?"
SYSTEM = "Answer briefly."
MODEL = "openai/stub-model"


def content(messages: list[dict]) -> str:
    return messages[-1]["content"]


def reply(messages: list[dict]) -> str:
    return "Paris." if KEY in content(messages) else "I do not know."


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with OpenAIStub(reply=reply) as running:
        yield running


def planted(surrogate, scores: list[float], response: str = "Paris.", **options) -> Explanation:
    """An explanation of PROMPT (sentence features) whose scores are replaced by `scores`."""
    result = ropelime.explain(PROMPT, response, system=SYSTEM, explain=CONTEXT, surrogate=surrogate, budget=4,
                              **options)
    assert [f.text.strip() for f in result.features] == SENTENCES
    ranks = np.empty(len(scores), dtype=int)
    ranks[np.argsort(-np.array(scores), kind="stable")] = np.arange(1, len(scores) + 1)
    features = [f.model_copy(update={"score": s, "ci_low": s, "ci_high": s, "rank": int(r)})
                for f, s, r in zip(result.features, scores, ranks)]
    return result.model_copy(update={"features": features})


def without(*texts: str) -> str:
    """PROMPT with the given sentences (and the space after them) deleted."""
    prompt = PROMPT
    for text in texts:
        prompt = prompt.replace(text + " ", "", 1) if text + " " in prompt else prompt.replace(text, "", 1)
    return prompt


def sent_prompts(stub: OpenAIStub) -> list[str]:
    return [content(b["messages"]) for b in stub.bodies]


def verdicts(explanation: Explanation) -> list[tuple[int, str, float | None]]:
    return [(c.feature, c.verdict, c.similarity) for c in explanation.verification.checks]


KEY_FIRST = [0.2, 0.5, 0.1, -0.05, -0.1, -0.2, -0.3]  # top 3: KEY, sentence 0, sentence 2


def test_similarity_is_token_f1_over_normalised_words():
    assert words("The answer is: Paris!") == ["answer", "is", "paris"]
    assert similarity("Paris.", "paris") == 1.0
    assert similarity("Paris is the capital", "Paris") == pytest.approx(2 * 1 / (3 + 1))
    assert similarity("I do not know.", "Paris.") == 0.0
    assert similarity("", "...") == 1.0 and similarity("", "Paris") == 0.0


@pytest.mark.parametrize(("feature", "control", "expected"), [
    (0.0, 1.0, "confirmed"), (0.5, 0.75, "confirmed"), (0.6, 0.75, "not_confirmed"), (1.0, 1.0, "not_confirmed"),
    (0.9, 1.0, "not_confirmed"), (0.0, 0.2, "inconclusive"), (1.0, 0.0, "inconclusive"), (None, 1.0, "unverified"),
    (1.0, None, "unverified")])
def test_verdicts_follow_the_margin(feature, control, expected):
    assert MARGIN == 0.25
    assert verdict(feature, control) == expected


def test_the_feature_the_answer_rests_on_is_confirmed_the_others_not(tiny_surrogate, stub):
    explanation = planted(tiny_surrogate, KEY_FIRST)
    verified = ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url)
    v = verified.verification
    assert stub.requests == 1 + 3 + 1 and v.closed_model_calls == 5 and v.cached_answers == 0
    assert verified.cost.closed_model_calls == explanation.cost.closed_model_calls + 5
    assert [c.feature for c in v.checks] == [1, 0, 2]
    assert {c.feature: c.verdict for c in v.checks} == {1: "confirmed", 0: "not_confirmed", 2: "not_confirmed"}
    assert {c.feature: c.similarity for c in v.checks} == {1: 0.0, 0: 1.0, 2: 1.0}
    assert v.original == "Paris." and v.checks[0].answer == "I do not know."
    assert len(v.control.features) == 3 and set(v.control.features) <= {3, 4, 5, 6}
    assert v.control.similarity == 1.0 and v.control.texts == [explanation.features[i].text for i in v.control.features]
    # the prompts asked: the original, the control, then each feature removed; same system prompt, temperature 0
    control_texts = [SENTENCES[i] for i in v.control.features]
    assert sent_prompts(stub) == [PROMPT, without(*control_texts), without(KEY), without(SENTENCES[0]),
                                  without(SENTENCES[2])]
    assert all(b["messages"][0] == {"role": "system", "content": SYSTEM} and b["temperature"] == 0
               for b in stub.bodies)

    again = ropelime.verify(verified, 3, model=MODEL, api_base=stub.base_url)
    assert stub.requests == 5 and again.verification.closed_model_calls == 0
    assert again.verification.cached_answers == 5 and all(c.cached for c in again.verification.checks)
    assert [c.verdict for c in again.verification.checks] == [c.verdict for c in v.checks]
    assert again.cost.closed_model_calls == explanation.cost.closed_model_calls  # the replaced verification's calls leave
    assert Explanation.model_validate_json(again.model_dump_json()) == again  # the JSON contract round-trips


def test_a_control_that_removes_the_evidence_makes_the_verdicts_inconclusive(tiny_surrogate, stub):
    explanation = planted(tiny_surrogate, [0.3, -0.4, 0.2, 0.1, -0.1, -0.2, -0.3])  # KEY is the least supported
    v = ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url).verification
    if 1 in v.control.features:
        assert v.control.similarity == 0.0 and {c.verdict for c in v.checks} == {"inconclusive"}
    else:
        assert v.control.similarity == 1.0 and {c.verdict for c in v.checks} == {"not_confirmed"}
    seeds = [ropelime.verify(explanation.model_copy(update={"config": explanation.config.model_copy(
        update={"seed": seed})}), 3, model=MODEL, api_base=stub.base_url).verification for seed in range(6)]
    drew_key = [s for s in seeds if 1 in s.control.features]
    assert drew_key and len(drew_key) < len(seeds)  # the control is seeded: some seeds draw KEY, some do not
    assert all({c.verdict for c in s.checks} == {"inconclusive"} for s in drew_key)


def test_k_is_capped_by_the_positive_features_and_the_control_and_says_so(tiny_surrogate, stub):
    two_positive = planted(tiny_surrogate, [0.2, 0.5, -0.1, -0.05, -0.1, -0.2, -0.3])
    v = ropelime.verify(two_positive, 5, model=MODEL, api_base=stub.base_url).verification
    assert [c.feature for c in v.checks] == [1, 0] and v.k == 5 and len(v.control.features) == 2
    assert any("verified 2 of the 5 features asked for: only 2 feature(s) have a positive score" in n for n in v.notes)

    all_positive = planted(tiny_surrogate, [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    v = ropelime.verify(all_positive, 10, model=MODEL, api_base=stub.base_url).verification
    assert len(v.checks) == 6 and v.control.features == [6]
    assert any("verified 6 of the 10" in n and "control needs a feature outside" in n for n in v.notes)
    assert any("the control removes 1 feature(s)" in n for n in v.notes)

    before = stub.requests
    none_positive = planted(tiny_surrogate, [-0.1] * 7)
    nothing = ropelime.verify(none_positive, 3, model=MODEL, api_base=stub.base_url)
    assert nothing.verification.checks == [] and nothing.verification.control is None
    assert stub.requests == before and any("only 0 feature(s)" in n for n in nothing.verification.notes)
    assert summary_lines(nothing.verification)[0].endswith("nothing verified")


def test_no_model_is_a_clear_error_before_any_work(tiny_surrogate, stub, tmp_path):
    given = planted(tiny_surrogate, KEY_FIRST)
    with pytest.raises(InputError, match="pass model"):
        ropelime.verify(given, 3)
    with pytest.raises(InputError, match="pass model"):  # refused before loading the (missing) surrogate
        ropelime.explain(PROMPT, "Paris.", explain=CONTEXT, surrogate=str(tmp_path / "no-model-here"), verify=3)
    with pytest.raises(InputError, match="verify must be 0"):
        ropelime.explain(PROMPT, "Paris.", surrogate=str(tmp_path / "no-model-here"), verify=-1)
    with pytest.raises(InputError, match="k must be at least 1"):
        ropelime.verify(given, 0, model=MODEL, api_base=stub.base_url)
    assert stub.requests == 0


def test_a_provider_fault_marks_only_its_feature_unverified_and_keeps_every_answer(tiny_surrogate, stub):
    explanation = planted(tiny_surrogate, KEY_FIRST)
    stub.fault_for = lambda messages: "500" if SENTENCES[0] not in content(messages) else None
    faulty = ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url)
    v = faulty.verification
    assert {c.feature: c.verdict for c in v.checks} == {1: "confirmed", 0: "unverified", 2: "not_confirmed"}
    broken = v.checks[1]
    assert broken.answer is None and "error 500" in broken.error and "verify again" in broken.error
    assert "--response" not in broken.error  # the fixed-output hint does not apply here
    assert faulty.features == explanation.features and faulty.diagnostics == explanation.diagnostics
    assert v.closed_model_calls == 5 and stub.requests == 4 + 3  # the failing call was tried 3 times

    stub.fault_for = None
    asked = stub.requests
    healed = ropelime.verify(faulty, 3, model=MODEL, api_base=stub.base_url).verification
    assert stub.requests == asked + 1 and healed.closed_model_calls == 1 and healed.cached_answers == 4
    assert {c.feature: c.verdict for c in healed.checks} == {1: "confirmed", 0: "not_confirmed", 2: "not_confirmed"}


def test_a_failed_control_leaves_every_feature_unverified(tiny_surrogate, stub):
    explanation = planted(tiny_surrogate, KEY_FIRST)
    stub.fault_for = lambda messages: "500" if sum(s not in content(messages) for s in SENTENCES) == 3 else None
    v = ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url).verification
    assert v.control.error and {c.verdict for c in v.checks} == {"unverified"}
    assert all(c.answer is not None for c in v.checks)  # asked anyway: cached for the next attempt
    assert any("the control has no answer" in n for n in v.notes)


def test_no_call_starts_past_the_deadline_and_cached_answers_still_count(tiny_surrogate, stub):
    import time

    explanation = planted(tiny_surrogate, KEY_FIRST)
    stub.fault_for = lambda messages: "500" if SENTENCES[2] not in content(messages) else None
    first = ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url)
    assert first.verification.checks[2].verdict == "unverified"
    stub.fault_for = None
    asked = stub.requests
    late = ropelime.verify(first, 3, model=MODEL, api_base=stub.base_url, deadline=time.perf_counter()).verification
    assert stub.requests == asked and late.closed_model_calls == 0
    assert [c.verdict for c in late.checks] == ["confirmed", "not_confirmed", "unverified"]
    assert late.checks[2].error.startswith("not asked: the time budget would be passed")


def test_cancellation_between_calls_keeps_the_answers_so_far(tiny_surrogate, stub):
    explanation = planted(tiny_surrogate, KEY_FIRST)
    with pytest.raises(Cancelled, match="verification cancelled after 2 closed-model call"):
        ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url, should_stop=lambda: stub.requests >= 2)
    assert stub.requests == 2
    resumed = ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url).verification
    assert stub.requests == 5 and resumed.cached_answers == 2 and resumed.closed_model_calls == 3


def test_explain_with_verify_costs_one_plus_k_plus_one_calls_then_none(tiny_surrogate, stub):
    args = dict(model=MODEL, system=SYSTEM, explain=CONTEXT, surrogate=tiny_surrogate, budget=24,
                api_base=stub.base_url, verify=3)
    result = ropelime.explain(PROMPT, **args)
    v = result.verification
    k = min(3, sum(f.score > 0 for f in result.features))  # the tiny model's ranking decides how many qualify
    assert k >= 1 and len(v.checks) == len(v.control.features) == k
    assert stub.requests == 1 + k + 1 and result.cost.closed_model_calls == 1 + k + 1 and v.closed_model_calls == k + 1
    assert result.response == "Paris." and v.original == "Paris."
    assert [c.feature for c in v.checks] == [f.index for f in result.top(k)]
    for check in v.checks:  # whatever the tiny model ranks first, the verdicts follow the stub's rule
        assert check.verdict == verdict(check.similarity, v.control.similarity)
        assert check.similarity == (0.0 if check.feature == 1 else 1.0)
    assert v.control.similarity == (0.0 if 1 in v.control.features else 1.0)

    again = ropelime.explain(PROMPT, **args)
    assert stub.requests == k + 2 and again.cost.closed_model_calls == 0 and again.verification.cached_answers == k + 1
    assert again.id == result.id and verdicts(again) == verdicts(result)
    assert all(c.cached for c in again.verification.checks) and not any(c.cached for c in v.checks)

    given = ropelime.explain(PROMPT, "Paris.", **args)  # a given response: the model's own answer is the reference
    assert given.response_source == "given" and given.verification.original == "Paris."
    assert stub.requests == k + 2 and given.cost.closed_model_calls == 0 and verdicts(given) == verdicts(result)
    other = ropelime.explain(PROMPT, "Paris, France.", **args)
    assert any("differs from the explained response" in n for n in other.verification.notes)

    stored = json.loads(result.model_dump_json())["verification"]  # the additive JSON field
    assert stored["control"]["features"] == v.control.features and stored["checks"][0]["verdict"] == v.checks[0].verdict


def test_explain_stopped_by_its_time_budget_verifies_later(tiny_surrogate, stub):
    partial = ropelime.explain(PROMPT, model=MODEL, explain=CONTEXT, surrogate=tiny_surrogate, budget=20,
                               api_base=stub.base_url, verify=2, time_budget_s=1e-6)
    assert not partial.diagnostics.complete and partial.verification is None
    assert stub.requests == 1 and any("waits for the complete explanation" in n for n in partial.diagnostics.notes)
    full = ropelime.explain(PROMPT, model=MODEL, explain=CONTEXT, surrogate=tiny_surrogate, budget=20,
                            api_base=stub.base_url, verify=2)
    assert full.diagnostics.complete and len(full.verification.checks) == 2 and stub.requests == 1 + 2 + 1


def test_without_the_original_answer_nothing_is_judged_and_nothing_else_is_asked(tiny_surrogate, stub):
    explanation = planted(tiny_surrogate, KEY_FIRST)  # a given response: the model's own answer is asked first
    stub.fault_for = lambda messages: "500" if content(messages) == PROMPT else None
    v = ropelime.verify(explanation, 3, model=MODEL, api_base=stub.base_url).verification
    assert stub.requests == 3 and v.closed_model_calls == 1  # one call, tried three times; no other prompt asked
    assert {c.verdict for c in v.checks} == {"unverified"} and v.original == ""
    assert all(c.error == "no answer to the unperturbed prompt to compare with" for c in [v.control, *v.checks])
    assert any("answer to the unperturbed prompt is missing" in n and "error 500" in n for n in v.notes)
