"""Split the explainable part of a prompt into features, each keyed by its span in the prompt.

Whitespace rule (word, sentence, paragraph): a feature is its content plus all the whitespace that
follows it, up to the next feature or the end of the explainable span. So the features tile
``[start of the first content, end of the explainable span)`` exactly, and joining their texts
gives that text back. Whitespace before the first content stays fixed (it belongs to no feature);
so does everything outside the explainable span.

Caller-given segments are taken as given: the text between them stays fixed.

Sentences end at every line break and where pysbd finds a sentence boundary within a line. pysbd
rewrites some characters internally (it uses symbols such as ``♭`` or ``∯`` as markers) and then
fails to locate the affected sentences in the text; so it gets a copy with those markers and all
whitespace replaced one-for-one, only the starts of the sentences it reports are used, and a
sentence it loses is merged into the one before. Spans are therefore always exact.
"""

from __future__ import annotations

import re
from numbers import Integral

import pysbd

from ropelime.errors import FeatureError
from ropelime.schema import Feature, Granularity

_WORD = re.compile(r"\S+")
_PYSBD_MARKERS = re.compile("[ƪǃȸȹᓰᓱᓳᓴᓷᓸ∮∯⌬⎋☄☇☈☉☏☝♝♟♨♬♭✂]")
_FEWER = {
    "word": "use granularity 'sentence' or explain a shorter part of the prompt",
    "sentence": "use granularity 'paragraph' or explain a shorter part of the prompt",
    "paragraph": "explain a shorter part of the prompt",
    "segments": "give fewer, longer segments",
}



def find_explain_span(prompt: str, explain: str | None) -> tuple[int, int]:
    """The (start, end) of `explain` in `prompt` (its first occurrence); None = the whole prompt."""
    if explain is None:
        return 0, len(prompt)
    if not explain.strip():
        raise FeatureError("nothing to explain: the text to explain is empty or only whitespace; "
                           "give a part of the prompt, or leave it out to explain the whole prompt.")
    start = prompt.find(explain)
    if start < 0:
        raise FeatureError(f"the text to explain ({_preview(explain)}) is not a substring of the prompt; "
                           "copy it from the prompt exactly, including whitespace and line breaks.")
    return start, start + len(explain)


def split_features(
    prompt: str,
    granularity: Granularity,
    *,
    explain: tuple[int, int] | None = None,
    segments: list[tuple[int, int]] | None = None,
    max_features: int | None = None,
) -> list[Feature]:
    """Split `prompt[explain[0]:explain[1]]` (default: the whole prompt) into features, in order."""
    start, end = explain if explain is not None else (0, len(prompt))
    if not 0 <= start <= end <= len(prompt):
        raise FeatureError(f"the explainable span ({start}, {end}) does not lie inside the prompt "
                           f"(length {len(prompt)}); give 0 <= start <= end <= {len(prompt)}.")
    text = prompt[start:end]
    if not text.strip():
        raise FeatureError("nothing to explain: the explainable text is empty or only whitespace; "
                           "give a prompt (or a part of it) that holds some text.")
    if granularity == "segments":
        if segments is None:
            raise FeatureError("granularity 'segments' needs segments: a list of (start, end) character "
                               "spans into the prompt.")
        spans = _check_segments(prompt, segments, start, end)
    else:
        if segments is not None:
            raise FeatureError(f"segments are only used with granularity 'segments', not '{granularity}'; "
                               "drop the segments or set granularity='segments'.")
        if granularity == "word":
            starts = [m.start() for m in _WORD.finditer(text)]
        elif granularity == "sentence":
            starts = _sentence_starts(text)
        elif granularity == "paragraph":
            starts = _paragraph_starts(text)
        else:
            raise FeatureError(f"unknown granularity {granularity!r}; use word, sentence, paragraph or segments.")
        bounds = [start + s for s in starts] + [end]
        spans = list(zip(bounds[:-1], bounds[1:]))
    if max_features is not None and len(spans) > max_features:
        raise FeatureError(f"{len(spans)} {granularity} features exceed the limit of {max_features}; "
                           f"{_FEWER[granularity]}.")
    return [Feature(index=i, text=prompt[a:b], start=a, end=b) for i, (a, b) in enumerate(spans)]


def _sentence_starts(text: str) -> list[int]:
    """Start of each sentence's content in `text`: every line's content, and pysbd's boundaries."""
    starts: list[int] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        content = line.rstrip("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029")
        if content.strip():
            starts.extend(offset + s for s in _pysbd_starts(content))
        offset += len(line)
    return starts


def _pysbd_starts(line: str) -> list[int]:
    """Sentence starts within one line (no line breaks), each on a non-whitespace character."""
    safe = _PYSBD_MARKERS.sub("#", "".join(" " if c.isspace() else c for c in line))
    first = len(line) - len(line.lstrip())
    starts, reached = [first], 0
    for span in pysbd.Segmenter(language="en", clean=False, char_span=True).segment(safe):
        at = span.start + len(safe[span.start:]) - len(safe[span.start:].lstrip())
        if span.start >= reached and starts[-1] < at < len(line):
            starts.append(at)
        reached = max(reached, span.end)
    return starts


def _paragraph_starts(text: str) -> list[int]:
    """Start of the content of each paragraph; paragraphs are separated by whitespace-only lines."""
    starts: list[int] = []
    offset, after_blank = 0, True
    for line in text.splitlines(keepends=True):
        if line.strip():
            if after_blank:
                starts.append(offset + len(line) - len(line.lstrip()))
            after_blank = False
        else:
            after_blank = True
        offset += len(line)
    return starts


def _check_segments(prompt: str, segments: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """Caller-given spans, validated and sorted by start."""
    if not segments:
        raise FeatureError("segments is empty: give at least one (start, end) span into the prompt.")
    checked = []
    for i, segment in enumerate(segments):
        if (not isinstance(segment, (tuple, list)) or len(segment) != 2
                or not all(isinstance(x, Integral) and not isinstance(x, bool) for x in segment)):
            raise FeatureError(f"segment {i} ({segment!r}) is not a (start, end) pair of integers.")
        a, b = int(segment[0]), int(segment[1])
        if not a < b:
            raise FeatureError(f"segment {i} ({a}, {b}) is empty or reversed; give start < end.")
        if a < start or b > end:
            raise FeatureError(f"segment {i} ({a}, {b}) lies outside the explainable span ({start}, {end}); "
                               "give spans inside the text to explain.")
        if not prompt[a:b].strip():
            raise FeatureError(f"segment {i} ({a}, {b}) holds only whitespace; give spans with some text.")
        checked.append((a, b, i))
    checked.sort()
    for (a0, b0, i0), (a1, b1, i1) in zip(checked, checked[1:]):
        if a1 < b0:
            raise FeatureError(f"segment {i1} ({a1}, {b1}) overlaps segment {i0} ({a0}, {b0}); "
                               "give non-overlapping spans.")
    return [(a, b) for a, b, _ in checked]


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
