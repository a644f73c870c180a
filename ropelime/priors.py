"""A cheap text prior over the features: how much each shares the rare words of the question and the answer.

A feature that repeats the words of what is asked (the prompt's text outside the features, e.g. the question
of a RAG prompt whose context is explained) or of the answer is likely what the answer rests on. Each shared
word counts by its rarity among the features (inverse document frequency over the prompt's own features, so
no corpus is needed). It reads no model; against GPT-4o's own leave-one-out on BoolQ context sentences it agrees
better than a small surrogate's scores, and combined with them (`prior_weight`) it beats either on HotpotQA's
gold sentences (docs/EVALUATION.md section 9).
"""

from __future__ import annotations

import math
import re

import numpy as np

from ropelime.records import Feature

_WORD = re.compile(r"[^\W_]+")
STOPWORDS = frozenset("""a an the of to in on at by for from with as and or but nor not no so if then than that
this these those it its is are was were be been being am do does did doing has have had having will would shall
should can could may might must which who whom whose what when where why how there here their they them he she
his her him we our us you your i me my mine also into onto about over under after before between through during
per via""".split())


def words(text: str) -> set[str]:
    """The content words of a text: lower case, without the commonest function words."""
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def fixed_text(prompt: str, features: list[Feature]) -> str:
    """The prompt's text that no feature covers (what stays fixed, e.g. the question)."""
    pieces, cursor = [], 0
    for feature in sorted(features, key=lambda f: f.start):
        pieces.append(prompt[cursor:feature.start])
        cursor = max(cursor, feature.end)
    return " ".join(pieces + [prompt[cursor:]])


def question_overlap(prompt: str, features: list[Feature], response: str) -> np.ndarray:
    """Per feature, the summed rarity (1 + log((d + 1) / (1 + features holding the word))) of the words it shares
    with the prompt's fixed text and the `response`; 0 for a feature that shares none."""
    asked = words(fixed_text(prompt, features)) | words(response)
    held = [words(f.text) for f in features]
    d = len(features)
    counts: dict[str, int] = {}
    for own in held:
        for word in own & asked:
            counts[word] = counts.get(word, 0) + 1
    return np.array([sum(1.0 + math.log((d + 1) / (1 + counts[w])) for w in own & asked) for own in held])
