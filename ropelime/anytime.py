"""When to stop scoring masks: before the time budget would be overrun, or once the ranking has settled.

`Pace` predicts how long the next chunk of prompts will take from the tokens scored so far, so a
call stops *before* a chunk that would overrun its budget instead of after it. `RankingWatch`
refits a plain ridge model after each chunk and reports convergence when the set and order of the
top-k features stayed the same for `patience` consecutive chunks.
"""

from __future__ import annotations

import time

import numpy as np


class Pace:
    """Seconds per scored token, measured as chunks complete."""

    def __init__(self, started: float, budget_s: float | None) -> None:
        self.started = started
        self.budget_s = budget_s
        self.tokens = 0
        self.seconds = 0.0

    def record(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    def fits(self, tokens: int) -> bool:
        """Whether a chunk of `tokens` tokens is expected to finish inside the budget."""
        if self.budget_s is None:
            return True
        elapsed = time.perf_counter() - self.started
        expected = tokens * self.seconds / self.tokens if self.tokens else 0.0
        return elapsed + expected <= self.budget_s


class RankingWatch:
    """Convergence of the top-k attribution ranking between successive chunks."""

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
