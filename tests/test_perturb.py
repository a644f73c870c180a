"""Perturbed prompts: masked features deleted or replaced; everything else byte-for-byte."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ropelime.features import split_features
from ropelime.perturb import PLACEHOLDER, perturb_text, perturb_tokens
from ropelime.schema import EncodedPrompt

PROMPT = "Context: The capital of France is Paris.\n\nQuestion: What is the capital of France?"
CONTEXT = (9, PROMPT.index("\n\nQuestion"))


def words():
    return split_features(PROMPT, "word", explain=CONTEXT)


def test_delete_all_but_one_word_leaves_that_word():
    features = words()
    mask = np.zeros(len(features), dtype=bool)
    mask[3] = True
    assert perturb_text(PROMPT, features, mask, "delete") == "Context: France \n\nQuestion: What is the capital of France?"


def test_delete_leaves_no_double_spaces():
    features = words()
    mask = np.array([1, 0, 1, 0, 1, 1], dtype=bool)
    assert perturb_text(PROMPT, features, mask, "delete").startswith("Context: The of is Paris.\n\n")


def test_placeholder_keeps_every_feature_position():
    features = words()
    mask = np.array([1, 0, 1, 1, 0, 0], dtype=bool)
    text = perturb_text(PROMPT, features, mask, "placeholder")
    assert text == "Context: The _ of France _ _\n\nQuestion: What is the capital of France?"
    again = split_features(text, "word", explain=(9, text.index("\n\nQuestion")))
    assert [f.text.strip() for f in again] == ["The", "_", "of", "France", "_", "_"]
    assert perturb_text(PROMPT, features, mask, "placeholder", placeholder="[MASK]").count("[MASK]") == 3


def test_sentence_placeholder_keeps_the_whitespace_between_sentences():
    prompt = "One. Two.\nThree."
    features = split_features(prompt, "sentence")
    assert perturb_text(prompt, features, np.array([0, 0, 1]), "placeholder") == "_ _\nThree."
    assert perturb_text(prompt, features, np.array([1, 0, 1]), "delete") == "One. Three."


def test_all_ones_is_the_prompt_and_bad_masks_are_refused():
    features = words()
    assert perturb_text(PROMPT, features, np.ones(len(features)), "delete") == PROMPT
    with pytest.raises(ValueError, match="one entry per feature"):
        perturb_text(PROMPT, features, np.ones(len(features) + 1), "delete")
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb_text(PROMPT, features, np.ones(len(features)), "shuffle")


@settings(max_examples=150, deadline=None)
@given(text=st.text(min_size=1, max_size=80), granularity=st.sampled_from(["word", "sentence", "paragraph"]),
       data=st.data())
def test_text_outside_masked_features_is_kept(text, granularity, data):
    prompt = f"Keep: {text}\nQuestion?"
    span = (6, 6 + len(text))
    if not text.strip():
        return
    features = split_features(prompt, granularity, explain=span)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(features), max_size=len(features))))
    owner = np.full(len(prompt), -1)
    for f in features:
        owner[f.start:f.end] = f.index
    removed = np.array([o >= 0 and not mask[o] for o in owner], dtype=bool)

    deleted = perturb_text(prompt, features, mask, "delete")
    assert deleted == "".join(c for c, r in zip(prompt, removed) if not r)

    expected = []
    for i, c in enumerate(prompt):
        if not removed[i]:
            expected.append(c)
            continue
        f = features[owner[i]]
        lead = len(f.text) - len(f.text.lstrip())
        first, last = f.start + lead, f.start + len(f.text.rstrip())
        if i == first:
            expected.append(PLACEHOLDER)
        elif not first < i < last:
            expected.append(c)
    assert perturb_text(prompt, features, mask, "placeholder") == "".join(expected)


def encoded() -> EncodedPrompt:
    # <bos> | The | ▁sky | ▁is | ▁blue. | ▁Q? | <eot> : features 0 = "The sky ", 1 = "is blue. "
    return EncodedPrompt(ids=[1, 10, 11, 12, 13, 14, 2], token_feature=np.array([-1, 0, 0, 1, 1, -1, -1]),
                         prompt_tokens=np.array([1, 2, 3, 4, 5]))


def test_tokens_delete_drops_the_masked_features_tokens_only():
    ids, keep = perturb_tokens(encoded(), np.array([False, True]), "delete", placeholder_id=99)
    assert ids == [1, 12, 13, 14, 2]
    assert keep.tolist() == [1, 2, 3]  # the surviving prompt tokens, at their new positions
    ids, keep = perturb_tokens(encoded(), np.array([True, True]), "delete", placeholder_id=99)
    assert ids == encoded().ids and keep.tolist() == [1, 2, 3, 4, 5]


def test_tokens_placeholder_keeps_positions():
    ids, keep = perturb_tokens(encoded(), np.array([True, False]), "placeholder", placeholder_id=99)
    assert ids == [1, 10, 11, 99, 99, 14, 2]
    assert keep.tolist() == [1, 2, 3, 4, 5]
