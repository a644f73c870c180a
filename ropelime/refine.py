"""Refine an explanation with the closed model's own effects, in K calls (AttriBoT's proxy pruning,
Focus-LIME's proxy-then-target).

The surrogate's pass names the candidates: the K features with the highest upper interval bounds (its
ranking and its uncertainty together). For each, the closed model is asked once more (same model, system
prompt, temperature 0; `ropelime.asking`, so answers are cached and a repeat costs nothing) with that
feature deleted, and its own leave-one-out effect is measured on the fixed answer:

- `logprob` (when the provider returns log-probabilities): the drop of the log-odds of the answer's first
  token against the other top alternatives, original minus without the feature (> 0: the feature supports
  the answer); a deletion that only shifts confidence without changing a one-word answer is seen;
- `similarity` (otherwise): 1 − token F1 of the new answer to the original (`ropelime.verify.similarity`).

The measured features then rank first, by their effect (its magnitude under an unsigned target, which says
how much the answer rests on a feature), marked `measured`; the rest keep the surrogate's order, marked
`estimated`. Calls, tokens and price go into the explanation's cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from ropelime.asking import Asker, added_usage, answer_support, without
from ropelime.closed import ClosedResult
from ropelime.errors import InputError
from ropelime.expected_fidelity import expected_fidelity
from ropelime.schema import Explanation, Refinement, RefinedFeature
from ropelime.targets import TARGETS

NEEDS_MODEL = ("refinement asks the closed model again: pass model (--model on the command line, model= in the "
               "library and MCP tools), the litellm model string that gave the response")


def check_request(k: int, model: str | None) -> None:
    """Refuse a refinement that cannot run, before any work: k below 0, or no model to ask."""
    if k < 0:
        raise InputError(f"refine must be 0 (no refinement) or a number of features to measure, got {k}.")
    if k and not model:
        raise InputError(NEEDS_MODEL + ".")


def candidates(explanation: Explanation, k: int) -> list[int]:
    """The k features to measure: the highest upper interval bounds (ties: the higher score)."""
    ordered = sorted(explanation.features, key=lambda f: (-f.ci_high, -f.score, f.index))
    return [f.index for f in ordered[:k]]


def random_candidates(explanation: Explanation, k: int, seed: int) -> list[int]:
    """k features drawn at random: the control that spends the same calls without the surrogate's choice."""
    d = len(explanation.features)
    return sorted(int(i) for i in np.random.default_rng(seed).choice(d, size=min(k, d), replace=False))


def ranked(explanation: Explanation, measured: dict[int, float]) -> Explanation:
    """The explanation with the `measured` effects (feature index → effect) marked and ranked first."""
    unsigned = not TARGETS[explanation.config.target].signed
    key = (lambda e: abs(e)) if unsigned else (lambda e: e)
    first = sorted(measured, key=lambda i: (-key(measured[i]), i))
    rest = [f.index for f in sorted(explanation.features, key=lambda f: (-f.score, f.index)) if f.index not in measured]
    rank = {index: r for r, index in enumerate(first + rest, start=1)}
    features = [f.model_copy(update={"rank": rank[f.index], "closed_effect": measured.get(f.index),
                                     "evidence": "measured" if f.index in measured else "estimated"})
                for f in explanation.features]
    return explanation.model_copy(update={"features": features})


