"""When to stop scoring masks: before the time budget would be overrun, or once the ranking has settled.

A time budget counts from the call's start and covers everything up to the returned result, so
scoring stops early enough to leave room for the work that follows it (kernel distances, the fit).
`Rate` measures seconds per unit of work (tokens to compute for scoring, arithmetic for the fit)
and is remembered per surrogate across calls (`pace_of`), so even a call's first chunk is sized
from measurement; with nothing measured yet the first chunk is a single mask. `plan_chunk` picks
how many masks to score next: as many as are predicted to finish within `PROGRESS_EVERY_S` (so
progress, cancellation and the deadline are checked at least that often) and before the deadline.
`RankingWatch` refits a plain ridge model at fixed mask counts and reports convergence when the set
and order of the top-k features stayed the same for `patience` consecutive checks. `importance_first`
orders the masks so that an early stop has scored the likely important features' single removals first;
`scoring_order` uses that order only when the time budget may stop scoring early.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ropelime.fit import SOLVERS

PROGRESS_EVERY_S = 2.0
"""Longest predicted scoring step: progress, cancellation and the deadline are checked at least this often."""

SAFETY = 1.5
"""Predicted scoring time is multiplied by this before it is checked against the deadline: a step that
overruns costs the caller more than one stopped a little early (measured on a busy 2-core CPU: a
perturbed prompt took up to 1.3x the seconds per token of the full-prompt pass the pace came from)."""

MAX_CHUNK = 32
"""Most masks scored in one step, however fast the surrogate is."""

MIN_STEP_TOKENS = 2048
"""Fewest tokens a step computes when the deadline allows, however slow the surrogate is: smaller steps
make one-prompt batches, which waste most of a CPU (Gemma 3 270M, 2 cores, MMLU: 64 masks took 95 s
in steps of one mask, 9 s in steps of 16)."""

LONG_STEP_SHARE = 0.25
"""A step that runs past `PROGRESS_EVERY_S` to reach `MIN_STEP_TOKENS` takes at most this share of the scoring
time left, so that even a step several times slower than predicted (a loaded machine) ends inside the budget."""

FINISH_S = 0.25
"""Seconds kept for building the result after the fit (features, notes, JSON)."""

FIT_SECONDS_PER_FLOP = 2e-9
"""Prior for the fit's pace (0.5 GFLOP/s, slower than any machine measured) until a fit was timed."""


class Rate:
    """Seconds per unit of work, measured as work completes (the mean of the old rate and the newest one)."""

    def __init__(self, prior: float | None = None) -> None:
        self.seconds_per_unit = prior

    def record(self, units: float, seconds: float) -> None:
        rate = seconds / max(units, 1.0)
        self.seconds_per_unit = rate if self.seconds_per_unit is None else (self.seconds_per_unit + rate) / 2

    def predict(self, units: float) -> float | None:
        """Seconds expected for `units` of work; None before anything was measured."""
        return None if self.seconds_per_unit is None else units * self.seconds_per_unit


_PACES: weakref.WeakKeyDictionary[object, Rate] = weakref.WeakKeyDictionary()
_FIT_RATE = Rate(FIT_SECONDS_PER_FLOP)


def pace_of(surrogate: object) -> Rate:
    """Seconds per scored token of this surrogate, kept across calls for as long as the surrogate lives."""
    if surrogate not in _PACES:
        _PACES[surrogate] = Rate()
    return _PACES[surrogate]


MEASURABLE_FIT_FLOPS = 1e7
"""Smaller fits take mostly fixed overhead and would overstate the pace of larger ones."""

LASSO_SECONDS_PER_FIT = 0.01
"""Generous time of one small iterative fit (scikit-learn's lasso) in the bootstrap."""


def fit_flops(n: int, d: int, bootstrap: int) -> float:
    """Arithmetic of a ridge/OLS fit with its bootstrap: normal equations and a solve per draw."""
    return _fit_per_mask(d, bootstrap) * n + _fit_fixed(d, bootstrap)


def _fit_per_mask(d: int, bootstrap: int) -> float:
    return (bootstrap + 1) * 2.0 * d * d


def _fit_fixed(d: int, bootstrap: int) -> float:
    return (bootstrap + 1) * d ** 3 / 3.0


def record_fit(n: int, d: int, bootstrap: int, seconds: float) -> None:
    """Learn the fit's pace from a timed ridge/OLS fit (fits too small to time well are skipped)."""
    if fit_flops(n, d, bootstrap) >= MEASURABLE_FIT_FLOPS:
        _FIT_RATE.record(fit_flops(n, d, bootstrap), seconds)


