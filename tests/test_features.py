"""Features: exact character spans that tile the explainable text, for every granularity."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ropelime.errors import InputError
from ropelime.errors import FeatureError
from ropelime.features import find_explain_span, split_features

CONTEXT = ("Paris is the capital of France. It lies on the Seine.\n\n"
           "Berlin is the capital of Germany.\nIt has a famous wall.")
PROMPT = f"Answer from the context.\n\nContext:\n{CONTEXT}\n\nQuestion: What is the capital of France?"

# pieces that stress pysbd and the whitespace rule: abbreviations, its internal marker symbols,
# every kind of line break, tabs, non-breaking and wide spaces, non-Latin scripts
PIECES = ["Dr.", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n \n", "\u2028", "\u00a0", "\u3000", "Paris,", "went",
          "home.", "5 p.m.", "?", "!", "...", "A♭", "∯", "ȸ", "☝", "1.", "a)", "\"Hi.\"", "é", "漢字。", "___"]
texts = st.one_of(st.text(max_size=80), st.lists(st.sampled_from(PIECES), max_size=40).map("".join))


def check_tiling(prompt: str, features, start: int, end: int) -> None:
    """Spans index the prompt, tile [first content, end) and each starts on content."""
    text = prompt[start:end]
    first = start + len(text) - len(text.lstrip())
    assert [f.index for f in features] == list(range(len(features)))
    assert features[0].start == first
    assert features[-1].end == end
    for f, g in zip(features, features[1:]):
        assert f.end == g.start
    for f in features:
        assert prompt[f.start:f.end] == f.text
        assert f.text.strip() and not f.text[0].isspace()
    assert "".join(f.text for f in features) == prompt[first:end]


def content(text: str) -> str:
    return text.rstrip()


def test_words_keep_punctuation_and_own_trailing_whitespace():
    features = split_features("The capital is  Paris,\tFrance.", "word")
    assert [f.text for f in features] == ["The ", "capital ", "is  ", "Paris,\t", "France."]


def test_sentences_of_a_realistic_paragraph():
    prompt = "Dr. Smith went to Washington. He arrived at 5 p.m. on Monday."
    features = split_features(prompt, "sentence")
    assert [f.text for f in features] == ["Dr. Smith went to Washington. ", "He arrived at 5 p.m. on Monday."]


def test_line_breaks_end_sentences_and_blank_lines_end_paragraphs():
    features = split_features(CONTEXT, "sentence")
    assert [content(f.text) for f in features] == [
        "Paris is the capital of France.", "It lies on the Seine.", "Berlin is the capital of Germany.",
        "It has a famous wall."]
    assert features[1].text == "It lies on the Seine.\n\n"
    paragraphs = split_features(CONTEXT, "paragraph")
    assert [p.text for p in paragraphs] == [CONTEXT[:CONTEXT.index("Berlin")], CONTEXT[CONTEXT.index("Berlin"):]]
    assert paragraphs[0].text.endswith("Seine.\n\n")  # the blank line belongs to the paragraph before
    assert split_features("a\n \t\n\n  b\nc", "paragraph")[0].text == "a\n \t\n\n  "


def test_symbols_pysbd_uses_internally_do_not_break_spans():
    prompt = "The A♭ clarinet is rare. The B♭ clarinet is common. Both are ∯ shaped."
    features = split_features(prompt, "sentence")
    check_tiling(prompt, features, 0, len(prompt))
    assert [content(f.text) for f in features] == [
        "The A♭ clarinet is rare.", "The B♭ clarinet is common.", "Both are ∯ shaped."]


def test_only_the_explainable_span_is_split():
    span = find_explain_span(PROMPT, CONTEXT)
    assert PROMPT[span[0]:span[1]] == CONTEXT
    for granularity in ("word", "sentence", "paragraph"):
        features = split_features(PROMPT, granularity, explain=span)
        check_tiling(PROMPT, features, *span)
        assert all(span[0] <= f.start < f.end <= span[1] for f in features)
        assert not any("Question" in f.text or "Answer" in f.text for f in features)


def test_leading_whitespace_of_the_span_stays_fixed():
    prompt = "  \n Hello world.  "
    features = split_features(prompt, "word")
    assert [(f.text, f.start) for f in features] == [("Hello ", 4), ("world.  ", 10)]


def test_find_explain_span():
    assert find_explain_span("abc", None) == (0, 3)
    assert find_explain_span("one two one", "one") == (0, 3)  # the first occurrence
    with pytest.raises(FeatureError, match="is not a substring of the prompt"):
        find_explain_span("abc", "abd")
    with pytest.raises(FeatureError, match="nothing to explain"):
        find_explain_span("abc", " ")


@pytest.mark.parametrize("prompt, span", [("", None), ("   \n\t", None), ("abc   def", (3, 6)), ("abc", (1, 1))])
def test_nothing_to_explain(prompt, span):
    with pytest.raises(FeatureError, match="nothing to explain"):
        split_features(prompt, "sentence", explain=span)


def test_errors_are_input_errors_with_advice():
    with pytest.raises(InputError, match="does not lie inside the prompt"):
        split_features("abc", "word", explain=(1, 9))
    with pytest.raises(FeatureError, match="use granularity 'sentence'"):
        split_features("a b c d", "word", max_features=3)
    assert len(split_features("a b c d", "word", max_features=4)) == 4
    with pytest.raises(FeatureError, match="unknown granularity"):
        split_features("a b", "token")


def test_segments_are_taken_as_given_in_prompt_order():
    prompt = "Keep this. Segment one. Between. Segment two. Tail."
    one, two = prompt.index("Segment one."), prompt.index("Segment two.")
    features = split_features(prompt, "segments", segments=[(two, two + 12), (one, one + 12)])
    assert [(f.index, f.text) for f in features] == [(0, "Segment one."), (1, "Segment two.")]
    assert all(prompt[f.start:f.end] == f.text for f in features)


@pytest.mark.parametrize("segments, message", [
    (None, "needs segments"),
    ([], "segments is empty"),
    ([(0, 4), (3, 6)], r"segment 1 \(3, 6\) overlaps segment 0 \(0, 4\)"),
    ([(0, 4), (5, 5)], r"segment 1 \(5, 5\) is empty or reversed"),
    ([(4, 2)], r"segment 0 \(4, 2\) is empty or reversed"),
    ([(0, 4), (8, 30)], r"segment 1 \(8, 30\) lies outside the explainable span \(0, 12\)"),
    ([(4, 5)], r"segment 0 \(4, 5\) holds only whitespace"),
    ([(0, 1.5)], "segment 0 .* is not a \\(start, end\\) pair of integers"),
    ([(0, 1, 2)], "segment 0 .* is not a \\(start, end\\) pair of integers"),
])
def test_bad_segments_say_which_and_why(segments, message):
    with pytest.raises(FeatureError, match=message):
        split_features("abcd efgh ij", "segments", segments=segments)


def test_segments_must_lie_in_the_explainable_span():
    with pytest.raises(FeatureError, match="outside the explainable span"):
        split_features("abcd efgh ij", "segments", explain=(5, 12), segments=[(0, 4)])


def test_segments_only_with_their_granularity():
    with pytest.raises(FeatureError, match="only used with granularity 'segments'"):
        split_features("abcd efgh", "word", segments=[(0, 4)])


@settings(max_examples=150, deadline=None)
@given(text=texts, granularity=st.sampled_from(["word", "sentence", "paragraph"]), data=st.data())
def test_features_tile_any_text(text, granularity, data):
    prompt = "Fixed prefix:\n" + text + "\nFixed question?"
    start = data.draw(st.integers(0, len(prompt)))
    end = data.draw(st.integers(start, len(prompt)))
    if not prompt[start:end].strip():
        with pytest.raises(FeatureError, match="nothing to explain"):
            split_features(prompt, granularity, explain=(start, end))
        return
    features = split_features(prompt, granularity, explain=(start, end))
    check_tiling(prompt, features, start, end)
    if granularity == "word":
        assert [f.text.split()[0] for f in features] == prompt[start:end].split()
    elif granularity == "sentence":  # no sentence crosses a line break, every line starts one
        assert all(len(content(f.text).splitlines()) == 1 for f in features)
        lines = [line for line in prompt[start:end].splitlines() if line.strip()]
        assert len(features) >= len(lines)
    else:
        blocks = [b for b in re.split(r"\n\s*\n", "\n".join(prompt[start:end].splitlines())) if b.strip()]
        assert len(features) == len(blocks)


def test_hotpotqa_gold_sentences_are_single_features(hotpotqa_items):
    """Real contexts: most gold supporting sentences come out as exactly one feature."""
    matched = total = 0
    for item in hotpotqa_items[:20]:
        parts, gold_spans, at = [], [], 0
        gold = {(title, j) for title, j in item["supporting_facts"]}
        for title, sentences in item["context"]:
            parts.append(f"{title}\n")
            at += len(parts[-1])
            for j, sentence in enumerate(sentences):
                if (title, j) in gold and sentence.strip():
                    lead = len(sentence) - len(sentence.lstrip())
                    gold_spans.append((at + lead, at + len(sentence.rstrip())))
                parts.append(sentence)
                at += len(sentence)
            parts.append("\n\n")
            at += 2
        prompt = "".join(parts)
        features = split_features(prompt, "sentence")
        check_tiling(prompt, features, 0, len(prompt))
        contents = {(f.start, f.start + len(content(f.text))) for f in features}
        matched += sum(span in contents for span in gold_spans)
        total += len(gold_spans)
    assert total > 30
    assert matched / total >= 0.9