def refine(
    explanation: Explanation,
    k: int = 3,
    *,
    model: str | None = None,
    api_base: str | None = None,
    timeout: float = 60.0,
    max_tokens: int | None = None,
    reference: ClosedResult | None = None,
    deadline: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    choose: Sequence[int] | Literal["surrogate", "random"] = "surrogate",
) -> Explanation:
    """The explanation with the closed model's own effects of deleting k candidates measured and ranked first
    (a `refinement` block, `closed_effect` and `evidence` per feature, the calls in `cost`).

    `model` defaults to the model that gave the response; `reference` is its answer to the whole prompt when
    already fetched (with log-probabilities, else asked once more). `choose` = "random" (seeded by the
    config's seed) or explicit feature indices replace the surrogate's candidates. No call starts when it would
    end after `deadline`; features it could not measure stay estimates. Raises InputError before any call when
    there is no model, Cancelled when `should_stop()`.
    """
    started = time.perf_counter()
    model = model or explanation.closed_model
    check_request(k, model)
    if k < 1:
        raise InputError(f"k must be at least 1 (features to measure), got {k}.")
    if choose == "surrogate":
        chosen = candidates(explanation, k)
    elif choose == "random":
        chosen = random_candidates(explanation, k, explanation.config.seed)
    else:
        chosen = list(choose)
    features = sorted(explanation.features, key=lambda f: f.index)
    asker = Asker(model, explanation.system, api_base=api_base, timeout=timeout, max_tokens=max_tokens,
                  deadline=deadline, should_stop=should_stop, what="refinement", verb="refine")
    notes = []
    original, failure = (reference, None) if reference is not None and reference.first_token_logprobs \
        else asker.ask(explanation.prompt)
    if original is None:
        original = reference
    before = answer_support(original.first_token_logprobs, original.text) if original else None
    signal = "logprob" if before is not None else "similarity"
    measured: dict[int, float] = {}
    refined = [RefinedFeature(feature=i, text=features[i].text) for i in chosen]
    if original is None:
        for item in refined:
            item.error = f"no answer to the whole prompt to compare with ({failure})"
    else:
        from ropelime.verify import similarity

        if signal == "similarity":
            notes.append(f"{model} returned no log-probabilities for the answer's first token: effects are "
                         "1 − token F1 of its new answers, which see only deletions that change the answer")
        for item in refined:
            answer, item.error = asker.ask(without(explanation.prompt, features, [item.feature]))
            if answer is None:
                continue
            item.answer, item.cached = answer.text, answer.cached
            if signal == "logprob" and not answer.first_token_logprobs:
                item.error = "the answer without this feature came without log-probabilities"
                continue
            after = answer_support(answer.first_token_logprobs, original.text) if signal == "logprob" else None
            if signal == "logprob" and after is None:  # the answer left the top alternatives: a bound
                after = _bound(answer.first_token_logprobs)
            item.effect = round(before - after, 5) if signal == "logprob" else \
                round(1.0 - similarity(answer.text, original.text), 5)
            measured[item.feature] = item.effect
        if explanation.response_source == "given" and original.text.strip() != explanation.response.strip():
            notes.append("the model's answer to the whole prompt differs from the explained response; the "
                         "measured effects are about the model's answer")
    seconds = round(time.perf_counter() - started, 3)
    refinement = Refinement(k=k, model=model, signal=signal, original_support=before, features=refined,
                            candidates=choose if isinstance(choose, str) else "given",
                            closed_model_calls=asker.calls, cached_answers=asker.cached, seconds=seconds, notes=notes)
    cost = explanation.cost.model_copy(update={
        "closed_model_calls": explanation.cost.closed_model_calls + asker.calls,
        "seconds": round(explanation.cost.seconds + seconds, 3),
        "closed_model_usage": added_usage(explanation.cost.closed_model_usage, asker.usage)})
    diagnostics = explanation.diagnostics.model_copy(update={"expected_fidelity": expected_fidelity(
        explanation.surrogate.name, explanation.config.granularity, refined=len(measured))})
    return ranked(explanation, measured).model_copy(update={"refinement": refinement, "cost": cost,
                                                           "diagnostics": diagnostics})


def _bound(alternatives: dict[str, float]) -> float:
    """The answer's support when none of the first token's top alternatives begins it (or all do): at most the
    lowest alternative's log-probability against the rest, a bound that makes the effect a lower bound."""
    lowest = min(alternatives.values())
    return float(lowest - np.logaddexp.reduce(list(alternatives.values())))


def summary_lines(refinement: Refinement, width: int = 80) -> list[str]:
    """A few lines for people and models: what was measured, each feature's effect, and the cost."""
    r = refinement
    unit = ("drop of the log-odds of the answer's first token, nats" if r.signal == "logprob"
            else "1 − token F1 of the new answer")
    lines = [f"refined with {r.model}: {len(r.features)} feature(s) measured without them ({unit}); "
             f"{r.closed_model_calls} closed-model call(s), {r.cached_answers} answer(s) from the cache"]
    for item in r.features:
        text = " ".join(item.text.split())
        text = text if len(text) <= width else text[: width - 1] + "…"
        effect = "not measured" if item.effect is None else f"{item.effect:+.3g}"
        lines.append(f"feature {item.feature}: {effect} {text!r}" + (f"; {item.error}" if item.error else ""))
    return lines + [f"note: {n}" for n in r.notes]