@dataclass
class Deadline:
    """The end of a time budget (a `time.perf_counter()` time, None = no limit) and the work after scoring.

    `per_mask_s` is the finishing work per scored mask (kernel distances, the fit's share), `fixed_s`
    the rest of it; scoring stops so that this work still ends before `end`.
    """

    end: float | None
    per_mask_s: float = 0.0
    fixed_s: float = FINISH_S

    @classmethod
    def after(cls, started: float, budget_s: float | None) -> Deadline:
        return cls(None if budget_s is None else started + budget_s)

    def remaining(self) -> float:
        """Seconds until the end (infinite without a limit)."""
        return math.inf if self.end is None else self.end - time.perf_counter()

    def scoring_left(self, masks_after: int) -> float:
        """Seconds scoring may still take if `masks_after` masks are to be finished afterwards."""
        return self.remaining() - self.fixed_s - self.per_mask_s * masks_after

    def leave_room_for_fit(self, d: int, solver: str, bootstrap: int, fits: int = 1) -> None:
        """Add the predicted seconds of `fits` fits (over d features) to the work after scoring (an unsigned
        target's explanation fits twice: its target and the response's likelihood)."""
        rate = _FIT_RATE.seconds_per_unit or FIT_SECONDS_PER_FLOP
        if not SOLVERS[solver].closed_form:  # e.g. lasso: scikit-learn's coordinate descent, once per draw
            self.fixed_s += fits * (bootstrap + 2) * LASSO_SECONDS_PER_FIT
            return
        self.per_mask_s += fits * _fit_per_mask(d, bootstrap) * rate
        self.fixed_s += fits * _fit_fixed(d, bootstrap) * rate


def plan_chunk(work: Sequence[float], pace: Rate, left: Callable[[int], float], *, first: bool,
               limit: int = MAX_CHUNK) -> int:
    """How many of the next masks (their scoring work, in tokens, in order) to score in one step.

    As many as are predicted to finish within `PROGRESS_EVERY_S` (or, if more, enough for `MIN_STEP_TOKENS`
    while that takes at most `LONG_STEP_SHARE` of the time left) and, with a `SAFETY` factor, within `left(j)` seconds (the scoring time left when j more masks are
    scored); at least one in the `first` step, since
    an explanation needs its unperturbed prompt, and exactly one then when nothing was measured yet.
    Returns 0 when the next mask is not expected to fit.
    """
    if pace.seconds_per_unit is None:
        return min(1, len(work))
    taken, seconds, tokens = 0, 0.0, 0.0
    for units in work[:limit]:
        seconds += pace.predict(units) or 0.0
        if taken and seconds > PROGRESS_EVERY_S and (tokens >= MIN_STEP_TOKENS
                                                     or seconds > LONG_STEP_SHARE * left(taken + 1)):
            break
        tokens += units
        if seconds * SAFETY > left(taken + 1):
            break
        taken += 1
    return max(taken, 1) if first and work else taken


def scoring_order(todo: list[int], urgent: Sequence[int] | None, predicted_s: float | None, left_s: float
                  ) -> list[int]:
    """The order to score the masks `todo` in: `urgent`'s (a permutation of the masks, e.g. `importance_first`)
    when scoring may not finish in the `left_s` seconds left (`predicted_s` unknown, or beyond it after
    `SAFETY`), else `todo`'s, the plan's, which batches best: prompts planned side by side compute alike and
    share their starts (on HotpotQA the importance order took 11–13% longer to complete)."""
    if urgent is None or math.isinf(left_s) or (predicted_s is not None and predicted_s * SAFETY <= left_s):
        return todo
    waiting = set(todo)
    return [int(i) for i in urgent if i in waiting]


def importance_first(masks: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """The order to score `masks` (row 0 unperturbed) in: row 0, then the single removals by descending
    `priority` of the removed feature (e.g. the question-overlap prior), then the other masks as planned.
    Ties keep the planned order, so an all-equal priority changes nothing."""
    removed = ~np.asarray(masks, dtype=bool)
    single = np.flatnonzero(removed.sum(axis=1) == 1)
    single = single[single > 0]
    by_priority = single[np.argsort(-np.asarray(priority, dtype=np.float64)[removed[single].argmax(axis=1)],
                                    kind="stable")]
    rest = np.setdiff1d(np.arange(1, len(masks)), single)
    return np.concatenate([[0], by_priority, rest]).astype(np.int64)


class RankingWatch:
    """Convergence of the top-k attribution ranking between successive checks."""

    def __init__(self, top_k: int = 5, patience: int = 2, min_samples: int | None = None) -> None:
        self.top_k = top_k
        self.patience = patience
        self.min_samples = min_samples
        self._last: tuple[int, ...] | None = None
        self._stable = 0

    def update(self, masks: np.ndarray, y: np.ndarray, sign: float) -> bool:
        """Refit on the masks scored so far; True once the top-k ranking is unchanged `patience` times."""
        n, d = masks.shape
        if n < (self.min_samples or d + 1):
            return False
        x = masks.astype(np.float64) - masks.mean(axis=0)
        coef = np.linalg.solve(x.T @ x + np.eye(d), x.T @ (y - y.mean()))
        top = tuple(np.argsort(-sign * coef, kind="stable")[:self.top_k].tolist())
        self._stable = self._stable + 1 if top == self._last else 0
        self._last = top
        return self._stable >= self.patience
