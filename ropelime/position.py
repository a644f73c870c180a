"""The surrogate's sensitivity to where text sits, taken out of the scores.

A small surrogate's answer moves more when text near the end of the prompt is removed than when the same
kind of text sits earlier, whatever it says: on the dev HotpotQA prompts, the later a sentence that is not
evidence, the larger its score (docs/EVALUATION.md §8.18). That is the surrogate's reading, not the reason the
answer has, and it pulls late distractors above early evidence.

Across one explanation's features, in prompt order, the log of each score's magnitude is fitted on the
feature's relative position (0 = first, 1 = last) by Theil–Sen (the median of the pairwise slopes: the
few features that matter do not move it; capped at `MAX_SLOPE`); every score and its interval are then
divided by the fitted sensitivity at the feature's position, relative to the features' mean position. The
ranking within a stretch of text is kept; signs and directions are unchanged.

Off by default (`ExplainConfig.adjust_position`): it lifted the ranking of the evidence on the dev items it
was found on, but not on held-out ones (docs/EVALUATION.md §8.18).
"""

from __future__ import annotations

import numpy as np

from ropelime.fit import NOISE

MIN_FEATURES = 8
"""Fewer features with a non-zero score than this: no slope is fitted (it would rest on too few points)."""

MAX_SLOPE = 1.5
"""Largest |slope| of log|score| over the prompt's length taken as the surrogate's (scores e^1.5 ≈ 4.5× as
large at one end as at the other); a steeper fit is more likely evidence gathered at one end (on the dev
HotpotQA item whose five gold facts are its last sentences the fit gave 3.4 and the evidence lost its rank),
so it is capped. Chosen on Gemma's first 15 HotpotQA dev items, checked on the others and on the 0.5B
(docs/EVALUATION.md §8.18)."""


def position_factors(scores: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The factor each score (features in prompt order) is multiplied by, and the fitted slope of log|score| per
    the whole prompt's length; None when fewer than `MIN_FEATURES` scores are non-zero."""
    scores = np.asarray(scores, dtype=np.float64)
    position = np.arange(len(scores)) / max(len(scores) - 1, 1)
    fitted = np.abs(scores) > NOISE
    if fitted.sum() < MIN_FEATURES:
        return None
    from scipy.stats import theilslopes  # scipy.stats takes half a second to import: only when adjusting

    slope = float(np.clip(theilslopes(np.log(np.abs(scores[fitted])), position[fitted]).slope, -MAX_SLOPE, MAX_SLOPE))
    return np.exp(-slope * (position - position.mean())), slope


def position_note(slope: float | None) -> str:
    """What the adjustment did (None: it could not be fitted), for the diagnostics."""
    if slope is None:
        return (f"scores not adjusted for position: fewer than {MIN_FEATURES} features have a non-zero score, too "
                "few to fit the surrogate's position sensitivity")
    return (f"scores adjusted for the surrogate's position sensitivity: removing text at the end of the explained "
            f"part moved the answer {np.exp(slope):.2g}× as much as at its start (fitted over the features)")
