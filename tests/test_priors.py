"""The question-overlap prior: what it counts, and its combination with the surrogate's scores (`prior_weight`)."""

from __future__ import annotations

import numpy as np
import pytest

import ropelime
from ropelime.features import split_features
from ropelime.priors import fixed_text, question_overlap, words

CONTEXT = "Paris is the capital of France. Cats sleep a lot. France borders Spain."
PROMPT = f"Context: {CONTEXT}\nQuestion: is Paris the capital of France?"


def features():
    start = PROMPT.index(CONTEXT)
    return split_features(PROMPT, "sentence", explain=(start, start + len(CONTEXT)))


def test_words_drop_function_words_and_case():
    assert words("Is Paris THE capital of France?") == {"paris", "capital", "france"}


def test_overlap_counts_shared_rare_words_with_the_fixed_text_and_the_answer():
    found = features()
    assert [f.text.strip() for f in found] == ["Paris is the capital of France.", "Cats sleep a lot.",
                                               "France borders Spain."]
    assert "Question: is Paris" in fixed_text(PROMPT, found) and "Cats" not in fixed_text(PROMPT, found)
    prior = question_overlap(PROMPT, found, "true")
    assert prior[0] > prior[2] > prior[1] == 0  # three shared words; one (france, held by two features); none
    assert question_overlap(PROMPT, found, "Cats")[1] > 0  # the answer's words count too


def test_prior_weight_moves_scores_by_the_prior_and_keeps_interval_widths(tiny_surrogate):
    start = PROMPT.index(CONTEXT)
    common = dict(explain=CONTEXT, surrogate=tiny_surrogate, budget=8, granularity="sentence")
    plain = ropelime.explain(PROMPT, "true", prior_weight=0.0, **common)
    mixed = ropelime.explain(PROMPT, "true", prior_weight=100.0, **common)
    assert start >= 0 and mixed.top(1)[0].index == 0  # the prior dominates at this weight
    assert any("question-overlap prior" in n for n in mixed.diagnostics.notes)
    by_index = {f.index: f for f in plain.features}
    for f in mixed.features:
        before = by_index[f.index]
        assert f.ci_high - f.score == pytest.approx(before.ci_high - before.score)
        assert f.score - before.score == pytest.approx(f.ci_low - before.ci_low)
    assert np.argsort([f.score for f in mixed.features]).tolist() == np.argsort(
        question_overlap(PROMPT, features(), "true") + 1e-9 * np.arange(3)[::-1]).tolist()


def test_every_explanation_states_its_expected_fidelity():
    from ropelime.expected_fidelity import MEASURED, expected_fidelity

    name, measured = next(iter(MEASURED.items()))
    sentence = expected_fidelity(name, "sentence")
    assert f"{measured.spearman:+.2f}" in sentence and "GPT-4o" in sentence and "refine" in sentence
    assert "word rankings with a closed model's own is not measured" in expected_fidelity(name, "word")
    assert "not measured" in expected_fidelity("my-own-model", "sentence")


def test_the_prior_is_on_by_default_for_sentences_and_off_for_words(tiny_surrogate):
    common = dict(explain=CONTEXT, surrogate=tiny_surrogate, budget=8)
    assert ropelime.explain(PROMPT, "true", granularity="sentence", **common).config.prior_weight == 2.0
    assert ropelime.explain(PROMPT, "true", granularity="word", **common).config.prior_weight == 0.0
    own = ropelime.explain(PROMPT, "true", granularity="sentence", prior_weight=0.5, **common)
    assert own.config.prior_weight == 0.5

