"""A short reliability summary of an explanation, from the signals it measured.

Each signal that falls short lowers the verdict (high → medium → low); the verdict is the lowest
any signal gives, with one reason per signal. The thresholds and why they were chosen are in
docs/EVALUATION.md ("Reliability summary").
"""

from __future__ import annotations

from ropelime.fit import NOISE
from ropelime.schema import Diagnostics, FeatureScore, Reliability

R2_LOW, R2_MEDIUM = 0.25, 0.5
"""Weighted R² below R2_LOW: the linear fit explains little of how the surrogate responds (low);
below R2_MEDIUM: a good part of it is left unexplained (medium)."""

NLL_MEDIUM = 4.0
"""Surrogate NLL per response token above this (nats; a token the surrogate gives under 2% probability
on average): the surrogate finds the response unlikely and may not read it as the closed model does."""

_ORDER = {"high": 0, "medium": 1, "low": 2}


def excludes_zero(feature: FeatureScore) -> bool:
    """Whether the feature's 95% interval lies wholly above or below 0."""
    return feature.ci_low > NOISE or feature.ci_high < -NOISE


def assess(diagnostics: Diagnostics, features: list[FeatureScore]) -> Reliability:
    """The verdict and its reasons for an explanation with these diagnostics and features."""
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
    if not d.complete:
        unscored = f", {d.unscored_features} of {len(features)} features not yet scored" if d.unscored_features else ""
        findings.append(("medium", f"partial: {d.samples} of {d.planned_samples} perturbed prompts scored{unscored}"))
    if not findings:
        return Reliability(verdict="high", significant_features=significant,
                           reasons=[f"R² {d.r2:.2f}, surrogate NLL {d.surrogate_nll:.2f}, {significant} of "
                                    f"{len(features)} features with intervals excluding 0, complete"])
    verdict = max((level for level, _ in findings), key=_ORDER.__getitem__)
    return Reliability(verdict=verdict, significant_features=significant, reasons=[reason for _, reason in findings])
