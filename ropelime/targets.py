"""Turn per-position scores of the fixed response into one scalar per mask."""

from __future__ import annotations

import numpy as np

from ropelime.schema import Target
from ropelime.surrogate import TokenScores

SUPPORT_SIGN: dict[str, float] = {"nll": -1.0, "logit_prob": 1.0, "kl": -1.0, "js": -1.0}
"""Sign that turns a regression coefficient into support: loss-like targets count negatively."""


def target_value(scores: TokenScores, target: Target, positions: slice | np.ndarray = slice(None)) -> float:
    """The scalar target of one mask, optionally over a subset of response positions.

    nll: mean -log p(y_t); logit_prob: log(p / (1 - p)) of the whole selected output (ContextCite);
    kl / js: mean divergence from the unperturbed next-token distributions.
    """
    logp = scores.logp[positions]
    if target == "nll":
        return float(-logp.mean())
    if target == "logit_prob":
        total = float(logp.sum())
        return total - float(np.log(-np.expm1(min(total, -1e-12))))
    values = scores.kl if target == "kl" else scores.js
    if values is None:
        raise ValueError(f"target {target!r} needs the reference distributions; score with reference=...")
    return float(values[positions].mean())


def target_vector(rows: list[TokenScores], target: Target, positions: slice | np.ndarray = slice(None)) -> np.ndarray:
    """target_value for every row."""
    return np.array([target_value(r, target, positions) for r in rows], dtype=np.float64)
