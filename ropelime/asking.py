"""The closed model asked again about the prompt with some features deleted: the one call design that
`verify` and `refine` share.

Every answer goes through `fetch_response` (cached on disk, so a repeat costs no call), within an optional
deadline, counting calls and what they cost, and with the provider's log-probabilities of the answer's first
token when it returns them. `answer_support` reads from those how strongly the model still gives an answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from ropelime.closed import FALLBACK, ClosedResult, cached_response, fetch_response
from ropelime.errors import Cancelled, ClosedModelError
from ropelime.perturb import perturb_text
from ropelime.records import Feature
from ropelime.settings import cache_dir

RESERVE_FACTOR = 1.5
"""Under a deadline, a call starts only while this many times the longest latency seen (the
original answer's included) remains."""

USAGE = ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd")


def without(prompt: str, features: list[Feature], removed: list[int]) -> str:
    """The prompt with the features `removed` (indices into `features`, in index order) deleted."""
    keep = np.ones(len(features), dtype=bool)
    keep[removed] = False
    return perturb_text(prompt, features, keep, "delete")


def _stem(text: str) -> str:
    return "".join(text.split()).lower()


def answer_support(alternatives: dict[str, float] | None, answer: str) -> float | None:
    """How strongly the model gives `answer`, from its first token's top alternatives: the log-odds of the
    alternatives that begin the answer (case and spaces ignored) against the others. None without
    log-probabilities, or when no alternative begins the answer or every one does (a bound, not a value, then;
    the caller falls back to comparing answers)."""
    if not alternatives:
        return None
    start = _stem(answer)
    matching = [lp for token, lp in alternatives.items() if _stem(token) and start.startswith(_stem(token))]
    others = [lp for token, lp in alternatives.items() if not (_stem(token) and start.startswith(_stem(token)))]
    if not matching or not others:
        return None
    return float(np.logaddexp.reduce(matching) - np.logaddexp.reduce(others))


class Asker:
    """Asks the closed model about perturbed prompts through the cache, within a deadline, counting calls and
    summing their usage (tokens, price)."""

    def __init__(self, model: str, system: str | None, *, api_base: str | None, timeout: float,
                 max_tokens: int | None, deadline: float | None, should_stop: Callable[[], bool] | None,
                 logprobs: bool = True, what: str = "verification", verb: str = "verify") -> None:
        self.model, self.system, self.api_base = model, system, api_base
        self.timeout, self.max_tokens, self.logprobs = timeout, max_tokens, logprobs
        self.deadline, self.should_stop, self.what, self.verb = deadline, should_stop, what, verb
        self.calls = self.cached = 0
        self.latency = 0.0
        self.usage: dict[str, float] = {}

    def ask(self, prompt: str) -> tuple[ClosedResult | None, str | None]:
        """The answer (cached or new) or None with the reason; raises Cancelled when asked to stop."""
        if self.should_stop and self.should_stop():
            raise Cancelled(f"{self.what} cancelled after {self.calls} closed-model call(s) "
                            "(answers obtained so far are cached)")
        asking = dict(cache_dir=cache_dir(), api_base=self.api_base, max_tokens=self.max_tokens,
                      logprobs=self.logprobs)
        hit = cached_response(self.model, prompt, self.system, **asking)
        if hit is not None:
            self.cached += 1
            return hit, None
        timeout, retries = self.timeout, 2
        if self.deadline is not None:
            remaining = self.deadline - time.perf_counter()
            if remaining < RESERVE_FACTOR * self.latency or remaining <= 0:
                return None, f"not asked: the time budget would be passed; {self.verb} again to finish"
            timeout, retries = min(timeout, remaining), 0  # a retry could overrun the budget
        self.calls += 1
        try:
            result = fetch_response(self.model, prompt, self.system, timeout=timeout, retries=retries, **asking)
        except ClosedModelError as error:
            return None, str(error).replace(f", {FALLBACK}", "") + f"; {self.verb} again to retry"
        self.latency = max(self.latency, result.latency_s)
        for name in USAGE:
            if name in result.usage:
                self.usage[name] = self.usage.get(name, 0.0) + result.usage[name]
        return result, None


def added_usage(usage: dict[str, float], more: dict[str, float]) -> dict[str, float]:
    """Two usage blocks summed (tokens, price)."""
    return {name: round(usage.get(name, 0.0) + more.get(name, 0.0), 8) for name in {*usage, *more}
            if not math.isnan(usage.get(name, 0.0) + more.get(name, 0.0))}
