"""A short reliability summary of an explanation, from the signals it measured.

Each signal that falls short lowers the verdict (high → medium → low); the verdict is the lowest
any signal gives, with one reason per signal. The thresholds and why they were chosen are in
docs/EVALUATION.md ("Reliability summary").
"""

from __future__ import annotations

from collections.abc import Sequence

from ropelime.fit import NOISE
from ropelime.schema import Diagnostics, FeatureScore, Reliability

R2_LOW, R2_MEDIUM = 0.25, 0.5
"""Weighted R² below R2_LOW: the linear fit explains little of how the surrogate responds (low);
below R2_MEDIUM: a good part of it is left unexplained (medium)."""

NLL_MEDIUM = 4.0
"""Surrogate NLL per response token above this (nats; a token the surrogate gives under 2% probability
on average): the surrogate finds the response unlikely and may not read it as the closed model does."""

LATE = 2 / 3
"""A feature is late when it starts in the last third of the features (by position in the prompt)."""

POSITION_TOP = 3
"""How many first-ranked features are checked for a position effect."""

_ORDER = {"high": 0, "medium": 1, "low": 2}


def excludes_zero(feature: FeatureScore) -> bool:
    """Whether the feature's 95% interval lies wholly above or below 0."""
    return feature.ci_low > NOISE or feature.ci_high < -NOISE


def position_effect(features: list[FeatureScore], overlap: Sequence[float]) -> str | None:
    """Why a top-ranked feature may owe its rank to where it sits rather than what it says: it is late in the
    prompt (small surrogates weigh text near the question and the answer more) and shares no rare word with
    the question or the answer (`overlap`, the question-overlap prior per feature index); None when none is."""
    d = len(features)
    top = sorted((f for f in features if f.evidence == "estimated"), key=lambda f: f.rank)[:POSITION_TOP]
    late = [f for f in top if f.index >= LATE * d and overlap[f.index] == 0]
    if not late:
        return None
    f = late[0]
    text = f.text if len(f.text) <= 40 else f.text[:39] + "…"
    return (f"#{f.rank} {text!r} sits late in the prompt (feature {f.index + 1} of {d}) and shares no word with the "
            "question or the answer: small surrogates favour text near the end, so its rank may be a position effect")


def assess(diagnostics: Diagnostics, features: list[FeatureScore], overlap: Sequence[float] | None = None
           ) -> Reliability:
    """The verdict and its reasons for an explanation with these diagnostics and features; `overlap` (the
    question-overlap prior per feature, for sentence-like features) lets it check for a position effect."""
    findings: list[tuple[str, str]] = []
    d = diagnostics
    if d.r2 < R2_LOW:
        findings.append(("low", f"the linear fit explains little of the surrogate's response (R² {d.r2:.2f})"))
    elif d.r2 < R2_MEDIUM:
        findings.append(("medium", f"the linear fit leaves much unexplained (R² {d.r2:.2f})"))
    if d.surrogate_nll > NLL_MEDIUM:
        findings.append(("medium", f"the surrogate finds the response unlikely (NLL {d.surrogate_nll:.2f} per "
                                   "token), so it may not read it as the closed model does"))
    significant = sum(excludes_zero(f) for f in features)
    if significant == 0:
        findings.append(("low", "no feature's 95% interval excludes 0"))
    position = None if overlap is None else position_effect(features, overlap)
    if position:
        findings.append(("medium", position))
    if not d.complete:
        unscored = f", {d.unscored_features} of {len(features)} features not yet scored" if d.unscored_features else ""
        findings.append(("medium", f"partial: {d.samples} of {d.planned_samples} perturbed prompts scored{unscored}"))
    if not findings:
        return Reliability(verdict="high", significant_features=significant,
                           reasons=[f"R² {d.r2:.2f}, surrogate NLL {d.surrogate_nll:.2f}, {significant} of "
                                    f"{len(features)} features with intervals excluding 0, complete"])
    verdict = max((level for level, _ in findings), key=_ORDER.__getitem__)
    return Reliability(verdict=verdict, significant_features=significant, reasons=[reason for _, reason in findings])
