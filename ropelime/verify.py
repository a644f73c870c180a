"""Check an explanation's top supporting features with the closed model itself, in K + 1 calls.

For each of the top K features with a positive score, the closed model is asked again (same model,
system prompt, temperature 0) with that feature's text deleted from the prompt; one control call
deletes K features drawn at random (seeded by the explanation's seed) from outside the top K. Every
answer goes through `fetch_response`, so it is cached on disk and a repeat costs no call.

Each answer is compared with the model's own answer to the unperturbed prompt by token F1 over
normalised words (lower case, punctuation and the articles a/an/the dropped; SQuAD's answer
metric): 1 = the same words, 0 = none in common. It needs no model, is deterministic, and its
number can be read directly ("half of the answer's words changed").

Verdicts, with s = the similarity without the feature, c = the control's, m = the margin:
- `confirmed`: c − s ≥ m, removing the feature changed the answer by m more than the control did;
- `inconclusive`: otherwise, when c < m: the control alone changed the answer so much that no
  removal could be shown to change it more;
- `not_confirmed`: otherwise (also when neither removal changed the answer at all);
- `unverified`: the feature's or the control's answer is missing (a provider fault, or the time
  budget would have been passed); the error says which.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from ropelime.asking import Asker, added_usage, answer_support, without
from ropelime.closed import ClosedResult
from ropelime.errors import InputError
from ropelime.schema import ControlCheck, Explanation, FeatureCheck, Verdict, Verification

MARGIN = 0.25
"""How much more the feature's removal must lower the similarity than the control's: a quarter of
the answer's words (one word of a four-word answer)."""

NEEDS_MODEL = ("verification asks the closed model again: pass model (--model on the command line, model= in "
               "the library and MCP tools), the litellm model string that gave the response")

_ARTICLES = {"a", "an", "the"}


def words(text: str) -> list[str]:
    """Normalised words: lower case, punctuation and the articles a/an/the dropped."""
    return [w for w in re.findall(r"\w+", text.lower()) if w not in _ARTICLES]


def similarity(answer: str, original: str) -> float:
    """Token F1 between two answers' normalised words, in [0, 1] (two answers without words: 1)."""
    a, b = Counter(words(answer)), Counter(words(original))
    if not a or not b:
        return float(a == b)
    common = sum((a & b).values())
    return 2 * common / (sum(a.values()) + sum(b.values()))


def verdict(feature: float | None, control: float | None, margin: float = MARGIN) -> Verdict:
    """The verdict for a feature's similarity against the control's (None = no answer)."""
    if feature is None or control is None:
        return "unverified"
    if control - feature >= margin:
        return "confirmed"
    if control < margin:
        return "inconclusive"
    return "not_confirmed"


def check_request(k: int, model: str | None) -> None:
    """Refuse a verification that cannot run, before any work: k below 0, or no model to ask."""
    if k < 0:
        raise InputError(f"verify must be 0 (no verification) or a number of features to verify, got {k}.")
    if k and not model:
        raise InputError(NEEDS_MODEL + ".")


