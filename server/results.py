"""What the tools return: the short texts the model reads (full data goes in structured content) and the top-features model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ropelime.compare import Comparison
from ropelime.render import direction_text, number, reliability_line, settled_line, target_of
from ropelime.schema import Explanation, FeatureScore
from ropelime.refine import summary_lines as refinement_lines
from ropelime.verify import summary_lines

Direction = Literal["supporting", "opposing", "both"]

_LINE = 100
"""Longest feature text shown in a tool's text; the structured content carries it whole."""


class TopFeatures(BaseModel):
    """The result of `top_features`."""

    explanation_id: str = Field(description="the explanation these features come from (a new one for output_span)")
    source_explanation_id: str = Field(description="the explanation_id that was asked about")
    direction: Direction
    output_span: str | None = Field(description="the part of the response attributed (None = all of it)")
    response: str
    complete: bool = Field(description="False when the explanation was cut short by its time budget")
    scored_features: int
    features_total: int
    settled: str = Field(description="could the top still change (intervals, unscored features)")
    features: list[FeatureScore] = Field(description="text, character span in the prompt, score, 95% interval, rank")


def shorten(text: str, width: int = _LINE) -> str:
    """One line of at most `width` characters."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def feature_lines(features: list[FeatureScore]) -> list[str]:
    """`#rank score [low, high] 'text'`, one line per feature; under kl/js the direction before the text
    (`supports +0.12 'text'`: the response's likelihood effect)."""
    return [f"#{f.rank} {number(f.score)} [{number(f.ci_low)}, {number(f.ci_high)}] "
            f"{direction_text(f) + ' ' if f.likelihood_effect is not None else ''}"
            f"{'measured on the closed model ' + number(f.closed_effect) + ' ' if f.closed_effect is not None else ''}"
            f"{shorten(f.text)!r}"
            for f in features]


def status(explanation: Explanation) -> str:
    """Complete, or how far it got and how to continue."""
    d = explanation.diagnostics
    if d.complete:
        return f"complete ({d.samples} perturbed prompts scored)"
    unscored = f" ({d.unscored_features} of {len(explanation.features)} features not yet scored)" \
        if d.unscored_features else ""
    return (f"INCOMPLETE: {d.samples} of {d.planned_samples} perturbed prompts scored before the time budget{unscored}; "
            f"call explain_response again with continue_from={explanation.id!r} (or the same arguments) to resume")


def opposes(feature: FeatureScore, signed: bool) -> bool:
    """Whether to list the feature as opposing: a negative score under a signed target; under kl/js a likelihood
    effect whose interval lies below 0 (nothing for explanations stored before that effect was recorded)."""
    if feature.likelihood_effect is not None:
        return feature.direction == "opposes"
    return signed and feature.score < 0


def explanation_text(explanation: Explanation, k: int = 5) -> str:
    """What the model needs from an explanation in a few lines."""
    c, d = explanation.cost, explanation.diagnostics
    source = f"from {explanation.closed_model}" if explanation.response_source == "closed_model" else "given"
    target = target_of(explanation)
    supporting = [f for f in explanation.top(k, "supporting") if f.score > 0]
    opposing = [f for f in explanation.top(3, "opposing") if opposes(f, target.signed)]
    lines = [
        f"explanation_id: {explanation.id} — {status(explanation)}",
        f"response ({source}): {shorten(explanation.response, 300)!r}",
    ]
    reliability = reliability_line(explanation)
    if reliability:
        lines.append(reliability)
    head = f"{len(explanation.features)} {explanation.config.granularity} features; "
    if supporting:
        label = "supporting" if target.signed else "the answer rests on"
        lines += [head + f"top {len(supporting)} {label} ({_score_label(explanation)} [95% interval]):",
                  *feature_lines(supporting)]
    else:
        lines.append(head + "none supports the response (no positive score)")
    if supporting:
        lines.append(settled_line(explanation, min(3, len(supporting))))
    if opposing:
        lines += ["most opposing:", *feature_lines(opposing)]
    lines += [
        f"fit R² {d.r2:.2f}; surrogate NLL of the response {d.surrogate_nll:.2f}; "
        f"cost {c.closed_model_calls} closed-model call(s), {c.surrogate_forward_passes} surrogate passes, {c.seconds:.1f} s",
        *([f"fidelity: {d.expected_fidelity}"] if d.expected_fidelity else []),
        *(refinement_lines(explanation.refinement) if explanation.refinement else []),
        *(summary_lines(explanation.verification) if explanation.verification else []),
        f"full explanation in the structured content; resources explanation://{explanation.id} (JSON) "
        f"and explanation://{explanation.id}/html (heat map)",
    ]
    return "\n".join(lines + [f"note: {n}" for n in d.notes])


def _score_label(explanation: Explanation) -> str:
    """`score in nats/token`: what the numbers are, with the target's unit when known."""
    unit = target_of(explanation).unit
    return f"score in {unit}" if unit else "score"


def top_text(top: TopFeatures) -> str:
    """The top features as lines."""
    part = f" of the response part {shorten(top.output_span, 80)!r}" if top.output_span is not None else ""
    head = f"explanation_id: {top.explanation_id}{'' if top.complete else ' (INCOMPLETE explanation)'}"
    return "\n".join([head, f"top {len(top.features)} {top.direction} features{part} (score [95% interval]):",
                      *feature_lines(top.features), top.settled])


def comparison_text(comparison: Comparison) -> str:
    """A compact table of the comparison: one line per sampler and budget, then agreement."""
    runs = f"{len(comparison.runs)} of {comparison.runs_planned} runs" if comparison.runs_planned else f"{len(comparison.runs)} runs"
    lines = [f"{'complete' if comparison.complete else 'INCOMPLETE'} comparison ({runs}) over {comparison.features} features "
             f"(k = {comparison.k}, {comparison.heldout_masks} shared held-out masks); "
             f"{comparison.closed_model_calls} closed-model call(s), {comparison.surrogate_passes} surrogate passes, "
             f"{comparison.seconds:.1f} s",
             "sampler budget: LDS | top-k drop vs random-k | seed stability spearman, top-k overlap | passes, s"]
    for r in comparison.results:
        stab = "n/a" if r.stability_spearman is None else f"{r.stability_spearman:.2f}"
        overlap = "n/a" if r.stability_topk_overlap is None else f"{r.stability_topk_overlap:.2f}"
        lines.append(f"{r.sampler} {r.budget}: {r.lds:+.2f} | {number(r.topk_drop)} vs {number(r.random_k_drop)} | "
                     f"{stab}, {overlap} | {r.surrogate_passes}, {r.seconds:.1f}")
    if comparison.agreement:
        lines.append("agreement between samplers (spearman, top-k overlap):")
        lines += [f"{a.sampler_a} vs {a.sampler_b} at {a.budget}: "
                  f"{'n/a' if a.spearman is None else f'{a.spearman:.2f}'}, {a.topk_overlap:.2f}"
                  for a in comparison.agreement]
    return "\n".join(lines + [f"note: {n}" for n in comparison.notes])
