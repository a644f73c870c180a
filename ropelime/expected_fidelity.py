"""What an explanation can say about the closed model's own reasons, as measured: one sentence per surrogate and
granularity, from the fidelity evaluation (`ropelime eval fidelity`, docs/EVALUATION.md section 9) — the mean
per-prompt Spearman between an explanation and GPT-4o's own recorded leave-one-out over BoolQ context
sentences, and what `refine=3` reaches there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measured:
    """One surrogate's measured agreement with GPT-4o's own LOO (BoolQ context sentences, dev prompts)."""

    spearman: float
    refined_top1: float
    prompts: int


MEASURED: dict[str, Measured] = {
    "gemma3-270m": Measured(spearman=0.29, refined_top1=0.79, prompts=112),
    "qwen2.5-coder-0.5b": Measured(spearman=0.31, refined_top1=0.79, prompts=112),
}
"""The default method (question-overlap prior included), from docs/results/fidelity/
boolq_<surrogate>_n150_refine3.json, the `gpt-4o` entries (112 of the 150 prompts have its LOO defined)."""

PRIOR_SPEARMAN = 0.27
"""The question-overlap prior (`ropelime.priors`) alone, the same comparison on 1,156 dev prompts."""


def expected_fidelity(surrogate: str, granularity: str, refined: int = 0) -> str:
    """One sentence: how far this explanation's ranking is known to agree with a closed model's own."""
    measured = MEASURED.get(surrogate)
    if refined:
        head = (f"the {refined} feature(s) marked measured are the closed model's own effects, the rest "
                "the surrogate's estimates")
        if measured:
            head += (f"; with 3 measured on BoolQ-like prompts, the top feature matched GPT-4o's own in "
                     f"{measured.refined_top1:.0%} of {measured.prompts}")
        return head + "."
    if measured is None:
        return (f"{surrogate}'s agreement with a closed model's own reasons is not measured; the measured "
                f"surrogates reach Spearman ≈ {max(m.spearman for m in MEASURED.values()):+.2f} with GPT-4o's "
                "on BoolQ-like prompts: refine with K calls for measured effects.")
    if granularity == "word":
        return (f"agreement of word rankings with a closed model's own is not measured; this surrogate's default "
                f"sentence ranking agrees with GPT-4o's own at Spearman ≈ {measured.spearman:+.2f} on BoolQ-like "
                "prompts: explain by sentence, or refine with K calls for measured effects.")
    unit = "sentence ranking" if granularity in ("sentence", "segments") else \
        f"{granularity} ranking (measured on sentences)"
    return (f"on BoolQ-like prompts the default {unit} with this surrogate agrees with GPT-4o's own at Spearman ≈ "
            f"{measured.spearman:+.2f} (its question-overlap prior alone: ≈ {PRIOR_SPEARMAN:+.2f}; GPT-4.1's own: "
            f"≈ +0.30); refine with 3 calls for measured effects (the top feature then GPT-4o's own in "
            f"{measured.refined_top1:.0%} of prompts).")