def verify(
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
    margin: float = MARGIN,
) -> Explanation:
    """The explanation with its top-k supporting features checked by `model` (default: the model that
    gave its response): a `verification` field and the calls added to its cost.

    `reference` is the model's answer to the unperturbed prompt when already fetched. No new call
    starts when it would end after `deadline` (`time.perf_counter()` seconds): those features stay
    `unverified`. Provider faults leave the features they hit `unverified`; answers are cached.
    Raises InputError before any call when there is no model, Cancelled when `should_stop()`.
    """
    started = time.perf_counter()
    model = model or explanation.closed_model
    check_request(k, model)
    if k < 1:
        raise InputError(f"k must be at least 1 (features to verify), got {k}.")
    features = sorted(explanation.features, key=lambda f: f.index)
    positive = [f for f in explanation.top(len(features)) if f.score > 0]
    chosen = positive[:min(k, len(features) - 1)]
    notes = []
    if len(chosen) < k:
        why = (f"only {len(positive)} feature(s) have a positive score" if len(chosen) == len(positive)
               else f"the control needs a feature outside the verified ones, and there are {len(features)}")
        notes.append(f"verified {len(chosen)} of the {k} features asked for: {why}")
    asker = Asker(model, explanation.system, api_base=api_base, timeout=timeout, max_tokens=max_tokens,
                  deadline=deadline, should_stop=should_stop)
    pool = sorted(set(range(len(features))) - {f.index for f in chosen})
    drawn = sorted(int(i) for i in np.random.default_rng(explanation.config.seed).choice(
        pool, size=min(len(chosen), len(pool)), replace=False)) if chosen else []
    control = ControlCheck(features=drawn, texts=[features[i].text for i in drawn])
    if len(drawn) < len(chosen):
        notes.append(f"the control removes {len(drawn)} feature(s), all that lie outside the {len(chosen)} verified")
    checks = [FeatureCheck(feature=f.index, text=f.text, verdict="unverified") for f in chosen]
    original, failure = (reference, None) if reference is not None or not chosen else asker.ask(explanation.prompt)
    if original is not None:
        asker.latency = max(asker.latency, original.latency_s)
        before = answer_support(original.first_token_logprobs, original.text)
        for check, indices in [(control, control.features)] + [(c, [c.feature]) for c in checks]:
            answer, check.error = asker.ask(without(explanation.prompt, features, indices))
            if answer is not None:
                check.answer, check.cached = answer.text, answer.cached
                check.similarity = round(similarity(answer.text, original.text), 4)
                after = answer_support(answer.first_token_logprobs, original.text)
                check.support_drop = None if before is None or after is None else round(before - after, 4)
        for check in checks:
            check.verdict = verdict(check.similarity, control.similarity, margin)
        if explanation.response_source == "given" and similarity(explanation.response, original.text) < 1:
            notes.append("the model's answer to the unperturbed prompt differs from the explained response; "
                         "the verdicts are about the model's answer")
        if not explanation.diagnostics.complete:
            notes.append("the explanation did not score all its planned samples: its top features may change")
        if control.error:
            notes.append(f"the control has no answer, so no feature could be judged ({control.error})")
    elif chosen:
        for check in [control, *checks]:
            check.error = "no answer to the unperturbed prompt to compare with"
        notes.append(f"the model's answer to the unperturbed prompt is missing ({failure})")
    seconds = round(time.perf_counter() - started, 3)
    verification = Verification(k=k, model=model, original=original.text if original else "", margin=margin,
                                checks=checks, control=control if chosen else None,
                                closed_model_calls=asker.calls, cached_answers=asker.cached, seconds=seconds,
                                notes=notes)
    previous = explanation.verification  # replaced: its calls and seconds leave the cost
    cost = explanation.cost.model_copy(update={
        "closed_model_calls": explanation.cost.closed_model_calls + asker.calls
        - (previous.closed_model_calls if previous else 0),
        "seconds": round(explanation.cost.seconds + seconds - (previous.seconds if previous else 0.0), 3),
        "closed_model_usage": added_usage(explanation.cost.closed_model_usage, asker.usage)})
    return explanation.model_copy(update={"verification": verification, "cost": cost})


def summary_lines(verification: Verification, width: int = 80) -> list[str]:
    """A few lines for people and models: the verdicts, the control and the cost."""
    v = verification

    def line(text: str) -> str:
        text = " ".join(text.split())
        return repr(text if len(text) <= width else text[: width - 1] + "…")

    def sim(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    head = (f"verified with {v.model}: {len(v.checks)} feature(s) and 1 control; {v.closed_model_calls} closed-model "
            f"call(s), {v.cached_answers} answer(s) from the cache; similarity = token F1 to the original answer, "
            f"confirmed when at least {v.margin:g} below the control's"
            if v.checks else f"verification with {v.model}: nothing verified")
    lines = [head]
    if v.control is not None:
        lines.append(f"control (features {v.control.features} removed): similarity {sim(v.control.similarity)}"
                     + (f"; {v.control.error}" if v.control.error else ""))
    for c in v.checks:
        lines.append(f"feature {c.feature}: {c.verdict} (similarity {sim(c.similarity)}) {line(c.text)}"
                     + (f"; {c.error}" if c.error else ""))
    return lines + [f"note: {n}" for n in v.notes]
